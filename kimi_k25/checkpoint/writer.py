"""Write a `KimiK25Model` in the official Kimi K2.5 checkpoint layout, and quantize checkpoints to it.

Used to build the bundled default model and test checkpoints: per-expert tensors under the
official names, safetensors shards with a `model.safetensors.index.json`, and config.json.
With `int4_experts`, routed experts are written as the official checkpoint stores them:
compressed-tensors `pack-quantized` INT4 (`weight_packed`, `weight_scale`, `weight_shape`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from kimi_k25.checkpoint.int4 import dequantize, quantize_symmetric_int4
from kimi_k25.checkpoint.loader import (
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    has_int4_experts,
    list_checkpoint_tensors,
    plan_loading,
)
from kimi_k25.checkpoint.names import Target, TargetKind, official_expert_name, official_name, resolve
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.model.quant import Int4RoutedExperts

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_PROJECTIONS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


def int4_quantization_config() -> dict[str, Any]:
    """Return the `quantization_config` of the official Kimi K2.5 config.json (INT4 routed experts)."""
    config = KimiK25Config.from_preset("kimi-k2.5").quantization_config
    assert config is not None, "the kimi-k2.5 preset lost its quantization_config"
    return json.loads(json.dumps(config))


def official_tensors(model: KimiK25Model, dtype: torch.dtype | None = None,
                     int4_experts: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (official name, tensor) pairs: stacked experts split per expert, fused gate_up split in two.

    `dtype` casts floating-point tensors except the router's correction bias, which the official
    files keep in fp32. With `int4_experts`, every routed expert projection is yielded as its three
    INT4 tensors, quantized here or, for `Int4RoutedExperts`, exported as they are. Otherwise
    `Int4RoutedExperts` are dequantized.
    """
    for name, param in model.named_parameters():
        if name == "language_model.lm_head.weight" and model.config.text.tie_word_embeddings:
            continue
        tensor = param.detach()
        keep_fp32 = name.endswith("mlp.gate.e_score_correction_bias")
        if dtype is not None and tensor.is_floating_point() and not keep_fp32:
            tensor = tensor.to(dtype)
        if ".mlp.experts." in name:
            projections = _PROJECTIONS[name.rsplit(".", 1)[1]]
            for expert in range(tensor.shape[0]):
                for proj, part in zip(projections, tensor[expert].chunk(len(projections))):
                    if int4_experts:
                        yield from _int4_parts(_stem(official_expert_name(name, expert, proj)),
                                               *quantize_symmetric_int4(part))
                    else:
                        yield official_expert_name(name, expert, proj), part.contiguous()
        elif name.endswith("gate_up_proj.weight"):
            gate, up = tensor.chunk(2)
            head = name[: -len("gate_up_proj.weight")]
            yield official_name(head + "gate_proj.weight"), gate.contiguous()
            yield official_name(head + "up_proj.weight"), up.contiguous()
        else:
            yield official_name(name), tensor.contiguous()

    for name, module in model.named_modules():
        if isinstance(module, Int4RoutedExperts):
            yield from _packed_expert_tensors(name, module, dtype, int4_experts)


def _stem(weight_name: str) -> str:
    """`....experts.3.gate_proj` from `....experts.3.gate_proj.weight`."""
    return weight_name.removesuffix(".weight")


