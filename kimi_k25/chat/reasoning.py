"""Split a K2.5 completion into reasoning and content, for whole outputs and for streams.

In thinking mode the prompt ends in ``<think>``, so a completion reads
``REASONING </think> CONTENT [TOOL_SECTION]``. The model may repeat the ``<think>`` at the start,
and sometimes opens the tool-call section without closing its reasoning first. The rules:

- A leading ``<think>`` is dropped.
- Reasoning ends at the first ``</think>`` (dropped) or at the first
  ``<|tool_calls_section_begin|>`` (kept as the start of the content, for the tool-call parser),
  whichever comes first.
- With neither marker, the whole completion is reasoning and content is None.
- In instant mode (thinking off) the whole completion is content.

Both forms return None for an empty field. The streaming parser emits the same text as
``split_reasoning`` for any chunking of the output.
"""

from __future__ import annotations

from kimi_k25.chat import tokens

# Either marker ends the reasoning, whichever comes first in the text.
_REASONING_END_MARKERS = (tokens.THINK_END, tokens.TOOL_CALLS_SECTION_BEGIN)


def split_reasoning(text: str, thinking: bool) -> tuple[str | None, str | None]:
    """Return ``(reasoning, content)`` of a whole completion, each None when empty."""
    if not thinking:
        return None, text or None

    if text.startswith(tokens.THINK_BEGIN):
        text = text[len(tokens.THINK_BEGIN) :]

    end = _find_reasoning_end(text)
    if end is None:
        return text or None, None
    position, marker = end
    reasoning = text[:position]
    if marker == tokens.THINK_END:
        content = text[position + len(marker) :]
    else:
        content = text[position:]
    return reasoning or None, content or None


def _find_reasoning_end(text: str) -> tuple[int, str] | None:
    """Return the position and the marker that ends the reasoning, or None when none appears."""
    found = [(text.find(marker), marker) for marker in _REASONING_END_MARKERS]
    found = [(position, marker) for position, marker in found if position >= 0]
    return min(found) if found else None


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Return the length of the longest end of ``text`` that could grow into one of ``markers``."""
    longest_prefix = max(len(marker) for marker in markers) - 1
    for length in range(min(len(text), longest_prefix), 0, -1):
        tail = text[-length:]
        if any(marker.startswith(tail) for marker in markers):
            return length
    return 0


class ReasoningStreamParser:
    """Incremental form of ``split_reasoning`` for one streamed completion.

    ``feed`` returns the new ``(reasoning_delta, content_delta)`` text, either of which may be
    empty. Text that could be the start of a marker is held back until a later feed decides it.
    So no part of the leading ``<think>`` or of the ``</think>`` that ends the reasoning appears
    in either field, and the tool-call section marker reaches the content whole. Call ``finish``
    at the end of the stream to release what is still held back.
    """

    def __init__(self, thinking: bool) -> None:
        self.thinking = thinking
        # Until the first characters rule out a leading <think>, everything is held back.
        self._at_start = thinking
        self._in_content = not thinking
        self._pending = ""

    def feed(self, delta_text: str) -> tuple[str, str]:
        """Consume the next piece of completion text and return ``(reasoning_delta, content_delta)``."""
        if self._in_content:
            return "", delta_text
        self._pending += delta_text

        if self._at_start:
            if len(self._pending) < len(tokens.THINK_BEGIN) and tokens.THINK_BEGIN.startswith(self._pending):
                return "", ""  # may still become the leading <think>
            if self._pending.startswith(tokens.THINK_BEGIN):
                self._pending = self._pending[len(tokens.THINK_BEGIN) :]
            self._at_start = False

        end = _find_reasoning_end(self._pending)
        if end is not None:
            position, marker = end
            reasoning = self._pending[:position]
            content_start = position + len(marker) if marker == tokens.THINK_END else position
            content = self._pending[content_start:]
            self._pending = ""
            self._in_content = True
            return reasoning, content

        release_length = len(self._pending) - _partial_marker_length(self._pending, _REASONING_END_MARKERS)
        reasoning = self._pending[:release_length]
        self._pending = self._pending[release_length:]
        return reasoning, ""

    def finish(self) -> tuple[str, str]:
        """Release held-back text at the end of the stream. A partial marker counts as plain text."""
        held_text = self._pending
        self._pending = ""
        self._at_start = False
        if self._in_content:
            return "", held_text
        return held_text, ""
