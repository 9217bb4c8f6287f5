"""RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", Sec. 3-4):
the time-mix ``rwkv4`` and the channel-mix ``rwkv4_channel_mix`` (use it as the model's
``mlp`` to get the paper's block).

Time-mix, x (B, T, D) -> y (B, T, D); state {"shift": (B, D), "wkv": (B, 3, D) [num, den, max]}:

    x'_t = mu ⊙ x_t + (1 - mu) ⊙ x_{t-1}                        token shift, one mu per r, k, v (eqs. 11-13; torch.lerp)
    r_t = W_r x'_t,  k_t = W_k x'_t,  v_t = W_v x'_t
    wkv_t = WKV(k, v; w = -exp(time_decay), u = time_first)     (eq. 14, ``rnnlab.ops.wkv4``)
    y_t = W_o (sigmoid(r_t) ⊙ wkv_t)                             (eq. 15)

Channel-mix, state {"shift": (B, D)}:  r'_t = W'_r x'_t,  k'_t = W'_k x'_t (width 4D),
y_t = sigmoid(r'_t) ⊙ (W'_v max(k'_t, 0)^2)                     (eqs. 17-19)

Initialisation follows the RWKV-4 code (RWKV-LM v4 ``model.py``): the layer-dependent
time_decay / time_first / time_mix curves (give ``layer_id`` and ``num_layers``), orthogonal
weights with gain sqrt(out/in) for wide outputs, and zero init of W_k, W_r, W_o (time-mix) and
W'_r, W'_v (channel-mix) when ``zero_init`` (the default; the conformance suite uses
zero_init=False so that outputs are not identically zero before training).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS
from rnnlab.ops.wkv4 import EMPTY_MAX, wkv4, wkv4_ref

__all__ = ["RWKV4", "RWKV4ChannelMix"]


def _rwkv_linear(d_in: int, d_out: int, zero: bool) -> nn.Linear:
    """nn.Linear without bias, initialised as RWKV-4's RWKV_Init: zeros, or orthogonal with
    gain sqrt(d_out / d_in) when d_out > d_in (1 otherwise)."""
    lin = nn.Linear(d_in, d_out, bias=False)
    if zero:
        nn.init.zeros_(lin.weight)
    else:
        nn.init.orthogonal_(lin.weight, gain=math.sqrt(d_out / d_in) if d_out > d_in else 1.0)
    return lin


def _layer_ratios(layer_id: int, num_layers: int) -> tuple[float, float]:
    if not (isinstance(layer_id, int) and isinstance(num_layers, int) and 0 <= layer_id < num_layers):
        raise ValueError(f"need 0 <= layer_id < num_layers (ints), got layer_id={layer_id!r}, num_layers={num_layers!r}")
    return layer_id / max(num_layers - 1, 1), 1.0 - layer_id / num_layers  # ratio_0_to_1, ratio_1_to_almost0


def _token_shift(x: Tensor, last: Tensor) -> Tensor:
    """x (B, T, D), last (B, D) = the token before x -> x_{t-1} (B, T, D)."""
    return torch.cat([last.to(x.dtype).unsqueeze(1), x[:, :-1]], 1)


@register_mixer("rwkv4", family="diagonal", small={"zero_init": False})
class RWKV4(Mixer):
    """RWKV-4 time-mix: token shift, receptance gate, WKV with per-channel decay and bonus."""

    def __init__(self, d_model: int, layer_id: int = 0, num_layers: int = 1, zero_init: bool = True, backend: str = "auto"):
        super().__init__(d_model)
        backend = check_form(backend, BACKENDS, "rwkv4")
        D = d_model
        r01, r10 = _layer_ratios(layer_id, num_layers)
        self.backend = backend
        h = torch.arange(D, dtype=torch.float64)
        decay_speed = -5 + 8 * (h / max(D - 1, 1)) ** (0.7 + 1.3 * r01)
        zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(D)], dtype=torch.float64) * 0.5
        ramp = h / D  # x[i] = i / n_embd
        self.time_decay = nn.Parameter(decay_speed.float())  # w = -exp(time_decay)
        self.time_first = nn.Parameter((math.log(0.3) + zigzag).float())  # u
        self.time_mix_k = nn.Parameter((ramp**r10).float())
        self.time_mix_v = nn.Parameter((ramp**r10 + 0.3 * r01).float())
        self.time_mix_r = nn.Parameter((ramp ** (0.5 * r10)).float())
        self.key = _rwkv_linear(D, D, zero_init)
        self.value = _rwkv_linear(D, D, False)
        self.receptance = _rwkv_linear(D, D, zero_init)
        self.output = _rwkv_linear(D, D, zero_init)
        no_weight_decay(self.time_decay, self.time_first, self.time_mix_k, self.time_mix_v, self.time_mix_r)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dt = dtype or torch.float32
        wkv = torch.zeros(batch_size, 3, self.d_model, device=device, dtype=dt)
        wkv[:, 2] = EMPTY_MAX  # empty state: e^{max} = 0
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dt), "wkv": wkv}

    def state_size(self, seq_len: int) -> int:
        return 4 * self.d_model

    def _mix(self, x: Tensor, state: State, op) -> tuple[Tensor, State]:
        xx = _token_shift(x, state["shift"])
        mk, mv, mr = (m.to(x.dtype) for m in (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        k = self.key(torch.lerp(xx, x, mk))
        v = self.value(torch.lerp(xx, x, mv))
        r = self.receptance(torch.lerp(xx, x, mr))
        w = -torch.exp(self.time_decay.float())
        wkv, s = op(k, v, w, self.time_first.float(), state["wkv"].float(), output_final_state=True)
        y = self.output((torch.sigmoid(r.float()) * wkv.float()).to(x.dtype))
        return y, {"shift": x[:, -1].float(), "wkv": s}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, lambda *a, **kw: wkv4(*a, **kw, backend=self.backend))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: the recurrence itself; on CPU without autograd the three token-shift lerps as one call, the three
        projections as one bmm and the WKV with its gate in the fused decode kernel (rnnlab.ops.decode)."""
        if decode.usable(x, *state.values(), self.time_decay):
            return self._decode(x, state)
        return self._mix(x, state, wkv4_ref)

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        mix, weights, w = param_derived(self, "_decode_params", lambda *p: (
            torch.stack(p[:3])[:, None], torch.stack([lin.t() for lin in p[3:6]]), -torch.exp(p[6])),
            self.time_mix_k, self.time_mix_v, self.time_mix_r, self.key.weight, self.value.weight, self.receptance.weight,
            self.time_decay)
        x1 = x[:, 0]
        kvr = torch.bmm(torch.lerp(state["shift"], x1, mix), weights).transpose(0, 1)  # (B, 3, D): [k, v, r]
        out, (wkv,) = decode.fused_step("rwkv4_decode", self, kvr, [state["wkv"]], [w, self.time_first], self.d_model, [])
        return decode.linear(self.output, out), {"shift": x1, "wkv": wkv}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, backend={self.backend!r}"


