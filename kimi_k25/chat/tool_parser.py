"""Parse Kimi K2.5 tool calls out of completion text, for whole outputs and for streams.

The parsers read the content part of a completion (after the reasoning parser), with the
special-token names kept as text. The grammar:

    CONTENT <|tool_calls_section_begin|>
      <|tool_call_begin|> ID <|tool_call_argument_begin|> ARGUMENTS <|tool_call_end|>
      ...more calls, with or without whitespace between them
    <|tool_calls_section_end|>

Accepted deviations: the singular legacy spelling ``<|tool_call_section_begin|>`` (and
``..._end|>``), a bare ``<|tool_call_begin|>`` without the section wrapper, a missing section end,
and whitespace around the id and the arguments (it is stripped).

Decisions, shared by ``parse_tool_calls`` and ``ToolCallStreamParser``:

- Content is the text before the section, or None when that is empty or only whitespace.
  Text between calls inside the section, and everything after the section end, is dropped.
- Function name: the id is ``functions.NAME:IDX`` or ``NAME:IDX``. For a dotted NAME such as
  ``a.b.c``, the candidates are ``a.b.c``, ``b.c`` and ``c``. The first candidate that is a
  declared function name wins. Without a match the whole NAME is used, so that a name such as
  ``a.b`` keeps its namespace. An id without ``:IDX`` is accepted only when it names a declared
  function.
- A bare counter id such as ``3`` gets its name inferred: the only declared function, or else
  the one declared function whose parameters contain every argument key. Without a unique
  match the call is skipped and listed in ``skipped_calls``. The stream keeps such a call's
  arguments back until the call ends, because the name must come first.
- Returned id: the model's id when it has the ``functions.NAME:IDX`` form, because the client
  echoes it back and the prompt renders it verbatim. Otherwise ``functions.NAME:IDX`` is made
  up, with IDX = ``index_offset`` + the call's position in this message, so that the counter runs
  across the conversation as the model's own ids do. Pass the number of tool calls in earlier assistant
  messages as ``index_offset`` (``count_prior_tool_calls``).
- A call to a function that is not in ``tools`` is returned as the model wrote it, and its
  position is listed in ``unknown_function_calls`` so that the server can log or reject it.
  Arguments are returned verbatim (whitespace-stripped) and never re-serialized. Arguments that
  are not a JSON object are kept as written and listed in ``invalid_arguments_calls``.
- Cut-off output (text ends inside a call, as with max_tokens): complete calls are returned,
  the incomplete call is dropped and ``truncated`` is set.
- Malformed output: parsing stops at the first marker out of place. The calls completed
  before it are kept. A call whose arguments had begun is kept with the arguments written so
  far. The rest of the text, with all markers removed, is appended to the content, and
  ``error`` names the marker that was out of place. Neither parser raises on any completion
  text.

The stream produces the same result as ``parse_tool_calls`` for every chunking of the text.
The one exception is cut-off output: the stream has already sent the incomplete call's id and
the argument text written so far, and ``finish()`` names that call in
``incomplete_call_index``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kimi_k25.chat import tokens

# Singular spellings of the section markers, a known deviation in model output.
LEGACY_TOOL_CALLS_SECTION_BEGIN = "<|tool_call_section_begin|>"
LEGACY_TOOL_CALLS_SECTION_END = "<|tool_call_section_end|>"

_SECTION_BEGIN_MARKERS = (tokens.TOOL_CALLS_SECTION_BEGIN, LEGACY_TOOL_CALLS_SECTION_BEGIN)
_SECTION_END_MARKERS = (tokens.TOOL_CALLS_SECTION_END, LEGACY_TOOL_CALLS_SECTION_END)
_MARKERS = (
    *_SECTION_BEGIN_MARKERS,
    *_SECTION_END_MARKERS,
    tokens.TOOL_CALL_BEGIN,
    tokens.TOOL_CALL_ARGUMENT_BEGIN,
    tokens.TOOL_CALL_END,
)
# No marker contains another, so the leftmost match is always a whole marker.
_MARKER_PATTERN = re.compile("|".join(re.escape(marker) for marker in _MARKERS))

# functions.NAME:IDX or NAME:IDX. NAME is greedy, so a name that contains ":" keeps it.
_INDEXED_ID_PATTERN = re.compile(r"(?P<prefix>functions\.)?(?P<name>\S+):(?P<index>\d+)")
_COUNTER_ID_PATTERN = re.compile(r"\d+")
_FUNCTIONS_PREFIX = "functions."


@dataclass
class ToolCallParseResult:
    """Content and OpenAI ``tool_calls`` read from one completion, with what went wrong."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    # A section begin marker, or a bare <|tool_call_begin|>, opened a tool call section.
    tool_section_found: bool = False
    # The text ended inside a call, which was dropped.
    truncated: bool = False
    # The first marker out of place. From there on, the text went into content without markers.
    error: str | None = None
    # Positions in tool_calls of calls to functions that are not in tools.
    unknown_function_calls: list[int] = field(default_factory=list)
    # Positions in tool_calls of calls whose arguments are not a JSON object.
    invalid_arguments_calls: list[int] = field(default_factory=list)
    # Ids of calls dropped because no function name could be read or inferred from them.
    skipped_calls: list[str] = field(default_factory=list)


