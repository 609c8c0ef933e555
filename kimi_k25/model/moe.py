"""Sigmoid-routed mixture of experts with a shared expert (DeepSeek-V3 `noaux_tc` routing).

Legend: T = tokens, D = hidden_size, E = n_routed_experts, K = num_experts_per_tok,
I = moe_intermediate_size, G = n_group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k25.model.config import TextConfig
from kimi_k25.model.layers import MLP, swiglu


class Router(nn.Module):
    """Choose K experts per token and their weights.

    Scores are sigmoid(x·Wᵀ) in fp32. Experts are chosen by score + e_score_correction_bias,
    first limited to the `topk_group` groups whose two best biased scores sum highest, but
    weighted by the unbiased score: the bias balances load without changing the mixture.
    Weights are normalised over the K chosen (norm_topk_prob) and then multiplied by
    routed_scaling_factor.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        # Router weights stay fp32 whatever the model dtype, as in the reference implementation.
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size, dtype=torch.float32))
        self.e_score_correction_bias = nn.Parameter(
            torch.zeros(config.n_routed_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return expert indices (T, K) and weights (T, K), fp32."""
        scores_TE = torch.sigmoid(F.linear(x_TD.float(), self.weight.float()))
        choice_TE = scores_TE + self.e_score_correction_bias.float()

        if self.topk_group < self.n_group:
            num_tokens, num_experts = choice_TE.shape
            grouped = choice_TE.view(num_tokens, self.n_group, num_experts // self.n_group)
            group_scores_TG = grouped.topk(2, dim=-1).values.sum(dim=-1)
            top_groups = group_scores_TG.topk(self.topk_group, dim=-1).indices
            keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, top_groups, True)
            keep_TE = keep_TG[:, :, None].expand_as(grouped).reshape(num_tokens, num_experts)
            choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))

        indices_TK = choice_TE.topk(self.top_k, dim=-1).indices
        weights_TK = scores_TE.gather(1, indices_TK)
        if self.norm_topk_prob:
            weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
        return indices_TK, weights_TK * self.routed_scaling_factor


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored stacked: gate_up_proj (E, 2I, D), gate rows first, and down_proj (E, D, I)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        num_experts, hidden, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inter))

    def expert_forward(self, expert: int, x_ND: torch.Tensor) -> torch.Tensor:
        """Run the N tokens routed to `expert` through it, (N, D) -> (N, D)."""
        h = swiglu(F.linear(x_ND, self.gate_up_proj[expert]))
        return F.linear(h, self.down_proj[expert])

    def forward(self, x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor) -> torch.Tensor:
        """Run each token through its K experts and return the weighted sum, (T, D).

        The T·K (token, expert) pairs are sorted by expert so that each chosen expert runs once
        on a contiguous slice of its tokens; experts no token chose are not touched.
        """
        num_tokens, top_k = indices_TK.shape
        flat_experts = indices_TK.flatten()
        order = flat_experts.argsort(stable=True)
        token_of_pair = order // top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        active = counts.nonzero().flatten().tolist()
        ends = counts.cumsum(0).tolist()

        x_sorted = x_TD[token_of_pair]
        y_sorted = torch.empty_like(x_sorted)
        for expert in active:
            rows = slice(ends[expert] - int(counts[expert]), ends[expert])
            y_sorted[rows] = self.expert_forward(expert, x_sorted[rows])

        weighted = y_sorted.float() * weights_TK.flatten()[order, None]
        out = torch.zeros(num_tokens, x_TD.shape[-1], dtype=torch.float32, device=x_TD.device)
        out.index_add_(0, token_of_pair, weighted)
        return out.to(x_TD.dtype)


class MoE(nn.Module):
    """Routed experts plus the always-active, unweighted shared expert."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.gate = Router(config)
        self.experts = RoutedExperts(config)
        self.shared_experts = None
        if config.n_shared_experts > 0:
            self.shared_experts = MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        indices_TK, weights_TK = self.gate(x_TD)
        out = self.experts(x_TD, indices_TK, weights_TK)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x_TD)
        return out
