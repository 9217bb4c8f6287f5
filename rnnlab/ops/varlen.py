"""Packed variable-length batches (fla's ``cu_seqlens`` convention), once for every op and mixer.

    cu_seqlens = [0, 5, 6, 43]     # int64 (N + 1,): N = 3 sequences of lengths 5, 1, 37 back to back
    x: (1, 43, ...)                 # the packed tokens; every state tensor has N in dim 0

:func:`run_packed` runs any "continue from a state" function over a packed batch without letting a
sequence see another: the sequences are sorted by length and laid out as rows of a padded batch, and
the function runs on the time segments between consecutive distinct lengths with only the rows still
active (PyTorch's PackedSequence schedule). Every call therefore holds whole, aligned rows that start
from their own state, so recurrences, short convolutions, token shifts, attention and positions are
reset at each boundary by construction; a segment is exact because a forward on [0:t) and then [t:T)
from the returned state equals the forward on [0:T) (the conformance suite's ``split_equals_full``).
The work is the real tokens only (no padding is computed), in at most N calls, each batched over the
active rows. The padded positions are never computed: they are gathered in and out with one index each.

:func:`varlen` gives every public op in rnnlab.ops the same convention (``op(..., cu_seqlens=cu)``) by
naming its time-major and initial-state arguments; it also checks the fla-only keyword arguments
(:data:`FLA_ARGS`: accepted at values that change nothing, NotImplementedError otherwise), and it runs
every op with autocast off (:func:`autocast_off`): an op's dtypes are its own documented policy.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["seq_lengths", "Packing", "run_packed", "map_state", "cat_rows", "cu_seqlens_from_lengths", "varlen", "autocast_off", "FLA_ARGS"]


def cu_seqlens_from_lengths(lengths, device=None) -> Tensor:
    """[L_0, ..., L_{N-1}] -> cu_seqlens (N + 1,) int64 = [0, L_0, L_0 + L_1, ...]."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    return F.pad(lengths.cumsum(0), (1, 0))