@dataclass
class ToolCallStreamEnd:
    """Report of ``ToolCallStreamParser.finish`` on a whole stream.

    Suggested ``finish_reason``: ``length`` when the engine stopped at max_tokens (then
    ``truncated`` is usually set, and ``incomplete_call_index`` names a call whose fragments
    were sent without its end), ``tool_calls`` when at least one complete call was sent, and
    ``stop`` otherwise.
    """

    # Last delta events: content or argument text that was held back.
    deltas: list[dict]
    tool_section_found: bool
    # Calls whose first delta was sent, the incomplete one included.
    tool_call_count: int
    # The call that was still open when the stream ended, if its first delta was sent.
    incomplete_call_index: int | None
    truncated: bool
    error: str | None
    unknown_function_calls: list[int]
    invalid_arguments_calls: list[int]
    skipped_calls: list[str]


def count_prior_tool_calls(messages: list[dict]) -> int:
    """Return the number of tool calls in the assistant messages, the ``index_offset`` of the next call."""
    count = 0
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            tool_calls = message.get("tool_calls")
            if isinstance(tool_calls, list):
                count += len(tool_calls)
    return count


class _State(enum.Enum):
    CONTENT = "content"
    BETWEEN_CALLS = "between calls"
    CALL_ID = "call id"
    ARGUMENTS = "arguments"
    SECTION_DONE = "section done"
    FALLBACK = "fallback"


# Position of a misplaced marker in the error message, by parser state.
_EXPECTED = {
    _State.CONTENT: "before any tool call section",
    _State.BETWEEN_CALLS: (
        f"between tool calls, where {tokens.TOOL_CALL_BEGIN} or {tokens.TOOL_CALLS_SECTION_END} was expected"
    ),
    _State.CALL_ID: f"in a tool call id, where {tokens.TOOL_CALL_ARGUMENT_BEGIN} was expected",
    _State.ARGUMENTS: f"in tool call arguments, where {tokens.TOOL_CALL_END} was expected",
}


def _misplaced_marker_error(marker: str, offset: int, state: _State) -> str:
    return f"unexpected {marker} at offset {offset} {_EXPECTED[state]}. The rest of the output is returned as content"


def _strip_markers(text: str) -> str:
    return _MARKER_PATTERN.sub("", text)


@dataclass(frozen=True)
class _DeclaredTools:
    """Names and parameter names of the function tools of a request."""

    parameter_names: dict[str, frozenset[str]]

    @classmethod
    def from_tools(cls, tools: list[dict] | None) -> _DeclaredTools:
        parameter_names: dict[str, frozenset[str]] = {}
        for tool in tools or ():
            function = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                continue
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            names = frozenset(properties) if isinstance(properties, Mapping) else frozenset()
            parameter_names[function["name"]] = names
        return cls(parameter_names)

    def __contains__(self, name: str) -> bool:
        return name in self.parameter_names

    def __bool__(self) -> bool:
        return bool(self.parameter_names)


@dataclass(frozen=True)
class _CallHeader:
    """A call id read from the text, and the function name it gives."""

    model_id: str
    name: str | None  # None: infer it from the arguments, or skip the call
    keep_id: bool
    infer_from_arguments: bool = False


def _name_candidates(name: str) -> list[str]:
    """Return ``a.b.c``, ``b.c``, ``c`` for ``a.b.c``: the whole name, then each shorter dotted suffix."""
    candidates = [name]
    for index, character in enumerate(name):
        if character == "." and index + 1 < len(name):
            candidates.append(name[index + 1 :])
    return candidates


def _declared_candidate(name: str, declared: _DeclaredTools) -> str | None:
    return next((candidate for candidate in _name_candidates(name) if candidate in declared), None)


