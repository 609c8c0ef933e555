"""Write a `KimiK25Model` in the official Kimi K2.5 checkpoint layout.

Used to build the bundled default model and test checkpoints: per-expert tensors under the
official names, safetensors shards with a `model.safetensors.index.json`, and config.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from kimi_k25.checkpoint.loader import INDEX_FILE, SINGLE_FILE
from kimi_k25.checkpoint.names import official_expert_name, official_name
from kimi_k25.model.kimi_k25 import KimiK25Model


def official_tensors(model: KimiK25Model, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (official name, tensor) pairs, splitting stacked experts into one tensor per expert.

    `dtype` casts floating-point tensors except the router's, which the official files keep in
    fp32 for the correction bias.
    """
    for name, param in model.named_parameters():
        if name == "language_model.lm_head.weight" and model.config.text.tie_word_embeddings:
            continue
        tensor = param.detach()
        keep_fp32 = name.endswith("mlp.gate.e_score_correction_bias")
        if dtype is not None and tensor.is_floating_point() and not keep_fp32:
            tensor = tensor.to(dtype)
        if ".mlp.experts." in name:
            for expert in range(tensor.shape[0]):
                yield official_expert_name(name, expert), tensor[expert].contiguous()
        else:
            yield official_name(name), tensor.contiguous()


def save_checkpoint(model: KimiK25Model, out_dir: str | Path, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write config.json and the weights of `model` into `out_dir`; return the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in official_tensors(model, dtype):
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size

    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], out_dir / SINGLE_FILE, metadata=metadata)
        return out_dir
    weight_map, total_size = {}, 0
    for i, shard in enumerate(shards, start=1):
        # Five-digit shard index and six-digit total, as the official file names have it.
        file_name = f"model-{i:05d}-of-{len(shards):06d}.safetensors"
        save_file(shard, out_dir / file_name, metadata=metadata)
        for name, tensor in shard.items():
            weight_map[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
