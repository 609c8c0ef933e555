"""Kimi K2.5 tokenizer: tiktoken BPE ranks plus 256 named special-token slots.

A tokenizer directory contains two files:

- ``tiktoken.model``: the BPE vocabulary, one ``base64(token bytes) rank`` per line, with ranks
  0..N-1 (N = 163,584 in the official checkpoint).
- ``tokenizer_config.json``: Hugging Face layout. ``added_tokens_decoder`` names some of the 256
  special slots that follow the ranks (ids N..N+255); an unnamed slot is called
  ``<|reserved_token_{id}|>``.

Token ids of BPE tokens are their ranks, so the vocabulary size is N + 256 (163,840).
"""

from __future__ import annotations

import binascii
import functools
import json
import logging
import operator
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from kimi_k25.tokenizer.split_pattern import SPLIT_PATTERN

logger = logging.getLogger(__name__)

TIKTOKEN_FILE = "tiktoken.model"
CONFIG_FILE = "tokenizer_config.json"

NUM_SPECIAL_SLOTS = 256
"""Special-token slots after the BPE ranks, named or reserved."""

# The official tokenizer feeds tiktoken at most MAX_CHUNK_CHARS characters at a time, and cuts
# any run of whitespace or non-whitespace characters (as ``str.isspace`` defines them) after
# MAX_RUN_CHARS characters, to bound tiktoken's work on pathological input. The cuts also change
# the ids of such input, so they are reproduced exactly. (Tiktoken 0.14 itself encoded a
# 200,000-character run in 0.04 s on a 2-core x86 VM, so speed alone would not need them.)
MAX_CHUNK_CHARS = 400_000
MAX_RUN_CHARS = 25_000
_LONG_RUN = re.compile(rf"\s{{{MAX_RUN_CHARS + 1},}}|\S{{{MAX_RUN_CHARS + 1},}}")

# Names of the special tokens that the rest of the package looks up.
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
MEDIA_PAD = "<|media_pad|>"


@dataclass(frozen=True)
class SpecialToken:
    """One of the 256 slots after the BPE ranks.

    ``special`` is the Hugging Face flag: ``decode(..., skip_special_tokens=True)`` drops the token
    only when it is set. The tool-call markers carry ``special: false`` in the official config so
    that they survive skipping. Every slot, flagged or not, is matched as one token inside text.
    """

    id: int
    content: str
    special: bool = True


def reserved_token_name(token_id: int) -> str:
    """Return the placeholder name of an unnamed special slot."""
    return f"<|reserved_token_{token_id}|>"


@functools.cache
def _byte_to_unicode() -> tuple[str, ...]:
    """Map each byte to one printable character, the byte-level BPE convention of GPT-2 and HF.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 and up,
    in byte order. ``id_to_token`` spells BPE tokens this way, as ``convert_ids_to_tokens`` does.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    return tuple(table[byte] for byte in range(256))


def split_long_text(text: str) -> list[str]:
    """Cut text into pieces of at most ``MAX_CHUNK_CHARS`` characters with no run above ``MAX_RUN_CHARS``.

    Runs are cut greedily: a piece ends just before the run's ``MAX_RUN_CHARS + 1``-th character.
    The cuts change how pathological text tokenizes, exactly as in the official tokenizer.
    """
    pieces: list[str] = []
    for chunk_start in range(0, len(text), MAX_CHUNK_CHARS):
        chunk = text[chunk_start : chunk_start + MAX_CHUNK_CHARS]

        piece_start = 0
        for run in _LONG_RUN.finditer(chunk):
            for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                pieces.append(chunk[piece_start:cut])
                piece_start = cut
        pieces.append(chunk[piece_start:])
    return pieces


def load_mergeable_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file: one ``base64 rank`` pair per line.

    This parses the same format as ``tiktoken.load.load_tiktoken_bpe``. That function (tiktoken
    0.14) also copies a local file into a cache in the temp directory, keyed by the path alone,
    and returns the cached copy after the file changes, so it would return stale ranks for a
    regenerated file.
    """
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                token_b64, rank = fields
                ranks[binascii.a2b_base64(token_b64)] = int(rank)
            except (ValueError, binascii.Error) as e:
                raise ValueError(
                    f"{path}:{line_number}: invalid line {line[:80]!r}, expected '<base64 token> <rank>'"
                ) from e
    return ranks


