"""Reference loops of the nonlinear RNN cells: the specification every fast form is tested against.

    gx (B, T, G*H)  input projections of all steps, hoisted out of the loop (biases folded in)
    weight_hh       (G*H, H) dense, or (NH, G*Kh, Kh) head-wise block-diagonal (H = NH*Kh)
    bias_hh         (G*H,) or None: added to the recurrent term (needed by the GRU's n gate)
    initial_state   tuple of (B, H) float32 tensors or None (zeros)
    ->  h (B, T, H) in gx's dtype, final_state (tuple of (B, H) float32) or None

Gate layout is torch's "gate-major": gx[..., g*H + n*Kh + j] is gate g of unit j of head n, and
head n's block weight_hh[n] has rows g*Kh + j. The cells (states in the order of the tuple):

- elman (h):         h = tanh(x + r)                                           (Elman 1990; torch.nn.RNN)
- lstm (h, c):       gates i, f, g, o; c = s(f) c + s(i) tanh(g); h = s(o) tanh(c)  (torch.nn.LSTM)
- gru (h):           gates r, z, n; r = s(x_r + r_r), z = s(x_z + r_z),
                     n = tanh(x_n + r * r_n), h = (1 - z) n + z h            (Cho et al. 2014; torch.nn.GRU)
- slstm (h, c, n, m): gates i, f, z, o; Beck et al. 2024 (xLSTM), eqs. (8)-(17):
                     m_t = max(log f_t + m_{t-1}, log i_t),  log i_t = i~_t,
                     log f_t = logsigmoid(f~_t) ("sigmoid") or f~_t ("exp"),
                     i'_t = exp(log i_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t),
                     c_t = f'_t c_{t-1} + i'_t tanh(z~_t),  n_t = f'_t n_{t-1} + i'_t,
                     h_t = sigmoid(o~_t) c_t / n_t.
  The zero initial state (m_0 = 0, n_0 = 0) is the paper's; h is invariant to the stabilizer m.

Everything is computed in float32 (bf16 inputs are upcast); one loop for every cell: ``unbind``
once, ``stack`` once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.ops.varlen import varlen

__all__ = ["CELLS", "elman_ref", "lstm_ref", "gru_ref", "slstm_ref", "recurrent_matmul", "cell_step", "check_args"]

# cell name -> (number of gates G, number of state tensors)
CELLS = {"elman": (1, 1), "lstm": (4, 2), "gru": (3, 1), "slstm": (4, 4)}
NONLINEARITIES = ("tanh", "relu")
FORGET_GATES = ("sigmoid", "exp")


def check_args(cell: str, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, initial_state,
               nonlinearity: str = "tanh", forget_gate: str = "sigmoid") -> tuple[int, int, int]:
    """Validate shapes and options; returns (H, NH, Kh). Raises ValueError naming what was expected."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; valid: {sorted(CELLS)}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
    G, S = CELLS[cell]
    if gx.dim() != 3 or gx.shape[-1] % G:
        raise ValueError(f"{cell}: gx must be (B, T, {G}*H), got {tuple(gx.shape)}")
    H = gx.shape[-1] // G
    if weight_hh.dim() == 2:
        NH, Kh = 1, H
        if tuple(weight_hh.shape) != (G * H, H):
            raise ValueError(f"{cell}: weight_hh must be ({G * H}, {H}) or (NH, {G}*Kh, Kh), got {tuple(weight_hh.shape)}")
    elif weight_hh.dim() == 3:
        NH, Kh = weight_hh.shape[0], weight_hh.shape[2]
        if NH * Kh != H or weight_hh.shape[1] != G * Kh:
            raise ValueError(f"{cell}: weight_hh must be (NH, {G}*Kh, Kh) with NH*Kh = {H}, got {tuple(weight_hh.shape)}")
    else:
        raise ValueError(f"{cell}: weight_hh must be 2-D (G*H, H) or 3-D (NH, G*Kh, Kh), got {tuple(weight_hh.shape)}")
    if bias_hh is not None and tuple(bias_hh.shape) != (G * H,):
        raise ValueError(f"{cell}: bias_hh must be ({G * H},), got {tuple(bias_hh.shape)}")
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != S:
            raise ValueError(f"{cell}: initial_state must be a tuple of {S} tensors of shape (B, H), got {type(initial_state).__name__}")
        for s in initial_state:
            if tuple(s.shape) != (gx.shape[0], H):
                raise ValueError(f"{cell}: initial_state tensors must be (B, H) = {(gx.shape[0], H)}, got {tuple(s.shape)}")
    return H, NH, Kh


