"""Constrained decoding: grammar masks over the vocabulary, computed by llguidance on the CPU.

A request may carry a grammar (a Lark grammar in llguidance's dialect, which can embed JSON
schemas). Each step, the grammar's matcher computes which tokens may come next, every
other logit is set to -inf, and the sampled token is fed back to the matcher. A grammar can wait for
a trigger token before it starts (for thinking mode: the end-of-reasoning token), so the model
reasons freely and only its reply is constrained. When the grammar is complete the only
allowed token is the end-of-turn token, which ends the request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import llguidance
import llguidance.tiktoken
import llguidance.torch
import torch

from kimi_k25.tokenizer.tokenizer import KimiTokenizer

logger = logging.getLogger(__name__)


class GrammarError(ValueError):
    """A grammar or JSON schema that llguidance cannot compile; the message gives the reason."""


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint for one request: a llguidance grammar and an optional start trigger.

    `banned_before_start` lists tokens masked until the trigger appears, e.g. the tool-call
    section marker, so that a constrained tool call cannot open inside the reasoning.
    """

    grammar: str
    start_after_token: int | None = None
    banned_before_start: frozenset[int] = frozenset()


class GrammarCompiler:
    """Build llguidance matchers for one tokenizer; the tokenizer conversion runs once, lazily."""

    def __init__(self, tokenizer: KimiTokenizer, end_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.end_token_id = end_token_id
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                # About a second for a 163,840-token vocabulary, so it is built on first use only.
                self._ll_tokenizer = llguidance.tiktoken.lltokenizer_from_encoding(
                    self.tokenizer.encoding, n_vocab=self.tokenizer.vocab_size, eos_token=self.end_token_id)
            return self._ll_tokenizer

    def check(self, spec: GrammarSpec) -> None:
        """Raise GrammarError if the grammar does not compile, before the request is queued."""
        message = llguidance.LLMatcher.validate_grammar(spec.grammar, self.ll_tokenizer)
        if message:
            raise GrammarError(message)

    def start(self, spec: GrammarSpec) -> GrammarState:
        matcher = llguidance.LLMatcher(self.ll_tokenizer, spec.grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return GrammarState(matcher, self.ll_tokenizer.vocab_size, spec, self.end_token_id)


class GrammarState:
    """The matcher of one sequence, and whether its trigger token has appeared yet."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, spec: GrammarSpec, end_token_id: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.spec = spec
        self.end_token_id = end_token_id
        self.active = spec.start_after_token is None

    def allowed_mask(self) -> torch.Tensor | None:
        """Return a boolean mask (V,) of the tokens allowed next, or None when all are allowed."""
        if not self.active:
            if not self.spec.banned_before_start:
                return None
            allowed = torch.ones(self.vocab_size, dtype=torch.bool)
            allowed[list(self.spec.banned_before_start)] = False
            return allowed
        bitmask = llguidance.torch.allocate_token_bitmask(1, self.vocab_size)
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, 0)
        # Each int32 word of the bitmask covers 32 token ids, lowest bit first.
        bits = (bitmask[0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[:self.vocab_size].bool()
        if not allowed.any():
            # Only after a matcher error: end the turn rather than sample from nothing.
            logger.warning("Grammar allows no token (%s); ending the sequence", self.matcher.get_error())
            allowed[self.end_token_id] = True
        return allowed

    def accept(self, token_id: int) -> None:
        """Advance the grammar with the sampled token (or arm it when the trigger token appears)."""
        if not self.active:
            self.active = token_id == self.spec.start_after_token
            return
        if not self.matcher.consume_token(token_id):
            logger.warning("Grammar rejected token %d: %s", token_id, self.matcher.get_error())
