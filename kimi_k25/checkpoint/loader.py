"""Load a checkpoint directory into `KimiK25Model`.

The model is first built on the meta device, every tensor name in the shards is resolved
through the name table, and missing and unexpected tensors are reported together before any
memory is allocated. Tensors are then read one at a time from memory-mapped safetensors files
and copied into place, so peak memory is the model plus one tensor.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from kimi_k25.checkpoint.names import Target, TargetKind, resolve
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.model.moe import Router

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_NAMES_IN_ERROR = 20


class CheckpointError(ValueError):
    """A checkpoint that does not match the model its config describes."""


@dataclass
class TensorPlan:
    """Target parameter and shard file of every checkpoint tensor."""

    shard_of: dict[str, Path] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped_vision: list[str] = field(default_factory=list)
    int4: list[str] = field(default_factory=list)


def list_checkpoint_tensors(checkpoint_dir: Path) -> dict[str, Path]:
    """Map every tensor name to its shard, through the index file or the single file."""
    index_path = checkpoint_dir / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise CheckpointError(f"{index_path} is not a valid safetensors index (needs 'weight_map'): {error}") from error
        shard_of = {name: checkpoint_dir / shard for name, shard in weight_map.items()}
        missing_shards = sorted({str(p.name) for p in shard_of.values() if not p.is_file()})
        if missing_shards:
            raise CheckpointError(f"{index_path} names shard files that do not exist: {', '.join(missing_shards)}")
        return shard_of
    single = checkpoint_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as handle:
            return {name: single for name in handle.keys()}
    raise CheckpointError(f"no weights in {checkpoint_dir}: expected {INDEX_FILE} or {SINGLE_FILE}")


def plan_loading(model: KimiK25Model, checkpoint_dir: Path, load_vision: bool) -> TensorPlan:
    """Resolve every tensor name and fail once, listing all missing and unexpected tensors."""
    plan = TensorPlan(shard_of=list_checkpoint_tensors(checkpoint_dir))
    params = dict(model.named_parameters())
    num_layers = model.config.text.num_hidden_layers
    for name in sorted(plan.shard_of):
        target = resolve(name, num_layers)
        if target is None:
            plan.unexpected.append(name)
        elif target.kind is TargetKind.IGNORED:
            plan.ignored.append(name)
        elif target.kind is TargetKind.INT4:
            plan.int4.append(name)
        elif target.param.startswith(("vision_tower.", "mm_projector.")) and not load_vision:
            plan.skipped_vision.append(name)
        elif _target_params(target)[0] not in params:
            plan.unexpected.append(name)
        else:
            plan.targets[name] = target

    if plan.int4:
        raise CheckpointError(
            f"{checkpoint_dir} stores routed experts in INT4 (compressed-tensors pack-quantized, e.g. "
            f"{plan.int4[0]}); loading INT4 experts is not supported yet. Use a checkpoint with bf16 "
            f"experts, for example one written by transformers' save_pretrained after loading the official one.")

    missing = _missing_params(model, plan, load_vision)
    if missing or plan.unexpected:
        raise CheckpointError(_mismatch_message(checkpoint_dir, missing, plan.unexpected))
    _check_shapes(plan, params)
    return plan


def _check_shapes(plan: TensorPlan, params: dict[str, torch.nn.Parameter]) -> None:
    """Compare every tensor's stored shape with its parameter, reading only the shard headers."""
    by_shard: dict[Path, list[str]] = defaultdict(list)
    for name in plan.targets:
        by_shard[plan.shard_of[name]].append(name)
    wrong = []
    for shard, names in by_shard.items():
        with safe_open(shard, framework="pt") as handle:
            for name in names:
                got = tuple(handle.get_slice(name).get_shape())
                expected = _expected_shape(plan.targets[name], params)
                if got != expected:
                    wrong.append(f"    {name}: stored {list(got)}, the config implies {list(expected)}")
    if wrong:
        shown = wrong[:MAX_NAMES_IN_ERROR]
        more = f" (and {len(wrong) - len(shown)} more)" if len(wrong) > len(shown) else ""
        raise CheckpointError(f"{len(wrong)} tensors have the wrong shape{more}:\n" + "\n".join(shown)
                              + "\nCheck that config.json belongs to these weights.")


