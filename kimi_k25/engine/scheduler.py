"""Continuous batching: which sequences run in the next step.

Every step decodes one token for each running sequence and admits waiting sequences in
arrival order while the batch has room (`max_num_seqs`), the step's token budget
(`max_num_batched_tokens`) covers their prompts and the cache has blocks for them. When a
running sequence needs a block and none is free, the most recently arrived running sequence is
preempted: its blocks are freed and it waits again, to be recomputed from its tokens.
"""

from __future__ import annotations

import logging
from collections import deque

from kimi_k25.engine.block_manager import BlockManager
from kimi_k25.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Sequence]:
        """Return the sequences of the next step, decodes first, in a stable order."""
        # decode: every running sequence needs room for its next token
        scheduled: list[Sequence] = []
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if seq not in self.running:  # preempted while making room for an earlier sequence
                continue
            while not self.block_manager.can_allocate(seq, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.allocate(seq, seq.num_tokens)
                scheduled.append(seq)
                budget -= seq.num_new_tokens

        # prefill: admit waiting sequences in arrival order while they fit
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_new_tokens > budget and scheduled:
                break
            if not self.block_manager.can_allocate(seq, seq.num_tokens):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, seq.num_tokens)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(seq)
            budget -= seq.num_new_tokens
        return scheduled

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        logger.info("Preempted request %s (%d tokens) to free cache blocks; it will be recomputed",
                    seq.request_id, seq.num_tokens)
