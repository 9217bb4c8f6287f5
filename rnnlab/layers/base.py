"""The mixer contract every token mixer implements.

A mixer maps x (B, T, D) to y (B, T, D) and carries a state between calls:

    y, state = mixer(x, state=None)
    y, states = mixer(x_packed, states, cu_seqlens=cu_seqlens)     # N sequences back to back in (1, T, D)
    state = mixer.init_state(batch_size, device=None, dtype=None)  # dict[str, Tensor], batch in dim 0
    n = mixer.state_size(seq_len)                                   # floats held per sequence

Subclasses implement ``parallel(x, state)`` (T > 1, the training form) and
``step(x, state)`` (T == 1, the recurrent form); both take and return a state
dict. ``forward`` validates the input, fills a missing state from
``init_state`` and dispatches on T; that policy lives here and nowhere else.
A state is validated once: the one the last call returned (the same tensors under
the same keys, same batch) is not re-checked, so a decode loop pays no per-token checks.

Packed batches (fla's convention): with ``cu_seqlens`` (int64, [0, ..., T], N + 1 offsets) x is
(1, T, D) holding N sequences and every state tensor has N in dim 0 (initial states in, final
states out, one per sequence). The base class validates it and runs ``packed``, which by default
hands ``parallel``/``step`` whole sequences only (rnnlab.ops.varlen.run_packed): no subclass code
ever sees two sequences in one row, so a new mixer gets boundaries right without writing any.
A mixer may override ``packed`` with a native form; the conformance suite's packed check holds it
to the per-sequence runs.

Irregular sampling: a continuous-time mixer (class attribute ``takes_dt = True``: LTC, CfC, HiPPO-RNN) accepts
``forward(x, state, dt=dt)``, dt (B, T) the time elapsed since the previous token (finite, >= 0; None = 1 per
token). It is one more time-major input of the same contract: with ``cu_seqlens`` it is (1, T), packed like x
and cut into the same segments, and ``parallel``/``step`` receive it as the keyword ``dt`` (only when given,
so other mixers' signatures never change). A mixer without ``takes_dt`` rejects it (ValueError).
"""
from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor, nn

from rnnlab.ops.varlen import Packing, run_packed

State = dict[str, Tensor]


