"""sLSTM mixer: xLSTM's sLSTM layer (Beck et al. 2024, Section 2.2, eqs. (8)-(17)) and its post-up-projection block.

x (B, T, D) -> y (B, T, D). State {"h", "c", "n", "m": (B, H) float32, "conv": (B, K-1, D)}; H = D,
NH heads of size Kh = H / NH.

    xc          = swish(causal_conv_K(x))                  (feeds the i and f gates only)
    i~, f~      = W_{i,f} xc + b;  z~, o~ = W_{z,o} x + b  (W head-wise block-diagonal, one einsum over all steps)
    h_t         = sLSTM(i~, f~, z~, o~; R)                  (ops.rnn.slstm; R block-diagonal per head)
    y           = GroupNorm_heads(h)                        (per-head LayerNorm, weight only)

The cell (eqs. 8-17): log i = i~; log f = logsigmoid(f~) ("sigmoid", default) or f~ ("exp");
m_t = max(log f + m_{t-1}, log i); i' = exp(log i - m_t); f' = exp(log f + m_{t-1} - m_t);
c_t = f' c_{t-1} + i' tanh(z~); n_t = f' n_{t-1} + i'; h_t = sigmoid(o~) c_t / n_t.

The post-up-projection block. The authors' code (NX-AI/xlstm ``sLSTMBlock`` = ``xLSTMBlock``) computes
x + sLSTMLayer(LN(x)) and then x + GatedFFN(LN(x)), GatedFFN(u) = W_down(GeLU(W_gate u) * W_up u) with
projection factor 4/3. That is rnnlab's Block around this mixer: RMSNorm -> sLSTM layer -> residual ->
RMSNorm -> gated MLP -> residual, so the MLP is the model's MLP slot, not part of the mixer
(``ModelConfig(mixer="slstm", mlp_ratio=2.0)`` gives the paper's 4/3 width). Differences, stated:
RMSNorm instead of LayerNorm and SiLU instead of GeLU in the MLP gate (the backbone's choices).

Initialisation as the xLSTM code: gate projections normal(0, sqrt(2 / (5 D))) ("small init"),
recurrent blocks R = 0, forget-gate bias "powerlaw_blockdependent" -(-5 + 12 (j/(Kh-1))^0.3) per head
(the exponent's block-depth term is 0: a mixer does not know its depth), other biases 0,
GroupNorm weight 1, eps 1e-5.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.rnn import BACKENDS, slstm
from rnnlab.ops.rnn.reference import FORGET_GATES, cell_step, recurrent_matmul

_CELL_KEYS = ("h", "c", "n", "m")


def forget_bias(num_heads: int, head_dim: int, depth_ratio: float = 0.0) -> Tensor:
    """xLSTM's 'powerlaw_blockdependent' forget-gate bias, (NH*Kh,): -(-5 + 12 (j/(Kh-1))^(0.3 + 1.3 r)) per head,
    r = block index / (number of blocks - 1)."""
    j = torch.arange(head_dim, dtype=torch.float64) / max(head_dim - 1, 1)
    return (-(-5.0 + 12.0 * j ** (0.3 + 1.3 * depth_ratio))).float().repeat(num_heads)


@register_mixer("slstm", family="nonlinear", small={"num_heads": 2})
class SLSTM(Mixer):
    """sLSTM layer (see the module docstring): ``num_heads`` head-wise recurrences, GroupNorm over heads."""

    def __init__(self, d_model: int, num_heads: int = 4, conv_kernel: int = 4, forget_gate: str = "sigmoid",
                 backend: str = "auto"):
        super().__init__(d_model)
        H = d_model
        if not isinstance(num_heads, int) or num_heads <= 0 or H % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing d_model={H}, got {num_heads!r}")
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
        backend = check_form(backend, BACKENDS, "slstm")
        if not isinstance(conv_kernel, int) or conv_kernel < 0 or conv_kernel == 1:
            raise ValueError(f"conv_kernel must be 0 (no conv) or an int >= 2, got {conv_kernel!r}")
        self.hidden_size, self.num_heads, self.forget_gate, self.backend = H, num_heads, forget_gate, backend
        Kh = H // num_heads
        self.conv = ShortConv(d_model, conv_kernel, activation="silu") if conv_kernel else None
        # head-wise block-diagonal input projections (xLSTM's LinearHeadwiseExpand), (gate, head, out, in)
        self.weight_if = nn.Parameter(torch.empty(2, num_heads, Kh, Kh))
        self.weight_zo = nn.Parameter(torch.empty(2, num_heads, Kh, Kh))
        self.weight_hh = nn.Parameter(torch.zeros(num_heads, 4 * Kh, Kh))  # block-diagonal R, rows g*Kh + j
        self.bias = nn.Parameter(torch.zeros(4 * H))  # gate-major: i, f, z, o
        self.norm_weight = nn.Parameter(torch.ones(H))  # GroupNorm over heads (weight only, xLSTM's MultiHeadLayerNorm)
        std = math.sqrt(2 / (5 * d_model))
        nn.init.normal_(self.weight_if, 0.0, std)
        nn.init.normal_(self.weight_zo, 0.0, std)
        with torch.no_grad():
            self.bias[H : 2 * H] = forget_bias(num_heads, Kh)
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

    def _headwise(self, x: Tensor, w: Tensor) -> Tensor:
        """x (B, T, H), w (2, NH, Kh, Kh) -> (B, T, 2H) gate-major."""
        xh = x.unflatten(-1, (self.num_heads, -1))  # (B, T, NH, Kh)
        return torch.einsum("btnk,gnjk->btgnj", xh, w).flatten(2)

    def _gates(self, x: Tensor, state: State) -> tuple[Tensor, dict]:
        """x (B, T, D) -> gx (B, T, 4H) (biases folded in), new conv state."""
        new = {}
        xc = x
        if self.conv is not None:
            xc, new["conv"] = self.conv(x, state["conv"])
        gx = torch.cat([self._headwise(xc, self.weight_if), self._headwise(x, self.weight_zo)], -1) + self.bias
        return gx, new

    def _norm(self, h: Tensor) -> Tensor:
        """h (B, T, H) -> GroupNorm per head, in h's dtype."""
        g = F.group_norm(h.reshape(-1, self.hidden_size).float(), self.num_heads, self.norm_weight.float(), None, eps=1e-5)
        return g.view(h.shape).to(h.dtype)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        gx, new = self._gates(x, state)
        h, final = slstm(gx, self.weight_hh, None, initial_state=tuple(state[k] for k in _CELL_KEYS),
                         output_final_state=True, backend=self.backend, forget_gate=self.forget_gate)
        new.update(zip(_CELL_KEYS, final))
        return self._norm(h), new

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if decode.usable(x, *state.values(), self.bias):  # CPU without autograd: the fused decode kernel (rnnlab.ops.decode)
            return self._decode(x, state)
        gx, new = self._gates(x, state)
        cell = tuple(state[k].float() for k in _CELL_KEYS)
        out = cell_step("slstm", gx[:, 0].float(), recurrent_matmul(cell[0], self.weight_hh.float()), cell,
                        forget_gate=self.forget_gate)
        new.update(zip(_CELL_KEYS, out))
        return self._norm(out[0][:, None].to(x.dtype)), new

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        H, conv = self.hidden_size, self.conv is not None
        keys = list(_CELL_KEYS) + ["conv"] * conv
        # without a conv, stand-ins for its weights and state (never read then)
        conv_w, conv_b = (self.conv.weight, self.conv.bias) if conv else (param_derived(self, "_no_conv", lambda: x.new_zeros(1, 1)), self.bias)
        conv_state = state["conv"] if conv else x.new_zeros(x.shape[0], 1, H)
        out, new = decode.fused_step(
            "slstm_decode", self, x, [*(state[k] for k in _CELL_KEYS), conv_state],
            [conv_w, conv_b, self.weight_if, self.weight_zo, self.weight_hh, self.bias, self.norm_weight], H, [H, 4 * H], conv,
            self.forget_gate == "sigmoid")
        return out, dict(zip(keys, new))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, forget_gate={self.forget_gate!r}, backend={self.backend!r}"
