"""Tests for the Kimi tokenizer, its file generator and the streaming detokenizer.

Expected ids and names come from the official K2.5 special-token table. Encodings are checked
against Hugging Face ``tokenizers``, built by transformers' tiktoken converter from the same
files and split pattern.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import regex
import tiktoken
import tiktoken.load
from tiktoken._educational import bpe_train

from kimi_k25.tokenizer import (
    SPLIT_PATTERN,
    SPLIT_PATTERN_LOOKAHEAD,
    IncrementalDetokenizer,
    KimiTokenizer,
    write_tokenizer_files,
)
from kimi_k25.tokenizer.bpe_train import train_bpe
from kimi_k25.tokenizer.build import CORPUS_PATH, DEFAULT_NUM_MERGES
from kimi_k25.tokenizer.tokenizer import load_mergeable_ranks, split_long_text
from tokenizer_helpers import SAMPLE_TEXTS, long_varied_text, reference_encode

# The official special-token table: id -> (name, Hugging Face "special" flag).
OFFICIAL_SPECIAL_TOKENS: dict[int, tuple[str, bool]] = {
    163584: ("[BOS]", True),
    163585: ("[EOS]", True),
    163586: ("<|im_end|>", True),
    163587: ("<|im_user|>", True),
    163588: ("<|im_assistant|>", True),
    163590: ("<|start_header_id|>", True),
    163591: ("<|end_header_id|>", True),
    163593: ("[EOT]", True),
    163594: ("<|im_system|>", True),
    163595: ("<|tool_calls_section_begin|>", False),
    163596: ("<|tool_calls_section_end|>", False),
    163597: ("<|tool_call_begin|>", False),
    163598: ("<|tool_call_argument_begin|>", False),
    163599: ("<|tool_call_end|>", False),
    163601: ("<|im_middle|>", True),
    163602: ("<|media_begin|>", True),
    163603: ("<|media_content|>", True),
    163604: ("<|media_end|>", True),
    163605: ("<|media_pad|>", True),
    163606: ("<think>", True),
    163607: ("</think>", True),
    163838: ("[UNK]", True),
    163839: ("[PAD]", True),
}
NUM_BPE_RANKS = 163_584
VOCAB_SIZE = 163_840
FIRST_FILLER_ID = 256 + DEFAULT_NUM_MERGES

# The official split pattern, one alternative per line as published.
OFFICIAL_SPLIT_ALTERNATIVES = [
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
]
OFFICIAL_SPLIT_PATTERN = "|".join(OFFICIAL_SPLIT_ALTERNATIVES)
DOC_SENTENCE = "Hello World's 12345 中文字符 ÉCOLE naïve"
DOC_SENTENCE_PIECES = ["Hello", " World's", " ", "123", "45", " ", "中文字符", " ÉCOLE", " naïve"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenizer_files(tmp_path_factory.mktemp("kimi_tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir: Path):
    """HF ``tokenizers`` model over the same ranks and the official pattern, with no special tokens."""
    converter_module = pytest.importorskip("transformers.convert_slow_tokenizer")
    converter = converter_module.TikTokenConverter(
        vocab_file=str(tokenizer_dir / "tiktoken.model"), pattern=OFFICIAL_SPLIT_PATTERN
    )
    # The converter reads the file with tiktoken's loader, which otherwise caches it in the temp
    # directory by path and could return an earlier session's file from a reused path.
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
        return converter.converted()


@pytest.fixture(scope="session")
def hf_plain_encode(hf_tokenizer) -> Callable[[str], list[int]]:
    """Reference for ``encode(text, allow_special=False)``."""

    def encode(text: str) -> list[int]:
        return hf_tokenizer.encode(text, add_special_tokens=False).ids

    return encode


def official_special_ids() -> dict[str, int]:
    names = {name: token_id for token_id, (name, _) in OFFICIAL_SPECIAL_TOKENS.items()}
    reserved = {f"<|reserved_token_{i}|>": i for i in range(NUM_BPE_RANKS, VOCAB_SIZE) if i not in OFFICIAL_SPECIAL_TOKENS}
    return names | reserved


def tiktoken_pieces(text: str, expected_pieces: list[str]) -> list[bytes]:
    """Split ``text`` with tiktoken's own regex engine and the official pattern.

    Tiktoken maps a piece that is itself a rank straight to that token, so with the expected pieces
    added as ranks, each piece tiktoken finds comes back as one token only if it is expected.
    """
    ranks = {bytes([byte]): byte for byte in range(256)}
    for piece in expected_pieces:
        ranks.setdefault(piece.encode("utf-8"), len(ranks))
    encoding = tiktoken.Encoding("split_check", pat_str=OFFICIAL_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return [encoding.decode_single_token_bytes(token_id) for token_id in encoding.encode(text)]


# Generated files


def test_build_output_byte_identical(tokenizer_dir: Path, tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path)
    for name in ("tiktoken.model", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_tiktoken_model_layout(tokenizer_dir: Path) -> None:
    lines = (tokenizer_dir / "tiktoken.model").read_bytes().splitlines()
    assert len(lines) == NUM_BPE_RANKS

    for line_number, line in enumerate(lines[:256]):
        token_b64, rank = line.split()
        assert base64.b64decode(token_b64) == bytes([line_number])
        assert int(rank) == line_number
    assert [int(line.split()[1]) for line in lines] == list(range(NUM_BPE_RANKS))


def test_ranks_parse_like_tiktoken_loader(tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty cache directory makes tiktoken read the file itself instead of a cached copy.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    path = str(tokenizer_dir / "tiktoken.model")
    assert load_mergeable_ranks(path) == tiktoken.load.load_tiktoken_bpe(path)


def test_trainer_matches_tiktoken_reference() -> None:
    corpus = CORPUS_PATH.read_text(encoding="utf-8")
    chinese_start = corpus.index("山城小记")
    text = corpus[:3000] + corpus[chinese_start : chinese_start + 1500]

    expected = bpe_train(text, 256 + 200, SPLIT_PATTERN_LOOKAHEAD, visualise=None)
    assert sorted(expected.values()) == list(range(456)), "reference trainer produced a duplicate token"
    assert train_bpe(text, 200) == expected


def test_trainer_rejects_too_many_merges() -> None:
    with pytest.raises(ValueError, match="no pairs left"):
        train_bpe("abab", 10)


def test_config_names_official_special_tokens(tokenizer_dir: Path) -> None:
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))

    added = {int(token_id): (entry["content"], entry["special"]) for token_id, entry in config["added_tokens_decoder"].items()}
    assert added == OFFICIAL_SPECIAL_TOKENS
    assert config["bos_token"] == "[BOS]"
    assert config["eos_token"] == "[EOS]"
    assert config["pad_token"] == "[PAD]"
    assert config["unk_token"] == "[UNK]"
    assert config["model_max_length"] == 262_144
    assert config["tokenizer_class"] == "TikTokenTokenizer"


# Special tokens


def test_special_token_ids(tokenizer: KimiTokenizer) -> None:
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert tokenizer.bos_token_id == 163584
    assert tokenizer.eos_token_id == 163585
    assert tokenizer.pad_token_id == 163839
    assert tokenizer.im_end_id == 163586
    assert tokenizer.think_start_id == 163606
    assert tokenizer.think_end_id == 163607
    assert tokenizer.media_pad_id == 163605
    assert tokenizer.stop_token_ids == {163585, 163586}


@pytest.mark.parametrize("token_id", sorted(OFFICIAL_SPECIAL_TOKENS))
def test_named_special_token_round_trip(tokenizer: KimiTokenizer, token_id: int) -> None:
    name, special = OFFICIAL_SPECIAL_TOKENS[token_id]
    assert tokenizer.id_to_token(token_id) == name
    assert tokenizer.token_to_id(name) == token_id
    assert tokenizer.encode(name) == [token_id]
    assert tokenizer.decode([token_id]) == name
    assert tokenizer.token_bytes(token_id) == name.encode("utf-8")
    assert tokenizer.is_special(token_id) == special


def test_unnamed_slots_get_reserved_names(tokenizer: KimiTokenizer) -> None:
    unnamed = [i for i in range(NUM_BPE_RANKS, VOCAB_SIZE) if i not in OFFICIAL_SPECIAL_TOKENS]
    assert len(unnamed) == 256 - len(OFFICIAL_SPECIAL_TOKENS)
    assert {163589, 163592, 163600, 163608, 163837} <= set(unnamed)

    for token_id in unnamed:
        name = f"<|reserved_token_{token_id}|>"
        assert tokenizer.id_to_token(token_id) == name
        assert tokenizer.token_to_id(name) == token_id
        assert tokenizer.encode(f"x{name}y")[1:-1] == [token_id]
        assert tokenizer.is_special(token_id)


def test_bpe_tokens_are_not_special(tokenizer: KimiTokenizer) -> None:
    for token_id in (0, 255, 1000, NUM_BPE_RANKS - 1):
        assert not tokenizer.is_special(token_id)


def test_id_to_token_matches_hf(tokenizer: KimiTokenizer, hf_tokenizer) -> None:
    for token_id in range(0, NUM_BPE_RANKS, 97):
        token = tokenizer.id_to_token(token_id)
        assert token == hf_tokenizer.id_to_token(token_id), token_id
        assert tokenizer.token_to_id(token) == token_id


def test_token_to_id_unknown_name(tokenizer: KimiTokenizer) -> None:
    with pytest.raises(KeyError, match="no_such_token"):
        tokenizer.token_to_id("<|no_such_token|>")


def test_token_bytes_of_byte_ranks(tokenizer: KimiTokenizer) -> None:
    for byte in range(256):
        assert tokenizer.token_bytes(byte) == bytes([byte])


# Encoding and decoding


@pytest.mark.parametrize("name", sorted(SAMPLE_TEXTS))
def test_encode_decode_round_trip(tokenizer: KimiTokenizer, hf_plain_encode, name: str) -> None:
    text = SAMPLE_TEXTS[name]
    ids = tokenizer.encode(text)
    assert ids == hf_plain_encode(text)
    assert tokenizer.decode(ids) == text
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_encode_empty_text(tokenizer: KimiTokenizer) -> None:
    assert tokenizer.encode("") == []
    assert tokenizer.decode([]) == ""


def test_encode_long_text_matches_hf(tokenizer: KimiTokenizer, hf_plain_encode) -> None:
    text = long_varied_text(CORPUS_PATH)
    ids = tokenizer.encode(text)
    assert ids == hf_plain_encode(text)
    assert tokenizer.decode(ids) == text


def test_special_names_in_text_become_special_ids(tokenizer: KimiTokenizer, hf_plain_encode) -> None:
    text = (
        "<|im_user|>user<|im_middle|>Say <|im_end|> please<|im_end|><|im_assistant|>assistant<|im_middle|>"
        "<think>hmm</think><|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>[EOS]<|reserved_token_163700|>"
    )
    ids = tokenizer.encode(text)
    assert ids == reference_encode(hf_plain_encode, text, official_special_ids())
    assert ids.count(163586) == 2
    assert tokenizer.decode(ids) == text


def test_special_names_as_plain_text(tokenizer: KimiTokenizer, hf_plain_encode) -> None:
    text = "A user typed <|im_end|> and </think> and [BOS] and <|tool_call_begin|>."
    ids = tokenizer.encode(text, allow_special=False)
    assert ids == hf_plain_encode(text)
    assert max(ids) < NUM_BPE_RANKS
    assert tokenizer.decode(ids) == text


def test_decode_skip_special_tokens(tokenizer: KimiTokenizer) -> None:
    ids = tokenizer.encode("<|im_assistant|>assistant<|im_middle|><think>plan</think>ok<|tool_call_begin|>x<|im_end|>[EOS]")
    # Tool-call markers are not flagged special, so they stay.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistantplanok<|tool_call_begin|>x"


def test_decode_replaces_invalid_utf8(tokenizer: KimiTokenizer) -> None:
    truncated_han = list("中".encode("utf-8")[:2])
    assert tokenizer.decode(truncated_han + [ord("a")]) == "\ufffda"
    assert tokenizer.decode([0xFF]) == "\ufffd"


def test_decode_accepts_numpy_ints(tokenizer: KimiTokenizer) -> None:
    numpy = pytest.importorskip("numpy")
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(numpy.array(ids, dtype=numpy.int64)) == "hello world"


@pytest.mark.parametrize("bad_id", [-1, VOCAB_SIZE, 10**9])
def test_invalid_ids_raise(tokenizer: KimiTokenizer, bad_id: int) -> None:
    calls = {
        "decode": lambda: tokenizer.decode([1, bad_id]),
        "token_bytes": lambda: tokenizer.token_bytes(bad_id),
        "id_to_token": lambda: tokenizer.id_to_token(bad_id),
        "is_special": lambda: tokenizer.is_special(bad_id),
        "incremental": lambda: IncrementalDetokenizer(tokenizer).add([bad_id]),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as error:
            call()
        assert str(bad_id) in str(error.value), name
        assert str(VOCAB_SIZE) in str(error.value), name


def test_decode_rejects_float_ids(tokenizer: KimiTokenizer) -> None:
    with pytest.raises(TypeError):
        tokenizer.decode([1.0])


# Split pattern


def test_split_pattern_is_official_string() -> None:
    assert SPLIT_PATTERN == OFFICIAL_SPLIT_PATTERN


def test_split_of_doc_sentence() -> None:
    assert regex.findall(OFFICIAL_SPLIT_PATTERN, DOC_SENTENCE, flags=regex.V1) == DOC_SENTENCE_PIECES
    assert regex.findall(SPLIT_PATTERN_LOOKAHEAD, DOC_SENTENCE) == DOC_SENTENCE_PIECES
    assert tiktoken_pieces(DOC_SENTENCE, DOC_SENTENCE_PIECES) == [p.encode() for p in DOC_SENTENCE_PIECES]


def test_regex_v0_mis_splits_intersection() -> None:
    # The reason SPLIT_PATTERN_LOOKAHEAD exists: without V1, `&&` is not intersection.
    assert regex.findall(OFFICIAL_SPLIT_PATTERN, DOC_SENTENCE) != DOC_SENTENCE_PIECES


def test_split_engines_agree_on_long_text() -> None:
    text = long_varied_text(CORPUS_PATH)
    v1_pieces = regex.findall(OFFICIAL_SPLIT_PATTERN, text, flags=regex.V1)
    assert regex.findall(SPLIT_PATTERN_LOOKAHEAD, text) == v1_pieces
    assert tiktoken_pieces(text, v1_pieces) == [p.encode() for p in v1_pieces]


# Filler ranks


def test_filler_ids_never_produced(tokenizer: KimiTokenizer) -> None:
    text = long_varied_text(CORPUS_PATH)
    assert max(tokenizer.encode(text)) < FIRST_FILLER_ID
    assert max(tokenizer.encode(text, allow_special=False)) < FIRST_FILLER_ID


def test_fillers_do_not_change_encoding(tokenizer: KimiTokenizer, tokenizer_dir: Path) -> None:
    ranks = load_mergeable_ranks(tokenizer_dir / "tiktoken.model")
    learned_only = {token: rank for token, rank in ranks.items() if rank < FIRST_FILLER_ID}
    encoding = tiktoken.Encoding("learned_only", pat_str=OFFICIAL_SPLIT_PATTERN, mergeable_ranks=learned_only, special_tokens={})

    text = long_varied_text(CORPUS_PATH)
    assert tokenizer.encode(text, allow_special=False) == encoding.encode_ordinary(text)


def test_fillers_decode_to_readable_text(tokenizer: KimiTokenizer) -> None:
    filler_ids = [FIRST_FILLER_ID, FIRST_FILLER_ID + 1, 100_000, NUM_BPE_RANKS - 1]
    for token_id in filler_ids:
        text = tokenizer.decode([token_id])
        assert text.isascii(), (token_id, text)
        assert text.isprintable(), (token_id, text)
        assert regex.fullmatch(r" [a-z]+[0-9]+", text), text

        reencoded = tokenizer.encode(text)
        assert len(reencoded) > 1
        assert max(reencoded) < FIRST_FILLER_ID
        assert tokenizer.decode(reencoded) == text

    decoded = [tokenizer.decode([i]) for i in range(FIRST_FILLER_ID, NUM_BPE_RANKS, 1009)]
    assert len(set(decoded)) == len(decoded)


# Long-input chunking


def longest_run(piece: str) -> int:
    longest = current = 0
    previous_is_space = None
    for char in piece:
        current = current + 1 if char.isspace() == previous_is_space else 1
        previous_is_space = char.isspace()
        longest = max(longest, current)
    return longest


def test_split_long_text_cuts_runs_greedily() -> None:
    assert [len(p) for p in split_long_text("a" * 60_000)] == [25_000, 25_000, 10_000]
    assert [len(p) for p in split_long_text(" " * 10 + "a" * 30_000)] == [25_010, 5_000]
    assert [len(p) for p in split_long_text("ab ab" + " " * 25_001)] == [25_005, 1]
    assert split_long_text("short text") == ["short text"]
    assert split_long_text("") == []


def test_split_long_text_limits_chunk_size() -> None:
    text = "word " * 200_000 + "\u00a0" * 30_000 + "中" * 70_000
    pieces = split_long_text(text)
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 400_000
    assert max(longest_run(p) for p in pieces) <= 25_000
    assert [len(p) for p in pieces[:2]] == [400_000, 400_000]


def test_encode_cuts_long_run(tokenizer: KimiTokenizer, hf_plain_encode) -> None:
    # The cut at 25,000 characters falls between "t" and "h", which changes the tokens there.
    text = "a" + "th" * 30_000
    ids = tokenizer.encode(text)
    assert ids == tokenizer.encode(text[:25_000]) + tokenizer.encode(text[25_000:50_000]) + tokenizer.encode(text[50_000:])
    assert ids != hf_plain_encode(text)
    assert tokenizer.decode(ids) == text


# Tokenizer directory checks


def test_missing_file_raises(tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tokenizer_dir / "tiktoken.model", tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        KimiTokenizer.from_dir(tmp_path)


def test_config_ids_must_follow_ranks(tokenizer_dir: Path, tmp_path: Path) -> None:
    lines = (tokenizer_dir / "tiktoken.model").read_bytes().splitlines(keepends=True)
    (tmp_path / "tiktoken.model").write_bytes(b"".join(lines[:-1]))
    shutil.copy(tokenizer_dir / "tokenizer_config.json", tmp_path)

    # With one rank fewer, the slots are 163583..163838 and [PAD] at 163839 falls outside.
    with pytest.raises(ValueError) as error:
        KimiTokenizer.from_dir(tmp_path)
    assert "tokenizer_config.json" in str(error.value)
    assert "163839" in str(error.value)


def test_config_id_inside_bpe_ranks_raises(tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tokenizer_dir / "tiktoken.model", tmp_path)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"]["1000"] = {"content": "<|extra|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(ValueError, match=r"tokenizer_config\.json.*\b1000\b"):
        KimiTokenizer.from_dir(tmp_path)


def test_rank_gap_raises(tmp_path: Path) -> None:
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    lines.append(f"{base64.b64encode(b'ab').decode()} 257")
    (tmp_path / "tiktoken.model").write_text("\n".join(lines) + "\n")
    (tmp_path / "tokenizer_config.json").write_text("{}")

    with pytest.raises(ValueError, match="rank 256 is missing"):
        KimiTokenizer.from_dir(tmp_path)


def test_small_vocab_gets_reserved_slots(tmp_path: Path) -> None:
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    (tmp_path / "tiktoken.model").write_text("\n".join(lines) + "\n")
    config = {"added_tokens_decoder": {"256": {"content": "[BOS]", "special": True}}, "bos_token": "[BOS]"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    small = KimiTokenizer.from_dir(tmp_path)
    assert small.vocab_size == 512
    assert small.bos_token_id == 256
    assert small.id_to_token(511) == "<|reserved_token_511|>"
    assert small.decode(small.encode("héllo [BOS]")) == "héllo [BOS]"
    with pytest.raises(ValueError, match="eos_token"):
        small.eos_token_id


# Incremental detokenizer


def stream_one_token_at_a_time(tokenizer: KimiTokenizer, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    chunks = [detokenizer.add([token_id]) for token_id in ids]
    chunks.append(detokenizer.flush())
    return chunks


@pytest.mark.parametrize("name", ["emoji", "chinese", "mixed", "rare"])
def test_incremental_never_splits_characters(tokenizer: KimiTokenizer, name: str) -> None:
    text = SAMPLE_TEXTS[name]
    ids = tokenizer.encode(text)
    partial_tokens = [i for i in ids if not _is_valid_utf8(tokenizer.token_bytes(i))]
    assert partial_tokens, "the sample should contain tokens that end inside a character"

    chunks = stream_one_token_at_a_time(tokenizer, ids)
    assert "".join(chunks) == tokenizer.decode(ids) == text
    for chunk in chunks:
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")  # no lone surrogates
    assert "" in chunks[:-1], "some tokens should have been held back"


def _is_valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_incremental_special_tokens_visible(tokenizer: KimiTokenizer) -> None:
    text = "<think>思考🙂</think>答案<|tool_call_begin|>f<|im_end|>"
    ids = tokenizer.encode(text)
    chunks = stream_one_token_at_a_time(tokenizer, ids)
    assert "".join(chunks) == text
    assert "<think>" in chunks
    assert "</think>" in chunks
    assert "<|im_end|>" in chunks


def test_incremental_special_tokens_skipped(tokenizer: KimiTokenizer) -> None:
    ids = tokenizer.encode("<think>思考🙂</think>答案<|tool_call_begin|>f<|im_end|>")
    chunks = stream_one_token_at_a_time(tokenizer, ids, skip_special_tokens=True)
    assert "".join(chunks) == "思考🙂答案<|tool_call_begin|>f"
    assert "".join(chunks) == tokenizer.decode(ids, skip_special_tokens=True)


def test_incremental_skipped_token_inside_character(tokenizer: KimiTokenizer) -> None:
    han = list("中".encode("utf-8"))
    ids = [han[0], tokenizer.bos_token_id, han[1], han[2]]
    assert "".join(stream_one_token_at_a_time(tokenizer, ids, skip_special_tokens=True)) == "中"
    assert "".join(stream_one_token_at_a_time(tokenizer, ids)) == tokenizer.decode(ids)


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_incremental_matches_decode_on_random_ids(tokenizer: KimiTokenizer, skip_special_tokens: bool) -> None:
    rng = random.Random(1234)
    candidates = [*range(0x80, 0x100), *range(0x20, 0x80), *tokenizer.encode("中文🙂é"), 163586, 163597, 163600]
    for _ in range(300):
        ids = [rng.choice(candidates) for _ in range(rng.randint(0, 12))]
        detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        output = []
        position = 0
        while position < len(ids):
            step = rng.randint(1, 4)
            output.append(detokenizer.add(ids[position : position + step]))
            position += step
        output.append(detokenizer.flush())
        assert "".join(output) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens), ids


def test_incremental_flush_resets(tokenizer: KimiTokenizer) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer)
    han = list("中".encode("utf-8"))
    assert detokenizer.add(han[:2]) == ""
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.flush() == ""
    assert detokenizer.add(han) == "中"