def _check_contiguous_ranks(ranks: dict[bytes, int], path: Path) -> None:
    """Raise unless the ranks are exactly 0..len(ranks)-1, which makes rank == token id."""
    if not ranks:
        raise ValueError(f"{path} contains no BPE ranks")
    ordered = sorted(ranks.values())
    if ordered != list(range(len(ordered))):
        first_wrong = next(expected for expected, rank in enumerate(ordered) if rank != expected)
        raise ValueError(
            f"{path}: ranks must be 0..{len(ranks) - 1} with no gap or duplicate, but rank "
            f"{first_wrong} is missing or duplicated; the file is not a tiktoken BPE vocabulary"
        )


def _token_content(value: Any) -> str | None:
    """Read a token from a config field, which is a string, an AddedToken dict or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"expected a token string or {{'content': ...}}, got {value!r}")


def _read_special_tokens(config: dict[str, Any], num_ranks: int, config_path: Path) -> list[SpecialToken]:
    """Name the 256 slots from ``added_tokens_decoder``, checking that each id is a slot id."""
    named: dict[int, SpecialToken] = {}
    for id_text, entry in (config.get("added_tokens_decoder") or {}).items():
        try:
            token_id = int(id_text)
        except ValueError as e:
            raise ValueError(f"{config_path}: added_tokens_decoder key {id_text!r} is not a token id") from e

        if isinstance(entry, str):
            content, special = entry, True
        elif isinstance(entry, dict) and isinstance(entry.get("content"), str):
            # A slot without the flag counts as special, like the reserved slots.
            content, special = entry["content"], bool(entry.get("special", True))
        else:
            raise ValueError(
                f"{config_path}: added token {token_id} must be a string or {{'content': ..., 'special': ...}}, "
                f"got {entry!r}"
            )

        slot = token_id - num_ranks
        if not 0 <= slot < NUM_SPECIAL_SLOTS:
            raise ValueError(
                f"{config_path}: added token id {token_id} ({content!r}) is not one of the "
                f"{NUM_SPECIAL_SLOTS} special slots {num_ranks}..{num_ranks + NUM_SPECIAL_SLOTS - 1} "
                f"that follow the {num_ranks} BPE ranks in {TIKTOKEN_FILE}. Use {TIKTOKEN_FILE} and "
                f"{CONFIG_FILE} from the same checkpoint."
            )
        named[token_id] = SpecialToken(token_id, content, special)

    return [
        named.get(token_id, SpecialToken(token_id, reserved_token_name(token_id)))
        for token_id in range(num_ranks, num_ranks + NUM_SPECIAL_SLOTS)
    ]


class KimiTokenizer:
    """Byte-level BPE (tiktoken) with Kimi's split pattern and special tokens.

    Encoding and decoding keep no per-call state, so threads can share one instance, as
    tiktoken's own ``encode_batch`` shares one ``Encoding`` across a thread pool.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: Sequence[SpecialToken],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        model_max_length: int | None = None,
        name: str = "kimi_k25",
    ) -> None:
        """Build from ranks 0..N-1 and the special tokens with ids N.. in order."""
        num_ranks = len(mergeable_ranks)
        for expected_id, token in enumerate(special_tokens, start=num_ranks):
            if token.id != expected_id:
                raise ValueError(
                    f"special token {token.content!r} has id {token.id}, expected {expected_id}: "
                    f"special tokens must follow the {num_ranks} BPE ranks without gaps"
                )

        self._special_by_id: dict[int, SpecialToken] = {token.id: token for token in special_tokens}
        self._special_id_by_name: dict[str, int] = {token.content: token.id for token in special_tokens}
        if len(self._special_id_by_name) != len(special_tokens):
            for token in special_tokens:
                if self._special_id_by_name[token.content] != token.id:
                    raise ValueError(
                        f"special token name {token.content!r} is used by ids {token.id} and "
                        f"{self._special_id_by_name[token.content]}; each name must be unique"
                    )

        self._encoding = tiktoken.Encoding(
            name,
            pat_str=SPLIT_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self._special_id_by_name,
        )
        self._num_ranks = num_ranks
        self._special_names = frozenset(self._special_id_by_name)
        # Longest names first, so a name that is a prefix of another never wins.
        names = sorted(self._special_id_by_name, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(re.escape(name) for name in names))
        self._skipped_ids = frozenset(token.id for token in special_tokens if token.special)

        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.model_max_length = model_max_length
        for field_name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(self, field_name)
            if value is not None and value not in self._special_id_by_name:
                raise ValueError(f"{field_name} {value!r} is not one of the special tokens")

    @classmethod
    def from_dir(cls, path: str | Path) -> KimiTokenizer:
        """Load ``tiktoken.model`` and ``tokenizer_config.json`` from a checkpoint or tokenizer directory."""
        path = Path(path)
        ranks_path = path / TIKTOKEN_FILE
        config_path = path / CONFIG_FILE
        for required in (ranks_path, config_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} not found: a Kimi tokenizer directory needs {TIKTOKEN_FILE} and {CONFIG_FILE}"
                )

        start = time.perf_counter()
        ranks = load_mergeable_ranks(ranks_path)
        _check_contiguous_ranks(ranks, ranks_path)
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        special_tokens = _read_special_tokens(config, len(ranks), config_path)

        tokenizer = cls(
            ranks,
            special_tokens,
            bos_token=_token_content(config.get("bos_token")),
            eos_token=_token_content(config.get("eos_token")),
            pad_token=_token_content(config.get("pad_token")),
            unk_token=_token_content(config.get("unk_token")),
            model_max_length=config.get("model_max_length"),
        )
        logger.info(
            "loaded Kimi tokenizer from %s: %d BPE ranks + %d special slots in %.2f s",
            path,
            len(ranks),
            NUM_SPECIAL_SLOTS,
            time.perf_counter() - start,
        )
        return tokenizer

    # Vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of token ids: BPE ranks plus special slots (max id + 1)."""
        return self._num_ranks + NUM_SPECIAL_SLOTS

    @property
    def num_bpe_ranks(self) -> int:
        """Number of BPE tokens; special ids start here."""
        return self._num_ranks

    @property
    def special_tokens(self) -> tuple[SpecialToken, ...]:
        """All 256 special slots in id order."""
        return tuple(self._special_by_id.values())

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken encoding (special tokens at their official ids)."""
        return self._encoding

    def is_special(self, token_id: int) -> bool:
        """Return True for a slot flagged ``special``, the ids that ``skip_special_tokens`` drops."""
        self._check_id(token_id)
        return token_id in self._skipped_ids

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one token; a special token's bytes are its UTF-8 name."""
        self._check_id(token_id)
        return self._encoding.decode_single_token_bytes(token_id)

    def id_to_token(self, token_id: int) -> str:
        """Name of a special token, or a BPE token in the byte-level spelling that HF tokenizers use."""
        special = self._special_by_id.get(token_id)
        if special is not None:
            return special.content
        byte_to_unicode = _byte_to_unicode()
        return "".join(byte_to_unicode[byte] for byte in self.token_bytes(token_id))

    def token_to_id(self, token: str) -> int:
        """Id of a special token name or of a byte-level BPE token string from ``id_to_token``."""
        token_id = self._special_id_by_name.get(token)
        if token_id is None:
            token_id = self._bpe_id_by_token_string.get(token)
        if token_id is None:
            raise KeyError(
                f"no token {token!r} in the vocabulary: expected a special token name such as "
                f"{IM_END!r} or a byte-level BPE token string as returned by id_to_token()"
            )
        return token_id

    @functools.cached_property
    def _bpe_id_by_token_string(self) -> dict[str, int]:
        # Built on first use because it costs about as much as loading the ranks.
        return {self.id_to_token(token_id): token_id for token_id in range(self._num_ranks)}

    # Ids the rest of the package needs

    @property
    def bos_token_id(self) -> int:
        """Id of ``bos_token`` (``[BOS]``). The chat template never emits it."""
        return self._configured_token_id("bos_token", self.bos_token)

    @property
    def eos_token_id(self) -> int:
        """Id of ``eos_token`` (``[EOS]``), the model config's EOS."""
        return self._configured_token_id("eos_token", self.eos_token)

    @property
    def pad_token_id(self) -> int:
        """Id of ``pad_token`` (``[PAD]``)."""
        return self._configured_token_id("pad_token", self.pad_token)

    @property
    def im_end_id(self) -> int:
        """Id of ``<|im_end|>``, which closes every chat message and ends the assistant turn."""
        return self.token_to_id(IM_END)

    @property
    def think_start_id(self) -> int:
        """Id of ``<think>``, which opens the reasoning block."""
        return self.token_to_id(THINK_START)

    @property
    def think_end_id(self) -> int:
        """Id of ``</think>``, which closes the reasoning block."""
        return self.token_to_id(THINK_END)

    @property
    def media_pad_id(self) -> int:
        """Id of ``<|media_pad|>``, the placeholder repeated once per image or video-chunk feature."""
        return self.token_to_id(MEDIA_PAD)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS and ``<|im_end|>``."""
        return frozenset({self.eos_token_id, self.im_end_id})

    def _configured_token_id(self, field_name: str, token: str | None) -> int:
        if token is None:
            raise ValueError(f"{CONFIG_FILE} sets no {field_name}; add it to look up its id")
        return self._special_id_by_name[token]

    # Encoding and decoding

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Encode text to token ids, adding no BOS.

        With ``allow_special`` (the official behaviour), a special-token name inside the text, such
        as ``<|im_end|>``, becomes that token's id. Without it the name is encoded as plain text,
        which is what untrusted user content needs.
        """
        if not allow_special:
            return [t for piece in split_long_text(text) for t in self._encoding.encode_ordinary(piece)]
        # Special-token names are cut out before the long-text rule applies, so that rule never
        # splits a name: a long run of markers such as an image's <|media_pad|> tokens stays whole.
        ids: list[int] = []
        position = 0
        for match in self._special_pattern.finditer(text):
            for piece in split_long_text(text[position:match.start()]):
                ids.extend(self._encoding.encode_ordinary(piece))
            ids.append(self._special_id_by_name[match.group()])
            position = match.end()
        for piece in split_long_text(text[position:]):
            ids.extend(self._encoding.encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """Concatenate the bytes of the tokens; special tokens contribute their names."""
        id_list = self._checked_ids(ids)
        if skip_special_tokens:
            id_list = [token_id for token_id in id_list if token_id not in self._skipped_ids]
        return self._encoding.decode_bytes(id_list)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Decode ids to text, replacing invalid UTF-8 with U+FFFD.

        ``skip_special_tokens`` drops the slots flagged ``special``; the tool-call markers, flagged
        ``special: false``, stay in the text.
        """
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        # operator.index accepts Python, NumPy and 0-d torch integers but rejects floats.
        id_list = [operator.index(token_id) for token_id in ids]
        if id_list and (min(id_list) < 0 or max(id_list) >= self.vocab_size):
            self._check_id(next(token_id for token_id in id_list if not 0 <= token_id < self.vocab_size))
        return id_list

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary: valid ids are 0..{self.vocab_size - 1} "
                f"(vocab_size {self.vocab_size})"
            )

    def __repr__(self) -> str:
        return f"KimiTokenizer(num_bpe_ranks={self._num_ranks}, vocab_size={self.vocab_size})"
