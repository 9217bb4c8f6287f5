"""Reports from a results database: markdown tables and matplotlib PNG plots.

Runs are grouped into models — (task, mixer, variant, d_model, n_layers), where the variant names a sweep's extra
grid axes (e.g. ``model.embedding_init=gpt2``) — and seeds are aggregated as the papers do: for each model the
learning rate with the best mean primary score over its seeds is kept, and the report shows that mean with its
spread (min-max over seeds, n), the per-length metrics averaged over the seeds, and how many of the seeds
converged (``converged``: the run reached its target, or its loss stopped falling by the end of its budget).

    report.md         summary table (mixer x task), one table per task with the primary
                      metric at every test length, failed runs with their error
    state_size.png    primary metric vs state floats per sequence, one panel per task (the Zoology plot)
    length.png        primary metric vs test length, one panel per task (length generalization)
    loss.png          training loss curves, one panel per task
    state_stats.png   per-layer state norm and spread vs position, one panel per task, for the runs that
                      ``rnnlab diagnose`` has diagnosed (their diagnostics.json), with the located-layer table
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

from rnnlab.train.store import Store

__all__ = ["aggregate", "converged", "make_report", "read_diagnostics", "STILL_FALLING"]

STILL_FALLING = 0.05  # loss over the last quarter of the logged steps this much below the quarter before it: not converged


def converged(run: dict) -> bool:
    """Did a run finish learning within its budget? True when it stopped early at its target, or when the mean
    training loss over the last quarter of its logged steps is no more than STILL_FALLING below the quarter before it
    (a plateau, at a solution or at chance); False when the loss was still falling at the end. Quarters, so
    that a slow steady descent (a few % per tenth of the steps, held-out accuracy still rising) counts as learning."""
    if run.get("result", {}).get("stopped_early"):
        return True
    loss = [v for _, v in (run.get("curve") or [])]
    k = len(loss) // 4
    if k < 2:
        return False
    last, before = mean(loss[-k:]), mean(loss[-2 * k:-k])
    return last >= before * (1 - STILL_FALLING)


def _label(r: dict) -> str:
    return f"{r['mixer']} [{r['variant']}]" if r.get("variant") else r["mixer"]


def aggregate(rows: list[dict]) -> list[dict]:
    """Done runs -> one entry per model (task, mixer label, d_model, n_layers): its best learning rate by the mean
    primary score over seeds. An entry looks like a run (mixer is the label, result.metrics the per-length means
    over seeds, curve the seed nearest the mean) plus score_min, score_max, seeds, converged (count) and lrs."""
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "done" and r["score"] is not None:
            groups[(r["task"], _label(r), r["d_model"], r["n_layers"])][r["lr"]].append(r)
    out = []
    for key in sorted(groups):
        by_lr = groups[key]
        higher = next(iter(by_lr.values()))[0]["higher_is_better"]
        lr = (max if higher else min)(by_lr, key=lambda v: mean(r["score"] for r in by_lr[v]))
        runs = by_lr[lr]
        scores = [r["score"] for r in runs]
        lengths = list(runs[0]["result"]["metrics"])
        metrics = {L: {m: mean(r["result"]["metrics"][L][m] for r in runs)
                       for m in runs[0]["result"]["metrics"][L] if all(m in r["result"]["metrics"].get(L, {}) for r in runs)}
                   for L in lengths}
        typical = min(runs, key=lambda r: abs(r["score"] - mean(scores)))
        out.append({**typical, "mixer": key[1], "score": mean(scores), "score_min": min(scores), "score_max": max(scores),
                    "seeds": len(runs), "converged": sum(converged(r) for r in runs), "lrs": sorted(by_lr),
                    "steps": round(mean(r["steps"] for r in runs)), "wall_s": mean(r["wall_s"] or 0.0 for r in runs),
                    "result": {**typical["result"], "metrics": metrics}})
    return out


def spread(r: dict) -> str:
    """'0.812 (0.70-0.95, n=3)' for several seeds, '0.812' for one; a dagger when a seed had not converged."""
    mark = "" if r["converged"] == r["seeds"] else " †"
    if r["seeds"] == 1:
        return f"{r['score']:.3f}{mark}"
    return f"{r['score']:.3f} ({r['score_min']:.2f}-{r['score_max']:.2f}, n={r['seeds']}){mark}"


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 1000 else f"{x:.3g}"
    if isinstance(x, int) and x >= 10000:
        return f"{x / 1000:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_names(run: dict) -> list[str]:
    """The primary metric first, then the task's other report metrics present in the result."""
    first = next(iter(run["result"]["metrics"].values()))
    wanted = run["config"].get("task_info", {}).get("report_metrics") or ["last_acc", "seq_acc"]
    return [run["primary_metric"]] + [m for m in wanted if m in first and m != run["primary_metric"]]


def _train_len(run: dict) -> int | None:
    """The (longest) training sequence length of a run's task."""
    cfg = run["config"]
    return cfg.get("task_info", {}).get("train_len") or cfg["task"].get("max_len") or cfg["task"].get("seq_len")


