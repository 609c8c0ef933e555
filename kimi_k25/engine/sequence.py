"""Per-request state inside the engine, and what the engine reports back after each step."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from kimi_k25.engine.sampling import SamplingParams, TokenLogprobs
from kimi_k25.engine.structured import GrammarState


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """One request: its tokens, its cache blocks and how far the model has processed it.

    `num_computed_tokens` tokens of `token_ids` have their latents in the cache. A running
    sequence always has exactly one token still to compute after prefill: the one sampled last.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    media_embeds: torch.Tensor | None = None
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    finish_reason: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    generator: torch.Generator | None = None
    num_preemptions: int = 0
    grammar_state: GrammarState | None = None
    # Prefix caching: hashes of the full blocks computed so far, and the salt that separates
    # requests with different media (None for text-only requests).
    block_hashes: list[bytes] = field(default_factory=list)
    cache_salt: bytes | None = None
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at admission
    first_token_time: float | None = None
    last_token_time: float | None = None

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_new_tokens(self) -> int:
        """Tokens to feed the model in the next step."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED


@dataclass
class RequestOutput:
    """The increment of one request after a step.

    `text` is new, fully decoded text. It never ends in half a character, and text that might
    still turn into a stop string is held back. `token_ids` and `logprobs` are the tokens
    sampled in this step.
    """

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0
