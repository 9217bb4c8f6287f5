"""Implicit Mamba-2 (Schöne, Rahmani, Kremer, Falck, Ballani & Gladrow 2025, "Implicit Language Models are RNNs:
Balancing Parallelization and Expressivity", ICML; Section 3 (implicit SSMs, eqs. 6-8), Section 4 (training with
phantom gradients), Fig. 2 (simultaneous and sequential modes)).

A Mamba-2 layer whose every input-dependent quantity (x, B, C, Δ, the gate) also depends on its own output z,
solved as a fixed point. With u = W_inj RMSNorm(x) (the injection, computed once):

    f(z) = RMSNorm_f(z + Mamba2(in_proj(RMSNorm(z)) + u))        z* = f(z*)        y = f(z*)

The SSM inside is linear in its state given z, but z_t* depends on the state through f, so the converged layer
is a non-linear RNN (eq. 8): h_t = Λ(z_t*, x_t) h_{t-1} + u(z_t*, x_t), z_t* = f(z_t*, h_t, x_t).

- Parallel form (the paper's simultaneous mode): z⁽⁰⁾ = 0, z⁽ˢ⁾ = f(z⁽ˢ⁻¹⁾) over the whole sequence (each
  application a chunkwise SSD pass), until ‖z⁽ˢ⁾ − z⁽ˢ⁻¹⁾‖ <= tol·‖z⁽ˢ⁾‖ or ``max_iter`` applications; each
  sequence stops on its own (a converged row is frozen, so rows never affect each other). z* is the last iterate
  that met the test: ‖f(z*) − z*‖ <= tol·‖f(z*)‖.
- Step form (sequential mode): per token, the same iteration with the SSM and conv states of the previous tokens
  held fixed (the repo's ``skip_kv_update``), then the final call f(z_t*) advances the state. At a common fixed
  point both modes give the same numbers, so parallel == step to the solver's tolerance. The inner iteration is
  inherently sequential (each application needs the last); it runs with no autograd graph.
- Gradients (``grad_mode``): "phantom" (the paper's training: Geng et al. 2021's phantom gradient, ``phantom_steps``
  damped steps z ← (1 − τ) z + τ f(z) from the detached z*, backpropagated), or "implicit" (the implicit function
  theorem: the adjoint g = (∂f/∂z)ᵀ g + ∂L/∂z at z* solved by the same fixed-point iteration, ``tol`` and
  ``max_iter``). Either way the output is then y, state = f(z̄) at z̄ (the attached z*), one more call.

Defaults follow the authors' state-tracking configuration (github.com/microsoft/implicit_languagemodels,
``mamba2-state-tracking-implicit``): tol 0.05 (relative), max_iter 32, phantom gradient with 4 steps, τ = 0.8,
init gain 0.5 (here: in_proj's default init scaled by it, our reading of the config's ``init_gain``); Mamba-2's
own defaults otherwise. How fast the iteration converges depends on that gain: at d_model 32, T = 37, random
init, the relative step fell to 4e-5 after 72 applications at gain 0.5 and to 1e-7 after ~56 at gain 0.2 (at
gain 1 it stalls near 5e-2, the paper's training tolerance); the conformance suite's small instance uses 0.1 with the exact (implicit) gradient. Simplifications: the fixed point is one layer's (the paper iterates the whole
stack of layers with one injection; here each ``implicit_mamba2`` layer is its own implicit layer, so a
one-layer model is the paper's one-layer model up to its MLP, which the block here adds outside the iteration);
no weight normalization of the iterated layer, no Jacobian regularization, no dropout; the paper's training
curriculum (the first 4000 batches as 4 unrolled self-iterations) is not built in (``max_iter`` is an option).
State: Mamba-2's (conv buffer, SSD state).

Evaluation budget: ``eval_tol`` / ``eval_max_iter`` (default: the training ones) replace ``tol`` / ``max_iter``
whenever the module is not training (torchdeq's ``eval_f_max_iter`` convention). Longer sequences need more
self-iterations than the training length did: the state-tracking comparison of docs/tasks.md measured S3 at 8x
at 0.32 with the training budget (tol 0.05, 32) and 1.000 with tol 0.005, 256 on the same weights. The authors'
code evaluates in the sequential mode (per-token iteration); here evaluation runs the parallel form with the
evaluation budget, which gives the same numbers at a common fixed point.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.mamba2 import Mamba2
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode

__all__ = ["ImplicitMamba2", "GRAD_MODES"]

GRAD_MODES = ("phantom", "implicit")


def _rel_diff(a: Tensor, b: Tensor) -> Tensor:
    """‖a − b‖ / ‖a‖ per row (B,), float32."""
    d = (a - b).float().flatten(1).norm(dim=1)
    return d / a.float().flatten(1).norm(dim=1).clamp_min(1e-12)


def _rows(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """new where mask (B,) else old, for tensors with batch in dim 0."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


