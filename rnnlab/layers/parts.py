"""Building blocks shared by several mixers: norms, the short causal conv,
rotary embeddings, low-rank (LoRA) projections. No registration here."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.ops import decode
from rnnlab.ops.chunk import cast
from rnnlab.ops.conv import causal_conv1d

__all__ = ["RMSNorm", "GatedRMSNorm", "ShortConv", "LoRA", "rotary", "rotary_cos_sin", "positions", "learned_initial_state",
           "fused_linear", "fused_conv_step", "param_derived", "rotary_rows", "rotary_at", "rotary_inv_freq"]


def at_least_float32(x: Tensor) -> Tensor:
    """x in float32, or float64 kept (the float64 policy: no rounding to float32 on the way); no call when it is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dim (Zhang & Sennrich 2019); computed in float32 (float64 for float64 x)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        # torch's rms_norm: the same arithmetic (bit for bit) as x * rsqrt(mean(x²) + eps) * w in one call; float32
        # (float64 in a float64 module: the dtype policy)
        xf = at_least_float32(x)
        w = None if self.weight is None else cast(self.weight, xf.dtype)
        return cast(F.rms_norm(xf, (x.shape[-1],), w, self.eps), x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * act(gate), the output norm of Mamba-2 / GLA / Gated DeltaNet.
    Applied over the last dim (per head when x is (..., H, V))."""

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__(dim, eps)
        self.act = {"silu": F.silu, "sigmoid": torch.sigmoid}[activation]

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x) * cast(self.act(at_least_float32(gate)), x.dtype)


class ShortConv(nn.Module):
    """Depthwise causal conv over time, x (B, T, C) -> (B, T, C), optional SiLU.
    Its state (B, W-1, C) is part of the owning mixer's state."""

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True, activation: str | None = "silu"):
        super().__init__()
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        # PyTorch's Conv1d default init (kaiming-uniform, fan_in = kernel_size), as the papers' code uses
        bound = 1 / math.sqrt(kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.activation = activation

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_size, self.kernel_size - 1, self.channels, device=device, dtype=dtype or torch.float32)

    def state_size(self) -> int:
        return (self.kernel_size - 1) * self.channels

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return causal_conv1d(x, self.weight, self.bias, state, activation=self.activation)


class LoRA(nn.Module):
    """x -> B(act(A x)) (+ bias): the low-rank projections of GLA's gates and RWKV-6/7's
    data-dependent parameters. ``zero_init`` zeroes the up-projection as RWKV does."""

    def __init__(self, d_in: int, rank: int, d_out: int, activation: str | None = "tanh", bias: bool = True, zero_init: bool = False):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=bias)
        self.act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, None: (lambda t: t)}[activation]
        if zero_init:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up_from(self.down(x))

    def up_from(self, low: Tensor) -> Tensor:
        """The second half: ``self.down(x)`` (computed elsewhere, e.g. fused with other projections) -> output."""
        return self.up(self.act(low))


def fused_linear(x: Tensor, layers: list[nn.Linear], whole: bool = False) -> list[Tensor] | Tensor:
    """``[layer(x) for layer in layers]`` in one matmul when no gradient is wanted (decode, prefill, evaluation):
    the layers' weights (and biases) concatenated once and cached on the first layer (``param_derived``), rebuilt
    when any of them changes. One matrix-vector product per token instead of one per projection: fewer calls and
    one pass over the weights. Under autograd the layers run one by one (the parameters' gradients stay where
    they are). ``whole``: the outputs side by side in one tensor (..., Σ out), unsplit."""
    weights = [layer.weight for layer in layers]
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        outs = [layer(x) for layer in layers]
        return torch.cat(outs, -1) if whole else outs
    biases = [layer.bias for layer in layers]

    def concat(*_):
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
        weight = torch.cat(weights)
        numpy_ok = weight.is_cpu and weight.dtype in (torch.float32, torch.float64)  # for decode.linear_rows
        views = (weight.numpy(), None if bias is None else bias.numpy()) if numpy_ok else None
        return weight, bias, [w.shape[0] for w in weights], views

    weight, bias, sizes, views = param_derived(layers[0], "_fused_linear", concat, *weights, *[b for b in biases if b is not None])
    y = decode.linear_rows(x, *views) if views is not None and decode.linear_usable(x, weight) else F.linear(x, weight, bias)
    return y if whole else decode.split(y, sizes)


