"""Prometheus metrics of the engine, named as vLLM names them (with a `kimi_k25:` prefix).

Dashboards built for vLLM's `vllm:num_requests_running`, `vllm:time_to_first_token_seconds`
and so on carry over by replacing the prefix. Each engine has its own registry, so several
engines in one process (tests, benchmarks) do not collide.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "kimi_k25:"
# Latency buckets in seconds, from a fast CPU decode step to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                   80.0, 160.0, 640.0)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.num_requests_running = Gauge(PREFIX + "num_requests_running", "Requests in the running batch.",
                                          registry=r)
        self.num_requests_waiting = Gauge(PREFIX + "num_requests_waiting", "Requests waiting to be scheduled.",
                                          registry=r)
        self.kv_cache_usage = Gauge(PREFIX + "kv_cache_usage_perc", "Fraction of latent-cache blocks in use (0-1).",
                                    registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.", registry=r)
        self.prefix_cache_queries = Counter(PREFIX + "prefix_cache_queries",
                                            "Prompt tokens looked up in the prefix cache.", registry=r)
        self.prefix_cache_hits = Counter(PREFIX + "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                         registry=r)
        self.num_preemptions = Counter(PREFIX + "num_preemptions", "Sequences preempted for lack of cache blocks.",
                                       registry=r)
        self.request_success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                       ["finished_reason"], registry=r)
        self.time_to_first_token = Histogram(PREFIX + "time_to_first_token_seconds",
                                             "Time from arrival to the first generated token.",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(PREFIX + "time_per_output_token_seconds",
                                               "Time between consecutive generated tokens of a request.",
                                               buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_request_latency = Histogram(PREFIX + "e2e_request_latency_seconds",
                                             "Time from arrival to the last token.", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self._last_prefix = (0, 0)
        self._last_preemptions = 0

    def observe_step(self, num_running: int, num_waiting: int, cache_usage: float, prefix_queries: int,
                     prefix_hits: int, num_preemptions: int) -> None:
        self.num_requests_running.set(num_running)
        self.num_requests_waiting.set(num_waiting)
        self.kv_cache_usage.set(cache_usage)
        queries, hits = self._last_prefix
        self.prefix_cache_queries.inc(prefix_queries - queries)
        self.prefix_cache_hits.inc(prefix_hits - hits)
        self._last_prefix = (prefix_queries, prefix_hits)
        self.num_preemptions.inc(num_preemptions - self._last_preemptions)
        self._last_preemptions = num_preemptions

    def observe_token(self, arrival: float, previous_token_time: float | None, now: float) -> None:
        self.generation_tokens.inc()
        if previous_token_time is None:
            self.time_to_first_token.observe(now - arrival)
        else:
            self.time_per_output_token.observe(now - previous_token_time)

    def observe_finish(self, arrival: float, reason: str, now: float | None = None) -> None:
        self.e2e_request_latency.observe((now or time.monotonic()) - arrival)
        self.request_success.labels(finished_reason=reason).inc()