def recurrent_matmul(h: Tensor, weight_hh: Tensor) -> Tensor:
    """h (B, H), weight_hh (G*H, H) or (NH, G*Kh, Kh) -> (B, G*H) in the gate-major layout."""
    if weight_hh.dim() == 2:
        return F.linear(h, weight_hh)
    NH, GK, Kh = weight_hh.shape
    r = torch.einsum("bnk,nrk->bnr", h.view(h.shape[0], NH, Kh), weight_hh)  # (B, NH, G*Kh)
    return r.view(h.shape[0], NH, GK // Kh, Kh).transpose(1, 2).reshape(h.shape[0], -1)


def cell_step(cell: str, x: Tensor, r: Tensor, state: tuple, nonlinearity: str = "tanh", forget_gate: str = "sigmoid") -> tuple:
    """One step of ``cell``: x, r (B, G*H) input and recurrent pre-activations, state tuple -> new state tuple (h first)."""
    if cell == "elman":
        pre = x + r
        return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre),)
    if cell == "lstm":
        i, f, g, o = (x + r).chunk(4, -1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if cell == "gru":
        xr, xz, xn = x.chunk(3, -1)
        rr, rz, rn = r.chunk(3, -1)
        rg, z = torch.sigmoid(xr + rr), torch.sigmoid(xz + rz)
        n = torch.tanh(xn + rg * rn)
        return (n + z * (state[0] - n),)
    if cell == "slstm":
        _, c, n, m = state
        i, f, z, o = (x + r).chunk(4, -1)
        logf = F.logsigmoid(f) if forget_gate == "sigmoid" else f
        m_new = torch.maximum(logf + m, i)
        ig, fg = torch.exp(i - m_new), torch.exp(logf + m - m_new)
        c = fg * c + ig * torch.tanh(z)
        n = fg * n + ig
        return torch.sigmoid(o) * c / n, c, n, m_new
    raise ValueError(f"unknown cell {cell!r}; valid: {sorted(CELLS)}")


@varlen(("gx",))
def rnn_ref(cell: str, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None, initial_state=None,
            output_final_state: bool = False, nonlinearity: str = "tanh", forget_gate: str = "sigmoid"):
    """gx (B, T, G*H), weight_hh (G*H, H) | (NH, G*Kh, Kh) -> (h (B, T, H), final_state | None).

    The plain loop over t for every cell (see the module docstring for the equations)."""
    H, _, _ = check_args(cell, gx, weight_hh, bias_hh, initial_state, nonlinearity, forget_gate)
    B, S = gx.shape[0], CELLS[cell][1]
    w = weight_hh.float()
    b = None if bias_hh is None else bias_hh.float()
    if initial_state is None:
        state = tuple(gx.new_zeros(B, H, dtype=torch.float32) for _ in range(S))
    else:
        state = tuple(s.float() for s in initial_state)
    hs = []
    for xt in gx.float().unbind(1):
        r = recurrent_matmul(state[0], w)
        if b is not None:
            r = r + b
        state = cell_step(cell, xt, r, state, nonlinearity, forget_gate)
        hs.append(state[0])
    h = torch.stack(hs, 1).to(gx.dtype)
    return h, (state if output_final_state else None)


@varlen(("gx",))
def elman_ref(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, nonlinearity="tanh"):
    """Elman RNN. gx (B, T, H), weight_hh (H, H) | (NH, Kh, Kh) -> (h (B, T, H), (h_T,) | None)."""
    return rnn_ref("elman", gx, weight_hh, bias_hh, initial_state, output_final_state, nonlinearity=nonlinearity)


@varlen(("gx",))
def lstm_ref(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False):
    """LSTM, gates i, f, g, o. gx (B, T, 4H), weight_hh (4H, H) | (NH, 4Kh, Kh) -> (h (B, T, H), (h_T, c_T) | None)."""
    return rnn_ref("lstm", gx, weight_hh, bias_hh, initial_state, output_final_state)


@varlen(("gx",))
def gru_ref(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False):
    """GRU, gates r, z, n (bias_hh's n part inside r * (...)). gx (B, T, 3H), weight_hh (3H, H) | (NH, 3Kh, Kh)
    -> (h (B, T, H), (h_T,) | None)."""
    return rnn_ref("gru", gx, weight_hh, bias_hh, initial_state, output_final_state)


@varlen(("gx",))
def slstm_ref(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, forget_gate="sigmoid"):
    """sLSTM (Beck et al. 2024), gates i, f, z, o. gx (B, T, 4H), weight_hh (4H, H) | (NH, 4Kh, Kh)
    -> (h (B, T, H), (h_T, c_T, n_T, m_T) | None)."""
    return rnn_ref("slstm", gx, weight_hh, bias_hh, initial_state, output_final_state, forget_gate=forget_gate)
