"""mLSTM block of xLSTM (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter &
Hochreiter 2024, "xLSTM: Extended Long Short-Term Memory", NeurIPS; the mLSTM cell Section 2.3,
eqs. 19-27, and the pre-up-projection mLSTM block of Appendix B / Fig. 10).

    x_m, z = split(x W_up)                                up-projection by ``proj_factor`` (2)
    c = SiLU(causal_conv4(x_m))
    q, k = c W_q, c W_k;  v = x_m W_v                     block-diagonal projections (blocks of 4)
    i~, f~ = [q, k, v] W_i + b_i, [q, k, v] W_f + b_f      one input and one forget gate per head
    h~ = mLSTM(q, k, v, i~, f~)                           exp input gate, sigmoid forget gate, normalizer
                                                          and stabilizer (``rnnlab.ops.mlstm``; k / sqrt(d))
    h = (GroupNorm_head(h~) + s ⊙ c) ⊙ SiLU(z)            learnable skip s, output gate SiLU(z)
    y = h W_down

Initialization as the authors' code: W_up and the q/k/v blocks small-init (N(0, 2/(5·fan_in))), W_down
Wang-init (N(0, (2 / (num_layers · sqrt(D)))²)), gate weights zero, forget bias linspace(3, 6) over the
heads, input bias N(0, 0.1²), skip 1, norm weight 1. The output gate of the cell (eq. 24) is the block's
SiLU(z) branch, as in the paper's block. Difference from the authors' code: no ε = 1e-6 added to the
normalizer max(|n_tᵀ q_t|, e^{-m_t}) (the paper's eq. 21 has none).

``layout="dense"``: the mLSTM layer of xLSTM 7B (Beck, Pöppel, Lippe, Kurle, Blies, Klambauer, Böck &
Hochreiter 2025, "xLSTM 7B: A Recurrent LLM for Fast and Efficient Inference", Fig. 1 and its architecture
section; HF transformers' ``xLSTMLayer``), the "post-up-projection" layer the authors scale to 7B parameters:

    q, k, v, o = x W_q, x W_k, x W_v, x W_o              dense, q/k of width qk_dim_factor · d_inner
    i~, f~ = cap · tanh((x W_if + b_if) / cap)            gates from x, soft-capped (``gate_soft_cap``)
    h~ = mLSTM(q, k, v, i~, f~; eps)                      ``eps`` added to the stabilized denominator
    y = (LayerNorm_head(h~) ⊙ w ⊙ sigmoid(o)) W_down      no conv, no skip, sigmoid output gate

Init as the authors' code: W_q, W_k, W_v, W_o small-init, W_down Wang-init, gate weights zero, input bias -10
(their negative input-gate bias), forget bias linspace(3, 6). (The SwiGLU MLP, RMSNorms and the logit soft cap
of xLSTM 7B are the model's: ModelConfig mlp="swiglu", logit_soft_cap.) ``gate_soft_cap`` and ``eps`` apply to
either layout.

State: conv (B, 3, d_inner) ("block" only), C (B, H, dk, d), n (B, H, dk), m (B, H); float32 (d = d_inner / H,
dk = qk_dim_factor · d).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import ShortConv, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import cast
from rnnlab.ops.forms import choose
from rnnlab.ops.mlstm import chunk_mlstm, fused_recurrent_mlstm, mlstm_step

__all__ = ["MLSTM", "HeadwiseLinear"]

_FEW_ROWS = 16  # up to this many rows, HeadwiseLinear multiplies block by block (decode: B rows, T = 1)


class HeadwiseLinear(nn.Module):
    """Block-diagonal projection (xLSTM's LinearHeadwiseExpand): x (..., nb·d_in) -> (..., nb·d_out),
    block j maps x[..., j] (d_in) with its own (d_out, d_in) matrix. Small-init N(0, 2 / (5 d_in))."""

    def __init__(self, dim: int, block_size: int, d_out_per_block: int | None = None):
        super().__init__()
        if block_size < 1 or dim % block_size:
            raise ValueError(f"dim={dim} must be divisible by block_size={block_size}")
        self.num_blocks, self.block_size = dim // block_size, block_size
        d_out = d_out_per_block or block_size
        self.weight = nn.Parameter(torch.randn(self.num_blocks, d_out, block_size) * math.sqrt(2 / (5 * block_size)))

    def forward(self, x: Tensor, rows: slice = slice(None)) -> Tensor:
        """x (..., nb·d_in) -> (..., nb·d_rows): the output rows ``rows`` of every block (all by default).

        Runs as one bmm over groups of g consecutive blocks, each group a dense (g·d_in, g·d_out) block-diagonal matrix with g·d_in <= 64: g times the FLOPs of the
        blocks alone, but matmuls of useful size on strided views, measured 2-3x faster (forward and
        backward) than the per-block einsum, whose 4-wide matmuls and layout copies dominate."""
        nb, d_in = self.num_blocks, self.block_size
        if x.numel() <= _FEW_ROWS * x.shape[-1]:  # decode: building the block-diagonal matrices would dominate;
            # a broadcast multiply and sum over d_in (a few thousand products: einsum's bmm costs ~5x that)
            w = self.weight if rows == slice(None) else self.weight[:, rows]
            y = (x.reshape(-1, nb, 1, d_in) * cast(w, x.dtype)).sum(-1)
            return y.reshape(*x.shape[:-1], -1)
        g = max(c for c in range(1, nb + 1) if nb % c == 0 and c * d_in <= max(64, d_in))
        w = self.weight[:, rows].to(x.dtype).unflatten(0, (nb // g, g))  # (ng, g, d_out, d_in)
        eye = torch.eye(g, dtype=x.dtype, device=x.device)
        w = torch.einsum("giod,ij->gidjo", w, eye).flatten(3).flatten(1, 2)  # (ng, g·d_in, g·d_out) block-diagonal
        y = torch.bmm(x.reshape(-1, nb // g, g * d_in).transpose(0, 1), w)  # (ng, N, g·d_out)
        return y.transpose(0, 1).reshape(*x.shape[:-1], -1)


@register_mixer("mlstm", family="matrix", small={"num_heads": 2, "chunk_size": 16})
class MLSTM(Mixer):
    """x (B, T, D) -> y (B, T, D). num_heads: H; proj_factor: d_inner = proj_factor · D (the value width);
    conv_size, qkv_block_size: causal conv width and q/k/v block size ("block" layout); num_layers: depth, for
    W_down's init; chunk_size: chunk of the parallel form; forget_gate: "sigmoid" (paper default) or "exp";
    norm_eps: the per-head norm's; layout: "block" (the paper's pre-up-projection block) or "dense" (xLSTM 7B's
    layer); qk_dim_factor: q/k width / d_inner ("dense"); gate_soft_cap: cap of the gate pre-activations (None:
    none); eps: added to the cell's stabilized denominator (0: the paper's eq. 21)."""

    def __init__(self, d_model: int, num_heads: int = 4, proj_factor: float = 2.0, conv_size: int = 4, qkv_block_size: int = 4,
                 num_layers: int = 1, chunk_size: int = 64, forget_gate: str = "sigmoid", norm_eps: float = 1e-5,
                 layout: str = "block", qk_dim_factor: float = 1.0, gate_soft_cap: float | None = None, eps: float = 0.0):
        super().__init__(d_model)
        d_inner = int(round(proj_factor * d_model))
        qk_dim = int(round(qk_dim_factor * d_inner))
        if layout not in ("block", "dense"):
            raise ValueError(f"layout must be 'block' or 'dense', got {layout!r}")
        if layout == "block" and qk_dim_factor != 1.0:
            raise ValueError(f"qk_dim_factor={qk_dim_factor} needs layout='dense' (the block's q/k have width d_inner)")
        if num_heads < 1 or d_inner % num_heads or qk_dim % num_heads or (layout == "block" and d_inner % qkv_block_size):
            raise ValueError(f"d_inner = proj_factor * d_model = {d_inner} and qk_dim = qk_dim_factor * d_inner = {qk_dim} must be "
                             f"divisible by num_heads={num_heads} (and d_inner by qkv_block_size={qkv_block_size} for layout='block')")
        if forget_gate not in ("sigmoid", "exp"):
            raise ValueError(f"forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if gate_soft_cap is not None and not gate_soft_cap > 0:
            raise ValueError(f"gate_soft_cap must be > 0 or None, got {gate_soft_cap}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        H = num_heads
        self.d_inner, self.qk_dim, self.num_heads, self.head_dim = d_inner, qk_dim, H, d_inner // H
        self.chunk_size, self.forget_gate, self.norm_eps, self.layout = chunk_size, forget_gate, norm_eps, layout
        self.gate_soft_cap, self.eps = gate_soft_cap, eps
        if layout == "block":
            self.proj_up = nn.Linear(d_model, 2 * d_inner, bias=False)
            self.conv = ShortConv(d_inner, conv_size, bias=True, activation="silu")
            self.qk = HeadwiseLinear(d_inner, qkv_block_size, 2 * qkv_block_size)  # q and k blocks side by side
            self.v = HeadwiseLinear(d_inner, qkv_block_size)
            self.gates = nn.Linear(3 * d_inner, 2 * H)  # [i~ | f~] from [q, k, v]
        else:
            self.in_proj = nn.Linear(d_model, 2 * qk_dim + 2 * d_inner, bias=False)  # [q | k | v | o]
            self.gates = nn.Linear(d_model, 2 * H)  # [i~ | f~] from x
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        if layout == "block":
            self.skip = nn.Parameter(torch.ones(d_inner))
        self.proj_down = nn.Linear(d_inner, d_model, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.proj_up.weight if layout == "block" else self.in_proj.weight, std=math.sqrt(2 / (5 * d_model)))
            nn.init.normal_(self.proj_down.weight, std=2 / num_layers / math.sqrt(d_model))
            nn.init.zeros_(self.gates.weight)
            if layout == "block":
                nn.init.normal_(self.gates.bias[:H], std=0.1)
            else:
                nn.init.constant_(self.gates.bias[:H], -10.0)
            self.gates.bias[H:] = torch.linspace(3.0, 6.0, H)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        H, d, dk = self.num_heads, self.head_dim, self.qk_dim // self.num_heads
        z = lambda *shape: torch.zeros(batch_size, *shape, device=device, dtype=dtype or torch.float32)  # noqa: E731
        conv = {"conv": self.conv.init_state(batch_size, device, dtype)} if self.layout == "block" else {}
        return {**conv, "C": z(H, dk, d), "n": z(H, dk), "m": z(H)}

    def state_size(self, seq_len: int) -> int:
        H, d, dk = self.num_heads, self.head_dim, self.qk_dim // self.num_heads
        return (self.conv.state_size() if self.layout == "block" else 0) + H * (dk * d + dk + 1)

    def _inputs(self, x: Tensor, state: State) -> tuple[Tensor, ...]:
        """x -> q, k, v, gate pre-activations [i~ | f~], the output branch's input (c or o), z (or None), conv state."""
        if self.layout == "dense":
            proj, g = fused_linear(x, [self.in_proj, self.gates])  # one matmul without autograd
            q, k, v, o = proj.split([self.qk_dim, self.qk_dim, self.d_inner, self.d_inner], -1)
            return q, k, v, g, o, None, None
        xm, z = self.proj_up(x).chunk(2, -1)
        c, conv_state = self.conv(xm, state["conv"])
        bs = self.v.block_size
        q, k = self.qk(c, slice(0, bs)), self.qk(c, slice(bs, 2 * bs))  # each block's rows: [q | k]
        v = self.v(xm)
        W, E = self.gates.weight, self.d_inner  # gates([q, k, v]) without materializing the concatenation
        g = F.linear(q, W[:, :E], self.gates.bias) + F.linear(k, W[:, E : 2 * E]) + F.linear(v, W[:, 2 * E :])
        return q, k, v, g, c, z, conv_state

    def _gates(self, g: Tensor) -> Tensor:
        """Gate pre-activations [i~ | f~] (B, T, 2H) in float32, soft-capped if asked."""
        g = cast(g, torch.float32)
        return g if self.gate_soft_cap is None else self.gate_soft_cap * torch.tanh(g / self.gate_soft_cap)

    def _output(self, x: Tensor, h: Tensor, c: Tensor, z: Tensor | None, conv_state: Tensor | None, final, state: State):
        """The cell's h (B, T, H, d) -> (y, new state): per-head norm, output gate (and skip), down-projection."""
        h = F.layer_norm(h, h.shape[-1:], eps=self.norm_eps).flatten(-2)  # GroupNorm over heads = LayerNorm per head
        w = cast(self.norm_weight, h.dtype)
        if self.layout == "dense":
            h = h * w * torch.sigmoid(c)
        else:
            h = torch.addcmul(cast(self.skip, c.dtype) * c, h, w) * F.silu(z)
        C, n, m = final
        new = {"C": C, "n": n, "m": m} if conv_state is None else {"conv": conv_state, "C": C, "n": n, "m": m}
        return self.proj_down(cast(h, x.dtype)), {key: cast(t, state[key].dtype) for key, t in new.items()}

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state) by the chunkwise ("chunk") or the recurrent ("recurrent") form; one token of the
        recurrent form runs ``ops.mlstm.mlstm_step`` (the form's token without its time-axis bookkeeping or re-checking
        the shapes this layer builds; heads as views)."""
        op = choose(form, {"chunk": partial(chunk_mlstm, chunk_size=self.chunk_size), "recurrent": fused_recurrent_mlstm}, "mlstm")
        q, k, v, g, c, z, conv_state = self._inputs(x, state)
        (B, T, _), H = x.shape, self.num_heads
        s0 = tuple(cast(state[key], torch.float32) for key in ("C", "n", "m"))
        kw = dict(initial_state=s0, forget_gate=self.forget_gate, eps=self.eps)  # scale: d^-1/2 (eq. 22)
        if T == 1 and op is fused_recurrent_mlstm:
            i, f = self._gates(g).view(B, 1, 2, H).unbind(2)
            h, final = mlstm_step(q.view(B, 1, H, -1), k.view(B, 1, H, -1), v.view(B, 1, H, -1), i, f, **kw)
        else:
            i, f = rearrange(self._gates(g), "b t (two h) -> two b t h", two=2)
            heads = lambda t: rearrange(t, "b t (h d) -> b t h d", h=H)  # noqa: E731
            h, final = op(heads(q), heads(k), heads(v), i, f, output_final_state=True, **kw)
        return self._output(x, h, c, z, conv_state, final, state)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise mLSTM; on CPU without autograd the cell and its norm as one numba pass over
        the prompt (``_prompt``)."""
        if decode.usable(x, *state.values(), self.norm_weight, prompt=True):
            return self._prompt(x, state)
        return self._mix(x, state, "chunk")

    def _prompt(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The recurrent form over the prompt, token by token per (row, head), with the norm (and the dense layout's
        output gate) fused (``_decode_numba.mlstm_prefill``): the chunk form's masked matmuls and its dozen element-wise
        passes cost more on a CPU than the K·V products per token (docs/benchmarks.md). Its reference is the layer's torch
        step token by token (tests/ops/test_decode.py); the chunk form's rounding differs from both by up to ~1e-5."""
        (B, T, _), H, E, QK = x.shape, self.num_heads, self.d_inner, self.qk_dim
        cap, sig = float(self.gate_soft_cap or 0.0), self.forget_gate == "sigmoid"
        if self.layout == "dense":
            proj = fused_linear(x, [self.in_proj, self.gates], whole=True)
            inputs, offsets, conv_state = [proj] * 5, (0, QK, 2 * QK, 2 * QK + E, 2 * QK + 2 * E), None
        else:
            q, k, v, g, c, z, conv_state = self._inputs(x, state)
            inputs, offsets = [q, k, v, q, g], (0, 0, 0, 0, 0)
        s0 = [cast(state[key], torch.float32) for key in ("C", "n", "m")]
        h, (C, n, m) = decode.fused_prompt("mlstm_prefill", self, inputs, s0, [self.norm_weight], (B, T, E), [(B * H, 3 * E // H)], B * H,
                                           *offsets, self.layout == "dense", cap, sig, self.eps, self.norm_eps, x.dtype == torch.float32)
        if self.layout == "block":
            h = (self.skip * c + h) * F.silu(z)
        new = {"C": C, "n": n, "m": m} if conv_state is None else {"conv": conv_state, "C": C, "n": n, "m": m}
        return self.proj_down(h), {key: t.to(state[key].dtype) for key, t in new.items()}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent mLSTM step (on CPU without autograd the fused decode kernel of the
        layout, rnnlab.ops.decode, from the input projection to the output projection's input)."""
        if decode.usable(x, *state.values(), self.norm_weight):
            return self._decode(x, state)
        return self._mix(x, state, "recurrent")

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        E, H, cap, sig = self.d_inner, self.num_heads, float(self.gate_soft_cap or 0.0), self.forget_gate == "sigmoid"
        keys = ["conv", "C", "n", "m"] if self.layout == "block" else ["C", "n", "m"]
        if self.layout == "block":
            out, new = decode.fused_step(
                "mlstm_decode", self, decode.linear(self.proj_up, x), [state[k] for k in keys],
                [self.conv.weight, self.conv.bias, self.qk.weight, self.v.weight, self.gates.weight, self.gates.bias,
                 self.norm_weight, self.skip], E, [E, E, E, E, 2 * H, self.head_dim], cap, sig, self.eps, self.norm_eps)
        else:
            out, new = decode.fused_step("mlstm_dense_decode", self, fused_linear(x, [self.in_proj, self.gates], whole=True),
                                         [state[k] for k in keys], [self.norm_weight], E, [self.head_dim], cap, sig, self.eps,
                                         self.norm_eps)
        return decode.linear(self.proj_down, out), dict(zip(keys, new))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.num_heads}x{self.head_dim}, layout={self.layout!r}, "
                f"forget_gate={self.forget_gate!r}")
