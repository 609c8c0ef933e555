"""The memory-bandwidth floor of decoding: read bandwidth of this machine and bytes read per step.

Decoding one step reads every weight the step touches once (the KV cache is small beside the
weights at these lengths and is left out), so no engine can decode faster than
bandwidth / bytes per step. For a MoE model the bytes depend on the batch: B tokens touch, in
expectation, E·(1 − (1 − K/E)^B) distinct experts per layer when each picks K of E uniformly.
"""

from __future__ import annotations

import time

import torch

READ_BUFFER_BYTES = 1 << 30  # far larger than any CPU cache


def measure_read_bandwidth(repeats: int = 5) -> float:
    """Return the best of `repeats` full reads of a 1 GiB buffer, in GB/s (torch.sum over float32)."""
    buffer = torch.ones(READ_BUFFER_BYTES // 4, dtype=torch.float32)
    buffer.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return READ_BUFFER_BYTES / best / 1e9


def active_bytes_per_step(config: dict, batch: int, bytes_per_weight: float,
                          expert_bytes_per_weight: float | None = None) -> tuple[float, float]:
    """Return (bytes read by one decode step of `batch` tokens, expected distinct experts per MoE layer).

    Counts every non-expert weight, the lm_head, the B embedding rows used, and the expected
    distinct routed experts. `expert_bytes_per_weight` prices the routed experts differently,
    for example 0.5625 for INT4 with a bf16 scale per 32 weights.
    """
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    q_lora = config.get("q_lora_rank")
    qk_head = config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
    attention = (hidden * q_lora + q_lora * heads * qk_head if q_lora else hidden * heads * qk_head)
    attention += hidden * (config["kv_lora_rank"] + config["qk_rope_head_dim"])
    attention += config["kv_lora_rank"] * heads * (config["qk_nope_head_dim"] + config["v_head_dim"])
    attention += heads * config["v_head_dim"] * hidden
    layers = config["num_hidden_layers"]
    dense_layers = config["first_k_dense_replace"]
    moe_layers = layers - dense_layers
    experts, top_k = config["n_routed_experts"], config["num_experts_per_tok"]
    expert_size = 3 * hidden * config["moe_intermediate_size"]
    distinct = experts * (1 - (1 - top_k / experts) ** batch)

    weights = layers * attention + dense_layers * 3 * hidden * config["intermediate_size"]
    weights += moe_layers * (config["n_shared_experts"] * expert_size + experts * hidden)
    weights += config["vocab_size"] * hidden + batch * hidden  # lm_head and the embedding rows used
    expert_price = bytes_per_weight if expert_bytes_per_weight is None else expert_bytes_per_weight
    total = weights * bytes_per_weight + moe_layers * distinct * expert_size * expert_price
    return total, distinct