def _expected_shape(target: Target, params: dict[str, torch.nn.Parameter]) -> tuple[int, ...]:
    if target.kind is TargetKind.GATE_UP_STACK:
        num_experts, inter, hidden = params[f"{target.param}.gate_proj"].shape
        return (num_experts, 2 * inter, hidden)
    shape = tuple(params[target.param].shape)
    return shape[1:] if target.kind is TargetKind.EXPERT else shape


def load_checkpoint(checkpoint_dir: str | Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                    load_vision: bool = True, progress: bool = True) -> KimiK25Model:
    """Build the model described by `checkpoint_dir/config.json` and fill it from its safetensors files."""
    checkpoint_dir = Path(checkpoint_dir)
    config = KimiK25Config.from_file(checkpoint_dir)
    with torch.device("meta"):
        model = KimiK25Model(config)
    if config.vision is not None and not load_vision:
        model.vision_tower = None
        model.mm_projector = None
    plan = plan_loading(model, checkpoint_dir, load_vision)
    if plan.ignored:
        logger.info("Ignoring %d tensors of multi-token-prediction layers (not used for decoding)", len(plan.ignored))
    if plan.skipped_vision:
        logger.info("Skipping %d vision tower and projector tensors: the model is loaded for text only",
                    len(plan.skipped_vision))

    model.to_empty(device=device)
    cast_model(model, dtype)
    params = dict(model.named_parameters())
    by_shard: dict[Path, list[str]] = defaultdict(list)
    for name in plan.targets:
        by_shard[plan.shard_of[name]].append(name)

    bar = tqdm(total=len(plan.targets), desc="Loading weights", unit="tensor", disable=not progress)
    with torch.no_grad():
        for shard, names in sorted(by_shard.items()):
            with safe_open(shard, framework="pt", device="cpu") as handle:
                for name in names:
                    _copy_tensor(handle.get_tensor(name), plan.targets[name], params)
                    bar.update(1)
    bar.close()
    if config.text.tie_word_embeddings:
        model.language_model.lm_head.weight = model.language_model.embed_tokens.weight
    model.eval()
    return model


def cast_model(model: KimiK25Model, dtype: torch.dtype) -> None:
    """Cast floating-point parameters to `dtype`, keeping the routers in fp32 as the reference does."""
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, Router):
            module.float()


def _target_params(target: Target) -> list[str]:
    if target.kind is TargetKind.GATE_UP_STACK:
        return [f"{target.param}.gate_proj", f"{target.param}.up_proj"]
    return [target.param]


def _missing_params(model: KimiK25Model, plan: TensorPlan, load_vision: bool) -> list[str]:
    """Return parameters (or single experts of stacked ones) that no checkpoint tensor fills."""
    whole: set[str] = set()
    experts: dict[str, set[int]] = defaultdict(set)
    for target in plan.targets.values():
        if target.kind is TargetKind.EXPERT:
            experts[target.param].add(target.expert)
        else:
            whole.update(_target_params(target))
    tied = model.config.text.tie_word_embeddings
    missing = []
    for name, param in model.named_parameters():
        if name in whole or (tied and name == "language_model.lm_head.weight"):
            continue
        if not load_vision and name.startswith(("vision_tower.", "mm_projector.")):
            continue
        if ".mlp.experts." in name and name in experts:
            absent = sorted(set(range(param.shape[0])) - experts[name])
            missing.extend(f"{name}[expert {e}]" for e in absent)
            continue
        missing.append(name)
    return missing


def _mismatch_message(checkpoint_dir: Path, missing: list[str], unexpected: list[str]) -> str:
    lines = [f"checkpoint {checkpoint_dir} does not match its config.json:"]
    for label, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            shown = names[:MAX_NAMES_IN_ERROR]
            more = f" (and {len(names) - len(shown)} more)" if len(names) > len(shown) else ""
            lines.append(f"  {len(names)} {label} tensors{more}:")
            lines.extend(f"    {name}" for name in shown)
    lines.append("Check that config.json belongs to these weights (layer count, expert count, vision tower).")
    return "\n".join(lines)


def _copy_tensor(tensor: torch.Tensor, target: Target, params: dict[str, torch.nn.Parameter]) -> None:
    if target.kind is TargetKind.GATE_UP_STACK:
        gate, up = params[f"{target.param}.gate_proj"], params[f"{target.param}.up_proj"]
        gate.copy_(tensor[:, : gate.shape[1]])
        up.copy_(tensor[:, gate.shape[1]:])
    elif target.kind is TargetKind.EXPERT:
        params[target.param][target.expert].copy_(tensor)
    else:
        params[target.param].copy_(tensor)
