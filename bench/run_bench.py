"""Serving benchmark: kimi-k25 against transformers' `generate` on the same checkpoint, in one run.

The workload is fixed by the project's benchmark protocol. Prompts are 128 token ids drawn
uniformly from [2, 32000) with seed 0. Each gets 64 new tokens, greedy, with the end of sequence
ignored. Batch 1 is one request and batch 8 is eight concurrent requests. A figure is generated tokens divided by the
wall time from submission to the last token, prefill included. The model is the Kimi K2.5 text
architecture scaled down to 642M parameters (`bench-config.json`), random bf16 weights, seed 0.

Each engine runs in its own subprocess, so its peak resident memory is its own. The run also
measures the machine's memory read bandwidth and turns it into a decode floor: tokens per second
if a step cost nothing but reading the weights it touches once. Results go to
docs/benchmarks.md, with a plot of kimi-k25's throughput and latency against concurrency.

    make bench                    # or: .venv/bin/python bench/run_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from floor import active_bytes_per_step, measure_read_bandwidth  # noqa: E402

DEFAULT_CONFIG = REPO / "bench" / "bench-config.json"
OUT_DIR = REPO / "bench" / "out"
PAGE = REPO / "docs" / "benchmarks.md"
PROMPT_LEN, NEW_TOKENS, SEED = 128, 64, 0
# Bytes per routed-expert weight in the official INT4 format: a nibble plus a bf16 scale per 32.
INT4_BYTES_PER_WEIGHT = 0.5 + 2 / 32
CONCURRENCY = (1, 2, 4, 8, 16, 32)
BEGIN, END = "<!-- serving:begin -->", "<!-- serving:end -->"


def bench_prompts(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(SEED)
    return [torch.randint(2, 32000, (PROMPT_LEN,), generator=generator).tolist() for _ in range(count)]


def read_config(path: Path) -> dict:
    raw = json.loads(path.read_text())
    raw.pop("comment", None)
    return raw


# ----- checkpoint ------------------------------------------------------------------------------


def build_int4_checkpoint(bf16_checkpoint: Path) -> Path:
    """Quantize the bench checkpoint's routed experts to the official INT4 layout (kimi-k25 quantize)."""
    out = bf16_checkpoint.with_name(bf16_checkpoint.name + "-int4")
    if not (out / "config.json").is_file():
        from kimi_k25.checkpoint.writer import quantize_checkpoint

        quantize_checkpoint(bf16_checkpoint, out)
    return out


def build_checkpoint(config_path: Path, out: Path) -> Path:
    """Write the bench model once: transformers' random init (seed 0), official layout, tokenizer files."""
    if (out / "config.json").is_file():
        return out
    from reference import build_reference_text_model, write_text_checkpoint

    from kimi_k25.tokenizer.build import write_tokenizer_files

    raw = read_config(config_path)
    print(f"Building the bench checkpoint in {out} ...", flush=True)
    model = build_reference_text_model(raw, seed=SEED).to(torch.bfloat16)
    write_text_checkpoint(model, raw, out, layout="deepseek_v3", num_shards=2)
    write_tokenizer_files(out)
    return out


# ----- workers (run in subprocesses) -------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_kimi(checkpoint: Path, concurrency: list[int]) -> dict:
    from kimi_k25.checkpoint.loader import load_checkpoint
    from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine
    from kimi_k25.engine.sampling import SamplingParams
    from kimi_k25.tokenizer.tokenizer import KimiTokenizer

    model = load_checkpoint(checkpoint, dtype=torch.bfloat16, progress=False)
    engine = LLMEngine(model, KimiTokenizer.from_dir(checkpoint),
                       EngineConfig(max_num_seqs=max(concurrency), kv_cache_gib=1.0, enable_prefix_caching=False))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    engine.generate(bench_prompts(1), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up

    results = {}
    for count in concurrency:
        prompts = bench_prompts(count)
        start = time.perf_counter()
        first_token: dict[str, float] = {}
        finished: dict[str, float] = {}
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}", prompt, params)
        generated = 0
        while engine.has_unfinished_requests():
            for output in engine.step():
                now = time.perf_counter() - start
                first_token.setdefault(output.request_id, now)
                generated += len(output.token_ids)
                if output.finished:
                    finished[output.request_id] = now
        wall = time.perf_counter() - start
        results[count] = {"tokens_per_s": generated / wall, "wall_s": wall,
                          "ttft_s": sum(first_token.values()) / count,
                          "latency_s": sum(finished.values()) / count}
    return {"results": results, "peak_rss_mib": peak_rss_mib(),
            "ttft_under_load_s": ttft_under_load(engine, params, streams=16)}


