"""Per-layer state statistics against position: the state-collapse diagnostic of Stuffed Mamba (Chen et al. 2024,
"Stuffed Mamba: State Collapse and State Capacity of RNN-Based Long-Context Modeling", §4: the state's norm and
statistics as the context grows past the training length).

The model runs in pieces ``[0, p_1), [p_1, p_2), ...``, each continuing from the state the previous piece returned —
exact by the mixer contract (split anywhere == whole) — and the state after each piece is read layer by layer. A
layer's state is every floating-point tensor of its mixer and MLP state (``<layer>.mixer.*``, ``<layer>.mlp.*``;
complex entries count as two reals): recurrent states, conv tails, token shifts and attention's KV cache (which grows
with the tokens); integer tensors (positions) are left out. Per sequence b the entries form one vector s_b, and at each
position the statistics over the B sequences are

    norm = mean_b ‖s_b‖₂,  norm_spread = std_b ‖s_b‖₂,  mean = mean_b mean(s_b),  std = mean_b std(s_b),
    max_abs = max_b max |s_b|        (std: population, over the entries of one sequence)
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.layers.base import State

__all__ = ["STATS", "layer_states", "states_along", "state_stats", "positions_for"]

STATS = ("norm", "norm_spread", "mean", "std", "max_abs")


def positions_for(seq_len: int, stride: int) -> list[int]:
    """0, stride, 2·stride, ... and seq_len: the token counts after which the state is read (0: the initial state)."""
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return sorted(set(range(0, seq_len, stride)) | {seq_len})


def layer_states(state: State, n_layers: int) -> list[Tensor]:
    """A model state -> per layer the (B, n) float64 matrix of its floating-point entries (module docstring)."""
    out = []
    for i in range(n_layers):
        parts = [torch.view_as_real(t) if t.is_complex() else t for k, t in sorted(state.items())
                 if k.split(".", 1)[0] == str(i) and (t.is_floating_point() or t.is_complex())]
        rows = next(iter(state.values())).shape[0]
        out.append(torch.cat([p.reshape(p.shape[0], -1).double() for p in parts], 1) if parts
                   else torch.zeros(rows, 0, dtype=torch.float64))
    return out


@torch.no_grad()
def states_along(model, inputs: Tensor, positions: list[int], state: State | None = None):
    """inputs (B, T) (or (B, T, F)) -> iterator of (p, outputs of the tokens [prev p, p), model state after p tokens),
    for each p of ``positions`` (increasing, within [0, T]); p = 0 gives the initial state and no outputs."""
    T = inputs.shape[1]
    if not positions or any(b <= a for a, b in zip(positions, positions[1:])) or positions[0] < 0 or positions[-1] > T:
        raise ValueError(f"positions must increase within [0, T = {T}], got {positions}")
    was = model.training
    model.eval()
    try:
        state = model.init_state(inputs.shape[0], inputs.device) if state is None else state
        last = 0
        for p in positions:
            out = None
            if p > last:
                out, state = model(inputs[:, last:p], state)
            last = p
            yield p, out, state
    finally:
        model.train(was)


def _stats(s: Tensor) -> dict[str, float]:
    """(B, n) entries of one layer -> the statistics of the module docstring."""
    if s.shape[1] == 0:  # a stateless layer (or an empty KV cache): nothing held
        return dict.fromkeys(STATS, 0.0)
    norms = s.norm(dim=1)
    return {"norm": float(norms.mean()), "norm_spread": float(norms.std(correction=0)), "mean": float(s.mean(1).mean()),
            "std": float(s.std(1, correction=0).mean()), "max_abs": float(s.abs().max())}


def state_stats(model, inputs: Tensor, stride: int = 1, positions: list[int] | None = None) -> dict:
    """inputs (B, T) -> {"positions": [p...], "layers": [{stat: [value per position]} per layer]}: the statistics of
    the module docstring of each layer's state after p tokens, p = 0, stride, 2·stride, ..., T (or ``positions``)."""
    positions = positions_for(inputs.shape[1], stride) if positions is None else list(positions)
    n = len(model.blocks)
    layers = [{k: [] for k in STATS} for _ in range(n)]
    for _, _, state in states_along(model, inputs, positions):
        for i, s in enumerate(layer_states(state, n)):
            for k, v in _stats(s).items():
                layers[i][k].append(v)
    return {"positions": positions, "layers": layers}
