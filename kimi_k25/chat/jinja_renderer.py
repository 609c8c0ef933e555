"""Sandboxed rendering of Jinja chat templates, including untrusted ones shipped with checkpoints.

The environment matches the one transformers uses for ``apply_chat_template`` (trim_blocks,
lstrip_blocks, the loopcontrols extension, a ``tojson`` filter that calls ``json.dumps`` with
``ensure_ascii=False``, and a ``raise_exception`` global), so a template renders here exactly as it
does there. A template from a checkpoint is untrusted code, so it runs in Jinja's
``ImmutableSandboxedEnvironment`` and receives only plain JSON data. Any access to an unsafe
attribute raises at once instead of rendering as empty text.
"""

from __future__ import annotations

import datetime
import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHAT_TEMPLATE_FILENAME = "chat_template.jinja"
TOKENIZER_CONFIG_FILENAME = "tokenizer_config.json"

# Special-token strings that transformers passes to every chat template, read from tokenizer_config.json.
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplateError(Exception):
    """A chat template failed to load or render. The message names the template's origin."""

    def __init__(self, message: str, origin: str) -> None:
        super().__init__(f"chat template {origin}: {message}")
        self.origin = origin


class ChatTemplateSecurityError(ChatTemplateError):
    """The template tried an operation the sandbox forbids, such as reading a dunder attribute."""


class ChatTemplateInputError(ChatTemplateError):
    """The template called ``raise_exception`` to reject the conversation, so the client should fix its request."""


class _TemplateRaisedError(jinja2.TemplateError):
    """Error raised by ``raise_exception``, kept distinct from template bugs."""


