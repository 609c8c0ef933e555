"""Routed experts with INT4 weights, kept packed in memory and multiplied without a dense copy.

The weights come from compressed-tensors `pack-quantized` tensors (symmetric, one scale per 32
inputs; see kimi_k25.checkpoint.int4). Legend as in moe.py: E experts, D hidden_size,
I moe_intermediate_size, N tokens routed to one expert.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k25.checkpoint.int4 import (
    GROUP_SIZE,
    check_parts,
    cpu_kernel_supports,
    dequantize,
    from_cpu_int4pack,
    packed_shape,
    scale_shape,
    to_cpu_int4pack,
)
from kimi_k25.model.config import TextConfig
from kimi_k25.model.layers import swiglu
from kimi_k25.model.moe import MoE, RoutedExperts

Int4Layout = Literal["cpu_int4pack", "pack_quantized"]
PROJECTIONS = ("gate_up_proj", "down_proj")


def projection_shapes(config: TextConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each expert projection: gate_up (2I, D), gate rows first, and down (D, I)."""
    hidden, inter = config.hidden_size, config.moe_intermediate_size
    return {"gate_up_proj": (2 * inter, hidden), "down_proj": (hidden, inter)}


def choose_layout(config: TextConfig, device: str | torch.device) -> Int4Layout:
    """Return "cpu_int4pack" where torch's CPU INT4 kernel can run every expert projection, else "pack_quantized"."""
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and all(cpu_kernel_supports(out, inp) for out, inp in projection_shapes(config).values()):
        return "cpu_int4pack"
    return "pack_quantized"


