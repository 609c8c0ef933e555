"""INT4 routed experts: the pack-quantized format, the CPU kernel path, loading, writing, `kimi-k25 quantize`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kimi_k25.checkpoint import int4
from kimi_k25.checkpoint.loader import CheckpointError, load_checkpoint
from kimi_k25.checkpoint.writer import int4_quantization_config, quantize_checkpoint, save_checkpoint
from kimi_k25.cli import main
from kimi_k25.model.cache import AttentionBatch
from kimi_k25.model.moe import RoutedExperts
from kimi_k25.model.quant import Int4RoutedExperts
from reference import build_reference_text_model, text_config_dict, write_text_checkpoint
from test_model_parity import our_greedy, relative_error

TOLERANCE = 1e-3
DECODE_STEPS = 4
RAW = text_config_dict()  # 3 MoE layers of 16 experts, hidden 64, expert width 32
NUM_MOE_LAYERS, NUM_EXPERTS = 3, RAW["n_routed_experts"]
EXPERT = "language_model.model.layers.1.mlp.experts"


# ----- helpers -------------------------------------------------------------------------------------

def read_tensors(path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def coarsen_scales(path) -> None:
    """Round every weight_scale to 5 significant bits, so q · scale (at most 8 bits) is exact in bf16."""
    tensors = load_file(path / "model.safetensors")
    for name, tensor in tensors.items():
        if name.endswith(".weight_scale"):
            mantissa, exponent = torch.frexp(tensor.float())
            tensors[name] = torch.ldexp(torch.round(mantissa * 32) / 32, exponent).to(torch.bfloat16)
    save_file(tensors, path / "model.safetensors")


def load_dequantized(dense_dir, int4_dir, dtype: torch.dtype):
    """A plain kimi_k25 model (dense RoutedExperts) whose expert weights are the INT4 checkpoint's values."""
    model = load_checkpoint(dense_dir, dtype=dtype, progress=False)
    parts = read_tensors(int4_dir)
    inter = RAW["moe_intermediate_size"]
    with torch.no_grad():
        for layer in range(1, RAW["num_hidden_layers"]):
            experts = model.language_model.layers[layer].mlp.experts
            for expert in range(NUM_EXPERTS):
                for proj, param, rows in (("gate_proj", experts.gate_up_proj, slice(0, inter)),
                                          ("up_proj", experts.gate_up_proj, slice(inter, 2 * inter)),
                                          ("down_proj", experts.down_proj, slice(None))):
                    stem = f"language_model.model.layers.{layer}.mlp.experts.{expert}.{proj}"
                    weight = int4.dequantize(parts[f"{stem}.weight_packed"], parts[f"{stem}.weight_scale"],
                                             parts[f"{stem}.weight_shape"])
                    param[expert][rows] = weight.to(dtype)
    return model


