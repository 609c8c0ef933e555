"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
SERVICE_UNAVAILABLE = "service_unavailable_error"
RATE_LIMITED = "rate_limit_error"
# Seconds a client should wait after a 429 or 503 before retrying.
RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error to return to the client with an HTTP status in the OpenAI error shape."""

    def __init__(self, status_code: int, message: str, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, INVALID_REQUEST, param, code)


# Accepted forms of fields whose type is a union, named in the error message as the fix.
UNION_FIELD_FORMS = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of token-id lists",
    "stop": "a string or a list of up to 4 strings",
    "tool_choice": "\"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
}
# Pydantic names the member of a union that failed inside the location; these parts are not fields.
_UNION_TAGS = ("str", "int", "float", "bool")
_UNION_TAG_PREFIXES = ("list[", "dict[", "function-", "json-or-python")


def format_location(location: tuple[Any, ...]) -> str:
    """Turn a pydantic error location like ('body', 'messages', 0, 'role') into 'messages[0].role'."""
    text = ""
    for part in location:
        if part == "body" and not text:
            continue
        if isinstance(part, str) and text and (part in _UNION_TAGS or part.startswith(_UNION_TAG_PREFIXES)):
            break
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _shown_value(value: Any) -> str:
    """Describe a rejected value without echoing request text into the reply and the log."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """Turn pydantic validation errors into one 400 naming the field and the fix.

    An unrecognized field is reported first, because a misspelled field name also shows up as
    a missing required one.
    """
    extra = [e for e in errors if e.get("type") == "extra_forbidden"]
    first = extra[0] if extra else errors[0]
    param = format_location(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return invalid_request(f"Unrecognized request argument supplied: {param}. Remove it from the request body.",
                               param=param, code="unknown_parameter")
    if kind == "json_invalid":
        return invalid_request(f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}.",
                               code="invalid_json")
    if not param:
        return invalid_request("The request body must be a JSON object; send it with the header "
                               "'content-type: application/json'.", code="invalid_json")
    if kind == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if param in UNION_FIELD_FORMS:
        return invalid_request(f"Invalid value for '{param}': expected {UNION_FIELD_FORMS[param]} "
                               f"(got {_shown_value(first.get('input'))}).", param=param, code="invalid_value")
    return invalid_request(f"Invalid value for '{param}': {first['msg']} (got {_shown_value(first.get('input'))}).",
                           param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        logger.info("Request %s failed with %d: %s", request_id, error.status_code, error.message)
        return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        api_error = validation_error(list(error.errors()))
        return await _api_error(request, api_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            api_error = APIError(404, f"Not found: {request.method} {request.url.path}. See GET /v1/models and "
                                      "POST /v1/chat/completions.", NOT_FOUND)
        elif error.status_code == 405:
            api_error = APIError(405, f"Method {request.method} is not allowed on {request.url.path}.",
                                 INVALID_REQUEST)
        else:
            api_error = APIError(error.status_code, str(error.detail), INVALID_REQUEST)
        return await _api_error(request, api_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        logger.exception("Request %s failed with an internal error", request_id)
        body = APIError(500, f"Internal server error ({type(error).__name__}); see the server log for "
                             f"request {request_id}.", SERVER_ERROR).body()
        return JSONResponse(body, status_code=500)
