"""Pre-tokenization split pattern of the Kimi K2/K2.5 tokenizer.

Before byte-pair merging, text is cut into pieces by one regular expression, and BPE tokens never
cross a piece boundary. Two spellings of the same pattern are kept here:

- ``SPLIT_PATTERN`` is the official string that the checkpoint's tokenizer hands to tiktoken. It
  uses character-class intersection (``[CLASS&&[^\\p{Han}]]``, "letters that are not Han"), which
  tiktoken's Rust regex engine supports.
- ``SPLIT_PATTERN_LOOKAHEAD`` replaces each intersection with ``(?:(?!\\p{Han})[CLASS])`` and is
  for Python's ``regex`` module. That module compiles the ``&&`` form without error in its default
  (V0) mode but splits it differently, for example dropping ``Hello`` from ``Hello World``.
  Only with the ``regex.V1`` flag does it read ``&&`` as intersection.
"""

from __future__ import annotations

# The case classes below exclude Han characters, so runs of Chinese characters are split
# by the first alternative alone.
_UPPER_OR_OTHER = r"\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}"
_LOWER_OR_OTHER = r"\p{Ll}\p{Lm}\p{Lo}\p{M}"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"


def _join_alternatives(upper: str, lower: str) -> str:
    """Build the eight-alternative pattern around the given "upper" and "lower" letter classes."""
    return "|".join(
        [
            r"[\p{Han}]+",
            rf"[^\r\n\p{{L}}\p{{N}}]?{upper}*{lower}+{_CONTRACTION}?",
            rf"[^\r\n\p{{L}}\p{{N}}]?{upper}+{lower}*{_CONTRACTION}?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
    )


SPLIT_PATTERN: str = _join_alternatives(
    upper=rf"[{_UPPER_OR_OTHER}&&[^\p{{Han}}]]",
    lower=rf"[{_LOWER_OR_OTHER}&&[^\p{{Han}}]]",
)

SPLIT_PATTERN_LOOKAHEAD: str = _join_alternatives(
    upper=rf"(?:(?!\p{{Han}})[{_UPPER_OR_OTHER}])",
    lower=rf"(?:(?!\p{{Han}})[{_LOWER_OR_OTHER}])",
)