def _mixer_label(run: dict) -> str:
    """The mixer's name, and how its readout was fitted when not by gradient steps (ModelConfig readout="ridge")."""
    fit = (run.get("result") or {}).get("readout")
    return run["mixer"] if not fit else f"{run['mixer']} (closed-form ridge readout, λ = {fit['ridge']:g}, {fit['rows']} rows)"


def make_report(db: str | Path, out_dir: str | Path | None = None, sweep: str | None = None) -> Path:
    """Write report.md and the PNG plots next to it. -> path of report.md."""
    store = Store(db, create=False)
    rows = store.rows(sweep=sweep)
    store.close()
    out = Path(out_dir) if out_dir else Path(db).parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    best = aggregate(rows)
    tasks = sorted({r["task"] for r in best})
    by_task = defaultdict(list)
    for r in best:
        by_task[r["task"]].append(r)

    done = [r for r in rows if r["status"] == "done"]
    wall = sum(r["wall_s"] or 0.0 for r in done)
    cpu = sum((r["result"] or {}).get("cpu_s") or 0.0 for r in done)
    n_failed = sum(r["status"] == "failed" for r in rows)
    md = [f"# rnnlab report\n\nDatabase `{db}`: {len(rows)} runs "
          f"({len(done)} done, {n_failed} failed, {sum(r['status'] not in ('done', 'failed', 'duplicate') for r in rows)} unfinished; training time summed over "
          f"done runs: {wall:.0f} s wall, {cpu:.0f} s CPU). "
          "Per model (task, mixer [variant], size): the learning rate with the best mean primary metric over seeds "
          "(`score`, averaged over test lengths); metrics are means over those seeds, `score` shows their spread "
          "(min-max, n); † marks a model with a seed whose loss was still falling at the end of its budget "
          "(unconverged: more steps may change the result).\n"]
    if best:
        models = sorted({(r["mixer"], r["d_model"], r["n_layers"]) for r in best})
        run_of = {(r["task"], r["mixer"], r["d_model"], r["n_layers"]): r for r in best}
        cols = [(t, L) for t in tasks for L in by_task[t][0]["result"]["metrics"]]
        header = ["mixer", "d_model", "layers"] + [f"{t} {by_task[t][0]['primary_metric']}@{L}" for t, L in cols]
        def cell(t, m, d, n, L):
            r = run_of.get((t, m, d, n))
            if r is None:
                return None
            v = r["result"]["metrics"].get(L, {}).get(r["primary_metric"])
            return None if v is None else f"{v:.3f}" + (" †" if r["converged"] < r["seeds"] else "")

        body = [[m, d, n] + [cell(t, m, d, n, L) for t, L in cols] for m, d, n in models]
        md += ["## Summary: the primary metric at every test length\n", _table(header, body), ""]
    for t in tasks:
        runs = by_task[t]
        lengths = list(runs[0]["result"]["metrics"])
        names = _metric_names(runs[0])
        train_len = _train_len(runs[0])
        header = (["mixer", "d", "L", "params", "state floats", "lr"] + [f"{n}@{L}" for n in names for L in lengths]
                  + ["score (spread over seeds)", "converged", "steps", "time s"])
        body = [[_mixer_label(r), r["d_model"], r["n_layers"], r["num_parameters"], r["state_size"],
                 f"{r['lr']:g}" + (f" of {len(r['lrs'])}" if len(r["lrs"]) > 1 else "")]
                + [r["result"]["metrics"][L].get(n) for n in names for L in lengths]
                + [spread(r), f"{r['converged']}/{r['seeds']}", r["steps"], round(r["wall_s"])]
                for r in runs]
        md += [f"## {t}\n", f"Training length {train_len}; test lengths {', '.join(lengths)}. "
               f"Primary metric `{runs[0]['primary_metric']}` ({'higher' if runs[0]['higher_is_better'] else 'lower'} is better).\n",
               _table(header, body), ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        md += ["## Failed runs\n", _table(["task", "mixer", "d", "lr", "error"],
                                         [[r["task"], r["mixer"], r["d_model"], f"{r['lr']:g}",
                                           ([ln for ln in (r["error"] or "").strip().splitlines() if ln.strip()] or ["?"])[-1].replace("|", "/")[:160]]
                                          for r in failed]), ""]
    diagnosed = [(r, d) for r in best if (d := read_diagnostics(r)) is not None]
    if diagnosed:
        md += _diagnostics_section(diagnosed, out)
    if best:
        _plots(best, by_task, tasks, out)
        md += ["## Plots\n", "![metric vs state size](state_size.png)\n", "![metric vs test length](length.png)\n",
               "![loss curves](loss.png)\n"]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def read_diagnostics(run: dict) -> dict | None:
    """The run's diagnostics.json (written by ``rnnlab diagnose``), or None."""
    from rnnlab.train.diagnose import DIAGNOSTICS

    try:
        return json.loads((Path(run.get("run_dir") or "") / DIAGNOSTICS).read_text()) if run.get("run_dir") else None
    except (OSError, json.JSONDecodeError):
        return None


def _diagnostics_section(diagnosed: list[tuple[dict, dict]], out: Path) -> list[str]:
    """The located-layer table and state_stats.png for the diagnosed runs."""
    rows = []
    for r, d in diagnosed:
        st = d["state_stats"]
        norms = ", ".join(f"{layer['norm'][-1]:.3g}" for layer in st["layers"])
        p, h = d.get("probe"), (d.get("heads") or {}).get("located")
        loc = p["located"] if p else None
        rows.append([r["task"], r["mixer"], f"{d['length']} ({d['train_len']})", norms,
                     p["mode"] if p else None, loc["layer"] if loc else None, loc["position"] if loc else None,
                     loc["delta_logp"] if loc else None,
                     f"{p['clean']['acc']:.3f} -> {loc['acc']:.3f}" if loc else None,
                     f"{h['layer']}.{h['head']} ({h['delta_logp']:+.3f})" if h else None])
    _state_plot(diagnosed, out)
    return ["## State diagnostics and probes (`rnnlab diagnose`)\n",
            "State norm per layer after the last token; the located layer is the (layer, position) whose state "
            "intervention lowers the target's log-probability most (Δ log p, mean over scored positions); the located "
            "head, the attention head whose knockout does.\n",
            _table(["task", "mixer", "length (train)", "state norm per layer", "probe", "located layer", "position",
                    "Δ log p", "accuracy", "located head (Δ log p)"], rows), "",
            "![state statistics vs position](state_stats.png)\n"]


def _state_plot(diagnosed: list[tuple[dict, dict]], out: Path) -> None:
    """state_stats.png: rows norm / std of the entries, one column per task; a line per (mixer, layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r, _ in diagnosed})
    mixers = sorted({r["mixer"] for r, _ in diagnosed})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(mixers)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks) + 2.4, 6.4), squeeze=False)
    fig.suptitle("state per layer vs position (dotted: training length)")
    for col, t in enumerate(tasks):
        for r, d in diagnosed:
            if r["task"] != t:
                continue
            st = d["state_stats"]
            for i, layer in enumerate(st["layers"]):
                for row, key in enumerate(("norm", "std")):
                    axes[row][col].plot(st["positions"], layer[key], styles[i % len(styles)], color=colors[r["mixer"]],
                                        lw=1, label=f"{r['mixer']} layer {i}")
            for row in range(2):
                axes[row][col].axvline(d["train_len"], color="gray", ls=":", lw=1)
        axes[0][col].set_title(t)
        axes[0][col].set_ylabel("state norm (mean over sequences)")
        axes[1][col].set_ylabel("std of the state's entries")
        axes[1][col].set_xlabel("position (tokens)")
    handles = {}
    for ax in axes.flat:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hnd)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (4.6 * len(tasks) + 2.4), 0.95))
    fig.savefig(out / "state_stats.png", dpi=110)
    plt.close(fig)


def _plots(best, by_task, tasks, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    mixers = sorted({r["mixer"] for r in best})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(mixers)}
    n = len(tasks)

    def panels(title):
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
        fig.suptitle(title)
        return fig, axes[0]

    def finish(fig, axes, name):
        handles = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.85, 0.95))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    def label(ax, t, xlabel, ylabel):
        ax.set_title(t)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)

    def largest(t, m):
        """The largest model of mixer m on task t (None if it has no run)."""
        runs = [r for r in by_task[t] if r["mixer"] == m]
        return max(runs, key=lambda r: (r["d_model"], r["n_layers"])) if runs else None

    fig, axes = panels("primary metric vs state size (floats per sequence at the training length)")
    for ax, t in zip(axes, tasks):
        for m in mixers:
            pts = sorted((r["state_size"], r["score"]) for r in by_task[t] if r["mixer"] == m)
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[m], label=m)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a narrow range
        label(ax, t, "state floats", by_task[t][0]["primary_metric"])
    finish(fig, axes, "state_size.png")

    fig, axes = panels("primary metric vs test length (largest model per mixer)")
    for ax, t in zip(axes, tasks):
        for m in mixers:
            r = largest(t, m)
            if r:
                met = r["result"]["metrics"]
                ax.plot([int(L) for L in met], [met[L][r["primary_metric"]] for L in met], "o-", color=colors[m], label=m)
        if _train_len(by_task[t][0]):
            ax.axvline(_train_len(by_task[t][0]), color="gray", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        label(ax, t, "test length (dotted: training length)", by_task[t][0]["primary_metric"])
    finish(fig, axes, "length.png")

    fig, axes = panels("training loss (largest model per mixer)")
    for ax, t in zip(axes, tasks):
        for m in mixers:
            r = largest(t, m)
            if r and r["curve"]:
                ax.plot(*zip(*r["curve"]), color=colors[m], label=m, lw=1)
        ax.set_yscale("log")
        label(ax, t, "step", "loss")
    finish(fig, axes, "loss.png")
