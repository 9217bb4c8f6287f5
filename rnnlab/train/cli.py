"""Sub-commands ``train``, ``sweep``, ``report``, ``suite``, ``reproduce`` and ``diagnose``; ``register(subparsers)`` adds them
to the ``rnnlab`` parser (rnnlab/cli.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from rnnlab.options import positive_int
from rnnlab.train.launchers import LAUNCHERS

__all__ = ["register", "build_train_config"]


def _choices_help() -> str:
    from rnnlab.layers.grid import GRID_MODULES
    from rnnlab.layers.registry import available_mixers
    from rnnlab.tasks import available_tasks

    return (f"tasks: {', '.join(available_tasks())}. mixers: {', '.join(available_mixers())}. 2-D grid modules (square "
            f"lengths, e.g. arrow_pointing): {', '.join(GRID_MODULES)}.")


def build_train_config(args) -> dict:
    """Flags + optional file + dotted overrides -> config dict (not yet resolved)."""
    from rnnlab.train.config import apply_overrides, load_file, merge

    cfg = {"task": {}, "model": {}, "train": {}}
    if args.config:
        cfg = merge(cfg, load_file(args.config))
    if args.task:
        cfg["task"]["name"] = args.task
    if args.mixer:
        parts = args.mixer.split(",")
        cfg["model"]["mixer"] = parts if len(parts) > 1 else parts[0]
    for flag, section, key in (("d_model", "model", "d_model"), ("layers", "model", "n_layers"), ("lr", "train", "lr"),
                               ("steps", "train", "steps"), ("batch_size", "train", "batch_size"),
                               ("seed", "train", "seed"), ("device", "train", "device"), ("target", "train", "target")):
        if getattr(args, flag) is not None:
            cfg[section][key] = getattr(args, flag)
    if args.bf16:
        cfg["train"]["bf16"] = True
    if args.no_progress:
        cfg["train"]["progress"] = False
    cfg = apply_overrides(cfg, args.overrides)
    if args.run_dir:
        cfg["run_dir"] = args.run_dir
    elif cfg.get("run_dir") is not None:  # from a file or an override: it may not write outside runs/
        _check_inside_runs_root(cfg["run_dir"])
    return cfg


RUNS_ROOT = "runs"


def _check_inside_runs_root(run_dir: str) -> None:
    """A run_dir that a config file (or an override) names must lie inside ./runs: a shared file cannot make
    the command write elsewhere (``--run-dir`` on the command line may)."""
    from pathlib import Path

    root, target = Path(RUNS_ROOT).resolve(), Path(run_dir).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"run_dir {run_dir!r} from the config lies outside {RUNS_ROOT}/; "
                         f"give it on the command line (--run-dir) to write there")


def cmd_train(args) -> int:
    from rnnlab.train.config import resolve
    from rnnlab.train.trainer import RunDirInUse, train

    try:
        cfg = build_train_config(args)
        resolve(cfg)  # fail before anything starts, naming the valid choices
    except ValueError as e:
        print(f"rnnlab train: error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, RunDirInUse) as e:  # a finished run without --resume/--overwrite, a directory in use
        print(f"rnnlab train: error: {e}", file=sys.stderr)
        return 2
    from rnnlab.train.distributed import is_main, shutdown

    if is_main():
        print(json.dumps({k: result[k] for k in ("run_dir", "task", "mixer", "steps", "primary_metric", "score", "metrics")}, indent=1))
    if shutdown():  # a torchrun process: everything is written; skip the finalization that can abort (shutdown)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_sweep(args) -> int:
    from rnnlab.train.report import make_report
    from rnnlab.train.sweep import load_sweep, run_sweep

    try:
        spec = load_sweep(args.file)
        if args.workers is not None:  # 0 is a value (rejected by load_sweep), not "not given"
            spec["workers"] = args.workers
        if args.db:
            spec["db"] = args.db
        if args.launcher:
            spec["launcher"] = args.launcher
        counts = run_sweep(spec)
    except ValueError as e:
        print(f"rnnlab sweep: error: {e}", file=sys.stderr)
        return 2
    print(f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped -> {spec['db']}")
    if not args.no_report:
        print(f"report: {make_report(spec['db'])}")
    return 1 if counts["failed"] else 0


def cmd_report(args) -> int:
    from rnnlab.train.report import make_report

    try:
        path = make_report(args.db, args.out, args.sweep)
    except ValueError as e:
        print(f"rnnlab report: error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"\nwritten: {path} (+ state_size.png, length.png, loss.png)")
    return 0


def cmd_suite(args) -> int:
    from rnnlab.train.report import make_report
    from rnnlab.train.suite import pick_mixers, suite_spec
    from rnnlab.train.sweep import load_sweep, run_sweep

    mixers = args.mixers.split(",") if args.mixers else pick_mixers()
    try:
        spec = load_sweep(suite_spec(quick=not args.full, mixers=mixers, out_dir=args.out_dir, workers=args.workers))
        print(f"suite ({'full' if args.full else 'quick'}): mixers {', '.join(mixers)}; tasks {', '.join(spec['grid']['task'])}")
        counts = run_sweep(spec)
    except ValueError as e:
        print(f"rnnlab suite: error: {e}", file=sys.stderr)
        return 2
    path = make_report(spec["db"])
    print(path.read_text())
    print(f"\n{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped; report: {path}")
    return 0


def cmd_reproduce(args) -> int:
    from rnnlab.train.reproduce import available_experiments, get_experiment, run_experiment

    if args.list or not args.name:
        for name in available_experiments():
            e = get_experiment(name)
            print(f"{name:24s} {e.title}")
        return 0
    try:
        path = run_experiment(args.name, quick=not args.full, workers=args.workers, out_dir=args.out_dir)
    except ValueError as e:
        print(f"rnnlab reproduce: error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"written: {path}")
    return 0


def cmd_diagnose(args) -> int:
    from rnnlab.train.diagnose import DIAGNOSTICS, diagnose_run

    try:
        rec = diagnose_run(args.run_dir, args.length, args.examples, args.stride, args.probe, args.probe_positions)
    except ValueError as e:
        print(f"rnnlab diagnose: error: {e}", file=sys.stderr)
        return 2
    st = rec["state_stats"]
    print(f"length {rec['length']} (trained at {rec['train_len']}), {rec['examples']} sequences")
    for i, layer in enumerate(st["layers"]):
        print(f"layer {i}: state norm {layer['norm'][0]:.3g} at 0 -> {layer['norm'][-1]:.3g} at {st['positions'][-1]} "
              f"(max {max(layer['norm']):.3g}; max |entry| {max(layer['max_abs']):.3g})")
    if "probe" in rec:
        loc = rec["probe"]["located"]
        print(f"probe ({rec['probe']['mode']}): located layer {loc['layer']} at position {loc['position']}: "
              f"target log-prob {loc['delta_logp']:+.3f}, accuracy {rec['probe']['clean']['acc']:.3f} -> {loc['acc']:.3f}")
    if rec.get("heads", {}).get("heads"):
        loc = rec["heads"]["located"]
        print(f"heads: located layer {loc['layer']} head {loc['head']}: target log-prob {loc['delta_logp']:+.3f}")
    print(f"written: {args.run_dir}/{DIAGNOSTICS}")
    return 0


def _collect_interleaved_overrides(parser: argparse.ArgumentParser) -> None:
    """argparse fills a nargs="*" positional from one run of positionals only; overrides written
    between or after options (``--lr 1e-3 task.seq_len=64 --steps 9 train.seed=1``) come back as
    extras. Collect every ``key=value`` extra into ``overrides``, in order."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = original(args, namespace)
        late = [e for e in extras if "=" in e and not e.startswith("-")]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + late
        return ns, [e for e in extras if e not in late]

    parser.parse_known_args = parse_known_args