def ttft_under_load(engine, params, streams: int) -> float:
    """Time to first token of a 128-token prompt that arrives while `streams` requests are decoding."""
    for i, prompt in enumerate(bench_prompts(streams)):
        engine.add_request(f"load{i}", prompt, params)
    while any(seq.num_computed_tokens < len(seq.prompt_ids) for seq in engine.sequences.values()):
        engine.step()
    engine.add_request("probe", bench_prompts(streams + 1)[-1], params)
    start = time.perf_counter()
    ttft = None
    while ttft is None:
        if any(output.request_id == "probe" for output in engine.step()):
            ttft = time.perf_counter() - start
    for request_id in list(engine.sequences):
        engine.abort_request(request_id)
    return ttft


def worker_transformers(checkpoint: Path, batches: list[int]) -> dict:
    from transformers import DeepseekV3ForCausalLM

    from reference import build_reference_text_model

    # The same construction as build_checkpoint, so the weights equal the served checkpoint's.
    raw = read_config(Path(os.environ["BENCH_CONFIG"]))
    model = build_reference_text_model(raw, seed=SEED).to(torch.bfloat16).eval()
    assert isinstance(model, DeepseekV3ForCausalLM)
    results = {}
    with torch.no_grad():
        model.generate(torch.tensor(bench_prompts(1)), max_new_tokens=2, do_sample=False)  # warm-up
        for batch in batches:
            ids = torch.tensor(bench_prompts(batch))
            start = time.perf_counter()
            output = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)
            wall = time.perf_counter() - start
            generated = (output.shape[1] - PROMPT_LEN) * batch
            results[batch] = {"tokens_per_s": generated / wall, "wall_s": wall}
    return {"results": results, "peak_rss_mib": peak_rss_mib()}


def worker_server(checkpoint: Path, batches: list[int]) -> dict:
    """Throughput through HTTP: a server subprocess and concurrent /v1/completions clients."""
    import concurrent.futures

    import httpx

    from server_helpers import ServerProcess

    server = ServerProcess(["--model", str(checkpoint), "--kv-cache-gib", "1", "--no-enable-prefix-caching"],
                           OUT_DIR / "server.log", startup_timeout=300)
    results = {}
    try:
        def complete(prompt: list[int]) -> int:
            body = {"model": checkpoint.name, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True}
            response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=600)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        complete(bench_prompts(1)[0])  # warm-up
        for batch in batches:
            prompts = bench_prompts(batch)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(batch) as pool:
                generated = sum(pool.map(complete, prompts))
            wall = time.perf_counter() - start
            results[batch] = {"tokens_per_s": generated / wall, "wall_s": wall}
    finally:
        server.stop()
    return {"results": results}