def seq_lengths(cu_seqlens: Any, total: int, num_states: int | None = None, who: str = "cu_seqlens") -> list[int]:
    """Validate ``cu_seqlens`` for a packed input of ``total`` tokens -> the N sequence lengths (host ints).

    Rules (each a ValueError naming it): a 1-D integer tensor of N + 1 >= 2 entries, starting at 0, ending
    at ``total``, strictly increasing (every sequence holds at least one token), N == ``num_states`` when
    given (the states' dim 0)."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point() or cu_seqlens.is_complex() \
            or cu_seqlens.dtype == torch.bool:
        desc = f"{type(cu_seqlens).__name__}" if not isinstance(cu_seqlens, Tensor) else f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
        raise ValueError(f"{who} must be a 1-D int64 tensor [0, ..., T] of N + 1 sequence offsets, got {desc}")
    cu = cu_seqlens.tolist()
    if len(cu) < 2:
        raise ValueError(f"{who} must hold N + 1 >= 2 offsets (at least one sequence), got {cu}")
    if cu[0] != 0:
        raise ValueError(f"{who} must start at 0, got {cu[0]}")
    if cu[-1] != total:
        raise ValueError(f"{who} must end at the packed length T = {total} (x is (1, T, ...)), got {cu[-1]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if min(lengths) < 1:
        raise ValueError(f"{who} must be strictly increasing (every sequence at least one token), got {cu}")
    if num_states is not None and num_states != len(lengths):
        raise ValueError(f"{who} describes N = {len(lengths)} sequences but the state has batch size {num_states} (dim 0 must be N)")
    return lengths


@dataclass(frozen=True)
class Packing:
    """The schedule of a packed batch: rows sorted by length (longest first), the time segments between
    distinct lengths with their number of active rows, and the gather indices between the packed
    (T,) layout and the padded (N * L_max,) one."""

    lengths: tuple[int, ...]
    order: Tensor          # (N,) sorted row r holds sequence order[r]
    inverse: Tensor        # (N,) sequence i sits in sorted row inverse[i]
    segments: tuple[tuple[int, int, int], ...]  # (t0, t1, active rows k)
    to_padded: Tensor | None   # (N * L_max,) packed index per padded slot (T = the zero pad slot); None when all equal
    to_packed: Tensor | None   # (T,) padded slot per packed token
    max_len: int

    @staticmethod
    def build(cu_seqlens: Tensor, total: int, num_states: int | None = None, who: str = "cu_seqlens") -> "Packing":
        lengths = seq_lengths(cu_seqlens, total, num_states, who)
        N, device = len(lengths), cu_seqlens.device
        Lmax = max(lengths)
        order = sorted(range(N), key=lambda i: -lengths[i])  # stable: equal lengths keep their order
        ls = [lengths[i] for i in order]
        segments, t0 = [], 0
        for k in range(N, 0, -1):  # rows [0, k) are active on [t0, ls[k-1])
            if ls[k - 1] > t0:
                segments.append((t0, ls[k - 1], k))
                t0 = ls[k - 1]
        inverse = [0] * N
        for r, i in enumerate(order):
            inverse[i] = r
        if min(lengths) == Lmax:
            to_padded = to_packed = None  # a plain reshape (N, L): one segment, rows in order
        else:
            starts = cu_seqlens.to(torch.int64).cpu()[:-1]
            t = torch.arange(Lmax)
            order_t = torch.tensor(order)
            lens_sorted = torch.tensor(ls)
            src = starts[order_t][:, None] + t[None]
            to_padded = torch.where(t[None] < lens_sorted[:, None], src, torch.full_like(src, total)).reshape(-1).to(device)
            inv_t = torch.tensor(inverse)
            seq_of = torch.repeat_interleave(torch.arange(N), torch.tensor(lengths))
            pos = torch.arange(total) - starts[seq_of]
            to_packed = (inv_t[seq_of] * Lmax + pos).to(device)
        return Packing(tuple(lengths), torch.tensor(order, device=device), torch.tensor(inverse, device=device), tuple(segments),
                       to_padded, to_packed, Lmax)

    # --- layouts ---------------------------------------------------------------
    def pad(self, x: Tensor) -> Tensor:
        """(1, T, *rest) packed -> (N, L_max, *rest) rows sorted by length, zeros after each row's end."""
        flat = x[0]
        if self.to_padded is None:
            return flat.reshape(len(self.lengths), self.max_len, *flat.shape[1:])
        ext = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])], 0)
        return ext.index_select(0, self.to_padded).view(len(self.lengths), self.max_len, *flat.shape[1:])

    def unpad(self, y: Tensor) -> Tensor:
        """(N, L_max, *rest) sorted rows -> (1, T, *rest) packed."""
        if self.to_packed is None:
            return y.reshape(1, -1, *y.shape[2:])
        return y.reshape(-1, *y.shape[2:]).index_select(0, self.to_packed).unsqueeze(0)