def _read_call_header(raw_id: str, declared: _DeclaredTools) -> _CallHeader:
    model_id = raw_id.strip()
    indexed = _INDEXED_ID_PATTERN.fullmatch(model_id)
    if indexed is not None:
        written_name = indexed.group("name")
        name = _declared_candidate(written_name, declared) or written_name
        return _CallHeader(model_id, name, keep_id=indexed.group("prefix") is not None)

    if _COUNTER_ID_PATTERN.fullmatch(model_id):
        if len(declared.parameter_names) == 1:
            return _CallHeader(model_id, next(iter(declared.parameter_names)), keep_id=False)
        return _CallHeader(model_id, None, keep_id=False, infer_from_arguments=bool(declared))

    written_name = model_id.removeprefix(_FUNCTIONS_PREFIX)
    return _CallHeader(model_id, _declared_candidate(written_name, declared) if written_name else None, keep_id=False)


def _infer_name(arguments: str, declared: _DeclaredTools) -> str | None:
    """Return the one declared function whose parameters contain every argument key, or None."""
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    matches = [name for name, parameters in declared.parameter_names.items() if parameters.issuperset(parsed)]
    return matches[0] if len(matches) == 1 else None


def _is_json_object(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except (ValueError, RecursionError):
        return False


def _call_id(header: _CallHeader, name: str, position: int, index_offset: int) -> str:
    return header.model_id if header.keep_id else f"functions.{name}:{index_offset + position}"


def parse_tool_calls(text: str, tools: list[dict] | None = None, *, index_offset: int = 0) -> ToolCallParseResult:
    """Split a whole completion's content into prose and OpenAI ``tool_calls``.

    ``tools`` are the request's tool definitions, used to resolve names and flag unknown
    functions. ``index_offset`` is the number of tool calls in earlier assistant messages.
    Does not raise on malformed text: the result reports the problems instead.
    """
    declared = _DeclaredTools.from_tools(tools)
    result = ToolCallParseResult(content=None)
    content_parts: list[str] = []
    state = _State.CONTENT
    uncommitted_start = 0  # start of the text not yet taken as content, a call or dropped text
    header: _CallHeader | None = None

    def add_call(arguments: str) -> None:
        name = header.name
        if name is None and header.infer_from_arguments:
            name = _infer_name(arguments, declared)
        if name is None:
            result.skipped_calls.append(header.model_id)
            return
        position = len(result.tool_calls)
        result.tool_calls.append(_tool_call(_call_id(header, name, position, index_offset), name, arguments))
        if declared and name not in declared:
            result.unknown_function_calls.append(position)
        if not _is_json_object(arguments):
            result.invalid_arguments_calls.append(position)

    for match in _MARKER_PATTERN.finditer(text):
        marker, start, end = match.group(), match.start(), match.end()
        if state is _State.CONTENT and (marker in _SECTION_BEGIN_MARKERS or marker == tokens.TOOL_CALL_BEGIN):
            content_parts.append(text[:start])
            result.tool_section_found = True
            state = _State.CALL_ID if marker == tokens.TOOL_CALL_BEGIN else _State.BETWEEN_CALLS
            uncommitted_start = end
        elif state is _State.BETWEEN_CALLS and marker == tokens.TOOL_CALL_BEGIN:
            state, uncommitted_start = _State.CALL_ID, end
        elif state is _State.BETWEEN_CALLS and marker in _SECTION_END_MARKERS:
            state = _State.SECTION_DONE
            break
        elif state is _State.CALL_ID and marker == tokens.TOOL_CALL_ARGUMENT_BEGIN:
            header = _read_call_header(text[uncommitted_start:start], declared)
            state, uncommitted_start = _State.ARGUMENTS, end
        elif state is _State.ARGUMENTS and marker == tokens.TOOL_CALL_END:
            add_call(text[uncommitted_start:start].strip())
            state, uncommitted_start = _State.BETWEEN_CALLS, end
        else:
            result.error = _misplaced_marker_error(marker, start, state)
            if state is _State.CONTENT:
                content_parts.append(text[:start])
                uncommitted_start = start
            elif state is _State.ARGUMENTS:
                add_call(text[uncommitted_start:start].strip())
                uncommitted_start = start
            content_parts.append(_strip_markers(text[uncommitted_start:]))
            state = _State.FALLBACK
            break

    if state is _State.CONTENT:
        content_parts.append(text)
    elif state in (_State.CALL_ID, _State.ARGUMENTS):
        result.truncated = True
    content = "".join(content_parts)
    result.content = content if content.strip() else None
    return result


def _tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class ToolCallStreamParser:
    """Incremental form of ``parse_tool_calls`` that produces OpenAI chat-completion delta objects.

    ``feed`` takes the next piece of content text and returns a list of deltas, each either
    ``{"content": str}`` or ``{"tool_calls": [...]}``. A call's first delta carries ``index``,
    ``id``, ``type`` and ``function`` with the name and empty ``arguments``. Later deltas carry
    ``index`` and argument fragments as the model writes them. Only text that could be the start
    of a marker, and whitespace that could end the arguments, is held back. Leading whitespace
    of the content is held until other text follows, because whitespace-only content is None.
    Call ``finish`` once at the end. One parser serves one completion.
    """

    def __init__(self, tools: list[dict] | None = None, index_offset: int = 0) -> None:
        self.index_offset = index_offset
        self._declared = _DeclaredTools.from_tools(tools)
        self._state = _State.CONTENT
        self._pending = ""  # text not yet scanned: at most a partial marker between feeds
        self._pending_offset = 0  # offset of _pending in the whole text
        self._finished = False
        self._deltas: list[dict] = []

        self._content_started = False
        self._held_content = ""  # leading whitespace of the content
        self._uncommitted: list[str] = []  # section text that becomes content if a marker is out of place

        self._header: _CallHeader | None = None
        self._call_id_parts: list[str] = []
        self._arguments_parts: list[str] = []
        self._arguments_started = False
        self._held_whitespace = ""  # trailing whitespace of the arguments so far
        self._call_position: int | None = None  # set once the current call's first delta is sent

        self._tool_section_found = False
        self._tool_call_count = 0
        self._error: str | None = None
        self._unknown_function_calls: list[int] = []
        self._invalid_arguments_calls: list[int] = []
        self._skipped_calls: list[str] = []

    def feed(self, delta_text: str) -> list[dict]:
        """Consume the next piece of completion text and return the deltas it completes."""
        if self._finished:
            raise RuntimeError("feed() called after finish(). Create a new ToolCallStreamParser for each completion")
        if self._state is _State.SECTION_DONE:
            return []
        self._pending += delta_text

        while (match := _MARKER_PATTERN.search(self._pending)) is not None:
            self._consume_text(self._pending[: match.start()])
            marker_offset = self._pending_offset + match.start()
            self._pending = self._pending[match.end() :]
            self._pending_offset = marker_offset + len(match.group())
            self._consume_marker(match.group(), marker_offset)
            if self._state is _State.SECTION_DONE:
                self._pending = ""
                return self._take_deltas()

        hold_start = _partial_marker_start(self._pending)
        self._consume_text(self._pending[:hold_start])
        self._pending = self._pending[hold_start:]
        self._pending_offset += hold_start
        return self._take_deltas()

    def finish(self) -> ToolCallStreamEnd:
        """End the stream: release held-back text and report what the stream contained.

        A partial marker at the end is plain text in the content. When the text ends inside a
        call, ``truncated`` is set. If that call's first delta was already sent, its argument
        fragments stay sent and ``incomplete_call_index`` names it.
        """
        if self._finished:
            raise RuntimeError("finish() called twice. Create a new ToolCallStreamParser for each completion")
        self._finished = True
        incomplete_call_index = None
        truncated = False
        if self._state in (_State.CONTENT, _State.FALLBACK):
            self._emit_content(self._pending)
        elif self._state in (_State.CALL_ID, _State.ARGUMENTS):
            truncated = True
            incomplete_call_index = self._call_position
        self._pending = ""

        return ToolCallStreamEnd(
            deltas=self._take_deltas(),
            tool_section_found=self._tool_section_found,
            tool_call_count=self._tool_call_count,
            incomplete_call_index=incomplete_call_index,
            truncated=truncated,
            error=self._error,
            unknown_function_calls=list(self._unknown_function_calls),
            invalid_arguments_calls=list(self._invalid_arguments_calls),
            skipped_calls=list(self._skipped_calls),
        )

    # Text between markers, by state.

    def _consume_text(self, text: str) -> None:
        if not text:
            return
        if self._state in (_State.CONTENT, _State.FALLBACK):
            self._emit_content(text)
        elif self._state is _State.BETWEEN_CALLS:
            self._uncommitted.append(text)
        elif self._state is _State.CALL_ID:
            self._uncommitted.append(text)
            self._call_id_parts.append(text)
        elif self._state is _State.ARGUMENTS:
            self._add_arguments(text)

    def _add_arguments(self, text: str) -> None:
        """Send argument text as it comes, minus leading whitespace and whitespace that may end it."""
        if not self._arguments_started:
            text = text.lstrip()
            if not text:
                return
            self._arguments_started = True
        body = text.rstrip()
        if not body:
            self._held_whitespace += text
            return
        fragment = self._held_whitespace + body
        self._held_whitespace = text[len(body) :]
        self._arguments_parts.append(fragment)
        if self._call_position is not None:
            self._push_arguments(self._call_position, fragment)

    # Markers, by state.

    def _consume_marker(self, marker: str, offset: int) -> None:
        state = self._state
        if state is _State.FALLBACK:
            return  # markers are removed from fallback content
        if state is _State.CONTENT and (marker in _SECTION_BEGIN_MARKERS or marker == tokens.TOOL_CALL_BEGIN):
            self._tool_section_found = True
            if marker == tokens.TOOL_CALL_BEGIN:
                self._begin_call()
            else:
                self._state = _State.BETWEEN_CALLS
        elif state is _State.BETWEEN_CALLS and marker == tokens.TOOL_CALL_BEGIN:
            self._begin_call()
        elif state is _State.BETWEEN_CALLS and marker in _SECTION_END_MARKERS:
            self._state = _State.SECTION_DONE
        elif state is _State.CALL_ID and marker == tokens.TOOL_CALL_ARGUMENT_BEGIN:
            self._begin_arguments()
        elif state is _State.ARGUMENTS and marker == tokens.TOOL_CALL_END:
            self._end_call()
            self._state = _State.BETWEEN_CALLS
        else:
            self._error = _misplaced_marker_error(marker, offset, state)
            if state is _State.ARGUMENTS:
                self._end_call()
            self._state = _State.FALLBACK
            self._emit_content("".join(self._uncommitted))
            self._uncommitted = []

    def _begin_call(self) -> None:
        self._state = _State.CALL_ID
        self._uncommitted = []  # text between calls is dropped
        self._call_id_parts = []

    def _begin_arguments(self) -> None:
        self._state = _State.ARGUMENTS
        self._uncommitted = []
        self._header = _read_call_header("".join(self._call_id_parts), self._declared)
        self._arguments_parts = []
        self._arguments_started = False
        self._held_whitespace = ""
        self._call_position = None
        if self._header.name is not None:
            self._send_call_start(self._header.name)

    def _end_call(self) -> None:
        """Close the current call. A call held back for its name is sent or skipped now."""
        arguments = "".join(self._arguments_parts)
        header = self._header
        if self._call_position is None:
            name = _infer_name(arguments, self._declared) if header.infer_from_arguments else None
            if name is None:
                self._skipped_calls.append(header.model_id)
                return
            self._send_call_start(name)
            if arguments:
                self._push_arguments(self._call_position, arguments)
        if not _is_json_object(arguments):
            self._invalid_arguments_calls.append(self._call_position)
        self._call_position = None

    def _send_call_start(self, name: str) -> None:
        position = self._tool_call_count
        self._tool_call_count += 1
        self._call_position = position
        if self._declared and name not in self._declared:
            self._unknown_function_calls.append(position)
        call_id = _call_id(self._header, name, position, self.index_offset)
        delta = {"index": position, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        self._deltas.append({"tool_calls": [delta]})

    # Delta events.

    def _emit_content(self, text: str) -> None:
        if not text:
            return
        if not self._content_started:
            self._held_content += text
            if not self._held_content.strip():
                return
            text, self._held_content = self._held_content, ""
            self._content_started = True
        if self._deltas and "content" in self._deltas[-1]:
            self._deltas[-1]["content"] += text
        else:
            self._deltas.append({"content": text})

    def _push_arguments(self, position: int, fragment: str) -> None:
        last = self._deltas[-1]["tool_calls"][0] if self._deltas and "tool_calls" in self._deltas[-1] else None
        if last is not None and last["index"] == position and "id" not in last:
            last["function"]["arguments"] += fragment
        else:
            self._deltas.append({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]})

    def _take_deltas(self) -> list[dict]:
        deltas, self._deltas = self._deltas, []
        return deltas


def _partial_marker_start(text: str) -> int:
    """Return where a trailing partial marker begins in ``text``, or ``len(text)`` when none does.

    Every marker has a single ``<``, at its start, so only the text from the last ``<`` on
    can grow into one.
    """
    start = text.rfind("<")
    if start < 0:
        return len(text)
    tail = text[start:]
    if any(marker.startswith(tail) for marker in _MARKERS):
        return start
    return len(text)