class Int4RoutedExperts(RoutedExperts):
    """Routed experts whose weights stay INT4; routing and the weighted sum are those of RoutedExperts.

    Buffers for each projection P, gate_up_proj (out 2I, in D) and down_proj (out D, in I):

    - layout "cpu_int4pack": `P_int4pack`, uint8 (E, out, in/2) in the layout of torch's CPU
      kernel `_weight_int4pack_mm_for_cpu`, and `P_scales_and_zeros`, (E, in/32, out, 2) in the
      activation dtype with every zero 0. In bf16 that is 0.625 bytes per weight. The kernel
      dequantises in fp32 and accumulates in fp32. Torch vectorizes it for bf16 activations only,
      so fp32 models (as in tests) run a much slower scalar loop.
    - layout "pack_quantized": `P_weight_packed`, int32 (E, out, in/8), and `P_weight_scale`,
      (E, out, in/32), as the checkpoint stores them (0.5625 bytes per weight in bf16). Each
      expert is dequantised on its own when it runs, for devices and sizes the kernel cannot take.
    """

    def __init__(self, config: TextConfig, layout: Int4Layout = "cpu_int4pack") -> None:
        if layout not in ("cpu_int4pack", "pack_quantized"):
            raise ValueError(f"unknown INT4 layout {layout!r}; expected 'cpu_int4pack' or 'pack_quantized'")
        # RoutedExperts creates the dense (E, 2I, D) and (E, D, I) parameters. Built on the meta
        # device they take no memory, and they are dropped at once.
        with torch.device("meta"):
            super().__init__(config)
        del self.gate_up_proj
        del self.down_proj

        self.layout = layout
        self.shapes = projection_shapes(config)
        for proj, (out_features, in_features) in self.shapes.items():
            if layout == "cpu_int4pack":
                if not cpu_kernel_supports(out_features, in_features):
                    raise ValueError(f"the CPU INT4 kernel cannot run {proj} of shape [{out_features}, {in_features}]; "
                                     f"use layout 'pack_quantized'")
                self.register_buffer(f"{proj}_int4pack", torch.empty(
                    self.num_experts, out_features, in_features // 2, dtype=torch.uint8))
                self.register_buffer(f"{proj}_scales_and_zeros", torch.empty(
                    self.num_experts, in_features // GROUP_SIZE, out_features, 2))
            else:
                self.register_buffer(f"{proj}_weight_packed", torch.empty(
                    self.num_experts, *packed_shape(out_features, in_features), dtype=torch.int32))
                self.register_buffer(f"{proj}_weight_scale", torch.empty(
                    self.num_experts, *scale_shape(out_features, in_features)))

    @property
    def scale_dtype(self) -> torch.dtype:
        """Dtype of the scales, which is also the dtype the experts compute in on the CPU kernel."""
        name = "scales_and_zeros" if self.layout == "cpu_int4pack" else "weight_scale"
        return getattr(self, f"gate_up_proj_{name}").dtype

    @torch.no_grad()
    def load_expert(self, proj: str, expert: int, weight_packed: torch.Tensor, weight_scale: torch.Tensor) -> None:
        """Fill one expert's projection from checkpoint tensors, int32 [out, in/8] and [out, in/32].

        For gate_up_proj pass the gate rows, then the up rows, concatenated along dim 0.
        """
        out_features, in_features = self.shapes[proj]
        check_parts(weight_packed, weight_scale, (out_features, in_features))
        if self.layout == "cpu_int4pack":
            table = getattr(self, f"{proj}_scales_and_zeros")
            packed, scales_and_zeros = to_cpu_int4pack(weight_packed, weight_scale, (out_features, in_features),
                                                       table.dtype)
            getattr(self, f"{proj}_int4pack")[expert].copy_(packed)
            table[expert].copy_(scales_and_zeros)
        else:
            getattr(self, f"{proj}_weight_packed")[expert].copy_(weight_packed)
            getattr(self, f"{proj}_weight_scale")[expert].copy_(weight_scale)

    @torch.no_grad()
    def export_expert(self, proj: str, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one expert's projection as checkpoint tensors (weight_packed int32, weight_scale bf16)."""
        out_features, in_features = self.shapes[proj]
        if self.layout == "cpu_int4pack":
            return from_cpu_int4pack(getattr(self, f"{proj}_int4pack")[expert].cpu(),
                                     getattr(self, f"{proj}_scales_and_zeros")[expert].cpu(),
                                     out_features, in_features)
        return (getattr(self, f"{proj}_weight_packed")[expert].cpu().clone(),
                getattr(self, f"{proj}_weight_scale")[expert].cpu().to(torch.bfloat16))

    def expert_forward(self, expert: int, x_ND: torch.Tensor) -> torch.Tensor:
        """Run the N tokens routed to `expert` through it, (N, D) -> (N, D)."""
        h = swiglu(self._project("gate_up_proj", expert, x_ND))
        return self._project("down_proj", expert, h)

    def _project(self, proj: str, expert: int, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "pack_quantized":
            weight = dequantize(getattr(self, f"{proj}_weight_packed")[expert],
                                getattr(self, f"{proj}_weight_scale")[expert], self.shapes[proj], dtype=x.dtype)
            return F.linear(x, weight)

        if x.device.type != "cpu":
            raise RuntimeError(f"INT4 experts packed for the CPU kernel cannot run on {x.device}; load the "
                               f"checkpoint with that device so that the portable 'pack_quantized' layout is used")
        # NOTE: the kernel dequantizes the weight again for every 4 rows of x, so its time grows with N.
        # For a Kimi K2.5 expert on one core of a 2-core AVX512 machine it was 3x faster than bf16
        # F.linear for 1 token, as fast for 8 and 1.8x slower for 32; no dequantized path exists for large N.
        scales_and_zeros = getattr(self, f"{proj}_scales_and_zeros")[expert]
        # The kernel takes activations in the dtype of its (scale, zero) table: bf16, fp16 or fp32.
        x_in = x.to(scales_and_zeros.dtype).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x_in, getattr(self, f"{proj}_int4pack")[expert],
                                                        GROUP_SIZE, scales_and_zeros)
        return y.to(x.dtype)


def use_int4_experts(model: nn.Module, config: TextConfig, layout: Int4Layout | None = None) -> int:
    """Replace the RoutedExperts of every MoE layer of a meta-device model with Int4RoutedExperts.

    The layout defaults to `choose_layout(config, "cpu")`. Returns the number of layers replaced.
    """
    layout = layout or choose_layout(config, "cpu")
    replaced = 0
    for name, module in model.named_modules():
        if not isinstance(module, MoE) or isinstance(module.experts, Int4RoutedExperts):
            continue
        if not module.experts.gate_up_proj.is_meta:
            raise ValueError(f"{name}.experts already contains weights; use_int4_experts only prepares a "
                             f"model built on the meta device for loading an INT4 checkpoint")
        with torch.device("meta"):
            module.experts = Int4RoutedExperts(config, layout)
        replaced += 1
    return replaced
