"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", Sec. 3.2; log-space form of App. B).

    x (B, T, D) -> y (B, T, D);  state {"h": (B, D_h)} float32

    f_t = sigmoid(Linear_f(x_t)),  i_t = sigmoid(Linear_i(x_t)),  h~_t = g(Linear_h(x_t)),
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),   h_t = f'_t * h_{t-1} + i'_t * h~_t

(the length-independent normalisation of Sec. 3.2.3).  In log space, with
d = softplus(-f_pre) - softplus(-i_pre):  log f' = -softplus(d),  log i' = -softplus(-d).
Same body as minGRU (``rnnlab.layers.mingru.MinRNN``): chunked log-space scan for training,
one step per token for decoding; output projection only when D_h != D.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rnnlab.layers.mingru import MinRNN
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.log_scan import log_g


@register_mixer("minlstm", family="diagonal")
class MinLSTM(MinRNN):
    """minLSTM: forget/input gates from x only, normalised to sum to one (Feng et al. 2024, Sec. 3.2.4)."""

    n_proj = 3

    def log_coeffs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, i, hc = decode.linear(self.in_proj, x).float().chunk(3, dim=-1)
        d = F.softplus(-f) - F.softplus(-i)  # log i - log f
        return -F.softplus(d), -F.softplus(-d) + log_g(hc)
