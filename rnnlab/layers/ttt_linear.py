"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States"), and the
body TTT-MLP (ttt_mlp.py) shares.

The hidden state of each head is a model f trained on the sequence while it is read (rnnlab/ops/ttt.py):

    q, k, v = W_Q x, W_K x, W_V x per head (θ_Q, θ_K, θ_V: the learnable views, §2.3), rotary positions r = t mod b
    f(x; W) = x + LN_{γ,β}(g(x; W)),   g = x W1 + b1 (TTT-Linear)  |  GELU(x W1 + b1) W2 + b2 (TTT-MLP, 4x hidden)
    ℓ(W; k, v) = ½ ‖f(k; W) − v‖² = ½ ‖LN(g(k; W)) − (v − k)‖²                           (§2.7: LN + residual)
    lr_t = base_lr · σ(θ_lr · x_t + b_lr) / head_dim                                     (§2.7: learnable η)
    τ_r = max(0, 1/(r+1) + δ_r)                                                          (the authors' token scale)
    W_t = W_{t'} − τ_r Σ_{s=t'}^{t} lr_s ∇ℓ(W_{t'}; k_s, v_s)     mini-batches of b = 16, gradients at their start (§2.4)
    o_t = f(q_t; W_t);   y = W_O LayerNorm(o)  (× GELU(W_g x) with ``gate``, the Mamba-backbone variant)

As in the paper and the authors' code (ttt-lm-pytorch): γ, β of the inner LN are outer parameters (one per head,
never updated by the inner steps); the initial weights W_0 are learned (W ~ N(0, 0.02), b = 0); the inner learning
rate is per token and per head; rotary embeddings use the position within the mini-batch (position_ids % b);
post-norm is a LayerNorm (eps 1e-6). Where paper and code differ: the code scales the mini-batch's gradient sum
by τ_r (the "token_idx" 1/(r+1) plus a learned offset, clamped at 0) where the paper's mini-batch GD sums plainly;
τ is the default here (the issue's specification), ``token_scale=False`` gives the paper's plain sum.
The Mamba backbone's shared-q/k temporal convolutions are not included.

State: the memory's weights at the mini-batch start {"w1", "b1"[, "w2", "b2"]} (B, H, ·), the accumulated
lr-weighted gradients {"g_w1", ...} and "pos" (B,) the position r in the mini-batch — the authors' decode state
(W_states, W_grad, seqlen_offset % b), so a sequence split anywhere equals the whole. The parallel form is the
mini-batch dual form, the step the per-token primal update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import fused_linear, param_derived, rotary, rotary_cos_sin, rotary_inv_freq
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.ttt import LN_EPS, chunk_ttt, fused_recurrent_ttt, memory_keys

__all__ = ["TTTLinear"]


class _TTTMixer(Mixer):
    """Shared body of TTT-Linear and TTT-MLP: x (B, T, D) -> y (B, T, D); see the module docstring.

    num_heads: H (head_dim = D / H); mini_batch_size: b; base_lr: η_base; depth: 1 (linear) or 2 (MLP, hidden
    4·head_dim); rope: rotary q, k at the position within the mini-batch; gate: the GELU output gate;
    token_scale: the authors' τ_r (False: the paper's plain sum, τ ≡ 1).
    """

    def __init__(self, d_model: int, num_heads: int, mini_batch_size: int, base_lr: float, depth: int, rope: bool, gate: bool,
                 token_scale: bool, rope_base: float = 10000.0):
        super().__init__(d_model)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        hd = d_model // num_heads
        if rope and hd % 2:
            raise ValueError(f"rope needs an even head size, got d_model / num_heads = {hd}")
        if not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        self.num_heads, self.head_dim, self.mini_batch_size, self.base_lr = num_heads, hd, mini_batch_size, base_lr
        self.depth, self.rope, self.rope_base, self.token_scale = depth, rope, rope_base, token_scale
        H = num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        # learnable inner learning rate per head (§2.7), initialised as the authors' JAX code: N(0, 0.02), bias 0
        self.lr_weight = nn.Parameter(0.02 * torch.randn(H, d_model))
        self.lr_bias = nn.Parameter(torch.zeros(H))
        self.token_offset = nn.Parameter(torch.zeros(mini_batch_size)) if token_scale else None
        # learned initial weights of the inner model, per head
        hidden = hd if depth == 1 else 4 * hd
        self.w1 = nn.Parameter(0.02 * torch.randn(H, hd, hidden))
        self.b1 = nn.Parameter(torch.zeros(H, hidden))
        if depth == 2:
            self.w2 = nn.Parameter(0.02 * torch.randn(H, hidden, hd))
            self.b2 = nn.Parameter(torch.zeros(H, hd))
        self.ln_weight = nn.Parameter(torch.ones(H, hd))   # the inner LN's γ, β: outer parameters
        self.ln_bias = nn.Parameter(torch.zeros(H, hd))
        self.post_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.g_proj = nn.Linear(d_model, d_model, bias=False) if gate else None
        no_weight_decay(self.lr_bias, self.ln_weight, self.ln_bias)

    @property
    def _names(self) -> tuple[str, ...]:
        return memory_keys(self.depth, True)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        state = {}
        for n in self._names:
            w = getattr(self, n).to(device=device, dtype=dtype)
            state[n] = w.unsqueeze(0).expand(batch_size, *w.shape)
            state["g_" + n] = torch.zeros(batch_size, *w.shape, device=device, dtype=dtype)
        state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return state

    def state_size(self, seq_len: int) -> int:
        return 2 * sum(getattr(self, n).numel() for n in self._names) + 1

    def _tau(self) -> Tensor:
        b = self.mini_batch_size
        base = 1.0 / torch.arange(1, b + 1, device=self.lr_bias.device, dtype=torch.float32)
        if self.token_offset is None:
            return torch.ones_like(base)
        return (base + self.token_offset.float()).clamp_min(0.0)

    def _mix(self, x: Tensor, state: State, op) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        H = self.num_heads
        q, k, v = (rearrange(p(x), "b t (h d) -> b t h d", h=H) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope:  # rotary at the position within the mini-batch, as the authors' position_ids % b
            cos, sin = rotary_cos_sin((state["pos"][:, None] + torch.arange(T, device=x.device)) % self.mini_batch_size,
                                      self.head_dim, self.rope_base)
            q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        lr = self.base_lr / self.head_dim * torch.sigmoid(torch.einsum("btd,hd->bth", x.float(), self.lr_weight.float())
                                                          + self.lr_bias.float())
        o, new = op(q, k, v, lr, self._tau(), state, self.ln_weight, self.ln_bias, residual=True, activation="gelu", loss="half_l2",
                    output_final_state=True)
        o = self.post_norm(rearrange(o, "b t h d -> b t (h d)"))
        if self.g_proj is not None:
            o = F.gelu(self.g_proj(x), approximate="tanh") * o
        return self.o_proj(o.to(x.dtype)), {n: (t.to(state[n].dtype) if t.is_floating_point() else t) for n, t in new.items()}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): the mini-batch dual form (chunk_ttt)."""
        return self._mix(x, state, chunk_ttt)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): the per-token primal update (fused_recurrent_ttt); on CPU without autograd the fused
        decode kernel of the memory's depth (rnnlab.ops.decode) between the projections."""
        if decode.usable(x, *(t for t in state.values() if t.is_floating_point()), self.lr_bias):
            return self._decode(x, state)
        return self._mix(x, state, fused_recurrent_ttt)

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys = [c + n for n in self._names for c in ("", "g_")] + ["pos"]  # w1, g_w1, b1, g_b1[, w2, g_w2, b2, g_b2], pos
        # the token scales (a constant without token_offset) and the rotary frequencies, computed once
        tau = param_derived(self, "_decode_tau", lambda *_: self._tau(), *([] if self.token_offset is None else [self.token_offset]))
        inv_freq = param_derived(self, "_inv_freq", lambda: rotary_inv_freq(self.head_dim, self.rope_base))
        H, K, F_ = self.num_heads, self.head_dim, self.b1.shape[-1]
        scratch = [2 * K, 3 * K] if self.depth == 1 else [H * 2 * K, H * 3 * F_, H * 3 * K]  # the MLP's per head (threads)
        out, new = decode.fused_step(
            "ttt_linear_decode" if self.depth == 1 else "ttt_mlp_decode", self,
            [fused_linear(x, [self.q_proj, self.k_proj, self.v_proj], whole=True), x], [state[k] for k in keys],
            [self.lr_weight, self.lr_bias, tau, self.ln_weight, self.ln_bias, inv_freq, self.post_norm.weight, self.post_norm.bias],
            self.d_model, scratch, self.base_lr / K, self.rope, LN_EPS, self.post_norm.eps)
        if self.g_proj is not None:
            out = F.gelu(decode.linear(self.g_proj, x), approximate="tanh") * out
        return decode.linear(self.o_proj, out), dict(zip(keys, new))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, mini_batch_size={self.mini_batch_size}, depth={self.depth}, "
                f"base_lr={self.base_lr}, rope={self.rope}, gate={self.g_proj is not None}, token_scale={self.token_scale}")


@register_mixer("ttt_linear", family="ttt", small={"num_heads": 2, "mini_batch_size": 8})
class TTTLinear(_TTTMixer):
    """TTT-Linear: x (B, T, D) -> y (B, T, D); the inner model is a linear map per head (module docstring).
    State floats: 2·H·(hd² + hd) + 1 (weights at the mini-batch start, accumulated gradients, position)."""

    def __init__(self, d_model: int, num_heads: int = 4, mini_batch_size: int = 16, base_lr: float = 1.0, rope: bool = True,
                 gate: bool = False, token_scale: bool = True):
        super().__init__(d_model, num_heads, mini_batch_size, base_lr, depth=1, rope=rope, gate=gate, token_scale=token_scale)