@register_mixer("rwkv4_channel_mix", family="other", small={"zero_init": False})
class RWKV4ChannelMix(Mixer):
    """RWKV-4 channel-mix (the block's MLP): token shift, squared-ReLU key, receptance gate."""

    def __init__(self, d_model: int, expansion: int = 4, layer_id: int = 0, num_layers: int = 1, zero_init: bool = True):
        super().__init__(d_model)
        D = d_model
        _, r10 = _layer_ratios(layer_id, num_layers)
        self.d_hidden = expansion * D
        ramp = torch.arange(D, dtype=torch.float64) / D
        self.time_mix_k = nn.Parameter((ramp**r10).float())
        self.time_mix_r = nn.Parameter((ramp**r10).float())
        self.key = _rwkv_linear(D, self.d_hidden, False)
        self.receptance = _rwkv_linear(D, D, zero_init)
        self.value = _rwkv_linear(self.d_hidden, D, zero_init)
        no_weight_decay(self.time_mix_k, self.time_mix_r)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xx = _token_shift(x, state["shift"])
        mk, mr = self.time_mix_k.to(x.dtype), self.time_mix_r.to(x.dtype)
        k = torch.square(F.relu(decode.linear(self.key, torch.lerp(xx, x, mk))))  # decode.linear: the module but at T = 1
        y = torch.sigmoid(decode.linear(self.receptance, torch.lerp(xx, x, mr))) * decode.linear(self.value, k)
        return y, {"shift": x[:, -1].float()}

    step = parallel  # the same computation for one token

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}"
