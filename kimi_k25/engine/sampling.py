"""Sampling parameters of a request and the sampler that turns logits into next tokens.

Per sequence, frequency and presence penalties first adjust the raw logits by the counts of
the tokens generated so far, as OpenAI and vLLM define them. Temperature 0 then picks the
argmax. Otherwise temperature, top-k and top-p shape the distribution, and the token is drawn
with the request's own random generator, so a fixed seed gives the same tokens whatever else
is in the batch.
Reported log-probabilities are those of the model before penalties and temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kimi_k25.engine.structured import GrammarSpec

# Below this temperature sampling is treated as greedy, which avoids dividing by ~0.
GREEDY_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 disables top-k
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives to report; 0 reports only the chosen token
    skip_special_tokens: bool = True
    keep_special_ids: frozenset[int] = frozenset()
    banned_token_ids: frozenset[int] = frozenset()  # never sampled, e.g. tool-call markers for tool_choice "none"
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must lie in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 or positive, got {self.top_k}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must lie in [-2, 2], got {value}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must lie in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@dataclass
class TokenLogprobs:
    """Log-probability of the chosen token and of the top alternatives at one position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    """Pick one next token per sequence from a batch of logits."""

    def __call__(self, logits_BV: torch.Tensor, params: list[SamplingParams], output_ids: list[list[int]],
                 generators: list[torch.Generator | None], allowed_masks: list[torch.Tensor | None] | None = None,
                 ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Sample one token per row; `allowed_masks[i]` (V,) bool, if given, restricts row i."""
        logits_BV = logits_BV.float()
        logprobs_BV = None
        if any(p.logprobs is not None for p in params):
            logprobs_BV = torch.log_softmax(logits_BV, dim=-1)

        tokens: list[int] = []
        for i, p in enumerate(params):
            row = apply_penalties(logits_BV[i], output_ids[i], p)
            row = apply_masks(row, p.banned_token_ids, allowed_masks[i] if allowed_masks else None)
            tokens.append(sample_token(row, p, generators[i]))

        reports: list[TokenLogprobs | None] = []
        for i, p in enumerate(params):
            if p.logprobs is None or logprobs_BV is None:
                reports.append(None)
                continue
            top = []
            if p.logprobs > 0:
                values, indices = logprobs_BV[i].topk(p.logprobs)
                top = list(zip(indices.tolist(), values.tolist()))
            reports.append(TokenLogprobs(tokens[i], logprobs_BV[i, tokens[i]].item(), top))
        return tokens, reports


def apply_penalties(logits_V: torch.Tensor, output_ids: list[int], params: SamplingParams) -> torch.Tensor:
    """Subtract frequency_penalty·count and presence_penalty·[count > 0] for generated tokens."""
    if not output_ids or (params.frequency_penalty == 0.0 and params.presence_penalty == 0.0):
        return logits_V
    ids = torch.tensor(output_ids, device=logits_V.device)
    counts = torch.bincount(ids, minlength=logits_V.shape[0]).to(logits_V.dtype)
    return logits_V - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits_V.dtype)


def apply_masks(logits_V: torch.Tensor, banned: frozenset[int], allowed: torch.Tensor | None) -> torch.Tensor:
    """Set the logits of banned tokens, and of tokens outside `allowed`, to -inf."""
    if not banned and allowed is None:
        return logits_V
    logits_V = logits_V.clone()
    if banned:
        logits_V[list(banned)] = float("-inf")
    if allowed is not None:
        logits_V[~allowed[: logits_V.shape[0]]] = float("-inf")
    return logits_V


def sample_token(logits_V: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.greedy:
        return int(logits_V.argmax())
    logits_V = logits_V / params.temperature
    if params.top_k > 0 and params.top_k < logits_V.shape[0]:
        kth = logits_V.topk(params.top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    probs = torch.softmax(logits_V, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p; the first token is always kept.
        outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
