"""Load a checkpoint directory into `KimiK25Model`.

The model is first built on the meta device, every tensor name in the shards is resolved
through the name table, and missing and unexpected tensors are reported together before any
memory is allocated. Tensors are then read one at a time from memory-mapped safetensors files
and copied into place, so peak memory is the model plus one tensor.

A checkpoint with any `weight_packed` tensor stores its routed experts in INT4 (compressed-tensors
`pack-quantized`). Every MoE layer then gets `Int4RoutedExperts`, which keep the experts packed,
and each expert projection is converted on its own (gate and up together), so no dense copy of
the experts is ever made.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from kimi_k25.checkpoint.int4 import PARTS, packed_shape, scale_shape
from kimi_k25.checkpoint.names import Target, TargetKind, resolve
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.model.moe import Router
from kimi_k25.model.quant import Int4RoutedExperts, choose_layout, use_int4_experts

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
    int4: dict[str, Target] = field(default_factory=dict)  # parts of INT4 routed experts


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


def has_int4_experts(tensor_names: Iterable[str]) -> bool:
    """Return whether a checkpoint stores routed experts in INT4: a module is INT4 iff it has `weight_packed`."""
    return any(name.endswith(".weight_packed") for name in tensor_names)


def plan_loading(model: KimiK25Model, checkpoint_dir: Path, load_vision: bool,
                 shard_of: dict[str, Path] | None = None) -> TensorPlan:
    """Resolve every tensor name and fail once, listing all missing and unexpected tensors.

    INT4 expert parts are accepted only where the model has `Int4RoutedExperts`
    (see `use_int4_experts`). `shard_of` saves reading the index again.
    """
    plan = TensorPlan(shard_of=shard_of if shard_of is not None else list_checkpoint_tensors(checkpoint_dir))
    params = dict(model.named_parameters())
    int4_modules = _int4_modules(model)
    num_layers = model.config.text.num_hidden_layers
    dense_experts = []
    for name in sorted(plan.shard_of):
        target = resolve(name, num_layers)
        if target is None:
            plan.unexpected.append(name)
        elif target.kind is TargetKind.IGNORED:
            plan.ignored.append(name)
        elif target.kind is TargetKind.INT4:
            module = int4_modules.get(target.param.rsplit(".", 1)[0])
            if module is None or target.expert >= module.num_experts:
                plan.unexpected.append(name)
            else:
                plan.int4[name] = target
        elif target.param.startswith(("vision_tower.", "mm_projector.")) and not load_vision:
            plan.skipped_vision.append(name)
        else:
            if ".mlp.experts." in target.param:
                dense_experts.append(name)
            if target.param in params:
                plan.targets[name] = target
            else:
                plan.unexpected.append(name)

    int4_names = [name for name in plan.shard_of if name.endswith(".weight_packed")]
    if int4_names and dense_experts:
        raise CheckpointError(
            f"{checkpoint_dir} mixes INT4 routed experts (compressed-tensors pack-quantized, e.g. "
            f"{min(int4_names)}) with unquantized ones (e.g. {dense_experts[0]}), but all routed experts must "
            f"use one format. Quantize a bf16 checkpoint as a whole with `kimi-k25 quantize`.")

    missing = _missing_params(model, plan, load_vision) + _missing_int4_parts(plan, int4_modules)
    if missing or plan.unexpected:
        raise CheckpointError(_mismatch_message(checkpoint_dir, missing, plan.unexpected))
    _check_shapes(plan, params, int4_modules)
    return plan


def _int4_modules(model: KimiK25Model) -> dict[str, Int4RoutedExperts]:
    return {name: module for name, module in model.named_modules() if isinstance(module, Int4RoutedExperts)}


def _check_shapes(plan: TensorPlan, params: dict[str, torch.nn.Parameter],
                  int4_modules: dict[str, Int4RoutedExperts]) -> None:
    """Compare every tensor's stored shape with its parameter, reading only the shard headers.

    INT4 parts are checked for shape and dtype, and each `weight_shape` is read for its value.
    """
    by_shard: dict[Path, list[str]] = defaultdict(list)
    for name in [*plan.targets, *plan.int4]:
        by_shard[plan.shard_of[name]].append(name)
    wrong = []
    for shard, names in by_shard.items():
        with safe_open(shard, framework="pt") as handle:
            for name in names:
                if name in plan.int4:
                    wrong.extend(_wrong_int4_part(handle, name, plan.int4[name], int4_modules))
                    continue
                got = tuple(handle.get_slice(name).get_shape())
                expected = _expected_shape(plan.targets[name], params)
                if got != expected:
                    wrong.append(f"    {name}: stored {list(got)}, the config implies {list(expected)}")
    if wrong:
        shown = wrong[:MAX_NAMES_IN_ERROR]
        more = f" (and {len(wrong) - len(shown)} more)" if len(wrong) > len(shown) else ""
        raise CheckpointError(f"{len(wrong)} tensors have the wrong shape, dtype or value{more}:\n" + "\n".join(shown)
                              + "\nCheck that config.json belongs to these weights.")


# safetensors header dtypes each INT4 part may have
_INT4_DTYPES = {"weight_packed": ("I32",), "weight_scale": ("BF16", "F16", "F32"), "weight_shape": ("I32", "I64")}


def _wrong_int4_part(handle, name: str, target: Target, int4_modules: dict[str, Int4RoutedExperts]) -> list[str]:
    """Return error lines for one INT4 part whose shape, dtype or `weight_shape` value is wrong."""
    out_features, in_features = _int4_weight_shape(target, int4_modules)
    expected = {"weight_packed": packed_shape(out_features, in_features),
                "weight_scale": scale_shape(out_features, in_features),
                "weight_shape": (2,)}[target.int4_part]
    stored = handle.get_slice(name)
    got, dtype = tuple(stored.get_shape()), stored.get_dtype()
    if got != expected:
        hint = " (8 INT4 values per int32 word)" if target.int4_part == "weight_packed" else ""
        return [f"    {name}: stored {list(got)}, the config implies {list(expected)}{hint}"]
    if dtype not in _INT4_DTYPES[target.int4_part]:
        return [f"    {name}: stored dtype {dtype}, expected {' or '.join(_INT4_DTYPES[target.int4_part])}"]
    if target.int4_part == "weight_shape":
        values = handle.get_tensor(name).tolist()
        if values != [out_features, in_features]:
            return [f"    {name}: holds {values}, the config implies {[out_features, in_features]}"]
    return []


def _int4_weight_shape(target: Target, int4_modules: dict[str, Int4RoutedExperts]) -> tuple[int, int]:
    """Return the unpacked (out, in) of one checkpoint projection; gate and up are each half of gate_up's rows."""
    path, proj = target.param.rsplit(".", 1)
    out_features, in_features = int4_modules[path].shapes[proj]
    if target.half is not None:
        out_features //= 2
    return out_features, in_features


