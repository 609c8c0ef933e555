"""The `kimi-k25` command: `serve` a checkpoint over the OpenAI API, `info` about a model's size,
`quantize` a checkpoint's routed experts to INT4."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kimi_k25.model.config import ConfigError, KimiK25Config, list_presets


def _port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {port}")
    return port


def _add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    from kimi_k25.engine.llm_engine import EngineConfig

    defaults = EngineConfig()
    parser = subparsers.add_parser("serve", help="serve a checkpoint through an OpenAI-compatible HTTP API")
    parser.add_argument("--model", help="checkpoint directory (config.json, safetensors, tokenizer files); "
                                        "default: the small random model bundled with the package")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port_number, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--served-model-name", help="model name clients put in \"model\" (default: the directory "
                                                   "name, or kimi-k25-default for the bundled model)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weight and activation dtype (default: %(default)s)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="maximum tokens per request, prompt plus output (default: the model's "
                             "max_position_embeddings)")
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs,
                        help="maximum requests decoded together in one step (default: %(default)s)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=defaults.max_num_batched_tokens,
                        help="token budget of one engine step (default: %(default)s)")
    parser.add_argument("--kv-cache-gib", type=float, default=defaults.kv_cache_gib,
                        help="maximum memory for the latent KV cache in GiB; the cache is never larger than "
                             "--max-num-seqs full-length requests need (default: %(default)s)")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=None,
                        help="size the latent KV cache as this fraction (0-1] of the memory available at start, "
                             "instead of --kv-cache-gib")
    parser.add_argument("--block-size", type=int, default=defaults.block_size,
                        help="tokens per KV cache block (default: %(default)s)")
    parser.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        help="do not reuse the cached blocks of prompts that start alike")
    parser.add_argument("--max-waiting-requests", type=int, default=256,
                        help="requests allowed to wait for a slot; more get HTTP 429 (default: %(default)s)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds running requests may take to finish after SIGTERM (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--allowed-local-media-path", metavar="DIR",
                        help="let requests read images and videos from file:// URLs inside DIR (default: off)")
    parser.add_argument("--allowed-media-domains", metavar="HOST[,HOST...]",
                        help="let requests fetch images and videos over http(s) from these exact hosts "
                             "(default: off)")
    parser.add_argument("--max-media-items", type=int, default=None,
                        help="images and videos allowed in one request (default: 32)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="verbosity of the server log (default: %(default)s)")


def _add_info_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print the parameter counts of a checkpoint or a preset")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory (reads its config.json only)")
    parser.add_argument("--preset", choices=list_presets(), help="a config shipped with the package")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_quantize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="write a copy of a checkpoint with its routed experts in INT4, as the official "
                         "Kimi K2.5 checkpoint stores them (compressed-tensors pack-quantized, group size 32)")
    parser.add_argument("src_dir", metavar="SRC_DIR", help="checkpoint directory with unquantized routed experts")
    parser.add_argument("dst_dir", metavar="DST_DIR", help="output directory; must be new or empty")
    parser.add_argument("--max-shard-gib", type=float, default=2.0,
                        help="maximum size of one safetensors shard in GiB (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="do not show a progress bar")


def _run_quantize(args: argparse.Namespace) -> int:
    from kimi_k25.checkpoint.writer import quantize_checkpoint

    if args.max_shard_gib <= 0:
        raise ValueError(f"--max-shard-gib must be positive, got {args.max_shard_gib}")
    quantize_checkpoint(args.src_dir, args.dst_dir, max_shard_bytes=int(args.max_shard_gib * 1024**3),
                        progress=args.progress)
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from kimi_k25.model.params import count_parameters

    if (args.checkpoint is None) == (args.preset is None):
        print("kimi-k25 info: give either a checkpoint directory or --preset NAME", file=sys.stderr)
        return 2
    config = KimiK25Config.from_preset(args.preset) if args.preset else KimiK25Config.from_file(args.checkpoint)
    counts = count_parameters(config)
    counts["source"] = f"preset:{args.preset}" if args.preset else str(args.checkpoint)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    for key, value in counts.items():
        shown = f"{value:,}" if isinstance(value, int) else value
        print(f"{key:24s} {shown}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from kimi_k25.engine.llm_engine import EngineConfig
    from kimi_k25.server.serve import ServeOptions, serve

    if args.kv_cache_memory_fraction is not None and not 0 < args.kv_cache_memory_fraction <= 1:
        raise ValueError(f"--kv-cache-memory-fraction must lie in (0, 1], got {args.kv_cache_memory_fraction}")
    engine = EngineConfig(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
                          kv_cache_gib=args.kv_cache_gib, kv_cache_memory_fraction=args.kv_cache_memory_fraction,
                          enable_prefix_caching=args.enable_prefix_caching)
    serve(ServeOptions(model=args.model, host=args.host, port=args.port, served_model_name=args.served_model_name,
                       dtype=args.dtype, threads=args.threads, engine=engine, log_level=args.log_level,
                       allowed_local_media_path=args.allowed_local_media_path,
                       allowed_media_domains=args.allowed_media_domains, max_media_items=args.max_media_items,
                       max_waiting_requests=args.max_waiting_requests, shutdown_timeout=args.shutdown_timeout))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kimi-k25", description="Run and serve Kimi K2.5 checkpoints.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(subparsers)
    _add_info_parser(subparsers)
    _add_quantize_parser(subparsers)
    args = parser.parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "info":
            return _run_info(args)
        if args.command == "quantize":
            return _run_quantize(args)
        return _run_serve(args)
    except (ConfigError, OSError, ValueError) as error:
        print(f"kimi-k25 {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
