"""The inference engine: requests in, token and text increments out, one batched step at a time.

    add_request ─► Scheduler.schedule ─► ModelRunner.run ─► Sampler ─► stop checks, detokenise ─► RequestOutput
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import torch

from kimi_k25.engine.block_manager import BlockManager
from kimi_k25.engine.metrics import EngineMetrics
from kimi_k25.engine.model_runner import ModelRunner
from kimi_k25.engine.sampling import Sampler, SamplingParams, TokenLogprobs
from kimi_k25.engine.scheduler import Scheduler
from kimi_k25.engine.sequence import RequestOutput, Sequence
from kimi_k25.engine.structured import GrammarCompiler
from kimi_k25.model.cache import LatentCache
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.tokenizer.incremental import IncrementalDetokenizer
from kimi_k25.tokenizer.tokenizer import KimiTokenizer

logger = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    max_num_seqs: int = 64
    # Token budget of one step; prompts longer than what is left are split into chunks.
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_gib: float = 2.0
    # When set, the cache takes this fraction of the memory available at start instead.
    kv_cache_memory_fraction: float | None = None
    num_blocks: int | None = None  # overrides both sizes when set
    enable_prefix_caching: bool = True


def available_memory_bytes() -> int:
    """Memory the system can still give this process (MemAvailable on Linux, else physical pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for even one generated token."""

    def __init__(self, num_prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(f"this model's maximum context length is {max_model_len} tokens, but the prompt "
                         f"has {num_prompt_tokens} tokens; shorten the prompt to at most {max_model_len - 1} tokens")
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len


class _OutputState:
    """Detokeniser and stop-string bookkeeping of one request."""

    def __init__(self, detokenizer: IncrementalDetokenizer, stop: list[str]) -> None:
        self.detokenizer = detokenizer
        self.stop = [s for s in stop if s]
        self.hold_back = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.pending_logprobs: list[TokenLogprobs] = []


class LLMEngine:
    def __init__(self, model: KimiK25Model, tokenizer: KimiTokenizer, config: EngineConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        text_config = model.config.text
        self.max_model_len = self.config.max_model_len or text_config.max_position_embeddings
        dtype = next(model.parameters()).dtype
        if dtype == torch.float32 or dtype == torch.bfloat16 or dtype == torch.float16:
            cache_dtype = dtype
        else:
            cache_dtype = torch.bfloat16
        bytes_per_token = text_config.num_hidden_layers * text_config.kv_cache_dim * torch.finfo(cache_dtype).bits // 8
        num_blocks = self.config.num_blocks
        if num_blocks is None:
            cache_bytes = self.config.kv_cache_gib * 1024**3
            if self.config.kv_cache_memory_fraction is not None:
                cache_bytes = self.config.kv_cache_memory_fraction * available_memory_bytes()
            num_blocks = max(1, int(cache_bytes) // (bytes_per_token * self.config.block_size))
            # No more than max_num_seqs full-length requests can ever be in flight.
            needed = -(-self.config.max_num_seqs * self.max_model_len // self.config.block_size)
            num_blocks = min(num_blocks, needed)
        self.cache = LatentCache(text_config.num_hidden_layers, num_blocks, self.config.block_size,
                                 text_config.kv_cache_dim, cache_dtype, device=next(model.parameters()).device)
        self.capacity_tokens = num_blocks * self.config.block_size
        logger.info("Latent cache: %d blocks of %d tokens (%.2f GiB, %d bytes per token); up to %d tokens of "
                    "context in flight, %.1f full-length (%d-token) requests", num_blocks, self.config.block_size,
                    self.cache.kv.numel() * self.cache.kv.element_size() / 1024**3, bytes_per_token,
                    self.capacity_tokens, self.capacity_tokens / self.max_model_len, self.max_model_len)

        self.block_manager = BlockManager(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.metrics = EngineMetrics()
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        self.runner = ModelRunner(model, self.cache)
        self.sampler = Sampler()
        self.sequences: dict[str, Sequence] = {}
        self.outputs: dict[str, _OutputState] = {}
        self.eos_token_ids = set(tokenizer.stop_token_ids) | set(text_config.eos_token_id)
        # A finished grammar allows only the end-of-turn token, which then ends the request.
        self.grammar_compiler = GrammarCompiler(tokenizer, end_token_id=tokenizer.im_end_id)

    # ----- requests ------------------------------------------------------------------------------

    def max_tokens_for(self, num_prompt_tokens: int, requested: int | None) -> int:
        """Clamp a request's max_tokens to the room left in the context and in the cache."""
        limit = min(self.max_model_len, self.capacity_tokens)
        if num_prompt_tokens >= limit:
            raise PromptTooLongError(num_prompt_tokens, limit)
        room = limit - num_prompt_tokens
        return room if requested is None else min(requested, room)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    media_embeds: torch.Tensor | None = None, media_salt: bytes | None = None) -> None:
        if request_id in self.sequences:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt_ids:
            raise ValueError("the prompt is empty; send at least one token")
        vocab_size = self.model.config.text.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside the vocabulary of {vocab_size}")
        seq = Sequence(request_id, list(prompt_ids), params, self.max_tokens_for(len(prompt_ids), params.max_tokens),
                       media_embeds=media_embeds)
        if params.grammar is not None:
            seq.grammar_state = self.grammar_compiler.start(params.grammar)
        if media_embeds is not None:
            # Blocks of requests with media may only be shared with requests of the same media.
            seq.cache_salt = media_salt or hashlib.blake2b(media_embeds.float().numpy().tobytes(),
                                                           digest_size=16).digest()
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        detokenizer = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens,
                                             keep_special_ids=params.keep_special_ids)
        self.sequences[request_id] = seq
        self.outputs[request_id] = _OutputState(detokenizer, params.stop)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        """Drop a request and free its cache blocks; unknown or finished ids are ignored."""
        seq = self.sequences.pop(request_id, None)
        self.outputs.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.finish(seq, "abort")
            self.metrics.observe_finish(seq.arrival_time, "abort")
            self._update_gauges()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    # ----- one step ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        work = self.scheduler.schedule()
        if not work:
            return []
        sampled = [item.completes_sequence for item in work]
        logits = self.runner.run(work)
        for item in work:
            self.block_manager.commit_full_blocks(item.seq)

        seqs = [item.seq for item, sample in zip(work, sampled) if sample]
        logits = logits[[i for i, sample in enumerate(sampled) if sample]]
        masks = [s.grammar_state.allowed_mask() if s.grammar_state is not None else None for s in seqs]
        tokens, logprobs = self.sampler(logits, [s.params for s in seqs], [s.output_ids for s in seqs],
                                        [s.generator for s in seqs], masks)
        now = time.monotonic()
        outputs = []
        for seq, token, report in zip(seqs, tokens, logprobs):
            if seq.grammar_state is not None:
                seq.grammar_state.accept(token)
            self.metrics.observe_token(seq.arrival_time, seq.last_token_time, now)
            if seq.first_token_time is None:
                seq.first_token_time = now
            seq.last_token_time = now
            outputs.append(self._append_token(seq, token, report))
        self._update_gauges()
        return outputs

    def _update_gauges(self) -> None:
        self.metrics.observe_step(len(self.scheduler.running), len(self.scheduler.waiting), self.block_manager.usage,
                                  self.block_manager.prefix_queries, self.block_manager.prefix_hits,
                                  self.scheduler.num_preemptions)

    def _append_token(self, seq: Sequence, token: int, report: TokenLogprobs | None) -> RequestOutput:
        state = self.outputs[seq.request_id]
        seq.output_ids.append(token)
        if report is not None:
            state.pending_logprobs.append(report)

        is_stop_token = token in seq.params.stop_token_ids or (token in self.eos_token_ids and not seq.params.ignore_eos)
        if not is_stop_token:
            state.text += state.detokenizer.add([token])
        reason = None
        if is_stop_token:
            reason = "stop"
        elif self._truncate_at_stop_string(state):
            reason = "stop"
        elif len(seq.output_ids) >= seq.max_tokens:
            reason = "length"
        if reason is not None:
            if reason == "length" or is_stop_token:
                state.text += state.detokenizer.flush()
            self.scheduler.finish(seq, reason)
            self.metrics.observe_finish(seq.arrival_time, reason)

        end = len(state.text) if reason is not None else max(state.emitted, len(state.text) - state.hold_back)
        new_text = state.text[state.emitted:end]
        state.emitted = end
        output = RequestOutput(seq.request_id, [token], new_text, state.pending_logprobs, reason is not None, reason,
                               len(seq.prompt_ids), len(seq.output_ids), seq.num_cached_tokens)
        state.pending_logprobs = []
        if reason is not None:
            del self.sequences[seq.request_id]
            del self.outputs[seq.request_id]
        return output

    @staticmethod
    def _truncate_at_stop_string(state: _OutputState) -> bool:
        """Cut the text before the first stop string, if one has appeared."""
        if not state.stop:
            return False
        search_from = max(0, state.emitted - state.hold_back)
        found = [i for i in (state.text.find(s, search_from) for s in state.stop) if i >= 0]
        if not found:
            return False
        state.text = state.text[:min(found)]
        state.emitted = min(state.emitted, len(state.text))
        return True

    # ----- offline use ---------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Run prompts to completion together and return each one's generated token ids."""
        ids = [f"offline-{i}" for i in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts):
            self.add_request(request_id, prompt, params)
        results: dict[str, list[int]] = {request_id: [] for request_id in ids}
        while self.has_unfinished_requests():
            for output in self.step():
                results[output.request_id].extend(output.token_ids)
        return [results[request_id] for request_id in ids]
