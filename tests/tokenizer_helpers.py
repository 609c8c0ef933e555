"""Shared sample texts and an independent reference encoder for the tokenizer tests."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

# Texts that exercise each branch of the split pattern and multi-byte characters.
SAMPLE_TEXTS: dict[str, str] = {
    "english": "The quick brown fox doesn't jump; it's tired. THEY'LL see, won't they?",
    "chinese": "今天天气很好，我们去公园散步吧。学习编程需要耐心和练习。",
    "emoji": "Good morning 😀🎉 family 👩‍👩‍👧‍👦 flag 🇨🇳 heart ❤️ rocket🚀!",
    "code": 'def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b  # 1e-9\n\tprint(add(1, 2))\n',
    "whitespace": "a  b\t\tc \n\n d\r\n\r\n   e\u00a0f\u3000g   \n",
    "mixed": "Version v2.4.1 发布于 2025年6月18日, größer als 1,234.56 €; naïve ÉCOLE résumé Ωμέγα Привет!",
    "numbers": "3.14159265358979 299792458 -0.25% 0x1F 1e-9 12345678901234567890",
    "json": '{"name": "张伟", "roles": ["admin"], "score": 98.5, "active": true, "tags": null}',
    "rare": "\u0300\u0301 combining, zero\u200bwidth, \U0001d54f math, \ufeffbom, tab\x0bvt, ctrl\x01x",
}


def long_varied_text(corpus_path: Path) -> str:
    """Return the training corpus plus the samples and letter-digit mixes that resemble fillers."""
    letter_digit = " ".join(f"tok{n} tok{n}x {n}tok abc{n % 97}def x{n}" for n in range(0, 200_000, 977))
    return "\n".join([corpus_path.read_text(encoding="utf-8"), *SAMPLE_TEXTS.values(), letter_digit])


def reference_encode(plain_encode: Callable[[str], list[int]], text: str, special_ids: dict[str, int]) -> list[int]:
    """Encode like ``allow_special=True``: cut out special names, encode the rest with ``plain_encode``."""
    if not special_ids:
        return plain_encode(text)
    names = sorted(special_ids, key=len, reverse=True)
    special_regex = re.compile("|".join(re.escape(name) for name in names))

    ids: list[int] = []
    position = 0
    for match in special_regex.finditer(text):
        ids.extend(plain_encode(text[position : match.start()]))
        ids.append(special_ids[match.group()])
        position = match.end()
    ids.extend(plain_encode(text[position:]))
    return ids
