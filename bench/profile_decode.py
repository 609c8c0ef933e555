"""Where one decode step of the bench model spends its time, and how fast this machine's kernels read weights.

Prints the PyTorch profiler's operator table for 20 decode steps (batch 1 or 8, bf16 or INT4
experts). It also prints the read rate of single matrix-vector products on weights that are not
in cache, for bf16, fp16, fp32 and the INT4 kernel. Run `make bench` first: it builds the checkpoints.

    .venv/bin/python bench/profile_decode.py [--batch 1] [--int4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from kimi_k25.checkpoint.loader import load_checkpoint
from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine
from kimi_k25.engine.sampling import SamplingParams
from kimi_k25.tokenizer.tokenizer import KimiTokenizer

OUT = Path(__file__).resolve().parent / "out"


def matvec_read_rate(dtype: torch.dtype, out_features: int, in_features: int, count: int) -> float:
    """GB/s of weight bytes read by F.linear on `count` distinct matrices (together larger than any cache)."""
    weights = [torch.randn(out_features, in_features).to(dtype) for _ in range(count)]
    x = torch.randn(1, in_features).to(dtype)
    for weight in weights:
        F.linear(x, weight)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for weight in weights:
            F.linear(x, weight)
        best = min(best, time.perf_counter() - start)
    return count * weights[0].numel() * weights[0].element_size() / best / 1e9


def int4_read_rate(out_features: int, in_features: int, count: int) -> float:
    """GB/s of INT4 bytes (nibbles and scales) read by PyTorch's CPU INT4 kernel, one token."""
    group = 32
    packs = []
    for _ in range(count):
        nibbles = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32)
        packs.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1),
                      torch.randn(in_features // group, out_features, 2, dtype=torch.bfloat16)))
    x = torch.randn(1, in_features, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for packed, scales in packs:
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales)
        best = min(best, time.perf_counter() - start)
    stored = out_features * in_features // 2 + (in_features // group) * out_features * 4
    return count * stored / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="concurrent decoding requests (default: %(default)s)")
    parser.add_argument("--int4", action="store_true", help="use the INT4-expert checkpoint")
    args = parser.parse_args()
    checkpoint = OUT / ("bench-checkpoint-int4" if args.int4 else "bench-checkpoint")
    if not (checkpoint / "config.json").is_file():
        print(f"{checkpoint} not found; run `make bench` first", file=sys.stderr)
        return 1

    print("Matrix-vector read rates, [768, 1024] and [32768, 1024] weights, cold:")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        print(f"  {str(dtype):16s} {matvec_read_rate(dtype, 768, 1024, 200):5.1f} GB/s   "
              f"{matvec_read_rate(dtype, 32768, 1024, 3):5.1f} GB/s")
    print(f"  INT4 kernel      {int4_read_rate(768, 1024, 200):5.1f} GB/s (of stored bytes)")

    model = load_checkpoint(checkpoint, dtype=torch.bfloat16, progress=False)
    engine = LLMEngine(model, KimiTokenizer.from_dir(checkpoint),
                       EngineConfig(max_num_seqs=32, kv_cache_gib=1.0, enable_prefix_caching=False))
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"r{i}", list(range(2 + i, 130 + i)), params)
    for _ in range(5):  # prefill and warm-up
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(20):
            engine.step()
        step_ms = (time.perf_counter() - start) / 20 * 1000
    print(f"\nDecode step, batch {args.batch}, {'INT4' if args.int4 else 'bf16'} experts: {step_ms:.1f} ms "
          f"({args.batch * 1000 / step_ms:.1f} tokens/s; the profiler adds some overhead)")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