class Mixer(nn.Module):
    """Base class of all token mixers; see the module docstring for the contract."""

    takes_dt: bool = False  # accepts a per-token time step dt (B, T) (module docstring: irregular sampling)

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model

    # --- to implement -------------------------------------------------------
    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) with T > 1 -> (y (B, T, D), new state). Continues from ``state``."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y (B, 1, D), new state): the O(1)-per-token recurrent form."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The state before any token: dict of tensors with batch in dim 0 (float32 unless dtype given)."""
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        """Floats held per sequence after ``seq_len`` tokens (constant for recurrent mixers)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------
    def packed(self, x: Tensor, state: State, packing: Packing, dt: Tensor | None = None) -> tuple[Tensor, State]:
        """x (1, T, D) (and dt (1, T)) holding the sequences of ``packing`` -> (y (1, T, D), per-sequence states).
        Default: ``parallel``/``step`` on whole sequences only (see the module docstring)."""
        inputs = (x,) if dt is None else (x, dt)
        return run_packed(lambda xs, s: self._dispatch(xs[0], s, *xs[1:]), inputs, state, packing)

    def forward(self, x: Tensor, state: State | None = None, *, cu_seqlens: Tensor | None = None,
                dt: Tensor | None = None) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y (B, T, D), state). T == 1 runs ``step``, T > 1 ``parallel``;
        with ``cu_seqlens`` x is (1, T, D) holding N sequences and the state has N rows;
        ``dt`` (B, T): per-token time steps, for mixers with ``takes_dt`` (module docstring)."""
        self.check_input(x)
        if dt is not None:
            self.check_dt(dt, x)
        packing = None
        if cu_seqlens is not None:
            if x.shape[0] != 1:
                raise ValueError(f"{type(self).__name__}: with cu_seqlens x must be (1, T, {self.d_model}) (sequences packed "
                                 f"back to back), got {tuple(x.shape)}")
            packing = cu_seqlens if isinstance(cu_seqlens, Packing) else Packing.build(cu_seqlens, x.shape[1])
        batch = x.shape[0] if packing is None else len(packing.lengths)
        wide = x.dtype == torch.float64  # the state dtype policy (docs/architecture.md): float64 in, float64 state
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=torch.float64 if wide else None)
        elif not self._returned_earlier(state, batch, wide):
            self.check_state(state, batch, packed=packing is not None, x_dtype=x.dtype)
        if batch == 0:  # an empty batch (a filtered-out microbatch): empty outputs, the empty state as given
            return x.new_zeros(x.shape), state
        if packing is not None and batch > 1:  # dt only when given: a subclass's own packed need not know it
            y, state = self.packed(x, state, packing) if dt is None else self.packed(x, state, packing, dt=dt)
        else:
            y, state = self._dispatch(x, state, dt)
        if wide:  # layers that compute their state in float32 return it as float64 here, once for all
            state = {k: v.to(torch.complex128 if v.is_complex() else torch.float64) if v.is_floating_point() or v.is_complex() else v
                     for k, v in state.items()}
        self.__dict__["_returned_state"] = (batch, wide, [(k, weakref.ref(v)) for k, v in state.items()])
        return y, state

    def __getstate__(self):  # pickling (torch.save of a module, multiprocessing): the weak references stay behind
        return {k: v for k, v in super().__getstate__().items() if k != "_returned_state"}

    def _returned_earlier(self, state: State, batch: int, wide: bool) -> bool:
        """Whether ``state`` is, key for key and tensor for tensor, the state the last call returned, for the same batch
        size and float64-ness: checked then, so a decode loop skips ``check_state`` (a replaced or added entry, another
        batch or dtype policy is checked in full). Weak references: the mixer keeps no state alive."""
        seen = self.__dict__.get("_returned_state")
        if seen is None or seen[0] != batch or seen[1] != wide or not isinstance(state, dict) or len(state) != len(seen[2]):
            return False
        for (key, ref), (k, t) in zip(seen[2], state.items()):
            if k != key or ref() is not t:
                return False
        return True

    def _dispatch(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        kw = {} if dt is None else {"dt": dt}  # only time-step mixers ever see the keyword
        return self.step(x, state, **kw) if x.shape[1] == 1 else self.parallel(x, state, **kw)

    def check_dt(self, dt: Tensor, x: Tensor) -> None:
        """dt (B, T) like x's first two dims, floating, finite and >= 0 (values read on CPU only: no device sync)."""
        if not self.takes_dt:
            raise ValueError(f"{type(self).__name__} takes no per-token time step dt (only continuous-time mixers do, "
                             f"e.g. ltc, cfc, hippo_rnn); feed the time gaps as an input feature instead")
        if not isinstance(dt, Tensor) or dt.shape != x.shape[:2] or not dt.is_floating_point():
            got = f"{tuple(dt.shape)} {dt.dtype}" if isinstance(dt, Tensor) else type(dt).__name__
            raise ValueError(f"{type(self).__name__} expects dt of shape (B, T) = {tuple(x.shape[:2])}, floating point, got {got}")
        if dt.device.type == "cpu" and dt.numel() and not bool(((dt >= 0) & torch.isfinite(dt)).all()):
            raise ValueError(f"{type(self).__name__}: dt must be finite and >= 0 (time elapsed since the previous token)")

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor of shape (B, T, {self.d_model}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] == 0:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, T, D) = (batch, seq_len >= 1, {self.d_model}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point x, got dtype {x.dtype}")
        p = self._dtype_reference()
        if p is not None and p.is_floating_point() and x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{type(self).__name__} has {p.dtype} parameters and expects x of dtype {p.dtype}, got {x.dtype}: "
                             f"cast the module (module.to({x.dtype})) or run under torch.autocast")

    def _dtype_reference(self) -> Tensor | None:
        """The tensor whose dtype is the module's: its first parameter, or for an untrained mixer (a reservoir: buffers
        only) its first floating buffer. The parameter is remembered with its owner and name and reused while it is
        still registered there (``.to()`` converts a parameter in place; ``load_state_dict(assign=True)`` or an
        assignment replaces it, and the search runs again): a decode step skips walking the module tree."""
        found = self.__dict__.get("_dtype_param")
        if found is not None and found[0]._parameters.get(found[1]) is found[2]:
            return found[2]
        for owner in self.modules():
            for name, p in owner._parameters.items():
                if p is not None:
                    self.__dict__["_dtype_param"] = (owner, name, p)
                    return p
        return next((b for b in self.buffers() if b.is_floating_point()), None)

    def check_state(self, state: State, batch_size: int, packed: bool = False, x_dtype: torch.dtype = torch.float32) -> None:
        """Keys, batch size and dtype of a given state: a float64 (complex128) state goes with float64 x only
        (docs/architecture.md, the state dtype policy; float64 x accepts a float32 state and widens it)."""
        wide = x_dtype == torch.float64
        expected = self._state_spec()
        if not isinstance(state, dict) or set(state) != set(expected):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__} expects a state dict with keys {sorted(expected)}, got {got}")
        for key, t in state.items():
            if not isinstance(t, Tensor):
                raise ValueError(f"{type(self).__name__}: state[{key!r}] must be a Tensor, got {type(t).__name__}")
            if t.shape[0] != batch_size:
                where = "the number of sequences in cu_seqlens" if packed else "dim 0 of x"
                raise ValueError(f"state[{key!r}] has batch size {t.shape[0]}, expected {batch_size} ({where})")
            ref = expected[key]  # a dim of size 0 there grows with the tokens seen (a KV cache): any size
            inner = tuple("any" if n == 0 else n for n in ref.shape[1:])
            if t.dim() != ref.dim() or any(n != "any" and n != m for n, m in zip(inner, t.shape[1:])):
                raise ValueError(f"{type(self).__name__}: state[{key!r}] has shape {tuple(t.shape)}, expected "
                                 f"(batch, {', '.join(map(str, inner))})")
            if t.is_complex() != ref.is_complex() or t.is_floating_point() != ref.is_floating_point():
                raise ValueError(f"{type(self).__name__}: state[{key!r}] is {t.dtype}, expected a tensor like {ref.dtype}")
            if not wide and t.dtype in (torch.float64, torch.complex128):
                raise ValueError(f"{type(self).__name__}: state[{key!r}] is {t.dtype}, expected float32 (or a bfloat16 cache) "
                                 f"for {x_dtype} x: a float64 state goes with float64 x only")

    def _state_spec(self) -> State:
        """``init_state(1)`` on the meta device, built once: what ``check_state`` compares a given state with at every
        call (a mixer's state layout is fixed by its constructor's options)."""
        spec = self.__dict__.get("_state_spec_cache")
        if spec is None:
            spec = self.__dict__["_state_spec_cache"] = self.init_state(1, device="meta")
        return spec

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


def state_numel(state: State) -> int:
    """Floats per sequence actually held by a state dict (complex counts as 2 floats)."""
    total = 0
    for t in state.values():
        per_seq = math.prod(t.shape[1:])
        total += per_seq * (2 if t.is_complex() else 1)
    return total


def no_weight_decay(*params: nn.Parameter) -> None:
    """Tag parameters the optimizer must not decay (decay rates, dt biases, ...), as mamba does."""
    for p in params:
        p._no_weight_decay = True
