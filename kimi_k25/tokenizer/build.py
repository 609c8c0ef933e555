"""Generate small tokenizer files in the official Kimi K2.5 format.

The real vocabulary (163,584 BPE ranks) ships only with the checkpoint. For tests and for the
small bundled model, this module writes a stand-in with the same shape:

- ranks 0..255 are the single bytes;
- the next ranks are BPE merges learned from ``data/corpus.txt`` with the Kimi split pattern;
- "filler" ranks pad the vocabulary to exactly 163,584 entries, so the special tokens get their
  official ids 163584..163839 and embedding tables have the official row count.

A filler token is a lowercase word followed by digits (`` tok12345``). Pre-tokenization never
puts a letter and a digit in the same piece, and BPE tokens never cross pieces, so encoding
never produces a filler and fillers do not change how any text encodes. A randomly initialized
model that samples filler ids still decodes to readable text.

The output is byte-identical between runs: training breaks ties deterministically, and both
files are written in a fixed order.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

from kimi_k25.tokenizer.bpe_train import train_bpe
from kimi_k25.tokenizer.tokenizer import CONFIG_FILE, NUM_SPECIAL_SLOTS, TIKTOKEN_FILE

logger = logging.getLogger(__name__)

NUM_BPE_RANKS = 163_584
"""BPE ranks in the official ``tiktoken.model``; special ids start here."""

DEFAULT_NUM_MERGES = 2_000
CORPUS_PATH = Path(__file__).parent / "data" / "corpus.txt"

# Context length of K2.5 (max_position_embeddings in the checkpoint's config.json).
MODEL_MAX_LENGTH = 262_144

# (id, name, HF "special" flag) of the named special slots, as in the official tokenizer_config.
# The tool-call markers are not flagged special, so skip_special_tokens keeps them in the text.
NAMED_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (163584, "[BOS]", True),
    (163585, "[EOS]", True),
    (163586, "<|im_end|>", True),
    (163587, "<|im_user|>", True),
    (163588, "<|im_assistant|>", True),
    (163590, "<|start_header_id|>", True),
    (163591, "<|end_header_id|>", True),
    (163593, "[EOT]", True),
    (163594, "<|im_system|>", True),
    (163595, "<|tool_calls_section_begin|>", False),
    (163596, "<|tool_calls_section_end|>", False),
    (163597, "<|tool_call_begin|>", False),
    (163598, "<|tool_call_argument_begin|>", False),
    (163599, "<|tool_call_end|>", False),
    (163601, "<|im_middle|>", True),
    (163602, "<|media_begin|>", True),
    (163603, "<|media_content|>", True),
    (163604, "<|media_end|>", True),
    (163605, "<|media_pad|>", True),
    (163606, "<think>", True),
    (163607, "</think>", True),
    (163838, "[UNK]", True),
    (163839, "[PAD]", True),
)


def filler_token(rank: int) -> bytes:
    """Bytes of the filler token at ``rank``: a space, a word, then the rank's digits."""
    return f" tok{rank}".encode("ascii")


def build_mergeable_ranks(num_merges: int = DEFAULT_NUM_MERGES, corpus: str | None = None) -> dict[bytes, int]:
    """Return 163,584 ranks: 256 bytes, ``num_merges`` merges learned from the corpus, then fillers."""
    if corpus is None:
        corpus = CORPUS_PATH.read_text(encoding="utf-8")

    ranks = train_bpe(corpus, num_merges)
    if len(ranks) > NUM_BPE_RANKS:
        raise ValueError(f"{num_merges} merges give {len(ranks)} ranks, more than the {NUM_BPE_RANKS} slots")

    for rank in range(len(ranks), NUM_BPE_RANKS):
        token = filler_token(rank)
        # Unreachable: a learned token lies inside one pre-tokenization piece, a filler does not.
        assert token not in ranks, f"filler {token!r} collides with a learned token"
        ranks[token] = rank
    return ranks


def tokenizer_config() -> dict[str, Any]:
    """Return the ``tokenizer_config.json`` content in the Hugging Face layout the checkpoint uses."""
    added_tokens_decoder = {
        str(token_id): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for token_id, name, special in NAMED_SPECIAL_TOKENS
    }
    return {
        "added_tokens_decoder": added_tokens_decoder,
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "TikTokenTokenizer",
    }


def write_tokenizer_files(out_dir: str | Path, num_merges: int = DEFAULT_NUM_MERGES) -> Path:
    """Write ``tiktoken.model`` and ``tokenizer_config.json`` into ``out_dir`` and return ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    ranks = build_mergeable_ranks(num_merges)
    assert len(ranks) + NUM_SPECIAL_SLOTS == max(token_id for token_id, _, _ in NAMED_SPECIAL_TOKENS) + 1

    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in ranks.items()]
    (out_dir / TIKTOKEN_FILE).write_bytes("".join(lines).encode("ascii"))

    config_text = json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n"
    (out_dir / CONFIG_FILE).write_bytes(config_text.encode("utf-8"))

    logger.info(
        "wrote %s and %s (%d BPE ranks, %d learned merges) to %s in %.2f s",
        TIKTOKEN_FILE,
        CONFIG_FILE,
        len(ranks),
        num_merges,
        out_dir,
        time.perf_counter() - start,
    )
    return out_dir