def map_state(state, fn: Callable[[Tensor], Tensor]):
    """Apply fn to every tensor of a state: a dict, tuple/list, a tensor or None."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(v, fn) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(v, fn) for v in state)
    raise TypeError(f"a state must be a Tensor, dict, tuple, list or None, got {type(state).__name__}")


def _zip_state(a, b, fn):
    if a is None:
        return None
    if isinstance(a, Tensor):
        return fn(a, b)
    if isinstance(a, dict):
        return {k: _zip_state(a[k], b[k], fn) for k in a}
    return type(a)(_zip_state(x, y, fn) for x, y in zip(a, b))


def cat_rows(a: Tensor, b: Tensor) -> Tensor:
    """Rows a then rows b (dim 0). Where their other dims differ (attention caches of different lengths),
    both are zero-padded at the front of that dim to the larger size: caches are right-aligned, and the
    per-row position says how many entries are real."""
    if a.shape[1:] != b.shape[1:]:
        size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]

        def grow(t):
            pad = []
            for have, want in zip(reversed(t.shape[1:]), reversed(size)):
                pad += [want - have, 0]
            return F.pad(t, pad)

        a, b = grow(a), grow(b)
    return torch.cat([a, b.to(a.dtype)], 0)


def _rows(state, idx: Tensor):
    return map_state(state, lambda t: t.index_select(0, idx.to(t.device)))


def run_packed(fn: Callable, inputs: tuple[Tensor, ...], state, packing: Packing):
    """Run ``fn(inputs_rows, state_rows) -> (outputs, state_rows)`` over a packed batch.

    inputs: tensors (1, T, ...) sharing the packed time dim 1. state: per-sequence (N in dim 0 of every
    tensor; dict, tuple, tensor) or None (fn's own initial state; every row is active in the first
    segment). outputs: a tensor or a tuple of tensors (rows, time, ...). Returns (outputs packed as
    (1, T, ...), final per-sequence state in the original order)."""
    N = len(packing.lengths)
    if N == 1:
        return fn(inputs, state)
    padded = [packing.pad(x) for x in inputs]
    sorted_state = _rows(state, packing.order) if packing.to_padded is not None else state
    pieces: list[tuple[Tensor, ...]] = []  # per segment: its outputs (k, t1 - t0, ...)
    single = False
    for t0, t1, k in packing.segments:
        rows = [p[:k, t0:t1] for p in padded]
        part = None if sorted_state is None else (map_state(sorted_state, lambda t: t[:k]) if k < N else sorted_state)
        out, new = fn(tuple(rows), part)
        single = isinstance(out, Tensor)
        pieces.append((out,) if single else tuple(out))
        if k == N or sorted_state is None:
            sorted_state = new
        else:
            rest = map_state(sorted_state, lambda t: t[k:])
            sorted_state = _zip_state(new, rest, cat_rows)
    if packing.to_padded is None:  # one segment, rows in order
        outs = tuple(packing.unpad(o) for o in pieces[0])
    else:  # sequence by sequence, its pieces in time order: one cat, no padded buffer to fill
        ks = [k for _, _, k in packing.segments]
        outs = tuple(torch.cat([p[j][r] for r in packing.inverse.tolist() for p, k in zip(pieces, ks) if r < k], 0).unsqueeze(0)
                     for j in range(len(pieces[0])))
    final = _rows(sorted_state, packing.inverse) if packing.to_padded is not None else sorted_state
    return (outs[0] if single else outs), final


# --------------------------------------------------------------------------- op-level cu_seqlens
_ANY = object()  # an fla argument that is a promise or a speed hint: every value is accepted and ignored

# fla keyword arguments the ops recognise without implementing them: (the values that change nothing, what
# the argument asks for). Another value is a NotImplementedError naming the argument; an op lists the ones
# its fla counterpart takes, and any other unknown keyword is a TypeError (never silently swallowed).
FLA_ARGS: dict[str, tuple[Any, str]] = {
    "head_first": ((False,), "the (B, H, T, ...) layout; the inputs here are (B, T, H, ...)"),
    "reverse": ((False,), "a right-to-left recurrence"),
    "state_v_first": ((False,), "the (N, H, V, K) state layout; states here are (N, H, K, V)"),
    "transpose_state_layout": ((False,), "the (N, H, V, K) state layout; states here are (N, H, K, V)"),
    "chunk_indices": ((None,), "fla's precomputed varlen chunk table; the schedule here is derived from cu_seqlens"),
    "cp_context": ((None,), "context parallelism"),
    "use_beta_sigmoid_in_kernel": ((False,), "beta = sigmoid(beta) inside the op; pass the sigmoid's output"),
    "allow_neg_eigval": ((False,), "beta = 2 sigmoid(beta) inside the op; pass beta in (0, 2)"),
    "use_gate_in_kernel": ((False,), "the gate computed from A_log and dt_bias inside the op; pass g"),
    "A_log": ((None,), "the gate computed inside the op; pass g"),
    "dt_bias": ((None,), "the gate computed inside the op; pass g"),
    "g_gamma": ((None,), "a constant decay per head; pass g expanded to (B, T, H)"),
    "gk": ((None,), "a per-key decay (this op takes one decay g per head)"),
    "gv": ((None,), "a decay per value dimension"),
    "safe_gate": (_ANY, "a promise on the gate's range (a speed hint of fla's kernels)"),
    "lower_bound": (_ANY, "a promise on the gate's range (a speed hint of fla's kernels)"),
    "disable_recompute": (_ANY, "a memory/speed trade-off of fla's kernels"),
    "cu_seqlens_cpu": ((None,), "a host copy of cu_seqlens"),  # accepted alongside an equal cu_seqlens (below)
}

_VARLEN_DOC = """
    cu_seqlens (fla's packed convention, :mod:`rnnlab.ops.varlen`): int64 (N + 1,) offsets [0, ..., T]; the
    time-major inputs are then (1, T, ...) holding N sequences back to back, the initial state (None = zeros)
    and the final state have N in dim 0, and each sequence runs from its own state without seeing another."""


_AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_off(fn: Callable) -> Callable:
    """Run ``fn`` with torch.autocast off when it is on (fla's kernels are autocast-transparent alike).

    An op casts its operands itself, to its documented compute dtypes (rnnlab.ops.chunk's ``acc_dtype`` /
    ``mm_dtype``: float32 accumulation and state, bfloat16 matmuls for bfloat16 inputs where measured
    faster), on the dtypes it is given; autocast's per-call casts (matmuls to bfloat16, FFTs to float32)
    would break that policy halfway, e.g. a float32 state meeting a bfloat16 operand in an ``out=`` or
    baddbmm call. Under autocast the op sees what the layer hands it (bfloat16 projections, float32 gates)
    and returns the same dtypes as for those inputs without autocast. Outside autocast this costs two
    flag reads per call. Backward runs outside the forward's autocast region (PyTorch's recommended use)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        on = [d for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d)]
        if not on:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for d in on:
                stack.enter_context(torch.autocast(d, enabled=False))
            return fn(*args, **kwargs)
    return run


