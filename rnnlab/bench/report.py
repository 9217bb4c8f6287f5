"""Turning a bench result into tables, comparisons, plots and checked JSON.

    print(format_tables(result))                 # terminal tables (markdown with fmt="md")
    print(format_compare(new, old))              # new / old ratios of every shared measurement
    validate_result(result)                      # ValueError naming the first schema violation
    write_plots(result, "plots/")                # PNGs: tokens/s and memory vs T (log-log), decode bars
    merge_results([a, b])                        # one result from several runs on the same machine
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from rnnlab.bench.runner import ROW_FIELDS, SCHEMA_VERSION, peer_ratios, row_key

__all__ = ["format_tables", "format_compare", "validate_result", "write_plots", "merge_results", "load_result",
           "plot_headline", "format_machine"]


# --- schema -------------------------------------------------------------------

_TOP = {"schema": str, "created": str, "machine": dict, "roofline": dict, "config": dict, "rows": list, "notes": list}
_KINDS = ("mixer", "op", "peer", "packing")


def validate_result(result: dict) -> None:
    """Check a result against SCHEMA_VERSION; raise ValueError naming what is wrong."""
    if not isinstance(result, dict):
        raise ValueError(f"a bench result is a JSON object with keys {sorted(_TOP)}, got {type(result).__name__}")
    for key, typ in _TOP.items():
        if key not in result:
            raise ValueError(f"bench result lacks top-level key {key!r} (expected keys: {sorted(_TOP)})")
        if not isinstance(result[key], typ):
            raise ValueError(f"bench result key {key!r} should be {typ.__name__}, got {type(result[key]).__name__}")
    if result["schema"] != SCHEMA_VERSION:
        raise ValueError(f"bench result schema {result['schema']!r} is not {SCHEMA_VERSION!r}")
    for key in ("cpu", "threads", "torch"):
        if key not in result["machine"]:
            raise ValueError(f"machine description lacks {key!r}")
    for i, row in enumerate(result["rows"]):
        if not isinstance(row, dict):
            raise ValueError(f"row {i} must be an object with keys {sorted(ROW_FIELDS)}, got {type(row).__name__}")
        if set(row) != set(ROW_FIELDS):
            raise ValueError(f"row {i} keys differ from the schema: missing {sorted(set(ROW_FIELDS) - set(row))}, "
                             f"extra {sorted(set(row) - set(ROW_FIELDS))}")
        if row["kind"] not in _KINDS:
            raise ValueError(f"row {i}: kind must be one of {_KINDS}, got {row['kind']!r}")
        if row["mode"] not in ("train", "prefill", "decode"):
            raise ValueError(f"row {i}: mode must be train/prefill/decode, got {row['mode']!r}")
        if row["tokens_per_s"] is not None:
            if not (isinstance(row["tokens_per_s"], (int, float)) and row["tokens_per_s"] > 0):
                raise ValueError(f"row {i}: tokens_per_s must be a positive number, got {row['tokens_per_s']!r}")
            t = row["time_s"]
            if not (isinstance(t, dict) and {"median", "lo", "hi", "n"} <= set(t) and t["lo"] <= t["median"] <= t["hi"]):
                raise ValueError(f"row {i}: time_s must be {{median, lo, hi, n}} with lo <= median <= hi, got {t!r}")


def load_result(path: str) -> dict:
    with open(path) as f:
        result = json.load(f)
    validate_result(result)
    return result


def merge_results(results: list[dict]) -> dict:
    """Later results' rows replace earlier ones with the same key; machine/config from the last."""
    if not results:
        raise ValueError("merge_results needs at least one result")
    rows: dict = {}
    notes: list[str] = []
    for r in results:
        for row in r["rows"]:
            rows[row_key(row)] = row
        notes += [n for n in r["notes"] if n not in notes]
    out = dict(results[-1])
    out["rows"], out["notes"] = list(rows.values()), notes
    peer_ratios(out["rows"])  # a peer and its rnnlab counterpart may come from different runs
    return out


# --- formatting helpers ---------------------------------------------------------

def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for suf, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _spread(row: dict) -> str:
    t = row.get("time_s")
    if not t or not t.get("median"):
        return ""
    return f"±{50 * (t['hi'] - t['lo']) / t['median']:.0f}%"