def _int4_parts(stem: str, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                weight_shape: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the three INT4 tensors of one projection, named `{stem}.weight_packed` and so on."""
    yield f"{stem}.weight_packed", weight_packed
    yield f"{stem}.weight_scale", weight_scale
    yield f"{stem}.weight_shape", weight_shape


def _packed_expert_tensors(name: str, module: Int4RoutedExperts, dtype: torch.dtype | None,
                           int4_experts: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield one Int4RoutedExperts' projections: INT4 as stored, or dequantized to `dtype` (default: its scales')."""
    for param_name, projections in _PROJECTIONS.items():
        param = f"{name}.{param_name}"
        for expert in range(module.num_experts):
            weight_packed, weight_scale = module.export_expert(param_name, expert)
            rows = weight_packed.shape[0] // len(projections)
            for i, proj in enumerate(projections):
                part_packed = weight_packed[i * rows:(i + 1) * rows].contiguous()
                part_scale = weight_scale[i * rows:(i + 1) * rows].contiguous()
                shape = torch.tensor([rows, module.shapes[param_name][1]], dtype=torch.int32)
                if int4_experts:
                    yield from _int4_parts(_stem(official_expert_name(param, expert, proj)),
                                           part_packed, part_scale, shape)
                else:
                    weight = dequantize(part_packed, part_scale, shape, dtype=dtype or module.scale_dtype)
                    yield official_expert_name(param, expert, proj), weight


class ShardWriter:
    """Write tensors into safetensors shards of at most `max_shard_bytes`, then name them and write the index.

    Shards are written as they fill, so at most one shard is in memory. `close` gives them the official
    names (five-digit index, six-digit total), or `model.safetensors` when there is only one.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f"model-{len(self.written) + 1:05d}.safetensors.partial"
        save_file(self.pending, path, metadata={"format": "pt"})
        path.chmod(0o644)  # safetensors creates files readable by their owner only
        self.written.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, rename all shards and write the index; return the shard paths."""
        if self.pending or not self.written:
            self._flush()
        if len(self.written) == 1:
            path = self.out_dir / SINGLE_FILE
            self.written[0][0].replace(path)
            return [path]
        weight_map, paths = {}, []
        for i, (partial, names) in enumerate(self.written, start=1):
            path = self.out_dir / f"model-{i:05d}-of-{len(self.written):06d}.safetensors"
            partial.replace(path)
            paths.append(path)
            weight_map.update({name: path.name for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return paths


def with_quantization_config(raw_config: dict[str, Any], quantization_config: dict[str, Any] | None) -> dict[str, Any]:
    """Return config.json content with `quantization_config` set (or removed if None) in the text config."""
    raw = json.loads(json.dumps(raw_config))
    for holder in (raw, raw.get("text_config")):
        if isinstance(holder, dict):
            holder.pop("quantization_config", None)
    target = raw["text_config"] if isinstance(raw.get("text_config"), dict) else raw
    if quantization_config is not None:
        target["quantization_config"] = quantization_config
    return raw


def save_checkpoint(model: KimiK25Model, out_dir: str | Path, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, int4_experts: bool = False) -> Path:
    """Write config.json and the weights of `model` into `out_dir`; return the directory.

    With `int4_experts`, routed experts are written in the official INT4 layout and config.json
    gets the official `quantization_config`; without it, any `quantization_config` is dropped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = with_quantization_config(model.config.to_dict(), int4_quantization_config() if int4_experts else None)
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    writer = ShardWriter(out_dir, max_shard_bytes)
    for name, tensor in official_tensors(model, dtype, int4_experts):
        writer.add(name, tensor)
    writer.close()
    return out_dir


# ----- kimi-k25 quantize ---------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def quantize_checkpoint(src_dir: str | Path, dst_dir: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                        progress: bool = True) -> Path:
    """Convert a checkpoint with unquantized routed experts to the official INT4 layout.

    Reads one tensor at a time and writes shards as they fill, so at most one shard and one
    tensor are in memory. Each routed expert projection, stored per expert or stacked (E, ...) as
    transformers names it, becomes `weight_packed`, `weight_scale` and `weight_shape`. Every
    other tensor is copied unchanged under its own name. config.json gets the official
    `quantization_config`. Other top-level files, such as the tokenizer and the chat template,
    are copied, but other weight files (.bin, .pt, .pth) are not.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if dst_dir.exists() and (dst_dir.resolve() == src_dir.resolve() or any(dst_dir.iterdir())):
        raise FileExistsError(f"{dst_dir} exists and is not empty; give a new or empty output directory")
    config = KimiK25Config.from_file(src_dir)
    shard_of = list_checkpoint_tensors(src_dir)
    if has_int4_experts(shard_of):
        raise CheckpointError(f"{src_dir} already stores routed experts in INT4 (it has weight_packed tensors)")
    # Check the whole checkpoint against its config before writing anything.
    with torch.device("meta"):
        model = KimiK25Model(config)
    plan_loading(model, src_dir, load_vision=True, shard_of=shard_of)

    dst_dir.mkdir(parents=True, exist_ok=True)
    raw = json.loads((src_dir / "config.json").read_text())
    (dst_dir / "config.json").write_text(json.dumps(with_quantization_config(raw, int4_quantization_config()),
                                                    indent=2) + "\n")
    writer = ShardWriter(dst_dir, max_shard_bytes)
    num_layers = config.text.num_hidden_layers
    quantized = 0
    bar = tqdm(total=len(shard_of), desc="Quantizing experts", unit="tensor", disable=not progress)
    for shard in sorted(set(shard_of.values())):
        with safe_open(shard, framework="pt", device="cpu") as handle:
            for name in sorted(n for n, s in shard_of.items() if s == shard):
                for out_name, tensor in _converted(name, handle.get_tensor(name), resolve(name, num_layers)):
                    writer.add(out_name, tensor)
                    quantized += out_name.endswith(".weight_packed")
                bar.update(1)
    bar.close()
    writer.close()
    copied = _copy_other_files(src_dir, dst_dir)
    logger.info("Quantized %d expert projections to INT4; wrote %.2f GiB to %s; copied %s",
                quantized, writer.total_bytes / 1024**3, dst_dir, ", ".join(copied) or "no other files")
    return dst_dir


def _converted(name: str, tensor: torch.Tensor, target: Target | None) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield the output tensors for one source tensor: INT4 parts for routed experts, else the tensor itself."""
    if target is None or target.kind is not TargetKind.PARAM or ".mlp.experts." not in target.param:
        return [(name, tensor)]
    if target.expert is not None:
        return _quantized(name, _stem(name), tensor)
    # A transformers stack (E, out, in): gate rows before up rows for gate_up_proj.
    stem, param_name = name.rsplit(".", 1)
    projections = _PROJECTIONS[param_name]
    pairs = []
    for expert in range(tensor.shape[0]):
        for proj, part in zip(projections, tensor[expert].chunk(len(projections))):
            pairs.extend(_quantized(name, f"{stem}.{expert}.{proj}", part))
    return pairs


def _quantized(source: str, stem: str, weight: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    try:
        return list(_int4_parts(stem, *quantize_symmetric_int4(weight)))
    except ValueError as error:
        raise CheckpointError(f"cannot quantize {source}: {error}") from error


def _copy_other_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy the tokenizer, chat template and other top-level files; skip weights, the index and config.json."""
    copied = []
    for path in sorted(src_dir.iterdir()):
        if not path.is_file() or path.name in ("config.json", INDEX_FILE) or path.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, dst_dir / path.name)
        copied.append(path.name)
    return copied
