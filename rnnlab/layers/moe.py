"""Mixture of experts for the block's MLP slot: ``ModelConfig(mlp="moe", mlp_kwargs={"num_experts": 16, "top_k": 2})``.

A router (a linear map D -> E, no bias) scores each token; its top-k experts, gated MLPs (SwiGLU, or GeGLU), run on
it and their outputs are summed with the routing weights (rnnlab.ops.moe: Shazeer et al. 2017's sparsely-gated
layer; top-2 with SwiGLU experts as Mixtral, Jiang et al. 2024, and Jamba, Lieber et al. 2024, Sec. 2). Dropless:
no capacity factor, every token gets all its k experts, so a token's output depends on that token alone (packing and
padding are invisible to it; it holds no state: ``state_size`` is 0).

``normalize_topk``: the k weights renormalized to sum to 1 (Mixtral; Qwen3-Next's norm_topk_prob) or the raw softmax
probabilities (False: Switch, and Jamba's released modeling code, which takes softmax then top-k without
renormalizing; mlx-lm's Jamba port renormalizes, a disagreement of the public code; the paper does not say). With
top_k=1 renormalizing makes the weight 1 and leaves the router without gradient: Switch (top-1) uses False.
``shared_hidden_size``: one more gated MLP of that hidden size applied to every token with weight 1 (DeepSeekMoE's
shared expert, Dai et al. 2024); ``shared_gate`` scales it by sigmoid(x·w_g) per token (Qwen2-MoE / Qwen3-Next).

After each call ``aux_loss`` holds the call's load-balancing loss (rnnlab.ops.moe.load_balancing_loss, over the
call's tokens); ``SequenceModel.aux_loss()`` averages it over the MoE layers and the trainer adds it times
``train.aux_loss_coef``. Padded batches reach the layers packed (SequenceModel drops the padding), so padding never
enters it.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.moe import ACTIVATIONS, experts_grouped, glu, load_balancing_loss, route
from rnnlab.ops.varlen import Packing


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """nn.Linear's default initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for stacked expert weights."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def glu_hidden_size(d_model: int) -> int:
    """The SwiGLU hidden size of ModelConfig's default mlp_ratio 4: 2/3 * 4 * d_model rounded up to a multiple of 8."""
    return 8 * math.ceil(8 * d_model / 3 / 8)


@register_mixer("moe", family="other", small={"num_experts": 4, "top_k": 2, "hidden_size": 32})
class MoE(Mixer):
    """x (B, T, D) -> y (B, T, D): top-k routed gated-MLP experts per token (module docstring)."""

    def __init__(self, d_model: int, num_experts: int = 8, top_k: int = 2, hidden_size: int | None = None,
                 activation: str = "silu", normalize_topk: bool = True, shared_hidden_size: int | None = None,
                 shared_gate: bool = False):
        super().__init__(d_model)
        if top_k > num_experts:
            raise ValueError(f"top_k={top_k} must be <= num_experts={num_experts}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if shared_gate and shared_hidden_size is None:
            raise ValueError("shared_gate=True needs a shared expert (shared_hidden_size)")
        D, H = d_model, hidden_size or glu_hidden_size(d_model)
        self.num_experts, self.top_k, self.hidden_size = num_experts, top_k, H
        self.activation, self.normalize_topk = activation, normalize_topk
        self.router = nn.Linear(D, num_experts, bias=False)
        self.w13 = _uniform(num_experts, D, 2 * H, fan_in=D)  # [W1 | W3] of each expert
        self.w2 = _uniform(num_experts, H, D, fan_in=H)
        self.shared = None
        if shared_hidden_size is not None:
            self.shared = nn.ParameterDict({"w13": _uniform(D, 2 * shared_hidden_size, fan_in=D),
                                            "w2": _uniform(shared_hidden_size, D, fan_in=shared_hidden_size)})
        self.shared_gate = nn.Linear(D, 1, bias=False) if shared_gate else None
        self.aux_loss: Tensor | None = None

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {}

    def state_size(self, seq_len: int) -> int:
        return 0

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        B = x.shape[0]
        flat = rearrange(x, "b t d -> (b t) d")
        weights, experts, probs = route(self.router(flat), self.top_k, self.normalize_topk)
        y = experts_grouped(flat, experts, weights, self.w13.to(x.dtype), self.w2.to(x.dtype), self.activation)
        if self.shared is not None:
            s = glu(flat, self.shared["w13"].to(x.dtype), self.shared["w2"].to(x.dtype), ACTIVATIONS[self.activation])
            y = y + (s if self.shared_gate is None else torch.sigmoid(self.shared_gate(flat)) * s)
        self.aux_loss = load_balancing_loss(probs, experts)
        return rearrange(y, "(b t) d -> b t d", b=B), {}

    step = parallel  # one token: the same computation

    def packed(self, x: Tensor, state: State, packing: Packing, dt: Tensor | None = None) -> tuple[Tensor, State]:
        """Token-wise: the packed sequences in one call (the aux loss over all their tokens)."""
        return self.parallel(x, state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}, hidden_size={self.hidden_size}, "
                f"activation={self.activation!r}, normalize_topk={self.normalize_topk}, shared={self.shared is not None}")
