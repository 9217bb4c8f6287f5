"""Titans' neural long-term memory (Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test Time",
§3.1-3.2 and §4.4; equation numbers of arXiv 2501.00663v1), as a token mixer (the paper's LMM; MAG: titans_mag.py, MAL: rnnlab.models.presets.titans_mal).

    q, k, v = SiLU(ShortConv(W x)) per head (§4.4: 1-D depthwise conv after each projection, SiLU);
    q, k ℓ2-normalized (§4.4)
    M: an MLP per head of depth 1 (a linear map) or 2 (hidden ``memory_expansion`` · head_dim, GELU), learned M_0
    ℓ(M; k, v) = ‖M(k) − v‖²                                                         (eq. 12)
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t)                                      (eq. 10, surprise with momentum)
    M_t = (1 − α_t) M_{t−1} + S_t                                                     (eq. 13, forgetting)
    y_t = M_t(q_t);   out = W_o (RMSNorm_head(y) ⊙ SiLU(W_g x))                      (eq. 15; §4.4 norm + gate)
    θ_t = base_lr · σ(w_θ x_t + b_θ),  η_t = σ(w_η x_t + b_η),  α_t = σ(w_α x_t + b_α)  per token and head

The gradient of every token of a chunk of b tokens is taken at the memory the chunk started from, M_{t'} with
t' = t − t mod b: the paper's parallel form (§3.2), here also the recurrent one (the state holds M_{t'}, M_t, S_t
and the position in the chunk, so a sequence split anywhere equals the whole; ``chunk_size=1`` is the fully
sequential rule of eqs. 9-14). The output reads the memory after the update with token t (y_t = M_t(q_t), eq. 15).

Choices the paper leaves open, said here: the gates are per token (data-dependent, eqs. 10/13); the paper also
mentions gates per chunk as a speed-up, which makes a token's output depend on later tokens of its chunk and so
breaks the recurrent form: not offered. The memory's initial weights are learned, N(0, 1/fan_in) (unit gain, like
titans-pytorch's Xavier init; zero, or TTT's N(0, 0.02), leaves a deep memory without gradient, and forgetting then
pulls it to zero for good), its activation GELU, no biases (``memory_bias`` adds them). Gate initializations are
ours: θ ≈ 0.1, η ≈ 0.5, α ≈ 0.001. Measured at T = 8192 on random inputs (d_model 32 and 256, depth 1 and 2): with
η ≈ 0.9 and α ≈ 0.01 the linear memory diverged (|M| 1e9 after 1024 tokens, then NaN) and the deep one decayed to
zero (|M| 1e-13); with these, |M| stays O(1). ``max_grad_norm`` clips each token's gradient (all layers jointly)
before it enters the momentum (titans-pytorch's option; the paper specifies none): with forgetting it bounds the
memory, ‖S‖ <= θ·c / (1 − η) and ‖M‖ <= ‖S‖ / α, the guard against the deep-memory blow-up at long T.

State: conv_q/conv_k/conv_v (B, W−1, H·hd); the memory at the chunk start {"w1", ...}, the memory {"m_w1", ...},
the momentum {"s_w1", ...} (B, H, ·), float32; "pos" (B,) int64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import GatedRMSNorm, ShortConv, at_least_float32, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.delta import l2norm
from rnnlab.ops.ttt import chunk_titans, fused_recurrent_titans, memory_keys

__all__ = ["Titans", "ConvMemoryMixer"]

_CARRIED = ("m_", "s_")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class ConvMemoryMixer(Mixer):
    """The front and back the conv-fed memory mixers share (Titans here, the Miras mixers in _miras.py): x (B, T, D) ->
    q, k, v = SiLU(ShortConv(W x)) per head, q and k ℓ2-normalized; per-token gate pre-activations ``gate_proj(x)``
    (B, T, H, n_gates); the subclass's op on a memory of learned initial weights {"w1", ...}; then
    y = W_o (RMSNorm_head(o) ⊙ act(W_g x)).

    Subclasses set ``ops`` (form -> op), ``carried`` (the op state's prefixes besides the anchor; "m_" starts as the
    learned weights, the others at zero) and implement ``_op_inputs(pre) -> dict`` (gates and options of the op).
    State: conv_q/conv_k/conv_v (B, W−1, H·hd), the op's memory tensors, "pos" (B,) int64.
    """

    ops: dict = {}
    carried: tuple = ()

    def __init__(self, d_model: int, num_heads: int, head_dim: int | None, conv_size: int, n_gates: int, dims: list[int], bias: bool,
                 chunk_size: int, base_lr: float, max_grad_norm: float | None, gate_activation: str):
        super().__init__(d_model)
        hd = d_model // num_heads if head_dim is None else head_dim
        if hd < 1 or d_model % num_heads and head_dim is None:
            raise ValueError(f"d_model={d_model} must split into num_heads={num_heads} heads of head_dim >= 1")
        if not base_lr > 0 or (max_grad_norm is not None and not max_grad_norm > 0):
            raise ValueError(f"base_lr and max_grad_norm must be > 0, got {base_lr}, {max_grad_norm}")
        self.num_heads, self.head_dim, self.depth, self.bias = num_heads, hd, len(dims) - 1, bias
        self.chunk_size, self.base_lr, self.max_grad_norm = chunk_size, base_lr, max_grad_norm
        H = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, H * hd, bias=False) for _ in range(3))
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(H * hd, conv_size, bias=False, activation="silu") for _ in range(3))
        self.gate_proj = nn.Linear(d_model, n_gates * H)  # per-token gate pre-activations, gate-major blocks of H
        with torch.no_grad():
            self.gate_proj.weight.mul_(0.1)
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]), 1):
            setattr(self, f"w{i}", nn.Parameter(torch.randn(H, a, b) / math.sqrt(a)))  # unit gain: a live deep memory
            if bias:
                setattr(self, f"b{i}", nn.Parameter(torch.zeros(H, b)))
        self.g_proj = nn.Linear(d_model, H * hd, bias=False)
        self.o_norm = GatedRMSNorm(hd, activation=gate_activation)
        self.o_proj = nn.Linear(H * hd, d_model, bias=False)
        no_weight_decay(self.gate_proj.bias)

    @property
    def _names(self) -> tuple[str, ...]:
        return memory_keys(self.depth, self.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        state = {f"conv_{c}": conv.init_state(batch_size, device, dtype) for c, conv in zip("qkv", (self.q_conv, self.k_conv, self.v_conv))}
        for n in self._names:
            w = getattr(self, n).to(device=device, dtype=dtype)
            state[n] = w.unsqueeze(0).expand(batch_size, *w.shape)
            for c in self.carried:
                state[c + n] = state[n] if c == "m_" else torch.zeros(batch_size, *w.shape, device=device, dtype=dtype)
        state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return state

    def state_size(self, seq_len: int) -> int:
        convs = self.q_conv.state_size() + self.k_conv.state_size() + self.v_conv.state_size()
        return convs + (1 + len(self.carried)) * sum(getattr(self, n).numel() for n in self._names) + 1

    def _op_inputs(self, pre: Tensor) -> dict:
        raise NotImplementedError

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        H = self.num_heads
        q, cq = self.q_conv(self.q_proj(x), state["conv_q"])
        k, ck = self.k_conv(self.k_proj(x), state["conv_k"])
        v, cv = self.v_conv(self.v_proj(x), state["conv_v"])
        q = l2norm(rearrange(q, "b t (h d) -> b t h d", h=H)).to(x.dtype)
        k = l2norm(rearrange(k, "b t (h d) -> b t h d", h=H)).to(x.dtype)
        v = rearrange(v, "b t (h d) -> b t h d", h=H)
        pre = rearrange(at_least_float32(self.gate_proj(x)), "b t (g h) -> b t h g", h=H)
        mem = {n: state[n] for n in state if not n.startswith("conv_")}
        clip = {} if self.max_grad_norm is None else {"max_grad_norm": self.max_grad_norm}  # ops without clipping (atlas)
        o, new = self.ops[form](q, k, v, **self._op_inputs(pre), initial_state=mem, chunk_size=self.chunk_size, **clip,
                                output_final_state=True)
        o = self.o_norm(o, rearrange(self.g_proj(x), "b t (h d) -> b t h d", h=H))
        y = self.o_proj(rearrange(o, "b t h d -> b t (h d)").to(x.dtype))
        new = {n: (t.to(state[n].dtype) if t.is_floating_point() else t) for n, t in new.items()}
        new.update(conv_q=cq.to(state["conv_q"].dtype), conv_k=ck.to(state["conv_k"].dtype), conv_v=cv.to(state["conv_v"].dtype))
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): the op's chunkwise form."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one token of the op's recurrence. Where the subclass has a fused decode kernel
        (``_decode_spec``) and the memory no biases, on CPU without autograd that kernel runs between the projections
        (rnnlab.ops.decode)."""
        spec = None if self.bias else self._decode_spec()
        if spec is None or not decode.usable(x, *(t for t in state.values() if t.is_floating_point()), self.w1):
            return self._mix(x, state, "recurrent")
        kernel, weights, scratch, scalars = spec
        keys = ["conv_q", "conv_k", "conv_v"] + [c + n for n in self._names for c in ("",) + self.carried] + ["pos"]
        proj = fused_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.g_proj], whole=True)
        E = self.num_heads * self.head_dim
        max_norm = -1.0 if self.max_grad_norm is None else float(self.max_grad_norm)
        hold = decode.chunk_continues(state["pos"], self.chunk_size)  # the anchors (keys[3::stride]) pass through
        held = tuple(range(3, len(keys) - 1, 1 + len(self.carried))) if hold else ()
        out, new = decode.fused_step(kernel, self, proj, [state[k] for k in keys],
                                     [self.q_conv.weight, self.k_conv.weight, self.v_conv.weight, *weights, self.o_norm.weight], E,
                                     [E] * 3 + scratch, self.base_lr, max_norm, self.chunk_size, self.o_norm.eps, *scalars, hold,
                                     held=held)
        return decode.linear(self.o_proj, out), dict(zip(keys, new))

    def _decode_spec(self) -> tuple | None:
        """The subclass's fused decode kernel: (its name in rnnlab.ops._decode_numba, the weights between the convs'
        and the output norm's, the widths of its scratch rows after q, k, v, its scalars after base_lr, max_norm,
        chunk_size, eps), or None (the torch step)."""
        return None

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, memory_depth={self.depth}, "
                f"chunk_size={self.chunk_size}, base_lr={self.base_lr}, max_grad_norm={self.max_grad_norm}")