def register(sub) -> None:
    """Add train / sweep / report / suite to an argparse sub-parsers object."""
    p = sub.add_parser("train", help="train one model on one task",
                       description="Train one run. Config from flags, a TOML/YAML/JSON file (--config) and dotted "
                                   "overrides such as train.lr=3e-3 task.num_kv_pairs=8 model.mixer_kwargs.num_heads=2. "
                                   + _choices_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="section.key=value (sections: task, model, train, run_dir)")
    p.add_argument("--config", help="TOML/YAML/JSON file with task/model/train sections")
    p.add_argument("--task")
    p.add_argument("--mixer", help="mixer name, or comma-separated names one per layer (hybrid)")
    p.add_argument("--d-model", dest="d_model", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--target", type=float, help="stop once the primary metric (mean over test lengths) reaches this")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--run-dir", dest="run_dir")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the run directory")
    p.add_argument("--no-progress", dest="no_progress", action="store_true")
    p.set_defaults(func=cmd_train)
    _collect_interleaved_overrides(p)

    p = sub.add_parser("sweep", help="run a grid of runs from a sweep file into SQLite")
    p.add_argument("file", help="sweep file (YAML/TOML/JSON; see examples/sweep_small.yaml)")
    p.add_argument("--workers", type=int, help="parallel processes (overrides the file)")
    p.add_argument("--db", help="results database (overrides the file)")
    p.add_argument("--launcher", choices=LAUNCHERS,
                   help="where the runs execute (overrides the file's launcher; default local): local processes, "
                        "a SLURM job array through submitit, or Ray tasks (docs/scale.md)")
    p.add_argument("--no-report", dest="no_report", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="markdown tables and PNG plots from a results database")
    p.add_argument("db", nargs="?", default="runs/suite_quick/runs.db", help="results database (default %(default)s)")
    p.add_argument("--out", help="output directory (default: <db dir>/report)")
    p.add_argument("--sweep", help="only runs of this sweep name")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="a source paper's claims measured by rnnlab, with the paper's numbers beside",
                       description="Run one reproduction (rnnlab/experiments/) and write runs/repro/<name>-<size>/"
                                   "<name>.md: the paper's numbers, rnnlab's (mean and spread over seeds, best "
                                   "learning rate) and a verdict per claim. Finished runs are kept on a re-run.")
    p.add_argument("name", nargs="?", help="the reproduction (see --list)")
    p.add_argument("--list", action="store_true", help="list the reproductions")
    p.add_argument("--full", action="store_true", help="the larger size (more seeds, learning rates and steps)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--out-dir", dest="out_dir", help="default runs/repro/<name>-<quick|full>")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("diagnose", help="state statistics vs position and causal probes on a trained run",
                       description="Per-layer state norm, mean and spread against position on the run's test set "
                                   "(default: its longest test length), and for lm tasks the located layer: each "
                                   "layer's state knocked out (or patched from another sequence) at a grid of "
                                   "positions, and each attention head knocked out. Writes RUN_DIR/diagnostics.json, "
                                   "which `rnnlab report` plots (state_stats.png) and tabulates.")
    p.add_argument("run_dir", help="a run directory (config.json and a checkpoint)")
    p.add_argument("--length", type=positive_int, help="sequence length (default: the run's longest test length)")
    p.add_argument("--examples", type=positive_int, default=8, help="test sequences (default %(default)s)")
    p.add_argument("--stride", type=positive_int, help="read the state every this many tokens (default length // 64)")
    p.add_argument("--probe", choices=["zero", "patch", "none", "off"], default="zero",
                   help="state intervention of the located-layer sweep (off: no probes; default %(default)s)")
    p.add_argument("--probe-positions", dest="probe_positions", type=positive_int, default=16,
                   help="evenly spaced positions of the sweep (default %(default)s)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("suite", help="the curated comparison of mixers on MQAR, parity and selective copying")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, under 10 minutes on 2 CPU cores (default)")
    g.add_argument("--full", action="store_true", help="the larger grid (sizes x learning rates x more tasks)")
    p.add_argument("--mixers", help="comma-separated mixers instead of the automatic choice")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out-dir", dest="out_dir")
    p.set_defaults(func=cmd_suite)