def int4_experts(model) -> list[Int4RoutedExperts]:
    return [m for m in model.modules() if isinstance(m, Int4RoutedExperts)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A bf16-layout reference checkpoint and its INT4 copy (single file) written by quantize_checkpoint."""
    root = tmp_path_factory.mktemp("int4")
    reference = build_reference_text_model(RAW, seed=21)
    dense = write_text_checkpoint(reference, RAW, root / "dense", num_shards=2)
    quantized = quantize_checkpoint(dense, root / "int4", max_shard_bytes=1 << 40, progress=False)
    return dense, quantized


def broken_copy(checkpoint, tmp_path, edit):
    path = tmp_path / "broken"
    shutil.copytree(checkpoint, path)
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


# ----- the format ----------------------------------------------------------------------------------

def test_pack_known_word():
    # Nibbles 1..8 from the least significant end: 0x87654321, a negative int32.
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.int8) - 8
    word = int4.pack_int4(q)
    assert word.dtype == torch.int32
    assert word.tolist() == [[0x87654321 - 2**32]]
    assert torch.equal(int4.unpack_int4(word, [1, 8]), q)


@pytest.mark.parametrize("shape", [(16, 64), (5, 40), (3, 13), (1, 1)])
def test_pack_unpack_round_trip(shape):
    generator = torch.Generator().manual_seed(shape[1])
    q = torch.randint(-8, 8, shape, generator=generator, dtype=torch.int8)
    packed = int4.pack_int4(q)
    assert packed.shape == int4.packed_shape(*shape)
    assert torch.equal(int4.unpack_int4(packed, shape), q)


def test_unpack_negative_words():
    words = torch.tensor([[-1, -(2**31), 2**31 - 1, 0]], dtype=torch.int32)
    q = int4.unpack_int4(words, [1, 32])
    assert q[0, :8].tolist() == [7] * 8  # 0xFFFFFFFF
    assert q[0, 8:16].tolist() == [-8] * 7 + [0]  # 0x80000000
    assert q[0, 16:24].tolist() == [7] * 7 + [-1]  # 0x7FFFFFFF
    assert q[0, 24:].tolist() == [-8] * 8
    assert torch.equal(int4.pack_int4(q), words)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        int4.pack_int4(torch.tensor([[8]], dtype=torch.int8))


def test_unpack_rejects_wrong_width():
    with pytest.raises(ValueError, match="8 values per int32"):
        int4.unpack_int4(torch.zeros(4, 3, dtype=torch.int32), [4, 32])


def test_dequantize_uses_group_scales():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(2, 4)  # [2, 64]
    scale = torch.tensor([[0.5, 2.0], [1.0, 0.25]], dtype=torch.bfloat16)
    weight = int4.dequantize(int4.pack_int4(q), scale, [2, 64])
    expected = q.float() * scale.float().repeat_interleave(32, dim=1)
    assert torch.equal(weight, expected)


def test_quantize_round_trip_error():
    weight = torch.randn(64, 128) * 0.02
    packed, scale, shape = int4.quantize_symmetric_int4(weight)
    assert (packed.dtype, scale.dtype, shape.dtype) == (torch.int32, torch.bfloat16, torch.int32)
    assert shape.tolist() == [64, 128]
    error = (int4.dequantize(packed, scale, shape) - weight).abs()
    # Rounding to the nearest step, plus the clamp of max|w| (7.5 steps) to 7: at most one step.
    step = scale.float().repeat_interleave(32, dim=1)
    assert bool((error <= step * 0.5 + 1e-6).logical_or(weight.abs() > 6.5 * step).all())
    assert bool((error <= step + 1e-6).all())


# ----- against compressed-tensors ------------------------------------------------------------------

def compressed_tensors_modules():
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed (pip install "
                                                     "compressed-tensors) and is the reference for these tests")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    return PackedQuantizationCompressor, pack_to_int32, unpack_from_int32, QuantizationArgs, QuantizationScheme, \
        compute_dynamic_scales_and_zp


@pytest.mark.parametrize("shape", [(32, 64), (7, 100), (3, 8)])
def test_packing_matches_compressed_tensors(shape):
    _, pack_to_int32, unpack_from_int32, *_ = compressed_tensors_modules()
    q = torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    packed = int4.pack_int4(q)
    assert torch.equal(packed, pack_to_int32(q, 4))
    assert torch.equal(int4.unpack_int4(packed, shape), unpack_from_int32(packed, 4, torch.Size(shape)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_quantization_matches_compressed_tensors(seed):
    compressor, _, _, quantization_args, quantization_scheme, scales_and_zero_points = compressed_tensors_modules()
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(64, 256, generator=generator) * torch.rand(64, 1, generator=generator) * 0.1)
    weight[0, :32] = 0  # an all-zero group
    weight = weight.to(torch.bfloat16)
    args = quantization_args(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    scale, zero_point = scales_and_zero_points(weight, args, module=None)
    reference = compressor.compress({"weight": weight, "weight_scale": scale, "weight_zero_point": zero_point},
                                    quantization_scheme(targets=["Linear"], weights=args))

    packed, ours_scale, shape = int4.quantize_symmetric_int4(weight)
    assert torch.equal(ours_scale, reference["weight_scale"])
    assert torch.equal(packed, reference["weight_packed"])
    assert shape.tolist() == reference["weight_shape"].tolist()
    decompressed = compressor.decompress(reference, quantization_scheme(targets=["Linear"], weights=args))
    assert torch.equal(int4.dequantize(packed, ours_scale, shape, torch.bfloat16), decompressed["weight"])


def test_fp32_quantization_matches_compressed_tensors():
    _, pack_to_int32, _, quantization_args, _, scales_and_zero_points = compressed_tensors_modules()
    from compressed_tensors.quantization.lifecycle.forward import quantize

    weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(4)) * 0.05
    args = quantization_args(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32,
                             scale_dtype=torch.bfloat16)
    scale, zero_point = scales_and_zero_points(weight, args, module=None)
    q = quantize(weight, scale, zero_point, args, dtype=torch.int8)
    packed, ours_scale, _ = int4.quantize_symmetric_int4(weight)
    assert torch.equal(ours_scale.float(), scale)
    assert torch.equal(packed, pack_to_int32(q, 4))


# ----- the CPU kernel ------------------------------------------------------------------------------

def test_cpu_kernel_formula():
    """The kernel computes w = (nibble - 8) · scale + zero, the formula `to_cpu_int4pack` relies on."""
    generator = torch.Generator().manual_seed(5)
    nibbles = torch.randint(0, 16, (32, 64), generator=generator, dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1)
    table = torch.stack([torch.full((2, 32), 0.5), torch.full((2, 32), 3.0)], dim=-1)
    weight_t = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(64), packed, 32, table)
    assert torch.equal(weight_t.t(), (nibbles.float() - 8) * 0.5 + 3.0)


@pytest.mark.parametrize("shape", [(64, 64), (64, 32), (48, 96), (512, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_equals_dequantize_then_matmul(shape, dtype):
    generator = torch.Generator().manual_seed(shape[0])
    weight = torch.randn(shape, generator=generator) * 0.02
    packed, scale, weight_shape = int4.quantize_symmetric_int4(weight)
    kernel_packed, table = int4.to_cpu_int4pack(packed, scale, weight_shape, dtype)
    assert kernel_packed.shape == (shape[0], shape[1] // 2)
    assert table.shape == (shape[1] // 32, shape[0], 2)
    dense = int4.dequantize(packed, scale, weight_shape)  # fp32, exact
    for rows in (1, 5, 8):
        x = torch.randn(rows, shape[1], generator=generator).to(dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, kernel_packed, 32, table)
        reference = x.float() @ dense.t()
        if dtype == torch.float32:
            assert relative_error(out, reference) <= 1e-5  # fp32 sums in a different order
        else:
            # The kernel dequantizes and accumulates in fp32 and rounds once: at most one bf16 step off.
            assert ((out.float() - reference).abs() <= reference.abs() * 2**-7 + 1e-6).all()


def test_kernel_layout_converts_back():
    weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(6))
    packed, scale, shape = int4.quantize_symmetric_int4(weight)
    back_packed, back_scale = int4.from_cpu_int4pack(*int4.to_cpu_int4pack(packed, scale, shape, torch.float32), 96, 64)
    assert torch.equal(back_packed, packed)
    assert torch.equal(back_scale, scale)


@pytest.mark.parametrize("layout", ["cpu_int4pack", "pack_quantized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_forward_equals_dense_expert(layout, dtype):
    from kimi_k25.model.config import TextConfig

    config = TextConfig.from_dict(RAW)
    generator = torch.Generator().manual_seed(7)
    dense = RoutedExperts(config)
    quantized = Int4RoutedExperts(config, layout).to(dtype)
    with torch.no_grad():
        for expert in range(2):
            for proj in ("gate_up_proj", "down_proj"):
                weight = torch.randn(quantized.shapes[proj], generator=generator) * 0.05
                packed, scale, shape = int4.quantize_symmetric_int4(weight)
                quantized.load_expert(proj, expert, packed, scale)
                getattr(dense, proj)[expert] = int4.dequantize(packed, scale, shape)
    for expert in range(2):
        x = torch.randn(6, config.hidden_size, generator=generator).to(dtype)
        expected = dense.expert_forward(expert, x.float())
        actual = quantized.expert_forward(expert, x)
        assert actual.dtype == dtype
        assert relative_error(actual.float(), expected) <= (1e-6 if dtype == torch.float32 else 2e-2)


# ----- the model -----------------------------------------------------------------------------------

def prompts_of(batch_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(batch_size)
    lengths = [13, 5, 9, 17, 3, 11, 7, 15][:batch_size]
    return [torch.randint(3, RAW["vocab_size"], (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_model_matches_dequantized_model(checkpoints, tmp_path, dtype, batch_size):
    """Prefill and decode through the cache give the logits of a dense model holding the dequantized experts.

    In bf16 the scales are first rounded to 5 significant bits, so that the dense model stores the
    dequantized weights exactly. With full scales, its bf16 rounding of q · scale alone moved the
    logits by up to 9e-3 of the largest one in a measurement, while the kernel keeps q · scale exact.
    """
    dense_dir, int4_dir = checkpoints
    if dtype == torch.bfloat16:
        int4_dir = shutil.copytree(int4_dir, tmp_path / "coarse")
        coarsen_scales(int4_dir)
    ours = load_checkpoint(int4_dir, dtype=dtype, progress=False)
    assert len(int4_experts(ours)) == NUM_MOE_LAYERS
    assert all(m.layout == "cpu_int4pack" for m in int4_experts(ours))
    reference = load_dequantized(dense_dir, int4_dir, dtype)

    prompts = prompts_of(batch_size)
    our_tokens, our_logits = our_greedy(ours, prompts, DECODE_STEPS)
    ref_tokens, ref_logits = our_greedy(reference, prompts, DECODE_STEPS)
    for i in range(batch_size):
        assert our_tokens[i] == ref_tokens[i], f"prompt {i}: greedy tokens differ"
        errors = [relative_error(a, b) for a, b in zip(our_logits[i], ref_logits[i])]
        assert max(errors) <= TOLERANCE, f"prompt {i}: per-step relative errors {errors}"


def test_portable_layout_matches_kernel_layout(checkpoints, monkeypatch):
    _, int4_dir = checkpoints
    kernel = load_checkpoint(int4_dir, dtype=torch.float32, progress=False)
    monkeypatch.setattr("kimi_k25.checkpoint.loader.choose_layout", lambda config, device: "pack_quantized")
    portable = load_checkpoint(int4_dir, dtype=torch.float32, progress=False)
    assert all(m.layout == "pack_quantized" for m in int4_experts(portable))
    ids = torch.arange(3, 30)
    with torch.no_grad():
        expected = kernel.compute_logits(kernel(ids, AttentionBatch.prefill([27])))
        actual = portable.compute_logits(portable(ids, AttentionBatch.prefill([27])))
    assert relative_error(actual, expected) <= 1e-5


def test_int4_expert_memory(checkpoints):
    dense_dir, int4_dir = checkpoints
    ours = load_checkpoint(int4_dir, dtype=torch.bfloat16, progress=False)
    dense = load_checkpoint(dense_dir, dtype=torch.bfloat16, progress=False)
    assert not any(".mlp.experts." in name for name, _ in ours.named_parameters())
    int4_bytes = sum(b.numel() * b.element_size() for m in int4_experts(ours) for b in m.buffers())
    dense_bytes = sum(p.numel() * p.element_size() for m in dense.modules() if isinstance(m, RoutedExperts)
                      for p in m.parameters())
    assert dense_bytes == NUM_MOE_LAYERS * NUM_EXPERTS * 3 * 64 * 32 * 2
    # 0.5 byte per weight for the nibbles and 0.125 for its share of the bf16 (scale, zero) pairs.
    assert int4_bytes / dense_bytes == pytest.approx(0.625 / 2)


# ----- loader errors -------------------------------------------------------------------------------

def _drop(name):
    return lambda tensors: tensors.pop(name)


def _replace(name, make):
    def edit(tensors):
        tensors[name] = make(tensors[name])
    return edit


LOADER_ERRORS = {
    "missing_scale": (_drop(f"{EXPERT}.3.up_proj.weight_scale"),
                      ["1 missing", "language_model.layers.1.mlp.experts.gate_up_proj[expert 3, up half].weight_scale"]),
    "missing_down_shape": (_drop(f"{EXPERT}.0.down_proj.weight_shape"),
                           ["language_model.layers.1.mlp.experts.down_proj[expert 0].weight_shape"]),
    "packed_too_narrow": (_replace(f"{EXPERT}.2.gate_proj.weight_packed", lambda t: t[:, :-1].contiguous()),
                          [f"{EXPERT}.2.gate_proj.weight_packed: stored [32, 7], the config implies [32, 8]",
                           "8 INT4 values per int32 word"]),
    "scale_wrong_groups": (_replace(f"{EXPERT}.2.down_proj.weight_scale", lambda t: t.repeat(1, 2)),
                           [f"{EXPERT}.2.down_proj.weight_scale: stored [64, 2], the config implies [64, 1]"]),
    "weight_shape_value": (_replace(f"{EXPERT}.4.gate_proj.weight_shape", lambda t: torch.tensor([32, 72], dtype=torch.int32)),
                           [f"{EXPERT}.4.gate_proj.weight_shape: holds [32, 72], the config implies [32, 64]"]),
    "packed_dtype": (_replace(f"{EXPERT}.5.up_proj.weight_packed", lambda t: t.to(torch.int64)),
                     [f"{EXPERT}.5.up_proj.weight_packed: stored dtype I64, expected I32"]),
    "expert_out_of_range": (lambda tensors: tensors.update({f"{EXPERT}.{NUM_EXPERTS}.down_proj.weight_shape":
                                                            torch.tensor([64, 32], dtype=torch.int32)}),
                            ["1 unexpected", f"{EXPERT}.{NUM_EXPERTS}.down_proj.weight_shape"]),
    "mixed_formats": (lambda tensors: tensors.update({f"{EXPERT}.7.down_proj.weight": torch.zeros(64, 32)}),
                      ["mixes INT4 routed experts", f"{EXPERT}.7.down_proj.weight", "kimi-k25 quantize"]),
}


@pytest.mark.parametrize("case", sorted(LOADER_ERRORS))
def test_loader_reports_bad_int4_parts(checkpoints, tmp_path, case):
    edit, fragments = LOADER_ERRORS[case]
    path = broken_copy(checkpoints[1], tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, dtype=torch.float32, progress=False)
    for fragment in fragments:
        assert fragment in str(info.value)


# ----- writing -------------------------------------------------------------------------------------

def test_quantize_cli_round_trip(checkpoints, tmp_path, capsys):
    dense_dir, _ = checkpoints
    src = shutil.copytree(dense_dir, tmp_path / "src")
    for name in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        (src / name).write_text(f"contents of {name}\n")
    dst = tmp_path / "dst"
    assert main(["quantize", str(src), str(dst), "--no-progress", "--max-shard-gib", "0.0001"]) == 0

    for name in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        assert (dst / name).read_text() == f"contents of {name}\n"
    config = json.loads((dst / "config.json").read_text())
    assert config["text_config"]["quantization_config"] == int4_quantization_config()
    assert config["text_config"]["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] == 32
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1

    source, written = read_tensors(src), read_tensors(dst)
    for name, tensor in source.items():
        if ".mlp.experts." not in name:
            assert torch.equal(written[name], tensor), name
            continue
        stem = name.removesuffix(".weight")
        packed, scale, shape = int4.quantize_symmetric_int4(tensor)
        assert torch.equal(written[f"{stem}.weight_packed"], packed), name
        assert torch.equal(written[f"{stem}.weight_scale"], scale), name
        assert written[f"{stem}.weight_shape"].tolist() == list(tensor.shape), name
    assert len(written) == len(source) + 2 * NUM_MOE_LAYERS * NUM_EXPERTS * 3
    assert len(int4_experts(load_checkpoint(dst, dtype=torch.float32, progress=False))) == NUM_MOE_LAYERS

    assert main(["quantize", str(dst), str(tmp_path / "again"), "--no-progress"]) == 1
    assert "already stores routed experts in INT4" in capsys.readouterr().err
    assert main(["quantize", str(src), str(dst), "--no-progress"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_quantize_splits_transformers_stacked_experts(checkpoints, tmp_path):
    dense_dir, int4_dir = checkpoints
    tensors = read_tensors(dense_dir)
    stacked = {}
    for layer in range(1, RAW["num_hidden_layers"]):
        stem = f"language_model.model.layers.{layer}.mlp.experts"
        gate_up = [torch.cat([tensors.pop(f"{stem}.{e}.gate_proj.weight"), tensors.pop(f"{stem}.{e}.up_proj.weight")])
                   for e in range(NUM_EXPERTS)]
        stacked[f"{stem}.gate_up_proj"] = torch.stack(gate_up)
        stacked[f"{stem}.down_proj"] = torch.stack([tensors.pop(f"{stem}.{e}.down_proj.weight")
                                                    for e in range(NUM_EXPERTS)])
    src = tmp_path / "stacked"
    src.mkdir()
    save_file({**tensors, **stacked}, src / "model.safetensors")
    shutil.copy(dense_dir / "config.json", src / "config.json")
    dst = quantize_checkpoint(src, tmp_path / "dst", max_shard_bytes=1 << 40, progress=False)
    written, expected = read_tensors(dst), read_tensors(int4_dir)
    assert written.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name


def test_save_checkpoint_int4_round_trip(checkpoints, tmp_path):
    dense_dir, int4_dir = checkpoints
    dense = load_checkpoint(dense_dir, dtype=torch.float32, progress=False)
    save_checkpoint(dense, tmp_path / "from_dense", int4_experts=True)
    loaded = load_checkpoint(int4_dir, dtype=torch.float32, progress=False)
    save_checkpoint(loaded, tmp_path / "from_int4", int4_experts=True)

    expected = read_tensors(int4_dir)
    for out in ("from_dense", "from_int4"):
        written = read_tensors(tmp_path / out)
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["text_config"]["quantization_config"] == int4_quantization_config()
        assert written.keys() == expected.keys(), out
        for name, tensor in expected.items():
            assert torch.equal(written[name], tensor), f"{out}: {name}"


def test_save_checkpoint_dequantizes_without_int4_experts(checkpoints, tmp_path):
    dense_dir, int4_dir = checkpoints
    ours = load_checkpoint(int4_dir, dtype=torch.float32, progress=False)
    save_checkpoint(ours, tmp_path / "dense", int4_experts=False)
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert "quantization_config" not in config["text_config"]
    reference = load_dequantized(dense_dir, int4_dir, torch.float32)
    reloaded = load_checkpoint(tmp_path / "dense", dtype=torch.float32, progress=False)
    for (name, a), (_, b) in zip(reference.named_parameters(), reloaded.named_parameters()):
        assert torch.equal(a, b), name
    with safe_open(tmp_path / "dense" / "model.safetensors", "pt") as handle:
        assert handle.get_tensor(f"{EXPERT}.0.gate_proj.weight").dtype == torch.float32
