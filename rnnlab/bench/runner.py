"""The benchmark runner: times mixers, op forms and peers, and returns one JSON-able result.

    cfg = BenchConfig.preset(quick=True)             # or BenchConfig(seq_lens=[512, 2048], ...)
    result = run_bench(cfg, log=print)               # {"schema": ..., "machine": ..., "rows": [...]}

Every figure is a row (see SCHEMA_VERSION and ``ROW_FIELDS``):

- kind "mixer": each registered mixer, built with ``create_mixer(name, d_model)`` (default kwargs;
  the registry's ``small`` kwargs only if the defaults cannot be built at this width, noted).
- kind "op": each registered OpBench form (rnnlab/bench/ops_<family>.py); ``ratio`` = baseline
  form's time / this form's time (speed-up over the reference loop at the same shape).
- kind "peer": reference implementations users would pick instead (rnnlab/bench/peers.py);
  ``ratio`` = rnnlab counterpart's tokens/s / the peer's tokens/s at the same shape and dtype
  (> 1: rnnlab is faster), measured in the same process on the same inputs.

Modes: "train" = forward + backward (gradients of the input and every parameter) tokens/s;
"prefill" = forward without autograd, tokens/s; "decode" = per-token latency of one recurrent
step at batch 1 and 16 after a prefill of ``context`` tokens (for mixers whose state grows,
attention, at every context in ``seq_lens``; otherwise once, after the shortest), tokens/s =
batch / latency. ``peak_mem_bytes``: peak memory a call held beyond what was resident before
it (rnnlab.bench.timing.peak_rss_delta). A failing mixer gives rows with ``error`` set; the
run continues, also when a row runs out of memory: the run holds a memory cap (``max_memory_gb``,
rnnlab.bench.timing.memory_cap), so an allocation past it raises in that row instead of the kernel killing the
process. Lengths predicted to exceed ``max_call_s`` per call (linear extrapolation from
the previous length) are skipped with a ``note``. A call predicted to take over ``slow_call_s`` runs once: no warm-up,
one timed call that is also the memory probe (``time_s["n"]`` = 1; the slow reference loops at T 8192). An op's
baseline loop runs up to its ``max_baseline_len`` (``BenchConfig.max_baseline_len`` overrides it for every op).
"""
from __future__ import annotations

import datetime as _dt
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from rnnlab.bench.machine import describe_machine, measure_roofline
from rnnlab.bench.timing import BenchTimeout, Timing, memory_cap, peak_rss_delta, time_call, time_limit
from rnnlab.runtime import scoped_threads

__all__ = ["BenchConfig", "run_bench", "SCHEMA_VERSION", "ROW_FIELDS", "row_key", "Subject", "DTYPES", "MODES"]

SCHEMA_VERSION = "rnnlab-bench/1"
MODES = ("train", "prefill", "decode")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# every row has exactly these keys (None where not applicable)
ROW_FIELDS = (
    "kind", "name", "family", "form", "mode", "dtype", "batch", "seq_len", "d_model",
    "tokens_per_s", "time_s", "latency_us", "peak_mem_bytes", "state_floats", "params",
    "ratio", "vs", "gflops", "roofline_frac", "error", "note",
)


def row_key(row: dict) -> tuple:
    """Identity of a measurement across runs (what --compare matches on)."""
    return (row["kind"], row["name"], row.get("form"), row["mode"], row["dtype"], row["batch"], row["seq_len"], row.get("d_model"))