def fused_conv_step(xs: list[Tensor], convs: list["ShortConv"], states: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``[conv(x, s) for x, conv, s in zip(xs, convs, states)]``, x (B, 1, C_i), s (B, W-1, C_i): one decode token
    through several short convs as one conv over their channels side by side (a depthwise conv treats every channel
    alike: the same numbers, bit for bit at layer widths; at a few tiny widths torch may order the window's sum
    otherwise, a last-bit difference), weights concatenated once (``param_derived``). Only without autograd and for convs of
    one width, activation and bias kind; otherwise (and for T > 1) the convs one by one."""
    first = convs[0]
    alike = all(c.kernel_size == first.kernel_size and c.activation == first.activation and (c.bias is None) == (first.bias is None)
                for c in convs)
    params = [c.weight for c in convs] + [c.bias for c in convs if c.bias is not None]
    if xs[0].shape[1] != 1 or not alike or (torch.is_grad_enabled() and any(t.requires_grad for t in params + list(xs) + list(states))):
        return [c(x, s) for x, c, s in zip(xs, convs, states)]
    w, b = param_derived(first, "_fused_conv", lambda *_: (torch.cat([c.weight for c in convs]),
                                                          None if first.bias is None else torch.cat([c.bias for c in convs])), *params)
    y, final = causal_conv1d(torch.cat(xs, -1), w, b, torch.cat(states, -1), activation=first.activation)
    sizes = [x.shape[-1] for x in xs]
    return list(zip(y.split(sizes, -1), final.split(sizes, -1)))


def param_derived(owner: nn.Module, name: str, fn, *params: Tensor):
    """``fn(*params)`` computed once without autograd and cached on ``owner`` under ``name``, recomputed when any of
    ``params`` changes: an optimizer step, ``load_state_dict``, ``.to()`` (the tensors' version counters, storage and
    dtype are the key). For what a decode step would otherwise derive from its parameters every token (a decay rate's
    softplus, concatenated weights). Call it only where no gradient is wanted: the result is detached."""
    key = tuple((t._version, t.data_ptr(), t.dtype) for t in params)
    cache = owner.__dict__.get(name)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = owner.__dict__[name] = (key, fn(*params))
    return cache[1]


def rotary_cos_sin(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """positions (..., T) integer -> cos, sin of shape (..., T, dim/2) in float32 (Su et al. 2021, eq. 34).
    Per-row positions (B, T) give every row its own offset (rows at different positions)."""
    angles = positions.float()[..., None] * rotary_inv_freq(dim, base, positions.device)
    return angles.cos(), angles.sin()


def rotary_inv_freq(dim: int, base: float = 10000.0, device=None) -> Tensor:
    """(dim/2,) float32: the rotary frequencies base^(−2i/dim); angle i of position p is p · inv_freq[i] in float32."""
    return base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)


def positions(pos: Tensor, T: int) -> Tensor:
    """Per-row token counts pos (B,) int64 -> the absolute positions (B, T) of the next T tokens."""
    return pos[:, None] + torch.arange(T, device=pos.device)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x (B, T, H, d) by the angles of cos/sin (T, d/2) or (B, T, d/2)."""
    x1, x2 = at_least_float32(x).chunk(2, dim=-1)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)


def rotary_rows(n: int, dim: int, base: float = 10000.0, device=None, start: int = 0) -> Tensor:
    """(n, 2, 1, 1, dim) float32: for position start + i, row i holds C = [cos, cos] and S = [-sin, sin] of
    ``rotary_cos_sin`` (the same numbers), so that ``rotary_at(x, C, S)`` rotates one token (a decode step's
    rotation: a lookup and four calls where computing the angles and ``rotary`` take about twenty)."""
    cos, sin = rotary_cos_sin(torch.arange(start, start + n, device=device), dim, base)  # (n, dim/2)
    return torch.stack([torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)], 1)[:, :, None, None]


def rotary_at(x: Tensor, C: Tensor, S: Tensor) -> Tensor:
    """x (B, h, 1, d), C and S (B, 1, 1, d) rows of ``rotary_rows`` -> ``rotary`` of x, bit for bit:
    [x1, x2]·C + [x2, x1]·S = [x1·c − x2·s, x2·c + x1·s] (a − b = a + (−b) and a + b = b + a exactly in IEEE),
    computed in x's dtype promoted with float32 (C's) as ``rotary`` computes, and returned in x's dtype."""
    y = x * C + x.roll(x.shape[-1] // 2, -1) * S
    return y if y.dtype == x.dtype else y.to(x.dtype)


def learned_initial_state(h0: Tensor, batch_size: int, device=None, dtype=None) -> Tensor:
    """A learned initial state h0 (*S) -> (batch_size, *S) rows (float32 unless ``dtype``), still attached to h0:
    the ``init_state`` of mixers whose update is multiplicative (a zero state would stay zero)."""
    h0 = h0.to(device=device, dtype=dtype or torch.float32)
    return h0.expand(batch_size, *h0.shape).clone()
