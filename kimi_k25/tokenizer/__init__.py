"""Kimi K2.5 tokenizer: tiktoken BPE with Kimi's split pattern and special tokens, plus streaming decode."""

from kimi_k25.tokenizer.build import write_tokenizer_files
from kimi_k25.tokenizer.incremental import IncrementalDetokenizer
from kimi_k25.tokenizer.split_pattern import SPLIT_PATTERN, SPLIT_PATTERN_LOOKAHEAD
from kimi_k25.tokenizer.tokenizer import KimiTokenizer, SpecialToken

__all__ = [
    "SPLIT_PATTERN",
    "SPLIT_PATTERN_LOOKAHEAD",
    "IncrementalDetokenizer",
    "KimiTokenizer",
    "SpecialToken",
    "write_tokenizer_files",
]
