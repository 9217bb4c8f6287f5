"""Reproductions: a source paper's claims as data, run by the sweep machinery, compared number by number.

An ``Experiment`` (one file per paper in ``rnnlab/experiments/``) holds the sweep that measures the claims at
laptop scale (``spec(quick)``: ``--quick`` fits 20 minutes on 2 cores, the full size is for more time) and the
``Claim``s: what the paper reports for one (task, model, metric) and how to read rnnlab's number against it.

    rnnlab reproduce --list
    rnnlab reproduce negative_eigenvalues [--full] [--workers 2]
        -> runs/repro/<name>-quick/runs.db, report/ (the usual tables and plots), <name>.md

Verdicts, per claim, from rnnlab's mean over seeds (best learning rate by that mean, as the report):
  reproduced                  the paper's number within ``Claim.tolerance`` (absolute)
  reproduced qualitatively    the same side of ``Claim.solved_at`` as the paper (solves / fails)
  not reproduced              the other side; docs/reproductions.md gives the reason found
A claim whose paper value is only qualitative ("solves", "fails") can at most be reproduced qualitatively.
Accuracies are scaled to (acc - chance) / (1 - chance) where the paper reports them so (``Claim.chance``).
"""
from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Callable

from rnnlab.train.report import aggregate, make_report, read_diagnostics
from rnnlab.train.store import Store

__all__ = ["Claim", "Experiment", "available_experiments", "get_experiment", "evaluate_claims", "run_experiment",
           "VERDICTS"]

VERDICTS = ("reproduced", "reproduced qualitatively", "not reproduced", "not run")


@dataclass(frozen=True)
class Claim:
    """One number (or outcome) a paper reports, and where rnnlab measures it.

    task / mixer: the report's model label (``mixer`` may carry a variant tag, "mamba@neg"); d_model / n_layers
    pick one size (None: the largest run).
    metric / lengths: the metric averaged over these test lengths (None: all of the task's test lengths);
        "diag.<name>" reads the run's diagnostics summary instead (rnnlab.train.diagnose.summarize: the located
        layer of the state probes, the located head's layer, the state-norm growth past the training length).
    paper: the paper's value on rnnlab's scale, or None when the paper states only an outcome.
    outcome: "solves" / "fails" (what the paper's number means at ``solved_at``); derived from ``paper`` if None.
    chance: scale accuracies as (acc - chance) / (1 - chance) (the papers' "scaled accuracy").
    source: where in the paper (table, figure, the paper's own setting)."""

    label: str
    task: str
    mixer: str
    metric: str = "acc"
    lengths: tuple[int, ...] | None = None
    paper: float | None = None
    outcome: str | None = None
    chance: float | None = None
    source: str = ""
    solved_at: float = 0.9
    tolerance: float = 0.05
    d_model: int | None = None
    n_layers: int | None = None

    def paper_outcome(self) -> str:
        if self.outcome is not None:
            return self.outcome
        return "solves" if self.paper >= self.solved_at else "fails"


@dataclass(frozen=True)
class Experiment:
    """A paper's claims and the sweep that measures them (see the module docstring)."""

    name: str
    title: str
    paper: str
    claim: str
    spec: Callable[[bool], dict]
    claims: tuple[Claim, ...]
    notes: str = ""
    shared: str | None = None
    """Experiments with the same ``shared`` name run into one database (runs/repro/<shared>-<size>), so a run
    two papers share (the same task, model and budget) is trained once."""
    diagnose: dict[str, dict] | None = None
    """{task: options of rnnlab.train.diagnose.diagnose_run}: the done runs of these tasks are diagnosed after the
    sweep (once; diagnostics.json is kept), so the report draws their state statistics and located layers, and
    "diag.*" claims read them."""