def _cell(row: dict | None, with_spread: bool = True, ratio: bool = False) -> str:
    if row is None:
        return ""
    if row["error"]:
        return "timeout" if row["error"].startswith("BenchTimeout") else "error"
    if row["tokens_per_s"] is None:
        return "skip"
    s = _si(row["tokens_per_s"])
    if with_spread:
        s += " " + _spread(row)
    if ratio and row["ratio"] is not None:
        s += f" ({row['ratio']:.2g}x)"
    return s


def _table(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "md":
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_machine(result: dict) -> str:
    m, rf, c = result["machine"], result["roofline"], result["config"]
    lines = [
        f"machine: {m['cpu']}; {m['threads']} torch threads ({m.get('usable_cpus')} usable CPUs); "
        f"torch {m['torch']}, numba {m.get('numba')}, transformers {m.get('transformers')}, python {m.get('python')}; "
        f"malloc tuned: {m.get('malloc_tuned', 'unrecorded')}",
        f"roofline: matmul {rf.get('matmul_gflops')} GFLOP/s; batched 64x64 {rf.get('bmm64_gflops')} GFLOP/s; "
        f"copy {rf.get('copy_gbps')} GB/s ({rf.get('matmul_shape', '')})",
        f"config: batch {c['batch']}, d_model {c['d_model']}, T {c['seq_lens']}, dtypes {c['dtypes']}, "
        f"warmup {c['warmup']}, reps <= {c['reps']} (budget {c['budget_s']} s), decode batches {c['decode_batches']}; "
        f"run {result['created']} took {result.get('seconds')} s",
    ]
    return "\n".join(lines)


def _errors(rows: list[dict]) -> list[str]:
    seen, out = set(), []
    for r in rows:
        if r["error"]:
            key = (r["kind"], r["name"], r.get("form"), r["error"])
            if key not in seen:
                seen.add(key)
                label = r["name"] + (f"/{r['form']}" if r.get("form") else "")
                out.append(f"{r['kind']} {label} ({r['mode']}, {r['dtype']}, T={r['seq_len']}): {r['error']}")
    return out


def format_tables(result: dict, fmt: str = "text", kinds=("mixer", "op", "peer", "packing")) -> str:
    """Pivot tables: tokens/s per length (train, prefill), decode latency, op forms, peers."""
    rows = result["rows"]
    seq_lens = sorted({r["seq_len"] for r in rows if r["seq_len"] and r["mode"] != "decode" and r["kind"] != "packing"})
    parts = []
    h = "### " if fmt == "md" else "== "

    def through(kind: str, label: str):
        sel = [r for r in rows if r["kind"] == kind and r["mode"] in ("train", "prefill")]
        if not sel:
            return
        groups = defaultdict(dict)
        for r in sel:
            groups[(r["name"], r.get("form"), r["dtype"], r["mode"])][r["seq_len"]] = r
        headers = [label] + (["form"] if kind == "op" else []) + ["family" if kind != "peer" else "vs", "dtype", "mode"]
        headers += [f"T={t}" for t in seq_lens] + ["peak MiB @ T max", "state floats"]
        if kind == "op":
            headers += ["GFLOP/s", "% roof"]
        table = []
        for (name, form, dtype, mode), by_t in groups.items():
            last = next((by_t[t] for t in reversed(seq_lens) if t in by_t and by_t[t]["tokens_per_s"]), None)
            fam = by_t[next(iter(by_t))]["vs" if kind == "peer" else "family"] or "-"
            line = [name] + ([form] if kind == "op" else []) + [fam, dtype, mode]
            line += [_cell(by_t.get(t), ratio=kind != "mixer") for t in seq_lens]
            line += [_mib(last["peak_mem_bytes"]) if last else "-", _si(last["state_floats"]) if last else "-"]
            if kind == "op":
                line += [f"{last['gflops']:.3g}" if last and last["gflops"] else "-",
                         f"{100 * last['roofline_frac']:.2g}" if last and last["roofline_frac"] else "-"]
            table.append(line)
        title = {"mixer": "mixers: tokens/s (median ± half the min-max spread)",
                 "op": "op forms: tokens/s (speed-up over the baseline form)",
                 "peer": "peers: tokens/s (rnnlab counterpart's speed / the peer's)"}[kind]
        parts.append(f"{h}{title}\n{_table(headers, table, fmt)}")

    def decode(kind: str, label: str):
        sel = [r for r in rows if r["kind"] == kind and r["mode"] == "decode"]
        if not sel:
            return
        batches = sorted({r["batch"] for r in sel if r["batch"]})
        groups = defaultdict(dict)
        for r in sel:
            groups[(r["name"], r["dtype"], r["seq_len"])][r["batch"]] = r
        headers = [label, "dtype", "context"] + [f"B={b} us/token" for b in batches] + [f"B={batches[-1]} tokens/s", "state floats", "peak KiB"]
        table = []
        for (name, dtype, ctx), by_b in groups.items():
            big = by_b.get(batches[-1])
            cells = []
            for b in batches:
                r = by_b.get(b)
                if r is None:
                    cells.append("")
                elif r["error"]:
                    cells.append("timeout" if r["error"].startswith("BenchTimeout") else "error")
                elif r["latency_us"] is None:
                    cells.append("skip" if not r["note"] or "no recurrent" not in r["note"] else "n/a")
                else:
                    cells.append(f"{r['latency_us']:.4g}" + (f" ({r['ratio']:.2g}x)" if r["ratio"] else ""))
            table.append([name, dtype, ctx if ctx else "-"] + cells + [
                _si(big["tokens_per_s"]) if big and big["tokens_per_s"] else "-",
                _si(big["state_floats"]) if big and big["state_floats"] else "-",
                f"{big['peak_mem_bytes'] / 1024:.0f}" if big and big["peak_mem_bytes"] is not None else "-"])
        parts.append(f"{h}{kind}s: decode, per-token latency of one recurrent step after a prefill of `context` tokens\n"
                     f"{_table(headers, table, fmt)}")

    def packing():
        sel = [r for r in rows if r["kind"] == "packing"]
        if not sel:
            return
        by = defaultdict(dict)
        for r in sel:
            by[(r["name"], r["dtype"])][r["form"]] = r
        table = []
        for (name, dtype), f in by.items():
            pk, pd = f.get("packed"), f.get("padded")
            table.append([name, dtype, _cell(pd), _cell(pk), f"{pk['ratio']:.2f}x" if pk and pk["ratio"] else "-"])
        note = next((r["note"] for r in sel if r["note"]), "")
        parts.append(f"{h}packing: training tokens/s of real tokens, packed (cu_seqlens) vs padded to the longest ({note})\n"
                     f"{_table(['mixer', 'dtype', 'padded', 'packed', 'packed / padded'], table, fmt)}")

    if "mixer" in kinds:
        through("mixer", "mixer")
        decode("mixer", "mixer")
    if "op" in kinds:
        through("op", "op")
    if "peer" in kinds:
        through("peer", "peer")
        decode("peer", "peer")
    if "packing" in kinds:
        packing()
    errs = [e for e in _errors(rows) if e.split()[0] in kinds]
    if errs:
        parts.append(f"{h}errors\n" + "\n".join(("- " if fmt == "md" else "  ") + e for e in errs))
    if result["notes"]:
        parts.append(f"{h}notes\n" + "\n".join(("- " if fmt == "md" else "  ") + n for n in result["notes"]))
    return "\n\n".join(parts)


def format_compare(new: dict, old: dict, fmt: str = "text") -> str:
    """Ratio new/old of tokens/s (> 1: faster now) and of peak memory, for every measurement in both runs."""
    old_rows = {row_key(r): r for r in old["rows"]}
    table = []
    for r in new["rows"]:
        o = old_rows.get(row_key(r))
        if o is None or not r["tokens_per_s"] or not o["tokens_per_s"]:
            continue
        speed = r["tokens_per_s"] / o["tokens_per_s"]
        mem = (r["peak_mem_bytes"] / o["peak_mem_bytes"]) if r["peak_mem_bytes"] and o["peak_mem_bytes"] else None
        label = r["name"] + (f"/{r['form']}" if r.get("form") else "")
        table.append([r["kind"], label, r["mode"], r["dtype"], r["batch"], r["seq_len"], _si(o["tokens_per_s"]),
                      _si(r["tokens_per_s"]), f"{speed:.3g}", f"{mem:.3g}" if mem else "-"])
    if not table:
        return "compare: no measurement in common with the old run (different mixers, shapes or dtypes?)"
    speeds = [float(t[8]) for t in table]
    gm = math.exp(sum(math.log(s) for s in speeds) / len(speeds))
    headers = ["kind", "name", "mode", "dtype", "B", "T", "old tok/s", "new tok/s", "speed new/old", "mem new/old"]
    head = f"compare with the run of {old.get('created')} on {old['machine'].get('cpu')} ({old['machine'].get('threads')} threads)"
    return f"{head}\n{_table(headers, table, fmt)}\n\n{len(table)} measurements; geometric mean speed ratio {gm:.3g} (> 1: faster now)"


# --- plots ------------------------------------------------------------------------

_STYLES = {"attention": "-", "nonlinear": "--", "diagonal": "-.", "matrix": ":", "delta": (0, (5, 1)),
           "ttt": (0, (3, 1, 1, 1)), "other": (0, (1, 1))}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(ax, rows, key, ylabel):
    series = defaultdict(list)
    fam = {}
    for r in rows:
        if r[key] and r["seq_len"]:  # log axes: positive values only
            series[r["name"]].append((r["seq_len"], r[key]))
            fam[r["name"]] = r["family"] or "other"
    import matplotlib

    colors = matplotlib.colormaps["tab20"].resampled(max(20, len(series)))
    for i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: (fam[kv[0]], kv[0]))):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{name}",
                linestyle=_STYLES.get(fam[name], "-"), color=colors(i % colors.N), lw=2 if fam[name] == "attention" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return len(series)


