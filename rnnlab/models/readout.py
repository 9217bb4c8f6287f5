"""The closed-form readout of reservoir models (ModelConfig readout="ridge"): the parts SequenceModel is built from
when its layers are untrained, and the ridge regression that fits its head.

    features  x = [inputs, 0] (zero-padded to d_model: the reservoir's input weights see the raw features, their
              scaling as the papers set it), then each layer's mixer in turn, no norm, residual or MLP
    readout   y = W x + b, fitted by ridge regression over the training stream:
              [W b]ᵀ = (Σ X̃ᵀX̃ + λ diag(1, …, 1, 0))⁻¹ Σ X̃ᵀY,   X̃ = [X, 1]    (the bias not penalized)

The sums are accumulated in float64, batch by batch, in buffers of the model (``RidgeReadout``), so they are saved
with every checkpoint: a run killed and resumed refits exactly what the uninterrupted run fits. The rows are the
scored positions: every position whose regression targets are all scored ("regress"), or the pooled sequence with
its one-hot class ("classify").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State

__all__ = ["PadFeatures", "ReservoirBlock", "RidgeReadout"]


class PadFeatures(nn.Module):
    """(…, F) -> (…, D): the features followed by zeros (no parameters)."""

    def __init__(self, d_in: int, d_model: int):
        super().__init__()
        self.d_in, self.d_model = d_in, d_model

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, self.d_model - self.d_in))


class ReservoirBlock(nn.Module):
    """A reservoir layer: x -> mixer(x), its states are the next layer's input (no norm, no residual)."""

    def __init__(self, mixer: Mixer):
        super().__init__()
        if any(True for _ in mixer.parameters()):
            names = sorted(n for n, _ in mixer.named_parameters())
            raise ValueError(f'readout="ridge" needs untrained mixers (no parameters, e.g. deep_res_esn, res_rmn); '
                             f"{type(mixer).__name__} has parameters {names[:4]}")
        self.mixer = mixer

    def init_state(self, batch_size: int, device=None) -> State:
        return {f"mixer.{k}": v for k, v in self.mixer.init_state(batch_size, device).items()}

    def state_size(self, seq_len: int) -> int:
        return self.mixer.state_size(seq_len)

    def forward(self, x: Tensor, state: State, packing=None, dt: Tensor | None = None) -> tuple[Tensor, State]:
        kw = {"dt": dt} if dt is not None and self.mixer.takes_dt else {}
        y, s = self.mixer(x, {k[len("mixer."):]: v for k, v in state.items()}, cu_seqlens=packing, **kw)
        return y, {f"mixer.{k}": v for k, v in s.items()}


class RidgeReadout(nn.Module):
    """Σ X̃ᵀX̃ (gram) and Σ X̃ᵀY (moment), float64 buffers, and the ridge solution (module docstring)."""

    def __init__(self, n_features: int, n_outputs: int):
        super().__init__()
        self.register_buffer("gram", torch.zeros(n_features + 1, n_features + 1, dtype=torch.float64))
        self.register_buffer("moment", torch.zeros(n_features + 1, n_outputs, dtype=torch.float64))
        self.register_buffer("rows", torch.zeros((), dtype=torch.int64))

    def add(self, X: Tensor, Y: Tensor) -> None:
        """Accumulate rows X (n, F) with targets Y (n, O)."""
        Xa = torch.cat([X.double(), X.new_ones(X.shape[0], 1, dtype=torch.float64)], 1)
        self.gram.addmm_(Xa.T, Xa)
        self.moment.addmm_(Xa.T, Y.double())
        self.rows += X.shape[0]

    def solve(self, ridge: float, gram: Tensor | None = None, moment: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (W (O, F), b (O,)) float64 minimizing ||X W̃ᵀ + b − Y||² + λ||W||²; ``gram``/``moment`` override the buffers
        (the sums over all data-parallel processes). A least-squares solve, so λ = 0 with collinear features still
        returns the minimum-norm solution."""
        G = self.gram if gram is None else gram
        M = self.moment if moment is None else moment
        penalty = torch.ones(G.shape[0], dtype=torch.float64, device=G.device)
        penalty[-1] = 0.0
        sol = torch.linalg.lstsq(G + ridge * torch.diag(penalty), M, driver="gelsd" if G.device.type == "cpu" else None).solution
        return sol[:-1].T, sol[-1]
