"""LTC, liquid time-constant network (Hasani, Lechner, Amini, Rus & Grosu 2021, "Liquid Time-constant Networks",
AAAI): a continuous-time RNN whose neurons' time constants depend on their input,

    dx/dt = −[1/τ + f(x, I)] ⊙ x + f(x, I) ⊙ A                       (eq. 1)

integrated by the fused semi-implicit Euler step (eq. 3) unfolded L = 6 times per token, with the authors'
conductance-based synapses as f (rnnlab.ops.ltc has the equations). Fully connected: d_model neurons, every neuron
a motor neuron; the input and output maps are the authors' elementwise affine maps (w ⊙ · + b, w = 1, b = 0 at init).

Initialization (the authors' ranges): g_leak U(0.001, 1), v_leak U(−0.2, 0.2), c_m U(0.4, 0.6), w and w^s U(0.001, 1),
σ and σ^s U(3, 8), μ and μ^s U(0.3, 0.8), reversal potentials E, E^s ∈ {−1, +1} with P(+1) = 2/3 (their
fully-connected wiring). Positivity of g_leak, c_m, w, w^s: stored through softplus (their implicit-constraint
option; their default clips after each optimizer step, which needs a hook in the trainer), initialized so that
the positive values fall in the ranges above.

Irregular sampling: ``dt`` (B, T) is the time elapsed per token (the ODE integrates dt, in L sub-steps); without it
every token lasts 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.ltc import UNFOLDS, ltc, ltc_ref

__all__ = ["LTC"]
_PARAMS = ("input_w", "input_b", "sensory_mu", "sensory_sigma", "sensory_w_raw", "sensory_erev", "mu", "sigma", "w_raw", "erev",
           "gleak_raw", "vleak", "cm_raw", "output_w", "output_b")  # the decode kernel's tables are derived from these
BACKENDS = ("recurrent", "reference")  # rnnlab.ops.forms


def _uniform(shape, lo, hi):
    return torch.empty(shape).uniform_(lo, hi)


def _positive(shape, lo, hi):
    """A raw parameter whose softplus is U(lo, hi): the inverse softplus log(e^y − 1)."""
    y = _uniform(shape, lo, hi)
    return nn.Parameter(y + torch.log(-torch.expm1(-y)))


def _polarity(shape):
    return nn.Parameter(torch.where(torch.rand(shape) < 1 / 3, -1.0, 1.0))


@register_mixer("ltc", family="nonlinear")
class LTC(Mixer):
    """LTC mixer: x (B, T, D) -> y (B, T, D) with D neurons; optional dt (B, T); state v (B, D).

    unfolds: solver sub-steps per token (the paper's 6); backend: "recurrent" (sensory terms hoisted) or "reference"."""

    takes_dt = True

    def __init__(self, d_model: int, unfolds: int = UNFOLDS, backend: str = "recurrent"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "ltc")
        self.unfolds = unfolds
        D = H = d_model
        self.input_w, self.input_b = nn.Parameter(torch.ones(D)), nn.Parameter(torch.zeros(D))
        self.sensory_mu, self.sensory_sigma = nn.Parameter(_uniform((D, H), 0.3, 0.8)), nn.Parameter(_uniform((D, H), 3, 8))
        self.sensory_w_raw, self.sensory_erev = _positive((D, H), 0.001, 1.0), _polarity((D, H))
        self.mu, self.sigma = nn.Parameter(_uniform((H, H), 0.3, 0.8)), nn.Parameter(_uniform((H, H), 3, 8))
        self.w_raw, self.erev = _positive((H, H), 0.001, 1.0), _polarity((H, H))
        self.gleak_raw, self.vleak, self.cm_raw = _positive(H, 0.001, 1.0), nn.Parameter(_uniform(H, -0.2, 0.2)), _positive(H, 0.4, 0.6)
        self.output_w, self.output_b = nn.Parameter(torch.ones(H)), nn.Parameter(torch.zeros(H))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"v": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def _run(self, x: Tensor, state: State, dt: Tensor | None, form: str) -> tuple[Tensor, State]:
        f = torch.float64 if self.mu.dtype == torch.float64 else torch.float32
        p = {n: t.to(f) for n, t in self.named_parameters()}
        inputs = x.to(f) * p["input_w"] + p["input_b"]
        op = ltc if form == "recurrent" else ltc_ref
        v, vT = op(inputs, dt, p["sensory_mu"], p["sensory_sigma"], F.softplus(p["sensory_w_raw"]), p["sensory_erev"],
                   p["mu"], p["sigma"], F.softplus(p["w_raw"]), p["erev"], F.softplus(p["gleak_raw"]), p["vleak"],
                   F.softplus(p["cm_raw"]), self.unfolds, state["v"].to(f))
        return (v * p["output_w"] + p["output_b"]).to(x.dtype), {"v": vT}

    def parallel(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        return self._run(x, state, dt, self.backend)

    def step(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        """One token; on CPU without autograd, in the module's dtype, the whole token in the fused decode kernel
        (rnnlab.ops.decode: the sub-steps' H² synapses at the vector width), its tables derived once per update."""
        params = [getattr(self, n) for n in _PARAMS]
        if decode.usable(x, state["v"], *params, *([] if dt is None else [dt]), float64=True):
            tables = param_derived(self, "_decode_params", _kernel_tables, *params)
            H = self.d_model
            out, (v,) = decode.fused_step("ltc_decode", self, [x, x if dt is None else dt], [state["v"]], tables, H, [H + 6 * H],
                                          dt is not None, self.unfolds, work=(self.unfolds + 1) * H * H)
            return out, {"v": v}
        return self._run(x, state, dt, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, unfolds={self.unfolds}, backend={self.backend}"


def _kernel_tables(input_w, input_b, sensory_mu, sensory_sigma, sensory_w_raw, sensory_erev, mu, sigma, w_raw, erev, gleak_raw,
                   vleak, cm_raw, output_w, output_b) -> list[Tensor]:
    """``ltc_decode``'s weights from the parameters (``_PARAMS``): the synapse tables σ, −σ μ,
    w E, w of the sensory and the recurrent synapses, [g_leak v_leak, g_leak], c_m."""
    tables = []
    for m, sg, raw, e in ((sensory_mu, sensory_sigma, sensory_w_raw, sensory_erev), (mu, sigma, w_raw, erev)):
        w = F.softplus(raw)
        tables += [sg, -sg * m, w * e, w]
    gleak = F.softplus(gleak_raw)
    return [input_w, input_b, *tables, torch.stack([gleak * vleak, gleak]), F.softplus(cm_raw), output_w, output_b]