def write_plots(result: dict, out_dir: str) -> list[str]:
    """tokens/s and peak memory vs T (log-log, one line per mixer) per mode and dtype; decode latency bars."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    rows = [r for r in result["rows"] if r["kind"] in ("mixer", "peer")]
    c = result["config"]
    written = []
    for dtype in sorted({r["dtype"] for r in rows}):
        for mode in ("train", "prefill"):
            sel = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
            if not any(r["tokens_per_s"] for r in sel):
                continue
            for key, ylabel, stem in (("tokens_per_s", "tokens/s", "tokens"), ("peak_mem_bytes", "peak memory (bytes)", "memory")):
                fig, ax = plt.subplots(figsize=(9, 6))
                n = _lines(ax, sel, key, ylabel)
                if not n:
                    plt.close(fig)
                    continue
                what = "forward+backward" if mode == "train" else "forward"
                ax.set_title(f"{mode} ({what}), {dtype}, batch {c['batch']}, d_model {c['d_model']}")
                ax.legend(fontsize=6, ncol=2 if n > 16 else 1, loc="best")
                fig.tight_layout()
                path = os.path.join(out_dir, f"{stem}_{mode}_{dtype}.png")
                fig.savefig(path, dpi=120)
                plt.close(fig)
                written.append(path)
        dec = [r for r in rows if r["dtype"] == dtype and r["mode"] == "decode" and r["latency_us"]]
        if dec:
            ctx_min = {}
            for r in dec:  # one bar per name and batch: the shortest measured context
                k = (r["name"], r["batch"])
                if k not in ctx_min or r["seq_len"] < ctx_min[k]["seq_len"]:
                    ctx_min[k] = r
            names = sorted({k[0] for k in ctx_min})
            batches = sorted({k[1] for k in ctx_min})
            fig, ax = plt.subplots(figsize=(9, max(4, 0.28 * len(names) * len(batches))))
            h = 0.8 / len(batches)
            for j, b in enumerate(batches):
                ys = [i + j * h for i in range(len(names))]
                vals = [ctx_min[(n, b)]["latency_us"] if (n, b) in ctx_min else 0 for n in names]
                ax.barh(ys, vals, height=h, label=f"batch {b}")
            ax.set_yticks([i + 0.4 - h / 2 for i in range(len(names))], names, fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("µs per token (one recurrent step)")
            ax.set_title(f"decode latency, {dtype}, d_model {c['d_model']} (context = shortest T)")
            ax.legend()
            ax.grid(True, axis="x", which="both", alpha=0.3)
            fig.tight_layout()
            path = os.path.join(out_dir, f"decode_{dtype}.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def plot_headline(result: dict, path: str, mode: str = "train", names: list[str] | None = None) -> str:
    """The README plot: tokens/s vs T for attention and one recurrent mixer per family (``names``: the mixers
    to draw, e.g. ``headline_mixers()`` when the result holds more; default every mixer row)."""
    plt = _plt()
    rows = [r for r in result["rows"] if r["kind"] == "mixer" and r["mode"] == mode
            and r["dtype"] == result["config"]["dtypes"][0] and (names is None or r["name"] in names)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _lines(ax, rows, "tokens_per_s", "tokens/s (forward + backward)" if mode == "train" else "tokens/s (forward)")
    m, c = result["machine"], result["config"]
    ax.set_title(f"{mode} throughput, batch {c['batch']}, d_model {c['d_model']}, {c['dtypes'][0]}\n"
                 f"{m['cpu'].split(' (')[0]}, {m['threads']} threads, torch {m['torch']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no line is hidden
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