@register_mixer("implicit_mamba2", family="expressive",
                small={"headdim": 8, "d_state": 8, "ngroups": 2, "chunk_size": 16, "tol": 1e-6, "max_iter": 200, "init_gain": 0.1,
                       "grad_mode": "implicit"})
class ImplicitMamba2(Mixer):
    """x (B, T, D) -> y (B, T, D). State: Mamba-2's conv (B, W−1, E·D + 2·G·N) and h (B, H, N, P).

    tol, max_iter: the solver's relative tolerance and budget (applications of f per call, or per token in the
    step form); eval_tol, eval_max_iter: the same when not training (None: tol, max_iter); grad_mode: "phantom" |
    "implicit"; phantom_steps, tau: the phantom gradient's steps and damping;
    init_gain: scales in_proj's default init (the z path; the authors' config has ``init_gain`` 0.5); the rest:
    Mamba-2's options."""

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 chunk_size: int = 64, tol: float = 0.05, max_iter: int = 32, grad_mode: str = "phantom", phantom_steps: int = 4,
                 tau: float = 0.8, init_gain: float = 0.5, norm_eps: float = 1e-5,
                 eval_tol: float | None = None, eval_max_iter: int | None = None):
        super().__init__(d_model)
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        for name, t in (("tol", tol), ("eval_tol", eval_tol)):
            if t is not None and not t > 0:
                raise ValueError(f"{name} must be > 0, got {t}")
        for name, m in (("max_iter", max_iter), ("eval_max_iter", eval_max_iter)):
            if m is not None and not (isinstance(m, int) and m >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {m!r}")
        if not 0 < tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.core = Mamba2(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, norm_eps=norm_eps)
        with torch.no_grad():
            self.core.in_proj.weight.mul_(init_gain)  # the z path: its strength sets how contractive f starts
        self.injection = nn.Linear(d_model, self.core.in_proj.out_features)
        self.norm_in, self.norm_z, self.norm_f = (nn.RMSNorm(d_model, norm_eps) for _ in range(3))  # in x's dtype (float64 too)
        self.tol, self.max_iter, self.grad_mode, self.phantom_steps, self.tau = float(tol), max_iter, grad_mode, phantom_steps, float(tau)
        self.eval_tol, self.eval_max_iter = eval_tol, eval_max_iter  # None: follow tol / max_iter
        self.last_iterations = 0  # applications of f in the last forward (solver diagnostics)

    def budget(self, dtype: torch.dtype, low: bool = False) -> tuple[float, int]:
        """(tolerance, max applications) for this mode (training or not); the tolerance is floored at 4 ulps of
        the arithmetic (bfloat16's if ``low``), which no iteration can beat."""
        tol, max_iter = self.tol, self.max_iter
        if not self.training:
            tol = tol if self.eval_tol is None else self.eval_tol
            max_iter = max_iter if self.eval_max_iter is None else self.eval_max_iter
        return max(tol, 4 * torch.finfo(torch.bfloat16 if low else dtype).eps), max_iter

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.core.init_state(batch_size, device, dtype)

    def state_size(self, seq_len: int) -> int:
        return self.core.state_size(seq_len)

    def f(self, z: Tensor, u: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """One application: z (B, T, D), u the injection -> (f(z) (B, T, D), the SSM's state after the call)."""
        y, new = self.core.mix_projected(self.core.in_proj(self.norm_z(z)) + u, state, form, z.dtype)
        return self.norm_f(z + y), new

    @torch.no_grad()
    def solve(self, u: Tensor, state: State, form: str, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Fixed-point iteration from z = 0 (in ``dtype``, default u's) -> (z* (B, T, D), f(z*)); every row stops once its relative step is
        within the tolerance (then ‖f(z*) − z*‖ <= tol·‖f(z*)‖), or after the budget's applications (``budget``;
        bfloat16's floor under autocast or for a bfloat16 module)."""
        B, T = u.shape[:2]
        low = (dtype or u.dtype) in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(u.device.type)
        tol, max_iter = self.budget(dtype or u.dtype, low)
        z = u.new_zeros(B, T, self.d_model, dtype=dtype)
        fz, _ = self.f(z, u, state, form)
        active = torch.ones(B, dtype=torch.bool, device=u.device)
        n = 1
        while n < max_iter:
            done = active & ~(_rel_diff(fz, z) > tol)  # a non-finite row is done too: it cannot converge
            active &= ~done
            if not bool(active.any()):
                break
            z = _rows(active, fz, z)
            fz_new, _ = self.f(z, u, state, form)
            fz = _rows(active, fz_new, fz)
            n += 1
        self.last_iterations = n
        return z, fz

    def _attach(self, z: Tensor, u: Tensor, state: State, form: str) -> Tensor:
        """z* -> z̄ with value z* and the chosen gradient (module doc)."""
        if self.grad_mode == "phantom":
            for _ in range(self.phantom_steps):
                z = (1 - self.tau) * z + self.tau * self.f(z, u, state, form)[0]
            return z
        z0 = z.detach().requires_grad_()
        fz = self.f(z0, u, state, form)[0]
        z_bar = z0 + (fz - fz.detach())  # value z*, gradient through one application of f

        tol, max_iter = self.budget(z.dtype)

        def adjoint(grad: Tensor) -> Tensor:  # g = (∂f/∂z)ᵀ g + grad, by fixed-point iteration
            handle.remove()  # the vector-Jacobian products below start at fz: they must not re-enter this hook
            g = grad
            for _ in range(max_iter):
                g_new = torch.autograd.grad(fz, z0, g, retain_graph=True)[0] + grad
                if bool((_rel_diff(g_new, g) <= tol).all()):
                    return g_new
                g = g_new
            return g

        handle = fz.register_hook(adjoint)
        return z_bar

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        u = decode.linear(self.injection, self.norm_in(x))
        z, fz = self.solve(u, state, form, x.dtype)
        if not torch.is_grad_enabled():
            _, new = self.f(z, u, state, form)  # the final call advances the state (its output is fz)
            return fz, new
        return self.f(self._attach(z, u, state, form), u, state, form)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Simultaneous mode: the iteration over the whole sequence."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Sequential mode: the iteration for one token with the state held, then the final call; on CPU without
        autograd the whole iteration, each row stopping on its own, in one fused decode kernel (rnnlab.ops.decode)."""
        core = self.core
        params = (core.in_proj.weight, core.out_proj.weight, core.A_log, self.norm_z.weight, self.norm_f.weight)
        if type(core)._ssd is Mamba2._ssd and decode.usable(x, *state.values(), *params, float64=True):
            return self._decode(x, state)
        return self._mix(x, state, "recurrent")

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        core, D = self.core, self.d_model
        tol, max_iter = self.budget(x.dtype)  # as ``solve``
        u = decode.linear(self.injection, self.norm_in(x))
        w = core.norm_weight
        bias = lambda t: w if t is None else t  # noqa: E731  (a stand-in for an absent bias, never read then)
        b_in, b_conv, b_out = core.in_proj.bias, core.conv.bias, core.out_proj.bias
        out, (conv, h) = decode.fused_step(
            "implicit_ssd_decode", self, u, [state["conv"], state["h"]],
            [self.norm_z.weight, core.in_proj.weight, bias(b_in), core.conv.weight, bias(b_conv), core.dt_bias, core._A(x.dtype), core.D,
             core.norm_weight, core.out_proj.weight, bias(b_out), self.norm_f.weight],
            D + 1, [D, D, core.in_proj.out_features, state["conv"].shape[-1], core.d_inner, D], b_in is not None, b_conv is not None,
            b_out is not None, core.ngroups, core.norm_eps, self.norm_z.eps, self.norm_f.eps, tol, max_iter)
        self.last_iterations = int(out[:, 0, D].max())
        return out[..., :D].contiguous(), {"conv": conv, "h": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, tol={self.tol}, max_iter={self.max_iter}, eval_tol={self.eval_tol}, "
                f"eval_max_iter={self.eval_max_iter}, grad_mode={self.grad_mode!r}")