def _rows_of(state) -> int | None:
    """The batch size (dim 0) shared by every tensor of a state, None for no state."""
    sizes = set()
    map_state(state, lambda t: sizes.add(t.shape[0]) or t)
    if len(sizes) > 1:
        raise ValueError(f"every tensor of the initial state must have the N sequences in dim 0, got sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def varlen(time: tuple[str, ...], state: str | None = "initial_state", final: str | None = "output_final_state",
           fla: tuple[str, ...] = (), broadcast: tuple[str, ...] = (), post: tuple[str, Callable] | None = None):
    """Give an op fla's ``cu_seqlens`` (and its fla-only keyword arguments), once for every op.

    The decorated op gains keyword-only ``cu_seqlens=None`` and the ``fla`` names of :data:`FLA_ARGS`.
    Without ``cu_seqlens`` it is called as it is (unknown keywords raise its own TypeError). With it:

    time:      the names of the time-major tensor arguments (B, T, ...), the first one the reference; None
               values (an absent gate) are skipped. Every one must have batch 1 (ValueError otherwise).
    broadcast: names in ``time`` that may broadcast against the first over the leading (1, T) dims
               (linear_scan's a); they are expanded.
    state:     the initial-state argument (N in dim 0 of every tensor), or None for a stateless causal op,
               which then runs once on the sequences padded to rows (zeros after each end, which a causal op
               never reads back).
    final:     the output_final_state flag, or None when the op always returns its final state. The op is
               run with the final state requested (run_packed carries it between time segments), and it is
               dropped from the result when the caller's flag is False.
    post:      (flag, fn(arguments, o) -> o): a causal, stateless post-processing of the output tensor over a
               call's tokens, switched off inside the segments and applied per sequence afterwards, on the
               padded rows (the arguments' time tensors padded alike; linear attention's ``normalize``).

    The op runs through :func:`run_packed` (sorted rows, time segments; exact by construction)."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        for name in (*time, *((state,) if state else ()), *((final,) if final else ()), *((post[0],) if post else ())):
            if name not in sig.parameters:
                raise TypeError(f"varlen: {fn.__name__} has no argument {name!r}")
        unknown = [n for n in fla if n not in FLA_ARGS]
        if unknown:
            raise TypeError(f"varlen: {fn.__name__}: {unknown} are not in FLA_ARGS")

        @functools.wraps(fn)
        @autocast_off
        def op(*args, cu_seqlens=None, **kwargs):
            for name in fla:
                if name in kwargs:
                    value = kwargs.pop(name)
                    if name == "cu_seqlens_cpu":
                        _check_host_copy(fn.__name__, value, cu_seqlens)
                        continue
                    ok, what = FLA_ARGS[name]
                    if ok is not _ANY and not any(value is v or (type(value) is type(v) and value == v) for v in ok):
                        raise NotImplementedError(f"{fn.__name__}: {name}={value!r} ({what}) is not implemented")
            if cu_seqlens is None:
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return _run_varlen(fn, dict(bound.arguments), cu_seqlens, time, state, final, broadcast, post)

        params = list(sig.parameters.values()) + [inspect.Parameter("cu_seqlens", inspect.Parameter.KEYWORD_ONLY, default=None)]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None if FLA_ARGS[n][0] is _ANY else FLA_ARGS[n][0][0])
                   for n in fla]
        op.__signature__ = sig.replace(parameters=params)
        op.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + _VARLEN_DOC
        return op

    return wrap


def _check_host_copy(who: str, cpu, cu_seqlens) -> None:
    if cpu is None:
        return
    if cu_seqlens is None:
        raise ValueError(f"{who}: cu_seqlens_cpu (a host copy of cu_seqlens) was given without cu_seqlens")
    if isinstance(cu_seqlens, Tensor) and (not isinstance(cpu, Tensor) or not torch.equal(cpu.cpu().long(), cu_seqlens.cpu().long())):
        raise ValueError(f"{who}: cu_seqlens_cpu must equal cu_seqlens, got {cpu} and {cu_seqlens}")


def _time_major(who: str, name: str, x: Tensor, ref: Tensor, broadcast: bool) -> Tensor:
    """x as (1, T, ...) like ref: batch 1, the same packed length (or broadcast to it when allowed)."""
    if broadcast and x.dim() < ref.dim():
        x = x.reshape((1,) * (ref.dim() - x.dim()) + tuple(x.shape))
    if x.dim() < 2 or x.shape[0] != 1:
        raise ValueError(f"{who}: with cu_seqlens the inputs are (1, T, ...) holding the N sequences back to back "
                         f"(batch 1); {name} has shape {tuple(x.shape)}")
    T = ref.shape[1]
    if x.shape[1] != T:
        if not (broadcast and x.shape[1] == 1):
            raise ValueError(f"{who}: {name} must have the packed length T = {T} in dim 1, got shape {tuple(x.shape)}")
        x = x.expand(1, T, *x.shape[2:])
    return x


def _run_varlen(fn, args: dict, cu_seqlens, time, state, final, broadcast, post):
    who = fn.__name__
    names = [n for n in time if args[n] is not None]
    for n in names:
        if not isinstance(args[n], Tensor):
            raise ValueError(f"{who}: {n} must be a tensor (1, T, ...), got {type(args[n]).__name__}")
    ref = args[names[0]]
    xs = tuple(_time_major(who, n, args[n], ref, n in broadcast) for n in names)
    T = ref.shape[1]
    s0 = args[state] if state else None
    n_states = _rows_of(s0)
    if isinstance(cu_seqlens, Packing):
        packing = cu_seqlens
        if sum(packing.lengths) != T or (n_states is not None and n_states != len(packing.lengths)):
            raise ValueError(f"{who}: the packing holds {len(packing.lengths)} sequences of {sum(packing.lengths)} tokens; "
                             f"the inputs hold T = {T} and the state {n_states} rows")
    else:
        packing = Packing.build(cu_seqlens, T, n_states, who=f"{who}: cu_seqlens")
    want_final = bool(args[final]) if final else True
    post_on = post is not None and bool(args[post[0]])
    if post_on:
        args[post[0]] = False
    if final:
        args[final] = True

    def call(inputs, s):
        kw = dict(args)
        kw.update(zip(names, inputs))
        if state:
            kw[state] = s
        return fn(**kw)

    if state is None:  # a stateless causal op: once, on the sequences as padded rows
        out = call(tuple(packing.pad(x) for x in xs), None)
        return packing.unpad(out) if isinstance(out, Tensor) else tuple(packing.unpad(o) for o in out)
    out, fin = run_packed(call, xs, s0, packing)
    if post_on:
        padded = dict(args)
        padded.update(zip(names, (packing.pad(x) for x in xs)))
        out = packing.unpad(post[1](padded, packing.pad(out)))
    return out, (fin if want_final else None)
