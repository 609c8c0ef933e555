"""Streaming detokenization that never emits part of a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from kimi_k25.tokenizer.tokenizer import KimiTokenizer


class IncrementalDetokenizer:
    """Turn a growing stream of token ids into text deltas for one sequence.

    A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often two
    or more tokens). The bytes of such a character are held back until its last byte arrives,
    so every delta is complete text. Special tokens appear as their names (``<|im_end|>``,
    ``</think>``) so that reasoning and tool-call parsers can see them. With
    ``skip_special_tokens``, the slots flagged ``special`` are dropped, as in
    ``KimiTokenizer.decode``.

    The deltas joined, plus ``flush()``, equal ``tokenizer.decode(all_ids, skip_special_tokens)``,
    invalid UTF-8 included, because Python's incremental UTF-8 decoder replaces invalid bytes
    exactly as a one-shot decode does. Each call costs O(bytes of the new tokens), because at
    most three bytes of an unfinished character are carried between calls.
    """

    def __init__(self, tokenizer: KimiTokenizer, skip_special_tokens: bool = False,
                 keep_special_ids: Iterable[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Special tokens that stay visible even when skipping, e.g. the reasoning and tool-call
        # markers that the chat parsers read.
        self._keep_special_ids = frozenset(keep_special_ids)
        self._utf8_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_ids: Iterable[int]) -> str:
        """Append tokens and return the text they complete (possibly empty).

        Raises ValueError for an id outside the vocabulary, before consuming any of the ids.
        """
        if self._skip_special_tokens and self._keep_special_ids:
            kept = [t for t in token_ids if t in self._keep_special_ids or not self._tokenizer.is_special(t)]
            new_bytes = self._tokenizer.decode_bytes(kept)
        else:
            new_bytes = self._tokenizer.decode_bytes(token_ids, skip_special_tokens=self._skip_special_tokens)
        return self._utf8_decoder.decode(new_bytes)

    def flush(self) -> str:
        """Return the held-back bytes of an unfinished character as U+FFFD and reset the state.

        Returns an empty string when the stream ended on a character boundary.
        """
        return self._utf8_decoder.decode(b"", final=True)