class _StrictSandboxEnvironment(ImmutableSandboxedEnvironment):
    """Sandbox that raises on unsafe attribute access.

    Jinja's sandbox returns an undefined value for a blocked attribute, which renders as empty
    text, so a template probing ``''.__class__`` would fail silently. Raising makes the probe visible.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's built-in tojson escapes HTML characters; chat templates expect plain json.dumps output.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise _TemplateRaisedError(message)


def _strftime_now(date_format: str) -> str:
    return datetime.datetime.now().strftime(date_format)


def create_sandbox_environment() -> ImmutableSandboxedEnvironment:
    """Create the sandboxed Jinja environment that chat templates render in."""
    environment = _StrictSandboxEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        keep_trailing_newline=False,
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


def to_plain_data(value: Any, path: str = "value") -> Any:
    """Copy ``value`` into plain JSON types, so a template can reach no methods beyond those of str, dict and list.

    Raises TypeError naming the path of the first value that is not JSON data.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        plain_mapping = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a non-string key {key!r}; chat template inputs must be JSON objects")
            plain_mapping[str.__str__(key)] = to_plain_data(item, f"{path}.{key}")
        return plain_mapping
    if isinstance(value, (list, tuple)):
        return [to_plain_data(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"{path} is a {type(value).__name__}, which a chat template cannot receive; pass JSON data "
        "(dict, list, str, int, float, bool or None)"
    )


class JinjaChatTemplate:
    """A compiled chat template and the special-token strings it may reference."""

    def __init__(self, source: str, origin: str, special_tokens: Mapping[str, str] | None = None) -> None:
        """Compile ``source``; ``origin`` names the file (or config key) in error messages."""
        self.source = source
        self.origin = origin
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = create_sandbox_environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(f"syntax error at line {error.lineno}: {error.message}", origin) from error

    @property
    def variables(self) -> frozenset[str]:
        """Names the template reads from its context, such as ``thinking`` or ``tools_ts_str``."""
        environment = create_sandbox_environment()
        return frozenset(jinja2.meta.find_undeclared_variables(environment.parse(self.source)))

    @classmethod
    def from_file(cls, path: str | Path, special_tokens: Mapping[str, str] | None = None) -> JinjaChatTemplate:
        """Load and compile a template file."""
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), str(path), special_tokens)

    @classmethod
    def from_checkpoint_dir(cls, checkpoint_dir: str | Path) -> JinjaChatTemplate | None:
        """Load the template a checkpoint ships, or return None when it ships none.

        ``chat_template.jinja`` takes precedence over the ``chat_template`` key of
        ``tokenizer_config.json``, as in transformers. The key may hold a string or a list of
        ``{"name", "template"}`` entries, of which the one named ``default`` is used.
        """
        checkpoint_dir = Path(checkpoint_dir)
        config_path = checkpoint_dir / TOKENIZER_CONFIG_FILENAME
        tokenizer_config = _read_tokenizer_config(config_path)
        special_tokens = _special_tokens_from_config(tokenizer_config)

        template_path = checkpoint_dir / CHAT_TEMPLATE_FILENAME
        if template_path.is_file():
            return cls.from_file(template_path, special_tokens)

        chat_template = tokenizer_config.get("chat_template")
        if chat_template is None:
            return None
        origin = f"{config_path} (key 'chat_template')"
        if isinstance(chat_template, str):
            return cls(chat_template, origin, special_tokens)
        if isinstance(chat_template, list):
            named_templates = {
                entry.get("name"): entry.get("template") for entry in chat_template if isinstance(entry, Mapping)
            }
            default_template = named_templates.get("default")
            if not isinstance(default_template, str):
                raise ChatTemplateError(
                    f"the template list has no entry named 'default' (names found: {sorted(map(str, named_templates))}); "
                    "add a 'default' entry or ship chat_template.jinja",
                    origin,
                )
            return cls(default_template, f"{config_path} (key 'chat_template', entry 'default')", special_tokens)
        raise ChatTemplateError(
            f"expected a string or a list of named templates, got {type(chat_template).__name__}", origin
        )

    def render(self, **variables: Any) -> str:
        """Render with ``variables`` as template globals, plus the special tokens no variable overrides.

        Raises ChatTemplateInputError when the template calls ``raise_exception``,
        ChatTemplateSecurityError when it breaks a sandbox rule, and ChatTemplateError for other
        template failures. A variable that is not JSON data raises TypeError before rendering.
        """
        context = {**self.special_tokens, **to_plain_data(variables, "template variables")}
        try:
            return self._template.render(**context)
        except _TemplateRaisedError as error:
            raise ChatTemplateInputError(f"the template rejected the conversation: {error}", self.origin) from error
        except jinja2.exceptions.SecurityError as error:
            raise ChatTemplateSecurityError(f"blocked by the sandbox: {error}", self.origin) from error
        except (jinja2.TemplateError, TypeError, ValueError) as error:
            # tojson raises TypeError or ValueError on data json.dumps cannot encode.
            raise ChatTemplateError(f"rendering failed: {type(error).__name__}: {error}", self.origin) from error


def load_packaged_template() -> JinjaChatTemplate:
    """Load this package's ``chat_template.jinja``, the Jinja form of the built-in K2.5 renderer."""
    resource = importlib.resources.files(__package__).joinpath(CHAT_TEMPLATE_FILENAME)
    return JinjaChatTemplate(resource.read_text(encoding="utf-8"), f"kimi_k25/chat/{CHAT_TEMPLATE_FILENAME}")


def _read_tokenizer_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ChatTemplateError(f"invalid JSON: {error}", str(config_path)) from error
    if not isinstance(config, dict):
        raise ChatTemplateError(f"expected a JSON object, got {type(config).__name__}", str(config_path))
    return config


def _special_tokens_from_config(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    # A token is stored either as its string or as an AddedToken dict with a "content" field.
    special_tokens = {}
    for key in _SPECIAL_TOKEN_KEYS:
        token = tokenizer_config.get(key)
        if isinstance(token, Mapping):
            token = token.get("content")
        if isinstance(token, str):
            special_tokens[key] = token
    return special_tokens