@dataclass
class BenchConfig:
    """Everything that decides what is measured; stored in the JSON so a run can be repeated."""

    mixers: list[str] | None = None  # None: every registered mixer
    ops: list[str] | None = None  # None: every registered op bench; []: none
    peers: bool = True
    packing: bool = True  # the packed-vs-padded training rows (rnnlab/bench/packing.py), when "train" is in modes
    hf_models: list[str] = field(default_factory=list)  # HF model types or checkpoint folders: import vs original (bench/hf_models.py)
    seq_lens: list[int] = field(default_factory=lambda: [512, 2048, 8192])
    batch: int = 4
    d_model: int = 256
    modes: list[str] = field(default_factory=lambda: list(MODES))
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    decode_batches: list[int] = field(default_factory=lambda: [1, 16])
    decode_steps: int = 64
    threads: int | None = None
    warmup: int = 1
    reps: int = 5
    budget_s: float = 2.0  # timed calls stop once this many seconds have been spent (>= 1 call)
    max_call_s: float = 15.0  # skip a length whose predicted single call exceeds this
    time_budget_s: float | None = None  # whole run: past each benchmark's equal share, only its shortest T runs
    timeout_s: float = 120.0  # hard limit for one measurement (warm-up + reps + memory)
    slow_call_s: float = 30.0  # a call predicted above this runs once: no warm-up, one timed call that is the memory probe
    max_baseline_len: int | None = None  # None: each op's own max_baseline_len (the reference loops stop there)
    memory: bool = True
    max_memory_gb: float | None = None  # the run's memory cap beyond what it holds at the start (None: 90% of the available)
    quick: bool = False
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def preset(cls, quick: bool = False, **overrides) -> "BenchConfig":
        """Defaults of ``rnnlab bench`` (full) or ``rnnlab bench --quick``; ``overrides`` win (None ignored)."""
        base = dict(
            seq_lens=[128, 512], batch=2, d_model=128, dtypes=["float32"], decode_batches=[1, 16], decode_steps=12,
            warmup=1, reps=3, budget_s=0.15, max_call_s=1.0, timeout_s=5.0, time_budget_s=90.0, quick=True,
        ) if quick else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}; valid choices: {', '.join(MODES)}")
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"unknown dtype(s) {bad}; valid choices: {', '.join(DTYPES)}")
        if not self.seq_lens or any(t < 2 for t in self.seq_lens):
            raise ValueError(f"seq_lens must be integers >= 2, got {self.seq_lens}")
        if self.batch < 1 or self.d_model < 1:
            raise ValueError(f"batch and d_model must be positive, got {self.batch}, {self.d_model}")
        if self.slow_call_s <= 0 or (self.max_baseline_len is not None and self.max_baseline_len < 1):
            raise ValueError(f"slow_call_s and max_baseline_len must be positive, got {self.slow_call_s}, {self.max_baseline_len}")
        if self.reps < 1 or self.warmup < 0:
            raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={self.reps}, warmup={self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive int (or None: the counts in force), got {self.threads}")
        if any(b < 1 for b in self.decode_batches):
            raise ValueError(f"decode batches must be positive, got {self.decode_batches}")
        self.seq_lens = sorted(set(self.seq_lens))


@dataclass
class Subject:
    """Something timed like a mixer: ``fwd(x) -> y`` on x (B, T, D); optional recurrent decode.

    prefill(x) -> state and step(x1, state) -> (y1, state) give decode; state_floats(T) the state size.
    """

    kind: str
    name: str
    family: str
    module: torch.nn.Module
    fwd: Callable
    prefill: Callable | None = None
    step: Callable | None = None
    state_floats: Callable[[int], int] | None = None
    vs: str | None = None  # the rnnlab mixer a peer is compared to
    note: str | None = None


def _row(**kw) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(kw)
    return row


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return msg[:300]


def _free_grads(params) -> None:
    for p in params:
        p.grad = None


def _mixer_subject(name: str, cfg: BenchConfig) -> Subject:
    from rnnlab.layers.registry import create_mixer, mixer_info

    info = mixer_info(name)
    note = None
    torch.manual_seed(cfg.seed)
    try:
        m = create_mixer(name, cfg.d_model)
    except Exception as e:  # defaults need another width: fall back to the small kwargs, and say so
        if not info.small:
            raise
        m = create_mixer(name, cfg.d_model, **info.small)
        note = f"default kwargs failed at d_model={cfg.d_model} ({_err(e)}); built with small={info.small}"
    return Subject(
        "mixer", name, info.family, m,
        fwd=lambda x: m(x)[0],
        prefill=lambda x: m(x)[1],
        step=lambda x, s: m(x, s),
        state_floats=m.state_size,
        note=note,
    )


class _Skipper:
    """Predicts the next length's call time from the last one; says when to stop growing T.

    ``deadline`` (time.time() value): past it, only the first length of a series is still measured.
    """

    def __init__(self, max_call_s: float, deadline: float | None = None):
        self.max_call_s, self.last, self.reason, self.deadline = max_call_s, None, None, deadline

    def check(self, T: int) -> str | None:
        if self.reason:
            return self.reason
        if self.last is not None and self.deadline is not None and time.time() > self.deadline:
            return "skipped: this benchmark's share of the time budget (--quick) is spent"
        pred = self.predict(T)
        if pred is not None and pred > self.max_call_s:
            T0, t0 = self.last
            return f"skipped: predicted {pred:.2g} s per call (T={T0} took {t0:.2g} s) > max_call_s={self.max_call_s:g}"
        return None

    def predict(self, T: int) -> float | None:
        """Seconds per call at T, linear in T from the last length measured (None before the first)."""
        return None if self.last is None else self.last[1] * T / self.last[0]

    def record(self, T: int, seconds: float) -> None:
        self.last = (T, seconds)

    def fail(self, why: str) -> None:
        self.reason = f"skipped after failure at a shorter length ({why[:80]})"


def _measure(fn, cfg: BenchConfig, memory: bool, predicted: float | None = None):
    """Warm-up (own, 3x longer limit: JIT compiles), then timed calls and the memory probe within timeout_s. A call
    predicted over ``cfg.slow_call_s`` runs once, timed and probed for memory together (the probe's own cost, a
    malloc_trim and two reads of /proc, is milliseconds against those seconds)."""
    if predicted is not None and predicted > cfg.slow_call_s:
        with time_limit(cfg.timeout_s):
            t0 = time.perf_counter()
            mem = peak_rss_delta(fn, device=cfg.device) if memory else fn()
            dt = time.perf_counter() - t0
        return Timing(dt, dt, dt, 1), mem
    with time_limit(3 * cfg.timeout_s):
        for _ in range(cfg.warmup):
            fn()
    with time_limit(cfg.timeout_s):
        t = time_call(fn, warmup=0, reps=cfg.reps, budget_s=cfg.budget_s, device=cfg.device)
        mem = peak_rss_delta(fn, device=cfg.device) if memory else None
    return t, mem


def _bench_subject(sub: Subject, cfg: BenchConfig, log, deadline: float | None = None) -> list[dict]:
    rows = []
    params = list(sub.module.parameters())
    n_params = sum(p.numel() for p in params)
    D = cfg.d_model
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        base = dict(kind=sub.kind, name=sub.name, family=sub.family, dtype=dname, d_model=D, params=n_params, vs=sub.vs)
        try:
            sub.module.to(device=cfg.device, dtype=dtype)
        except Exception as e:
            for mode in cfg.modes:
                rows.append(_row(**base, mode=mode, batch=cfg.batch, error=f"cast to {dname}: {_err(e)}"))
            continue
        for mode in [m for m in cfg.modes if m in ("train", "prefill")]:
            skip = _Skipper(cfg.max_call_s, deadline)
            for T in cfg.seq_lens:
                r = _row(**base, mode=mode, batch=cfg.batch, seq_len=T, note=sub.note)
                if sub.state_floats is not None:
                    try:
                        r["state_floats"] = int(sub.state_floats(T))
                    except Exception as e:
                        r["note"] = f"state_size failed: {_err(e)}"
                why = skip.check(T)
                if why:
                    r["note"] = why
                    rows.append(r)
                    continue
                try:
                    g = torch.Generator().manual_seed(cfg.seed + T)
                    x = torch.randn(cfg.batch, T, D, generator=g).to(cfg.device, dtype)
                    if mode == "train":
                        x.requires_grad_(True)
                        cot = torch.randn(cfg.batch, T, D, generator=g).to(cfg.device, dtype)
                        sub.module.train()

                        def fn(x=x, cot=cot):
                            _free_grads(params)
                            x.grad = None
                            sub.fwd(x).backward(cot)
                    else:
                        sub.module.eval()

                        def fn(x=x):
                            with torch.no_grad():
                                sub.fwd(x)

                    t, mem = _measure(fn, cfg, cfg.memory, skip.predict(T))
                    skip.record(T, t.median)
                    r.update(tokens_per_s=cfg.batch * T / t.median, time_s=t.to_dict(), peak_mem_bytes=mem)
                except (Exception, BenchTimeout) as e:
                    r["error"] = _err(e)
                    skip.fail(r["error"])
                    log(f"    {sub.name} {mode} {dname} T={T}: {r['error']}")
                finally:
                    _free_grads(params)
                rows.append(r)
        if "decode" in cfg.modes:
            rows.extend(_bench_decode(sub, cfg, base, log, deadline))
    return rows


def _bench_decode(sub: Subject, cfg: BenchConfig, base: dict, log, deadline: float | None = None) -> list[dict]:
    rows = []
    D, dtype = cfg.d_model, DTYPES[base["dtype"]]
    if sub.step is None:
        return [_row(**base, mode="decode", batch=b, note="no recurrent step for this implementation") for b in cfg.decode_batches]
    try:
        grows = sub.state_floats is not None and sub.state_floats(cfg.seq_lens[0]) != sub.state_floats(cfg.seq_lens[-1])
    except Exception:
        grows = False
    contexts = cfg.seq_lens if grows else cfg.seq_lens[:1]
    sub.module.eval()
    for B in cfg.decode_batches:
        skip = _Skipper(cfg.max_call_s * 4, deadline)
        for ctx in contexts:
            r = _row(**base, mode="decode", batch=B, seq_len=ctx, note=sub.note)
            why = skip.check(ctx)
            if why:
                r["note"] = why
                rows.append(r)
                continue
            try:
                g = torch.Generator().manual_seed(cfg.seed + ctx + B)
                x = torch.randn(B, ctx, D, generator=g).to(cfg.device, dtype)
                x1 = torch.randn(B, 1, D, generator=g).to(cfg.device, dtype)
                with time_limit(cfg.timeout_s), torch.inference_mode():
                    t0 = time.perf_counter()
                    state = sub.prefill(x)
                    skip.record(ctx, time.perf_counter() - t0)
                    del x
                    holder = [state]

                    def one():
                        holder[0] = sub.step(x1, holder[0])[1]

                    for _ in range(max(1, cfg.warmup) + 1):
                        one()
                    lat = []
                    for _ in range(cfg.decode_steps):
                        t0 = time.perf_counter()
                        one()
                        if cfg.device != "cpu":
                            torch.cuda.synchronize()
                        lat.append(time.perf_counter() - t0)
                    mem = peak_rss_delta(one, device=cfg.device) if cfg.memory else None
                lat.sort()
                med = lat[len(lat) // 2] if len(lat) % 2 else 0.5 * (lat[len(lat) // 2 - 1] + lat[len(lat) // 2])
                r.update(
                    latency_us=med * 1e6, tokens_per_s=B / med, peak_mem_bytes=mem,
                    time_s={"median": med, "lo": lat[0], "hi": lat[-1], "n": len(lat)},
                )
                if sub.state_floats is not None:
                    r["state_floats"] = int(sub.state_floats(ctx))
            except (Exception, BenchTimeout) as e:
                r["error"] = _err(e)
                skip.fail(r["error"])
                log(f"    {sub.name} decode B={B} ctx={ctx}: {r['error']}")
            rows.append(r)
    return rows


# --- op forms -----------------------------------------------------------------

def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _segmented_backward(f, inputs: dict, T: int, seg: int, cot) -> None:
    """f's forward + backward over consecutive segments of ``seg`` tokens (inputs' (B, T, ...) tensors sliced), each
    from the previous segment's final state, detached (OpBench.segments)."""
    state = inputs["initial_state"]
    for s in range(0, T, seg):
        part = {n: v[:, s:s + seg] if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == T else v for n, v in inputs.items()}
        out, state = f(**dict(part, initial_state=state, output_final_state=True))
        out.backward(cot[:, s:s + seg])
        state = {n: t.detach() for n, t in state.items()}


def _bench_op(op, cfg: BenchConfig, roofline: dict, log, deadline: float | None = None) -> list[dict]:
    rows = []
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        for mode in [m for m in cfg.modes if m in ("train", "prefill")]:
            skips = {form: _Skipper(cfg.max_call_s, deadline) for form in op.forms}
            for T in cfg.seq_lens:
                try:
                    torch.manual_seed(cfg.seed + T)
                    inputs = op.make_inputs(cfg.batch, T, dtype, cfg.device)
                except Exception as e:
                    for form in op.forms:
                        rows.append(_row(kind="op", name=op.name, family=op.family, form=form, mode=mode, dtype=dname,
                                         batch=cfg.batch, seq_len=T, error=f"make_inputs: {_err(e)}"))
                    continue
                leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
                cot = None
                group = []
                for form, fn_form in op.forms.items():
                    r = _row(kind="op", name=op.name, family=op.family, form=form, mode=mode, dtype=dname, batch=cfg.batch, seq_len=T)
                    why = skips[form].check(T)
                    max_len = op.max_baseline_len if cfg.max_baseline_len is None else cfg.max_baseline_len
                    if not why and form == op.baseline and T > max_len:
                        why = f"skipped: baseline loop above max_baseline_len={max_len}"
                    if why:
                        r["note"] = why
                        rows.append(r)
                        group.append(r)
                        continue
                    try:
                        if mode == "train":
                            if cot is None:  # its shape, from a form that is not a slow loop where there is one
                                with torch.no_grad():
                                    o = _first(next((f for n, f in op.forms.items() if n != op.baseline and n not in op.segments),
                                                    fn_form)(**inputs))
                                cot = torch.randn_like(o)

                            seg = op.segments.get(form)
                            if seg is not None and T > seg:
                                r["note"] = f"forward + backward in segments of {seg} tokens, the state carried (detached)"

                            def fn(f=fn_form, seg=seg if seg is not None and T > seg else None):
                                for leaf in leaves:
                                    leaf.grad = None
                                if seg is None:
                                    _first(f(**inputs)).backward(cot)
                                else:
                                    _segmented_backward(f, inputs, T, seg, cot)
                        else:
                            def fn(f=fn_form):
                                with torch.no_grad():
                                    f(**inputs)

                        t, mem = _measure(fn, cfg, cfg.memory, skips[form].predict(T))
                        skips[form].record(T, t.median)
                        r.update(tokens_per_s=cfg.batch * T / t.median, time_s=t.to_dict(), peak_mem_bytes=mem)
                        if op.flops is not None:
                            fl = float(op.flops(cfg.batch, T)) * (3 if mode == "train" else 1)
                            r["gflops"] = fl / t.median / 1e9
                            peak = roofline.get("matmul_gflops", {}).get(dname)
                            if peak:
                                r["roofline_frac"] = r["gflops"] / peak
                    except (Exception, BenchTimeout) as e:
                        r["error"] = _err(e)
                        skips[form].fail(r["error"])
                        log(f"    op {op.name}/{form} {mode} {dname} T={T}: {r['error']}")
                    finally:
                        for leaf in leaves:
                            leaf.grad = None
                    rows.append(r)
                    group.append(r)
                base = next((r for r in group if r["form"] == op.baseline and r["time_s"]), None)
                for r in group:
                    if base is not None and r["time_s"]:
                        r["ratio"] = base["time_s"]["median"] / r["time_s"]["median"]
                        r["vs"] = op.baseline
    return rows


# --- the whole run ------------------------------------------------------------

def peer_ratios(rows: list[dict]) -> None:
    """ratio of a peer row = rnnlab counterpart tokens/s / peer tokens/s at the same shape."""
    index = {(r["name"], r["mode"], r["dtype"], r["batch"], r["seq_len"]): r for r in rows if r["kind"] == "mixer"}
    for r in rows:
        if r["kind"] != "peer" or not r["vs"] or not r["tokens_per_s"]:
            continue
        ours = index.get((r["vs"], r["mode"], r["dtype"], r["batch"], r["seq_len"]))
        if ours and ours["tokens_per_s"]:
            r["ratio"] = ours["tokens_per_s"] / r["tokens_per_s"]


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run every selected benchmark; returns the result dict (schema SCHEMA_VERSION).

    ``cfg.threads``, when set, is the torch and numba thread count for this call only: the caller's counts
    are restored on return or on an exception (rnnlab.runtime.scoped_threads); None or 0 runs on the counts
    in force. The allocator is left alone: ``rnnlab bench`` tunes it, and ``machine.malloc_tuned`` says
    whether it was (rnnlab.runtime.tune_allocator)."""
    cfg.validate()
    extra = None if cfg.max_memory_gb is None else int(cfg.max_memory_gb * 2**30)
    with scoped_threads(cfg.threads or None), memory_cap(extra) as cap:  # an allocation past it fails one row, not the run
        if cap is not None:
            log(f"memory cap: {cap / 2**30:.1f} GiB of data memory (a row that needs more records the error and the run goes on)")
        return _run_bench(cfg, log)


def _run_bench(cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    from rnnlab.bench.registry import available_op_benches, get_op_bench
    from rnnlab.layers.registry import available_mixers, mixer_info

    started = time.time()
    machine = describe_machine()
    log(f"machine: {machine['cpu']}; {machine['threads']} threads of {machine['usable_cpus']} usable CPUs; "
        f"torch {machine['torch']}, numba {machine['numba']}, transformers {machine['transformers']}, "
        f"malloc tuned {machine['malloc_tuned']}")
    roofline = measure_roofline(quick=cfg.quick, device=cfg.device)
    log(f"roofline: matmul {roofline['matmul_gflops']} GFLOP/s, bmm64 {roofline['bmm64_gflops']} GFLOP/s, "
        f"copy {roofline['copy_gbps']} GB/s")
    rows: list[dict] = []
    notes: list[str] = []
    load_before = _loadavg()

    names = available_mixers() if cfg.mixers is None else list(cfg.mixers)
    op_names = available_op_benches() if cfg.ops is None else list(cfg.ops)
    peer_subjects: list[Subject] = []
    if cfg.peers:
        from rnnlab.bench.peers import build_peers

        peer_subjects, peer_notes = build_peers(cfg.d_model, only_vs=set(cfg.mixers) if cfg.mixers else None)
        notes.extend(peer_notes)
        for n in peer_notes:
            log(f"  peers: {n}")
    if cfg.hf_models:
        from rnnlab.bench.hf_models import build_hf_model_pairs

        pairs, pair_notes = build_hf_model_pairs(cfg.hf_models, cfg.d_model, cfg.seed)
        peer_subjects += pairs  # the import (a "mixer" row) before its original (a "peer" row)
        notes.extend(pair_notes)
        for n in pair_notes:
            log(f"  hf models: {n}")
    n_items = len(names) + len(op_names) + len(peer_subjects)
    done = 0

    def deadline() -> float | None:
        """An equal share of what is left of the time budget for the next benchmark."""
        if cfg.time_budget_s is None:
            return None
        left = cfg.time_budget_s - (time.time() - started)
        return time.time() + max(0.0, left) / max(1, n_items - done)

    for name in names:
        t0 = time.time()
        try:
            family = mixer_info(name).family
            sub = _mixer_subject(name, cfg)
        except Exception as e:
            fam = None
            try:
                fam = mixer_info(name).family
            except Exception:
                pass
            for mode in cfg.modes:
                for d in cfg.dtypes:
                    rows.append(_row(kind="mixer", name=name, family=fam, mode=mode, dtype=d, batch=cfg.batch,
                                     d_model=cfg.d_model, error=f"build: {_err(e)}"))
            log(f"  mixer {name}: build failed: {_err(e)}")
            done += 1
            continue
        try:
            new = _bench_subject(sub, cfg, log, deadline())
        except Exception as e:  # a bug in the runner for this mixer must not stop the run
            new = [_row(kind="mixer", name=name, family=family, mode=m, dtype=cfg.dtypes[0], batch=cfg.batch,
                        d_model=cfg.d_model, error=f"runner: {_err(e)}") for m in cfg.modes]
            log(traceback.format_exc(limit=3))
        rows.extend(new)
        done += 1
        log(f"  mixer {name:24s} {time.time() - t0:6.1f} s  {_summary(new)}")
        del sub

    for name in op_names:
        t0 = time.time()
        try:
            new = _bench_op(get_op_bench(name), cfg, roofline, log, deadline())
        except Exception as e:
            new = [_row(kind="op", name=name, mode=m, dtype=cfg.dtypes[0], batch=cfg.batch, error=_err(e)) for m in cfg.modes if m != "decode"]
        rows.extend(new)
        done += 1
        log(f"  op    {name:24s} {time.time() - t0:6.1f} s  {_summary(new)}")

    if cfg.packing and "train" in cfg.modes:
        from rnnlab.bench.packing import bench_packing

        t0 = time.time()
        new = bench_packing(cfg, log, mixers=cfg.mixers)
        rows.extend(new)
        log(f"  packing {'':24s} {time.time() - t0:6.1f} s  {_summary(new)}")

    for sub in peer_subjects:
        t0 = time.time()
        try:
            new = _bench_subject(sub, cfg, log, deadline())
        except Exception as e:
            new = [_row(kind=sub.kind, name=sub.name, mode=m, dtype=cfg.dtypes[0], batch=cfg.batch, error=f"runner: {_err(e)}") for m in cfg.modes]
        rows.extend(new)
        done += 1
        log(f"  {sub.kind:5s} {sub.name:24s} {time.time() - t0:6.1f} s  {_summary(new)}")
    peer_ratios(rows)

    if not (rows and any(r["peak_mem_bytes"] is not None for r in rows)) and cfg.memory:
        notes.append("peak memory not measurable here (needs Linux + glibc /proc/self/clear_refs); reported as null")
    machine["loadavg_1m"] = {"start": load_before, "end": _loadavg()}
    if machine["loadavg_1m"]["end"] and machine["usable_cpus"] and max(load_before or 0, machine["loadavg_1m"]["end"]) > machine["usable_cpus"]:
        notes.append(f"the machine was busy with other work (1-minute load average {load_before} -> "
                     f"{machine['loadavg_1m']['end']} on {machine['usable_cpus']} CPUs): figures are lower and noisier than on an idle machine")
    cfg_dict = asdict(cfg)
    return {
        "schema": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "machine": machine,
        "roofline": roofline,
        "config": cfg_dict,
        "memory_method": "peak RSS above the pre-call RSS (malloc_trim + /proc/self/clear_refs + VmHWM)"
        if cfg.device == "cpu" else "torch.cuda.max_memory_allocated above the pre-call allocation",
        "notes": notes,
        "rows": rows,
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _summary(rows: list[dict]) -> str:
    ok = sum(1 for r in rows if r["tokens_per_s"])
    err = sum(1 for r in rows if r["error"])
    skipped = sum(1 for r in rows if not r["tokens_per_s"] and not r["error"])
    s = f"{ok} measured"
    if skipped:
        s += f", {skipped} skipped"
    if err:
        s += f", {err} errors"
    return s

