"""Byte-level BPE training, fast enough to run inside the test suite.

The result is the same vocabulary that ``tiktoken._educational.bpe_train`` learns from the same
text and pattern: each step merges the most frequent adjacent token pair, and among equally
frequent pairs the one that occurs first in the text. That reference recounts every pair of the
whole text after each merge. This version counts each distinct pre-tokenized word once, weighted
by its frequency, and after a merge updates only the words that contained the merged pair. For
2,000 merges of the bundled 33 KB corpus, the reference took 15 s and this version 0.25 s
(tiktoken 0.14, Python 3.11, a 2-core x86 VM).
"""

from __future__ import annotations

import collections
import heapq

import regex

from kimi_k25.tokenizer.split_pattern import SPLIT_PATTERN_LOOKAHEAD

Pair = tuple[bytes, bytes]


def _pair_counts(word: list[bytes]) -> collections.Counter[Pair]:
    return collections.Counter(zip(word[:-1], word[1:]))


def _merge_pair(word: list[bytes], pair: Pair) -> list[bytes]:
    """Replace non-overlapping occurrences of ``pair``, scanning left to right."""
    merged: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


class _PairStatistics:
    """Pair frequencies over the distinct words, with a heap ordered as the reference trainer picks.

    Heap entries are ``(-count, first_occurrence, pair)``, so the top entry is the most frequent
    pair and, among ties, the one that occurs first in the text. An entry is stale once its count
    or first occurrence differs from the current one; every change pushes a fresh entry.
    """

    def __init__(self, words: list[list[bytes]], frequencies: list[int]) -> None:
        self.words = words
        self.frequencies = frequencies
        self.counts: dict[Pair, int] = collections.defaultdict(int)
        self.words_with_pair: dict[Pair, set[int]] = collections.defaultdict(set)
        self.first_occurrence: dict[Pair, tuple[int, int]] = {}
        for word_index, word in enumerate(words):
            for position, pair in enumerate(zip(word[:-1], word[1:])):
                self.counts[pair] += frequencies[word_index]
                self.words_with_pair[pair].add(word_index)
                self.first_occurrence.setdefault(pair, (word_index, position))
        self.heap = [(-count, self.first_occurrence[pair], pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def pop_most_frequent(self) -> Pair | None:
        """Remove and return the next pair to merge, or None when no pair is left."""
        while self.heap:
            negative_count, first_occurrence, pair = heapq.heappop(self.heap)
            if self.counts.get(pair) == -negative_count and self.first_occurrence.get(pair) == first_occurrence:
                return pair
        return None

    def _locate_first_occurrence(self, pair: Pair) -> tuple[int, int]:
        # Words are numbered in order of first appearance in the text, so the earliest occurrence
        # of a pair is in its lowest-numbered word, at the first position where it appears there.
        word_index = min(self.words_with_pair[pair])
        word = self.words[word_index]
        position = next(i for i in range(len(word) - 1) if (word[i], word[i + 1]) == pair)
        return word_index, position

    def merge(self, pair: Pair) -> None:
        """Merge ``pair`` in every word that contains it and update the statistics of changed pairs."""
        changed: set[Pair] = set()
        for word_index in sorted(self.words_with_pair.pop(pair)):
            old_word = self.words[word_index]
            new_word = _merge_pair(old_word, pair)
            self.words[word_index] = new_word
            frequency = self.frequencies[word_index]

            old_pairs = _pair_counts(old_word)
            new_pairs = _pair_counts(new_word)
            for old_pair, occurrences in old_pairs.items():
                self.counts[old_pair] -= occurrences * frequency
                if old_pair not in new_pairs and old_pair != pair:
                    self.words_with_pair[old_pair].discard(word_index)
            for new_pair, occurrences in new_pairs.items():
                self.counts[new_pair] += occurrences * frequency
                self.words_with_pair[new_pair].add(word_index)
            changed.update(old_pairs, new_pairs)

        # Only pairs in changed words can have a new count or a new first occurrence.
        for changed_pair in changed:
            count = self.counts[changed_pair]
            if count > 0:
                first_occurrence = self._locate_first_occurrence(changed_pair)
                self.first_occurrence[changed_pair] = first_occurrence
                heapq.heappush(self.heap, (-count, first_occurrence, changed_pair))
            else:
                del self.counts[changed_pair]
                self.words_with_pair.pop(changed_pair, None)
                self.first_occurrence.pop(changed_pair, None)


def train_bpe(text: str, num_merges: int, pattern: str = SPLIT_PATTERN_LOOKAHEAD) -> dict[bytes, int]:
    """Learn ``num_merges`` byte-pair merges from ``text``; return ranks for the 256 bytes plus the merges.

    ``pattern`` must be a Python ``regex`` pattern (the lookahead form of the Kimi split pattern,
    not the ``&&`` form). Raises ValueError if the text runs out of pairs first.

    When a merge produces bytes that are already a token (``ab`` + ``c`` after ``a`` + ``bc``),
    the words are merged but no rank is added, so ranks stay contiguous. The reference trainer
    assigns such a token a second rank and leaves a gap instead.
    """
    ranks: dict[bytes, int] = {bytes([byte]): byte for byte in range(256)}

    word_frequencies = collections.Counter(piece.encode("utf-8") for piece in regex.findall(pattern, text))
    words = [[bytes([byte]) for byte in word] for word in word_frequencies]
    statistics = _PairStatistics(words, list(word_frequencies.values()))

    merges_done = 0
    while merges_done < num_merges:
        pair = statistics.pop_most_frequent()
        if pair is None:
            raise ValueError(
                f"the training text has no pairs left after {merges_done} of {num_merges} merges; "
                f"use a longer text or fewer merges"
            )
        statistics.merge(pair)
        token = pair[0] + pair[1]
        if token not in ranks:
            ranks[token] = len(ranks)
            merges_done += 1
    return ranks