def run_worker(kind: str, checkpoint: Path, values: list[int], config_path: Path) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--checkpoint", str(checkpoint),
               "--values", ",".join(map(str, values))]
    env = dict(os.environ, BENCH_CONFIG=str(config_path))
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----- report ----------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(c) for c in results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(levels, [results[str(c)]["tokens_per_s"] for c in levels], marker="o")
    left.set(xscale="log", xlabel="concurrent requests", ylabel="generated tokens / s", title="Throughput")
    right.plot(levels, [results[str(c)]["latency_s"] for c in levels], marker="o", label="request latency")
    right.plot(levels, [results[str(c)]["ttft_s"] for c in levels], marker="s", label="time to first token")
    right.set(xscale="log", xlabel="concurrent requests", ylabel="seconds", title="Latency (128 + 64 tokens)")
    right.legend()
    for axis in (left, right):
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_page(report: dict) -> None:
    kimi, hf, server = report["kimi"], report["transformers"], report["server"]
    bandwidth = report["bandwidth_gb_s"]
    lines = [
        f"Run on {report['machine']}, {report['threads']} threads, {report['date']}. Memory read bandwidth "
        f"measured here: {bandwidth:.1f} GB/s.",
        "",
        "| figure | batch 1 | batch 8 |",
        "|---|---|---|",
    ]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | {values[0]} | {values[1]} |")

    k1, k8 = kimi["results"]["1"], kimi["results"]["8"]
    h1, h8 = hf["results"]["1"], hf["results"]["8"]
    s1, s8 = server["results"]["1"], server["results"]["8"]
    floor1, floor8 = report["floor"]["1"], report["floor"]["8"]
    row("kimi-k25 engine, tokens/s", [f"{k1['tokens_per_s']:.1f}", f"{k8['tokens_per_s']:.1f}"])
    row("transformers `generate`, tokens/s", [f"{h1['tokens_per_s']:.1f}", f"{h8['tokens_per_s']:.1f}"])
    row("ratio kimi-k25 / transformers", [f"{k1['tokens_per_s'] / h1['tokens_per_s']:.2f}×",
                                          f"{k8['tokens_per_s'] / h8['tokens_per_s']:.2f}×"])
    row("kimi-k25 through HTTP (`/v1/completions`), tokens/s", [f"{s1['tokens_per_s']:.1f}",
                                                               f"{s8['tokens_per_s']:.1f}"])
    row("bandwidth floor, tokens/s", [f"{floor1['tokens_per_s']:.0f}", f"{floor8['tokens_per_s']:.0f}"])
    row("kimi-k25 engine as a fraction of the floor", [f"{k1['tokens_per_s'] / floor1['tokens_per_s']:.0%}",
                                                       f"{k8['tokens_per_s'] / floor8['tokens_per_s']:.0%}"])
    row("transformers as a fraction of the floor", [f"{h1['tokens_per_s'] / floor1['tokens_per_s']:.0%}",
                                                    f"{h8['tokens_per_s'] / floor8['tokens_per_s']:.0%}"])
    row("kimi-k25 time to first token, s", [f"{k1['ttft_s']:.3f}", f"{k8['ttft_s']:.3f}"])
    row("kimi-k25 time to first token of a 128-token prompt while 16 streams decode, s",
        [f"{kimi['ttft_under_load_s']:.3f}", ""])
    row("peak resident memory, MiB (kimi-k25 / transformers)",
        [f"{kimi['peak_rss_mib']:.0f} / {hf['peak_rss_mib']:.0f}", "same processes"])
    q1, q8 = report["kimi_int4"]["results"]["1"], report["kimi_int4"]["results"]["8"]
    f41, f48 = report["floor_int4"]["1"], report["floor_int4"]["8"]
    row("kimi-k25 engine, INT4 experts, tokens/s", [f"{q1['tokens_per_s']:.1f}", f"{q8['tokens_per_s']:.1f}"])
    row("INT4 ratio to transformers (bf16)", [f"{q1['tokens_per_s'] / h1['tokens_per_s']:.2f}×",
                                             f"{q8['tokens_per_s'] / h8['tokens_per_s']:.2f}×"])
    row("INT4 ratio to kimi-k25 bf16", [f"{q1['tokens_per_s'] / k1['tokens_per_s']:.2f}×",
                                       f"{q8['tokens_per_s'] / k8['tokens_per_s']:.2f}×"])
    row("INT4 bandwidth floor, tokens/s", [f"{f41['tokens_per_s']:.0f}", f"{f48['tokens_per_s']:.0f}"])
    row("INT4 as a fraction of its floor", [f"{q1['tokens_per_s'] / f41['tokens_per_s']:.0%}",
                                           f"{q8['tokens_per_s'] / f48['tokens_per_s']:.0%}"])
    row("peak resident memory, MiB (kimi-k25 INT4)", [f"{report['kimi_int4']['peak_rss_mib']:.0f}", ""])
    lines += [
        "",
        f"The floor divides the measured bandwidth by the bytes one decode step must read: "
        f"{floor1['bytes_per_step'] / 1e6:.0f} MB of bf16 weights for one token, and "
        f"{floor8['bytes_per_step'] / 1e6:.0f} MB for a step of eight tokens, which touch about "
        f"{floor8['experts_per_layer']:.1f} of the {report['num_experts']} experts per MoE layer (the expected number of "
        "distinct experts among 8 × 8 uniform picks). The INT4 floor prices routed experts at "
        f"{INT4_BYTES_PER_WEIGHT} bytes per weight, the official format (the kernel layout in memory holds "
        "0.625). The floor ignores prefill, so it slightly flatters every engine.",
        "",
        "Concurrency sweep of the kimi-k25 engine (same workload, 1 to 32 concurrent requests):",
        "",
        "| concurrent requests | tokens/s | mean time to first token, s | mean request latency, s |",
        "|---|---|---|---|",
    ]
    for count in sorted(kimi["results"], key=int):
        r = kimi["results"][count]
        lines.append(f"| {count} | {r['tokens_per_s']:.1f} | {r['ttft_s']:.3f} | {r['latency_s']:.2f} |")
    lines += ["", "![kimi-k25 throughput and latency against concurrency](benchmarks-concurrency.png)"]
    block = f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}"

    page = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n"
    if BEGIN in page:
        before, rest = page.split(BEGIN, 1)
        page = before + block + rest.split(END, 1)[1]
    else:
        header, _, rest = page.partition("\n")
        page = (header + "\n\n## Serving: kimi-k25 against transformers\n\nCommand: `make bench` (or "
                "`.venv/bin/python bench/run_bench.py`); the workload and the floor are described in "
                "`bench/run_bench.py`.\n\n" + block + "\n" + rest)
    PAGE.write_text(page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bench model config.json")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help="concurrency levels of the kimi-k25 sweep; must include 1 and 8 (default: %(default)s)")
    parser.add_argument("--worker", choices=("kimi", "transformers", "server"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--values", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    if args.worker:
        values = [int(v) for v in args.values.split(",")]
        worker = {"kimi": worker_kimi, "transformers": worker_transformers, "server": worker_server}[args.worker]
        print(json.dumps(worker(args.checkpoint, values)))
        return 0

    if not args.config.is_file():
        print(f"bench config not found: {args.config}; pass --config", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(args.config, OUT_DIR / "bench-checkpoint")
    raw = read_config(args.config)

    int4_checkpoint = build_int4_checkpoint(checkpoint)
    steps = tqdm(total=5, desc="benchmark", unit="part")
    bandwidth = measure_read_bandwidth()
    steps.update(1)
    levels = sorted({int(c) for c in args.concurrency.split(",")} | {1, 8})
    kimi = run_worker("kimi", checkpoint, levels, args.config)
    steps.update(1)
    hf = run_worker("transformers", checkpoint, [1, 8], args.config)
    steps.update(1)
    kimi_int4 = run_worker("kimi", int4_checkpoint, [1, 8], args.config)
    steps.update(1)
    server = run_worker("server", checkpoint, [1, 8], args.config)
    steps.update(1)
    steps.close()

    floor, floor_int4 = {}, {}
    for batch in (1, 8):
        step_bytes, experts = active_bytes_per_step(raw, batch, bytes_per_weight=2.0)
        floor[str(batch)] = {"tokens_per_s": batch * bandwidth * 1e9 / step_bytes, "bytes_per_step": step_bytes,
                             "experts_per_layer": experts}
        step_bytes, _ = active_bytes_per_step(raw, batch, bytes_per_weight=2.0,
                                              expert_bytes_per_weight=INT4_BYTES_PER_WEIGHT)
        floor_int4[str(batch)] = {"tokens_per_s": batch * bandwidth * 1e9 / step_bytes, "bytes_per_step": step_bytes}
    report = {"kimi": kimi, "kimi_int4": kimi_int4, "transformers": hf, "server": server,
              "bandwidth_gb_s": bandwidth, "floor": floor, "floor_int4": floor_int4,
              "threads": torch.get_num_threads(), "num_experts": raw["n_routed_experts"],
              "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores)".strip(),
              "date": time.strftime("%Y-%m-%d")}
    (OUT_DIR / "report.json").write_text(json.dumps(report, indent=2))
    plot(kimi["results"], REPO / "docs" / "benchmarks-concurrency.png")
    write_page(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
