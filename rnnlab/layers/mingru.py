"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", Sec. 3.1; log-space form of App. B).

    x (B, T, D) -> y (B, T, D);  state {"h": (B, D_h)} float32, h > 0 after the first token

    z_t = sigmoid(Linear_z(x_t)),   h~_t = g(Linear_h(x_t)),   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

with g(x) = x + 1/2 (x >= 0), sigmoid(x) (x < 0), the paper's positive activation that lets
the parallel form run in log space:  log(1 - z) = -softplus(k),  log z = -softplus(-k),
log h~ = log_g(.).  Training uses ``rnnlab.ops.log_scan`` (chunked log-space scan); stepping
applies the same coefficients one token at a time.

D_h = round(expansion * D).  The paper's cell has no output projection; one (no bias) is added
only when D_h != D, as in the authors' language-model code (expansion factor).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.log_scan import log_g, log_scan
from rnnlab.ops.scan import BACKENDS


class MinRNN(Mixer):
    """Shared body of minGRU / minLSTM: one input projection into ``n_proj`` blocks of D_h,
    log-space coefficients from ``log_coeffs``, the positive scan h_t = a_t h_{t-1} + b_t."""

    n_proj = 2

    def __init__(self, d_model: int, expansion: float = 1.0, bias: bool = True, chunk_size: int = 8, backend: str = "auto"):
        super().__init__(d_model)
        backend = check_form(backend, BACKENDS, type(self).__name__)
        if expansion <= 0:
            raise ValueError(f"expansion must be > 0, got {expansion}")
        self.d_hidden = max(1, int(round(expansion * d_model)))
        self.chunk_size, self.backend = chunk_size, backend
        self.in_proj = nn.Linear(d_model, self.n_proj * self.d_hidden, bias=bias)
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=False) if self.d_hidden != d_model else None

    def log_coeffs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (log a, log b) each (B, T, D_h) float32."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_hidden

    def _out(self, h: Tensor, x: Tensor) -> Tensor:
        h = h.to(x.dtype)
        return decode.linear(self.out_proj, h) if self.out_proj is not None else h

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        log_a, log_b = self.log_coeffs(x)
        h, h_last = log_scan(log_a, log_b, state["h"].float(), chunk_size=self.chunk_size, backend=self.backend)
        return self._out(h, x), {"h": h_last}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        log_a, log_b = self.log_coeffs(x)  # (B, 1, D_h)
        h = log_a[:, 0].exp() * state["h"].float() + log_b[:, 0].exp()
        return self._out(h.unsqueeze(1), x), {"h": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}, chunk_size={self.chunk_size}, backend={self.backend!r}"


@register_mixer("mingru", family="diagonal")
class MinGRU(MinRNN):
    """minGRU: update gate z and candidate h~ from x only (Feng et al. 2024, Sec. 3.1.3)."""

    n_proj = 2

    def log_coeffs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, hc = decode.linear(self.in_proj, x).float().chunk(2, dim=-1)  # gate logits, candidate pre-activation
        return -F.softplus(k), -F.softplus(-k) + log_g(hc)
