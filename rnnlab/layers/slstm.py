"""sLSTM mixer: the xLSTM post-up-projection block (Beck et al. 2024, Section 2.2, eqs. (8)-(17), Fig. 9).

x (B, T, D) -> y (B, T, D). State {"h", "c", "n", "m": (B, H) float32, "conv": (B, K-1, D)}; H = D.

    xc      = swish(causal_conv_K(x))                      (feeds the i and f gates only, as in the paper)
    i~, f~  = W_if xc + b_if;  z~, o~ = W_zo x + b_zo      (one matmul each over all steps)
    h_t     = sLSTM(i~, f~, z~, o~; block-diagonal R)      (exponential input gate, sigmoid or exp forget
                                                            gate, normalizer n_t, stabilizer m_t: ops.rnn.slstm)
    y       = W_down(GeLU(W_gate g) * W_up g),  g = GroupNorm_heads(h)   (gated MLP, factor 4/3)

Simplifications against the paper's block, on purpose: the block's own pre-LayerNorm and the
two residual connections are those of the surrounding rnnlab block (pre-norm -> mixer ->
residual), so the mixer is ``MLP(GN(sLSTM(x)))`` without the inner residual and second
LayerNorm; the input projections are dense (the xLSTM code uses head-wise block-diagonal ones);
the up-projection width is round_up(4/3 * D, 64) as in the xLSTM code. Init: forget-gate bias
the xLSTM code's "powerlaw_blockdependent" schedule, other gate biases 0, recurrent blocks
uniform +-1/sqrt(Kh), projections normal(0, sqrt(2 / (5 D))) ("small init").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.rnn import BACKENDS, slstm
from rnnlab.ops.rnn.reference import FORGET_GATES, cell_step, recurrent_matmul

_CELL_KEYS = ("h", "c", "n", "m")


def _forget_bias(num_heads: int, head_dim: int) -> Tensor:
    """xLSTM's 'powerlaw_blockdependent' forget-gate bias: -(-5 + 12 (j/(Kh-1))^(0.3 + 1.3 n/(NH-1))), (H,)."""
    j = torch.arange(head_dim, dtype=torch.float64) / max(head_dim - 1, 1)
    rows = [-(-5.0 + 12.0 * j ** (0.3 + 1.3 * n / max(num_heads - 1, 1))) for n in range(num_heads)]
    return torch.cat(rows).float()


@register_mixer("slstm", family="nonlinear", small={"num_heads": 2})
class SLSTM(Mixer):
    """sLSTM post-up-projection block (see the module docstring). ``num_heads`` head-wise recurrences."""

    def __init__(self, d_model: int, num_heads: int = 4, conv_kernel: int = 4, forget_gate: str = "sigmoid",
                 proj_factor: float = 4 / 3, backend: str = "auto"):
        super().__init__(d_model)
        H = d_model
        if not isinstance(num_heads, int) or num_heads <= 0 or H % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing d_model={H}, got {num_heads!r}")
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(conv_kernel, int) or conv_kernel < 0 or conv_kernel == 1:
            raise ValueError(f"conv_kernel must be 0 (no conv) or an int >= 2, got {conv_kernel!r}")
        self.hidden_size, self.num_heads, self.forget_gate, self.backend = H, num_heads, forget_gate, backend
        Kh = H // num_heads
        self.conv = ShortConv(d_model, conv_kernel, activation="silu") if conv_kernel else None
        self.weight_if = nn.Parameter(torch.empty(2 * H, d_model))
        self.weight_zo = nn.Parameter(torch.empty(2 * H, d_model))
        self.weight_hh = nn.Parameter(torch.empty(num_heads, 4 * Kh, Kh))  # block-diagonal R, rows g*Kh + j
        self.bias = nn.Parameter(torch.zeros(4 * H))  # gate order i, f, z, o
        self.norm_weight = nn.Parameter(torch.ones(H))  # GroupNorm over heads (weight only, as xLSTM's MultiHeadLayerNorm)
        ff = 64 * math.ceil(proj_factor * d_model / 64)
        self.up_proj = nn.Linear(H, 2 * ff, bias=False)  # [gate | up]
        self.down_proj = nn.Linear(ff, d_model, bias=False)
        std = math.sqrt(2 / (5 * d_model))
        for w in (self.weight_if, self.weight_zo, self.up_proj.weight, self.down_proj.weight):
            nn.init.normal_(w, 0.0, std)
        nn.init.uniform_(self.weight_hh, -1 / math.sqrt(Kh), 1 / math.sqrt(Kh))
        with torch.no_grad():
            self.bias[H : 2 * H] = _forget_bias(num_heads, Kh)
        no_weight_decay(self.bias, self.norm_weight)

    # --- contract -----------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        state = {k: torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype) for k in _CELL_KEYS}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size, device=device, dtype=dtype)
        return state

    def state_size(self, seq_len: int) -> int:
        return 4 * self.hidden_size + (self.conv.state_size() if self.conv is not None else 0)

    def _gates(self, x: Tensor, state: State) -> tuple[Tensor, dict]:
        """x (B, T, D) -> gx (B, T, 4H) (biases folded in), new conv state."""
        new = {}
        xc = x
        if self.conv is not None:
            xc, new["conv"] = self.conv(x, state["conv"])
        gx = torch.cat([F.linear(xc, self.weight_if), F.linear(x, self.weight_zo)], -1) + self.bias
        return gx, new

    def _out(self, h: Tensor) -> Tensor:
        """h (B, T, H) -> GroupNorm per head -> gated MLP -> (B, T, D)."""
        shape = h.shape
        g = F.group_norm(h.reshape(-1, self.hidden_size).float(), self.num_heads, self.norm_weight.float(), None, eps=1e-6)
        g = g.view(shape).to(self.up_proj.weight.dtype)
        gate, up = self.up_proj(g).chunk(2, -1)
        return self.down_proj(F.gelu(gate) * up)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        gx, new = self._gates(x, state)
        h, final = slstm(gx, self.weight_hh, None, initial_state=tuple(state[k] for k in _CELL_KEYS),
                         output_final_state=True, backend=self.backend, forget_gate=self.forget_gate)
        new.update(zip(_CELL_KEYS, final))
        return self._out(h), new

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        gx, new = self._gates(x, state)
        cell = tuple(state[k].float() for k in _CELL_KEYS)
        out = cell_step("slstm", gx[:, 0].float(), recurrent_matmul(cell[0], self.weight_hh.float()), cell,
                        forget_gate=self.forget_gate)
        new.update(zip(_CELL_KEYS, out))
        return self._out(out[0][:, None].to(x.dtype)), new

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, forget_gate={self.forget_gate!r}, backend={self.backend!r}"