def _experiments() -> dict[str, Experiment]:
    import rnnlab.experiments as pkg

    found = {}
    for m in pkgutil.iter_modules(pkg.__path__):
        exp = getattr(importlib.import_module(f"{pkg.__name__}.{m.name}"), "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found[exp.name] = exp
    return found


def available_experiments() -> list[str]:
    return sorted(_experiments())


def get_experiment(name: str) -> Experiment:
    found = _experiments()
    if name not in found:
        raise ValueError(f"unknown reproduction {name!r}; valid choices: {', '.join(sorted(found))}")
    return found[name]


def _value(entry: dict, claim: Claim) -> float | None:
    """The claim's number from one aggregated model: its metric averaged over the claim's lengths, scaled (or the
    run's diagnostics summary for a "diag.*" metric)."""
    if claim.metric.startswith("diag."):
        return (entry["result"].get("diagnostics") or {}).get(claim.metric[len("diag."):])
    metrics = entry["result"]["metrics"]
    lengths = [str(L) for L in claim.lengths] if claim.lengths else list(metrics)
    vals = [metrics[L][claim.metric] for L in lengths if L in metrics and claim.metric in metrics[L]]
    if not vals:
        return None
    v = mean(vals)
    return (v - claim.chance) / (1 - claim.chance) if claim.chance is not None else v


def _per_seed(rows: list[dict], entry: dict, claim: Claim) -> list[float]:
    """The claim's number for each seed of the entry's model at its chosen learning rate."""
    out = []
    for r in rows:
        label = f"{r['mixer']} [{r['variant']}]" if r.get("variant") else r["mixer"]
        if (r["status"] == "done" and r["task"] == entry["task"] and label == entry["mixer"] and r["lr"] == entry["lr"]
                and r["d_model"] == entry["d_model"] and r["n_layers"] == entry["n_layers"]):
            v = _value({"result": r["result"]}, claim)
            if v is not None:
                out.append(v)
    return out


def evaluate_claims(exp: Experiment, rows: list[dict]) -> list[dict]:
    """Claims -> rows of {claim, value, detail (spread), solved (seeds at or above the claim's threshold), entry,
    verdict} from a results database's rows."""
    models = aggregate(rows)
    out = []
    for c in exp.claims:
        cands = [m for m in models if m["task"] == c.task and m["mixer"] == c.mixer
                 and (c.d_model is None or m["d_model"] == c.d_model) and (c.n_layers is None or m["n_layers"] == c.n_layers)]
        if not cands:
            out.append({"claim": c, "value": None, "verdict": "not run", "detail": "", "entry": None, "solved": "–"})
            continue
        entry = max(cands, key=lambda m: (m["d_model"], m["n_layers"]))  # the largest size run
        seeds = _per_seed(rows, entry, c)
        value = mean(seeds) if seeds else _value(entry, c)
        if value is None:
            out.append({"claim": c, "value": None, "verdict": "not run", "detail": f"no {c.metric}", "entry": entry,
                        "solved": "–"})
            continue
        ours = "solves" if value >= c.solved_at else "fails"
        if c.paper is not None and abs(value - c.paper) <= c.tolerance:
            verdict = "reproduced"
        elif ours == c.paper_outcome():
            verdict = "reproduced qualitatively"
        else:
            verdict = "not reproduced"
        detail = f"{min(seeds):.2f}-{max(seeds):.2f}, n={len(seeds)}" if len(seeds) > 1 else ""
        solved = f"{sum(v >= c.solved_at for v in seeds)}/{len(seeds)}" if seeds else "–"
        out.append({"claim": c, "value": value, "verdict": verdict, "detail": detail, "entry": entry, "solved": solved})
    return out


def render(exp: Experiment, results: list[dict], header: str) -> str:
    lines = [f"# {exp.title}\n", f"{exp.paper}. Claim: {exp.claim}\n", header, ""]
    lines += ["| setting | paper | source | rnnlab (spread over seeds) | seeds >= threshold | converged | verdict |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        c, e = r["claim"], r["entry"]
        paper = (f"{c.paper:.3f}" if c.paper is not None else c.paper_outcome()) + (" (scaled)" if c.chance is not None else "")
        ours = "–" if r["value"] is None else f"{r['value']:.3f}" + (f" ({r['detail']})" if r["detail"] else "")
        conv = f"{e['converged']}/{e['seeds']}" if e else "–"
        lines.append(f"| {c.label} | {paper} | {c.source} | {ours} | {r['solved']} | {conv} | {r['verdict']} |")
    counts = {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."]
    if exp.notes:
        lines += ["", exp.notes.strip()]
    return "\n".join(lines) + "\n"


def _add_diagnostics(rows: list[dict], tasks: dict[str, dict], log=print) -> None:
    """Diagnose the done runs of ``tasks`` ({task: diagnose_run options}) that have no diagnostics.json yet, and put
    each run's summary into its row's result (``result["diagnostics"]``, where "diag.*" claims read it)."""
    from rnnlab.train.diagnose import diagnose_run, summarize

    for r in rows:
        if r["status"] != "done" or r["task"] not in tasks:
            continue
        record = read_diagnostics(r)
        if record is None:
            log(f"diagnosing {r['run_dir']}")
            record = diagnose_run(r["run_dir"], **tasks[r["task"]])
        r["result"] = {**r["result"], "diagnostics": summarize(record)}


def run_experiment(name: str, quick: bool = True, workers: int = 2, out_dir: str | None = None, log=print) -> Path:
    """Run (or finish: done runs are kept) one reproduction; write its report and <name>.md. -> that file."""
    from rnnlab.train.sweep import load_sweep, run_sweep

    exp = get_experiment(name)
    size = "quick" if quick else "full"
    out = Path(out_dir or f"runs/repro/{exp.shared or name}-{size}")
    spec = {**exp.spec(quick), "name": f"{exp.shared or name}-{size}", "out_dir": str(out), "workers": workers}
    spec = load_sweep(spec)
    t0 = time.time()
    counts = run_sweep(spec, log=log)
    wall = time.time() - t0
    store = Store(spec["db"], create=False)
    rows = store.rows()
    store.close()
    _add_diagnostics(rows, exp.diagnose or {}, log)
    make_report(spec["db"], out / "report")
    done = [r for r in rows if r["status"] == "done"]
    cpu = sum((r["result"] or {}).get("cpu_s") or 0.0 for r in done)
    base = spec.get("base", {})
    header = (f"Command: `rnnlab reproduce {name}{'' if quick else ' --full'}` ({size} size: "
              f"{len(done)} runs done, {counts['failed']} failed; this invocation {wall:.0f} s wall, the runs' training "
              f"{cpu:.0f} s CPU in all). Budget per run: {base.get('train', {})}; grid: {spec['grid']}. "
              f"Per model the best learning rate by the mean over seeds; tables and plots in `report/report.md`.")
    path = out / f"{name}.md"
    path.write_text(render(exp, evaluate_claims(exp, rows), header))
    return path