def _expected_shape(target: Target, params: dict[str, torch.nn.Parameter]) -> tuple[int, ...]:
    return tuple(_destination(target, params).shape)


def _destination(target: Target, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
    """Return the parameter, or the expert and row half of it, that a tensor is copied into."""
    tensor = params[target.param]
    if target.expert is not None:
        tensor = tensor[target.expert]
    if target.half is not None:
        rows = tensor.shape[0] // 2
        tensor = tensor[target.half * rows:(target.half + 1) * rows]
    return tensor


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
    shard_of = list_checkpoint_tensors(checkpoint_dir)
    if has_int4_experts(shard_of):
        layout = choose_layout(config.text, device)
        num_layers = use_int4_experts(model, config.text, layout)
        logger.info("Routed experts are INT4: keeping them packed in %d MoE layers (layout %s)", num_layers, layout)
    plan = plan_loading(model, checkpoint_dir, load_vision, shard_of)
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

    bar = tqdm(total=len(plan.targets) + len(plan.int4), desc="Loading weights", unit="tensor",
               disable=not progress)
    with torch.no_grad():
        for shard, names in sorted(by_shard.items()):
            with safe_open(shard, framework="pt", device="cpu") as handle:
                for name in names:
                    _copy_tensor(handle.get_tensor(name), plan.targets[name], params)
                    bar.update(1)
        _copy_int4_experts(plan, _int4_modules(model), bar.update)
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


_HALF_NAMES = ("gate half", "up half")


def _missing_params(model: KimiK25Model, plan: TensorPlan, load_vision: bool) -> list[str]:
    """Return parameters, or the experts and row halves of them, that no checkpoint tensor fills."""
    filled: dict[str, set[tuple[int | None, int | None]]] = defaultdict(set)
    for target in plan.targets.values():
        filled[target.param].add((target.expert, target.half))
    tied = model.config.text.tie_word_embeddings
    missing = []
    for name, param in model.named_parameters():
        if tied and name == "language_model.lm_head.weight":
            continue
        if not load_vision and name.startswith(("vision_tower.", "mm_projector.")):
            continue
        parts = filled.get(name, set())
        if (None, None) in parts:
            continue
        if not parts:
            missing.append(name)
            continue
        # Filled piecewise: every expert (if stacked) and every half (if fused) must be present.
        experts = range(param.shape[0]) if any(e is not None for e, _ in parts) else [None]
        halves = (0, 1) if any(h is not None for _, h in parts) else [None]
        for expert in experts:
            for half in halves:
                if (expert, half) not in parts:
                    where = ", ".join(x for x in (f"expert {expert}" if expert is not None else "",
                                                  _HALF_NAMES[half] if half is not None else "") if x)
                    missing.append(f"{name}[{where}]")
    return missing


def _missing_int4_parts(plan: TensorPlan, int4_modules: dict[str, Int4RoutedExperts]) -> list[str]:
    """Return the parts (weight_packed, weight_scale, weight_shape) of INT4 expert projections that are absent."""
    filled = {(t.param, t.expert, t.half, t.int4_part) for t in plan.int4.values()}
    missing = []
    for path, module in int4_modules.items():
        for proj in module.shapes:
            param = f"{path}.{proj}"
            halves = (0, 1) if proj == "gate_up_proj" else (None,)
            for expert in range(module.num_experts):
                for half in halves:
                    for part in PARTS:
                        if (param, expert, half, part) not in filled:
                            where = f"expert {expert}" + (f", {_HALF_NAMES[half]}" if half is not None else "")
                            missing.append(f"{param}[{where}].{part}")
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
    _destination(target, params).copy_(tensor)


def _copy_int4_experts(plan: TensorPlan, int4_modules: dict[str, Int4RoutedExperts],
                       advance: Callable[[int], object]) -> None:
    """Read the parts of each expert projection (gate and up together) and pack them into their module.

    Shards stay open (memory-mapped) while the projections are read in shard order, because the
    parts of one projection need not share a shard.
    """
    groups: dict[tuple[str, int], dict[tuple[int | None, str], str]] = defaultdict(dict)
    for name, target in plan.int4.items():
        groups[(target.param, target.expert)][(target.half, target.int4_part)] = name

    def order(item):
        (param, expert), names = item
        return str(plan.shard_of[min(names.values())]), param, expert

    with ExitStack() as stack:
        handles = {}

        def read(name: str) -> torch.Tensor:
            shard = plan.shard_of[name]
            if shard not in handles:
                handles[shard] = stack.enter_context(safe_open(shard, framework="pt", device="cpu"))
            return handles[shard].get_tensor(name)

        for (param, expert), names in sorted(groups.items(), key=order):
            path, proj = param.rsplit(".", 1)
            halves = (0, 1) if proj == "gate_up_proj" else (None,)
            weight_packed = torch.cat([read(names[(half, "weight_packed")]) for half in halves])
            weight_scale = torch.cat([read(names[(half, "weight_scale")]) for half in halves])
            int4_modules[path].load_expert(proj, expert, weight_packed, weight_scale)
            advance(len(names))
