"""Continuous batching with chunked prefill: which tokens of which sequences run in the next step.

Each step has a budget of `max_num_batched_tokens`. Running sequences come first, in arrival
order: a decoding sequence takes one token, a sequence still in its prompt takes the next chunk
that fits. Waiting sequences are then admitted in arrival order while the batch has room
(`max_num_seqs`), budget is left and the cache has blocks; a long prompt is split across steps,
so it never stalls the decodes of others. Admission first attaches cached prefix blocks. When a
running sequence needs a block and none is free, the most recently arrived running sequence is
preempted: its blocks are released and it waits again, to be recomputed from its tokens.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from kimi_k25.engine.block_manager import BlockManager
from kimi_k25.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # tokens of the sequence computed in this step

    @property
    def completes_sequence(self) -> bool:
        """Whether this step computes the sequence's last uncomputed token, so a new token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
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

    def schedule(self) -> list[ScheduledSequence]:
        """Return the work of the next step, running sequences first."""
        scheduled: list[ScheduledSequence] = []
        budget = self.max_num_batched_tokens

        # running: one token per decode, the next chunk per unfinished prompt
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:  # preempted to make room for an earlier sequence
                continue
            num_tokens = min(seq.num_new_tokens, budget)
            if not self._make_room(seq, seq.num_computed_tokens + num_tokens):
                continue
            self.block_manager.allocate(seq, seq.num_computed_tokens + num_tokens)
            scheduled.append(ScheduledSequence(seq, num_tokens))
            budget -= num_tokens

        # waiting: admit in arrival order while there is room
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            fresh = not seq.block_table
            if fresh:
                self.block_manager.match_prefix(seq)
            num_tokens = min(seq.num_new_tokens, budget)
            if not self.block_manager.can_allocate(seq, seq.num_computed_tokens + num_tokens):
                if fresh:  # give the matched prefix blocks back; they stay cached
                    self.block_manager.free(seq)
                    seq.num_computed_tokens = 0
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, seq.num_computed_tokens + num_tokens)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, num_tokens))
            budget -= num_tokens
        return scheduled

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Preempt the latest running sequences until `seq` can hold `num_tokens`; False if `seq` itself went."""
        while not self.block_manager.can_allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

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