@register_mixer("titans", family="ttt", small={"num_heads": 2, "chunk_size": 8})
@register_mixer("titans_linear", family="ttt", defaults={"memory_depth": 1}, small={"num_heads": 2, "chunk_size": 8})
class Titans(ConvMemoryMixer):
    """Titans' neural memory: x (B, T, D) -> y (B, T, D); see the module docstring.

    num_heads: H; head_dim: hd (default D / H); memory_depth: 1 (linear) or 2 (MLP); memory_expansion: the MLP's
    hidden size / hd; memory_bias: biases in the memory; chunk_size: b, the tokens whose gradients share a starting
    memory; base_lr: θ's ceiling; max_grad_norm: per-token gradient clipping (None: off); conv_size: short conv.
    State floats: 3 · H · |M| + 3 (W − 1) H hd + 1, |M| = hd² (depth 1) or 2 e hd² (depth 2, expansion e) (+ biases).
    """

    ops = {"chunk": chunk_titans, "recurrent": fused_recurrent_titans}
    carried = _CARRIED

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, memory_depth: int = 2,
                 memory_expansion: int = 4, memory_bias: bool = False, chunk_size: int = 16, base_lr: float = 1.0,
                 max_grad_norm: float | None = None, conv_size: int = 4):
        if memory_depth not in (1, 2):
            raise ValueError(f"memory_depth must be 1 or 2, got {memory_depth}")
        hd = d_model // num_heads if head_dim is None else head_dim
        dims = [hd, hd] if memory_depth == 1 else [hd, hd * memory_expansion, hd]
        super().__init__(d_model, num_heads, head_dim, conv_size, 3, dims, memory_bias, chunk_size, base_lr, max_grad_norm, "silu")
        H = num_heads
        with torch.no_grad():  # θ, η, α (module docstring)
            self.gate_proj.bias.copy_(torch.tensor([_logit(0.1)] * H + [0.0] * H + [_logit(0.001)] * H))

    def _op_inputs(self, pre: Tensor) -> dict:
        return dict(theta=self.base_lr * torch.sigmoid(pre[..., 0]), log_eta=F.logsigmoid(pre[..., 1]), log_decay=F.logsigmoid(-pre[..., 2]))

    def _decode_spec(self) -> tuple:
        deep = self.depth == 2
        H, F_ = self.num_heads, self.w1.shape[-1]
        scratch = [H * self.head_dim, H * 3 * F_] if deep else [self.head_dim]  # the deep kernel's per head (threads)
        return ("titans_mlp_decode" if deep else "titans_linear_decode", [], scratch, ())
