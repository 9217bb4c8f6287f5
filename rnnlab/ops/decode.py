"""Fused decode tokens: one call for the middle of a layer's step (between its input and output projections), on
CPU without autograd. The kernels are in ``_decode_numba.py``; the layers' torch steps are their reference
(tests/ops/test_decode.py: many tokens, batch rows split over threads, every flag).

``usable(x, *tensors)`` is the one policy: a decode token (T = 1) on CPU, no gradient wanted, and x, the state and
the parameters all float32 (or all float64, ``float64=True``, for a layer whose torch step computes in float64: a
kernel in float64 would otherwise be more exact than the layer's own recurrent and parallel forms); anything else
(CUDA, autograd, bfloat16, mixed dtypes, CPU autocast) runs the layer's torch step. ``enabled(False)`` turns the kernels off
(the tests' reference; a bisection aid).

``fused_step`` is the one calling convention: a kernel takes (input rows, states, weights, output, new states,
scratch rows, scalars, lo, hi), batch rows [lo, hi) (split over threads from 2·_MIN_ROWS rows; below that a kernel's
``<name>_heads`` variant, where there is one, runs the (row, head) units over numba's threads); attention's kernel,
which writes the cache in place, has its own entry (``attention_decode``: the whole token, projections included).
``linear(layer, x)`` is the projections' entry: a plain ``nn.Linear`` on decode rows by one kernel, else the module.
The new states are fresh tensors (a state a caller holds never changes); the weights' numpy views are cached on the
layer while the tensors are the same (a decode token would otherwise spend more on converting ten parameters than on
its arithmetic), and the tensors decode makes from numpy arrays (``_tensor``) convert back for free (``_arr``): a token's
new states, the next token's old ones, cost no conversion.
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from rnnlab.ops._threads import run_rows

__all__ = ["usable", "enabled", "linear", "linear_usable", "linear_rows", "sequential", "split", "fused_step", "chunk_continues", "hooked",
           "complex_diagonal", "fused_prompt", "attention_decode", "log_linear_decode", "rat_decode"]

_ON = True
_KERNELS = None  # the compiled module, or False when numba is missing
_MIN_ROWS = 4  # batch rows per thread: below 2·4 rows one thread (a thread hand-off costs more than a row)
_LINEAR_ROWS = 8  # rows up to which ``linear`` beats torch's matmul (docs/benchmarks.md)
_SPLIT_WORK = 1 << 16  # work (attention: units · keys · d; a memory: its state's floats) from which units go over threads


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        try:
            from rnnlab.ops import _decode_numba
            _KERNELS = _decode_numba
        except ImportError:  # pragma: no cover - numba is a declared dependency
            _KERNELS = False
    return _KERNELS


@contextlib.contextmanager
def enabled(on: bool):
    """Within the block the fused decode kernels are used (True) or not (False)."""
    global _ON
    before, _ON = _ON, on
    try:
        yield
    finally:
        _ON = before


def usable(x: Tensor, *tensors: Tensor, float64: bool = False, max_batch: int | None = None, prompt: bool = False) -> bool:
    """Whether a fused decode kernel may run x (B, 1, D) with ``tensors`` (state entries, parameters). ``max_batch``:
    for a kernel that runs projections row by row (matrix-vector products), the batch above which torch's one matmul
    over the rows wins; ``prompt``: for a prompt kernel (``fused_prompt``), x (B, T, D) of any T."""
    dt = x.dtype
    if not _ON or (x.shape[1] != 1 and not prompt) or not x.is_cpu or not (dt == torch.float32 or (float64 and dt == torch.float64)):
        return False
    if torch.is_autocast_enabled("cpu"):  # the torch step's matmuls run in the autocast dtype: its numbers and dtypes
        return False
    if max_batch is not None and x.shape[0] > max_batch:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
        return False
    return all(t.dtype == dt and t.is_cpu for t in tensors) and _kernels() is not False


_MADE: dict[int, tuple] = {}  # id -> (weak ref, array, data pointer) of each live tensor ``_tensor`` made


def _tensor(a: np.ndarray) -> Tensor:
    """``torch.from_numpy(a)``, remembered with its array while the tensor lives: when it comes back (a token's new
    state as the next token's old one, a projection's output as a kernel's input) ``_arr`` returns the array without a
    conversion (four ATen calls each)."""
    t = torch.from_numpy(a)
    if a.flags.c_contiguous:  # the kernels take contiguous arrays; ``_arr`` copies any other
        key = id(t)
        _MADE[key] = (weakref.ref(t, lambda _, k=key: _MADE.pop(k, None)), a, t.data_ptr())
    return t


def split(t: Tensor, sizes: list[int]) -> list[Tensor]:
    """``t.split(sizes, -1)``; for a tensor ``_tensor`` made (a decode token's fused projections), by numpy slices,
    which ``_arr`` takes back for free where they are contiguous (one row)."""
    a = _made(t)
    if a is None:
        return list(t.split(sizes, -1))
    out, i = [], 0
    for n in sizes:
        out.append(_tensor(a[..., i : i + n]))
        i += n
    return out


def _made(t: Tensor) -> np.ndarray | None:
    """The array behind t if ``_tensor`` made t and t is still that tensor on that memory (written in place, the
    array sees it), else None."""
    made = _MADE.get(id(t))
    return made[1] if made is not None and made[0]() is t and t.data_ptr() == made[2] else None


def _arr(t: Tensor) -> np.ndarray:
    """t's numpy view (a contiguous copy where t is not contiguous); the array itself for a tensor ``_tensor`` made."""
    a = _made(t)
    if a is not None:
        return a
    return t.numpy() if not t.requires_grad and t.is_contiguous() else t.detach().contiguous().numpy()


def _weights(owner, weights: list[Tensor]) -> list[np.ndarray]:
    """numpy views of ``weights``, cached on ``owner`` while each is the same tensor on the same memory (an optimizer
    step or load_state_dict writes in place: the views see it; ``.to()`` or an assignment gives new memory)."""
    if not weights:
        return []
    key = [(w, w.data_ptr()) for w in weights]
    cached = owner.__dict__.get("_decode_weights")
    if cached is None or len(cached[0]) != len(key) or any(a is not b or p != q for (a, p), (b, q) in zip(cached[0], key)):
        cached = owner.__dict__["_decode_weights"] = (key, [_arr(w) for w in weights])
    return cached[1]


def linear_usable(x: Tensor, *params: Tensor, width: int | None = None) -> bool:
    """Whether ``linear_rows`` may run x against ``params`` (a weight (out, in) and its bias): ``usable``'s policy (any
    float64 alike) for decode tokens x (B, 1, in) of 0 < B <= 8 rows; ``width``: the rows' width when they are not x's
    own (a kernel's intermediate rows of x's batch and dtype). A width that does not match is left to torch's error
    (the kernel does not check bounds)."""
    if x.dim() != 3 or not x.shape[0] or (x.shape[2] if width is None else width) != params[0].shape[-1]:
        return False
    return usable(x, *params, float64=True, max_batch=_LINEAR_ROWS)


def linear_rows(x: Tensor, W: np.ndarray, bias: np.ndarray | None) -> Tensor:
    """x (B, 1, in) -> x Wᵀ (+ bias) (B, 1, out) by ``_decode_numba.linear_rows`` (W: a weight's numpy view, as
    stored), its outputs over numba's threads when the weight is large. A few rows of a matrix-vector product are
    memory-bound: the kernel reads the weight once at the vector width, where torch's matmul costs 2-4x more at one
    row on this project's CPUs (docs/benchmarks.md). The caller checked ``linear_usable``."""
    B = x.shape[0]
    xa = _arr(x).reshape(B, -1)
    y = np.empty((B, 1, W.shape[0]), xa.dtype)
    b = W[0] if bias is None else bias  # no bias: a stand-in, never read
    parts = torch.get_num_threads()
    if parts > 1 and B * W.size >= _SPLIT_WORK:
        _kernels().linear_rows_parallel(xa, W, b, bias is not None, y.reshape(B, -1), parts)
    else:
        _kernels().linear_rows(xa, W, b, bias is not None, y.reshape(B, -1), 0, W.shape[0])
    return _tensor(y)


def complex_diagonal(B: Tensor, lam: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The weights of ``_decode_numba.lru_decode`` (a complex diagonal SSM: h ← λ ⊙ h + B x, y = Re(C h)) from B (N, H),
    λ (N,), C (H, N) complex: w_in (2N, H) with B's real and imaginary rows interleaved as the state's parts are, λ's
    parts (N, 2), and w_out (H, 2N) with Re(C h) = Re C · Re h − Im C · Im h as one row of interleaved columns."""
    w_in = torch.stack([B.real, B.imag], 1).flatten(0, 1)
    w_out = torch.stack([C.real, -C.imag], 2).flatten(1)
    return w_in.contiguous(), torch.view_as_real(lam).contiguous(), w_out.contiguous()


def hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would run forward hooks (its own or global ones): a kernel or a cache that skips the
    module call must not skip them."""
    return bool(layer._forward_pre_hooks or layer._forward_hooks or _module._global_forward_pre_hooks or _module._global_forward_hooks)


def _plain(layer: nn.Module, x: Tensor, width: int | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The numpy views (weight, bias or None) of a plain ``nn.Linear`` (no hooks on it, no global ones) that
    ``linear_usable`` lets run x (rows of ``width``), cached on the layer while its parameters are the same tensors on the same memory
    (as ``_weights``); None for anything else."""
    params = layer._parameters
    w, b = params.get("weight"), params.get("bias")
    if (type(layer) is not nn.Linear or hooked(layer) or not linear_usable(x, w, *([] if b is None else [b]), width=width)
            or not w.is_contiguous()):  # a strided weight's view would be a copy that misses in-place updates
        return None
    c = layer.__dict__.get("_decode_linear")
    if c is None or c[0] is not w or c[1] is not b or c[2] != w.data_ptr():
        c = layer.__dict__["_decode_linear"] = (w, b, w.data_ptr(), _arr(w), None if b is None else _arr(b))
    return c[3], c[4]


def linear(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` for decode tokens: a plain ``nn.Linear`` on x that ``linear_usable`` accepts (``_plain``) runs
    ``linear_rows``; anything else is the module call."""
    views = _plain(layer, x)
    return layer(x) if views is None else linear_rows(x, *views)


def sequential(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` with each of its ``nn.Linear``s through ``linear`` (an MLP in a layer's step: a decode token's
    projections by the kernel); a hooked Sequential is the module call."""
    if hooked(seq):
        return seq(x)
    for module in seq:
        x = linear(module, x) if type(module) is nn.Linear else module(x)
    return x


def fused_step(kernel: str, owner, x: Tensor | list[Tensor], states: list[Tensor], weights: list[Tensor], out_width: int,
               scratch: list[int], *scalars, held: tuple[int, ...] = (), work: int | None = None) -> tuple[Tensor, list[Tensor]]:
    """Run ``_decode_numba.<kernel>`` on x (B, 1, ·) (a layer's input projection; or a list of such inputs) -> (out
    (B, 1, out_width), the new states, each shaped as its old one). ``owner``: the layer, which caches the weights'
    views; ``scratch``: the widths of the kernel's per-row scratch rows; ``held``: the indices of the states this token
    leaves as they are (a test-time memory's anchors within a chunk, ``chunk_continues``): the new state is the old
    tensor, and the kernel, told so by one of its scalars, does not write it (no copy of a memory per token); ``work``:
    a row's work where it is not its states' floats (what decides whether a few rows' units go over threads)."""
    xs = x if isinstance(x, (list, tuple)) else [x]
    B = xs[0].shape[0]
    inputs = [_arr(t).reshape(B, -1) for t in xs]
    old = [_arr(s) for s in states]
    npdt = inputs[0].dtype
    new_np = [a if i in held else np.empty_like(a) for i, a in enumerate(old)]  # numpy first: half the calls
    out = np.empty((B, 1, out_width), npdt)
    out_np = out.reshape(B, out_width)
    new = [s if i in held else _tensor(a) for i, (s, a) in enumerate(zip(states, new_np))]
    arrays = [*inputs, *old, *_weights(owner, weights), out_np, *new_np, *(np.empty((B, w), npdt) for w in scratch)]
    fn = getattr(_kernels(), kernel)
    heads = getattr(_kernels(), kernel + "_heads", None)  # the same token with (row, head) units over numba's threads
    per_row = sum(a.size for a in old) // B if work is None else work
    if heads is not None and B < 2 * _MIN_ROWS and torch.get_num_threads() > 1 and B * per_row >= _SPLIT_WORK:
        heads(*arrays, *scalars)
    elif B < 2 * _MIN_ROWS:
        fn(*arrays, *scalars, 0, B)
    else:
        run_rows(fn, B, *arrays, *scalars, min_rows=_MIN_ROWS)
    return _tensor(out), new


def fused_prompt(kernel: str, owner, inputs: list[Tensor], states: list[Tensor], weights: list[Tensor], out_shape: tuple[int, ...],
                 scratch: list[tuple[int, ...]], units: int, *scalars) -> tuple[Tensor, list[Tensor]]:
    """Run ``_decode_numba.<kernel>`` over a whole prompt: ``units`` independent sequences of tokens (a row's heads), split
    into contiguous groups over threads (``run_rows``) -> (out of ``out_shape``, the new states, fresh tensors shaped as
    the old). The kernel takes (inputs, states, weights, out, new states, scratch arrays of the given shapes, scalars,
    lo, hi) as ``fused_step``'s; ``owner`` caches the weights' views."""
    old = [_arr(s) for s in states]
    ins = [_arr(t) for t in inputs]
    npdt = ins[0].dtype
    new_np = [np.empty_like(a) for a in old]
    out_np = np.empty(out_shape, npdt)
    run_rows(getattr(_kernels(), kernel), units, *ins, *old, *_weights(owner, weights), out_np, *new_np,
             *(np.empty(s, npdt) for s in scratch), *scalars)
    return _tensor(out_np), [_tensor(a) for a in new_np]


def chunk_continues(pos: Tensor, chunk_size: int) -> bool:
    """Whether no row of positions pos (B,) within chunks of ``chunk_size`` ends its chunk at this token (the
    kernels' ``_advance``): a test-time memory's anchor then stays, and ``fused_step`` may hold it."""
    return not bool((_arr(pos) == chunk_size - 1).any())


def attention_decode(owner, x: Tensor, proj: nn.Module, out_proj: nn.Module, rows: Tensor | None, idx: Tensor, first: int, kbuf: Tensor,
                     vbuf: Tensor, kstart: int, vstart: int, L: int, *, heads: int, qk_norm: tuple[Tensor, Tensor, float] | None,
                     gated: bool, persistent: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """One token of softmax attention from the layer's input x (B, 1, D) to its output out_proj(attention(proj(x)))
    (B, 1, D_out) (``_decode_numba.attention_decode``): proj makes [q | k | v (| gate)], rows (n, 2, rd) rotary rows
    (None: no rotary) of positions first, first + 1, ... indexed by the positions idx (B,), kbuf, vbuf (B, H_kv,
    capacity, d) holding the cache at [kstart, kstart + L), [vstart, vstart + L), qk_norm (q weight, k weight, eps) or
    None, persistent: the persistent tokens' keys and values (H_kv, N_p, d) every query sees, or None; the new k and v
    are written at the slot after. With both projections plain (``_plain``) the whole token is one kernel call
    (``attention_token``), otherwise the projections are module calls (their hooks fire) around the attention's. The
    (row, query head) units, and the projections' outputs, go over numba's threads when the work pays for the fork.
    ``owner``: the layer, which caches the weights' views."""
    B, d = x.shape[0], kbuf.shape[3]
    units = B * heads
    views = [_plain(proj, x), _plain(out_proj, x, width=heads * d)]
    fused = views[0] is not None and views[1] is not None
    xin = _arr(x).reshape(B, -1)
    npdt = xin.dtype
    qkv = np.empty((B, proj.out_features), npdt) if fused else _arr(proj(x)).reshape(B, -1)
    o = np.empty((B, heads * d), npdt)
    q_w, k_w = _weights(owner, list(qk_norm[:2])) if qk_norm is not None else (qkv[0], qkv[0])
    if persistent is not None:
        pk, pv = _arr(persistent[0]), _arr(persistent[1])
    else:
        pk = pv = np.empty((kbuf.shape[1], 0, d), npdt)
    n = pk.shape[1] + L + 1
    args = (qkv, _arr(rows) if rows is not None else qkv[:, None], _arr(idx), first, kbuf.numpy(), vbuf.numpy(), pk, pv, q_w, k_w, kstart,
            vstart, L, o, np.empty((units, n), npdt), np.empty((units, d), npdt), np.empty((units, d), npdt), heads,
            rows is not None, qk_norm is not None, qk_norm[2] if qk_norm is not None else 0.0, gated, npdt == np.float32)
    split = units * n * d >= _SPLIT_WORK
    if not fused:
        if split:
            _kernels().attention_decode_parallel(*args)
        else:
            _kernels().attention_decode(*args, 0, units)
        return out_proj(_tensor(o.reshape(B, 1, -1)))
    (Wp, bp), (Wo, bo) = views
    y = np.empty((B, 1, Wo.shape[0]), npdt)
    head = (xin, Wp, Wp[0] if bp is None else bp, bp is not None, Wo, Wo[0] if bo is None else bo, bo is not None, y.reshape(B, -1))
    parts = torch.get_num_threads()
    if parts > 1 and (split or B * Wp.size >= _SPLIT_WORK):
        _kernels().attention_token_parallel(*head, *args, parts)
    else:
        _kernels().attention_token(*head, *args)
    return _tensor(y)


def log_linear_decode(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor | None, lam: Tensor, S: Tensor, pos: Tensor,
                      scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """One token of the log-linear recurrences (``_decode_numba.log_linear_decode``): q, k (B, 1, H, K), v (B, 1, H, V),
    g, beta (B, 1, H) or None, lam (B, 1, H, NL), S (B, n, H, K, V) the levels in their stored layout with n the levels
    after the token, pos (B,) -> (o (B, 1, H·V), S', pos + 1). The (row, head) units go over numba's threads when the
    levels are large enough to pay for the fork."""
    B, n, H, K, V = S.shape
    flat = [_arr(t).reshape(B, -1) for t in (q, k, v, q if g is None else g, q if beta is None else beta, lam)]
    S_np, pos_np = _arr(S), _arr(pos)
    # S2 contiguous whatever S's layout (a prefill's levels come permuted): empty_like would keep the permutation, and
    # every later token would copy the whole state into the kernel's layout
    out, S2, pos2 = np.empty((B, 1, H * V), flat[0].dtype), np.empty(S.shape, S_np.dtype), np.empty_like(pos_np)
    args = (*flat, S_np, pos_np, out.reshape(B, -1), S2, pos2, np.empty((B * H, 2 * V), out.dtype), scale, g is not None,
            beta is not None)
    if B * H * n * K * V < _SPLIT_WORK:
        _kernels().log_linear_decode(*args, 0, B * H)
    else:
        _kernels().log_linear_decode_parallel(*args)
    return _tensor(out), _tensor(S2), _tensor(pos2)


def rat_decode(owner, proj: Tensor, state: dict, gate_bias: Tensor, inv_freq: Tensor | None, *, heads: int, ngroups: int,
               chunk_size: int, scale: float) -> tuple[Tensor, dict]:
    """One token of RAT (``_decode_numba.rat_decode``): proj (B, 1, 3D + 2GK) the input projection, state {k, v (B, H,
    K), sk, sv (B, H, C, K), pos (B,)}, inv_freq the rotary frequencies (None: no rotary) -> (σ(z) ⊙ o (B, 1, D), the new
    state). The summaries are new tensors only where a row completes its chunk (one more entry in front when a row
    needs it, as the torch step); otherwise the new state holds the same ones. ``owner``: the layer (weights' views)."""
    hk, sk, pos = state["k"], state["sk"], state["pos"]
    B, H, K = hk.shape
    C, L = sk.shape[2], chunk_size
    p = _arr(pos)
    done = (p + 1) % L == 0
    write = bool(done.any())
    C2 = C + int(write and int((p[done] // L).max()) + 1 > C)
    old = {n: _arr(state[n]) for n in ("k", "v", "sk", "sv")}
    npdt = old["k"].dtype
    out = np.empty((B, 1, H * K), npdt)
    new = {n: np.empty_like(a) for n, a in (("k", old["k"]), ("v", old["v"]), ("pos", p))}
    if write:
        new["sk"], new["sv"] = (np.empty((B, H, C2, K), npdt) for _ in range(2))
    else:
        new["sk"], new["sv"] = old["sk"], old["sv"]
    gb, *freq = _weights(owner, [gate_bias] + ([inv_freq] if inv_freq is not None else []))
    args = (_arr(proj).reshape(B, -1), old["k"], old["v"], old["sk"], old["sv"], p, gb, freq[0] if freq else gb, out.reshape(B, -1),
            new["k"], new["v"], new["sk"], new["sv"], new["pos"], np.empty((B, K), npdt), np.empty((B, K), npdt),
            np.empty((B, C + 1), npdt), H, ngroups, L, inv_freq is not None, scale, write)
    if B < 2 * _MIN_ROWS:
        _kernels().rat_decode(*args, 0, B)
    else:
        run_rows(_kernels().rat_decode, B, *args, min_rows=_MIN_ROWS)
    held = {"sk": sk, "sv": state["sv"]} if not write else {}
    return _tensor(out), {n: held[n] if n in held else _tensor(a) for n, a in new.items()}
