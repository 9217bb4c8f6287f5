"""Where a sweep's runs execute: local worker processes, a SLURM job array (submitit) or Ray tasks.

The sweep process (rnnlab.train.sweep) coordinates: it claims each run in the results store, hands it to a
launcher, polls the launcher, and records each outcome in the store; it is the only process that writes the
store, so the SQLite file is never written from many nodes. A launched run is ``rnnlab.train.worker`` on
the run's ``sweep_config.json``: it trains in the run directory (resuming from its checkpoint; it waits for the
directory's lock if an earlier attempt still runs) and writes there everything it produces, ``result.json``
last, and the traceback of a failure to ``stderr.log``. Run directories must therefore lie on a file system
that the coordinator and the runs share.

- ``local``: ``workers`` processes of this machine (``python -m rnnlab.train.worker``); they die with the sweep.
- ``slurm``: one submitit job array, at most ``workers`` jobs at once (``slurm_array_parallelism``), one run per
  job; the jobs outlive the sweep process. Options under the spec's ``slurm`` key (``SlurmOptions``);
  ``cluster: local`` runs the same jobs through submitit's local executor, to try a spec without SLURM.
- ``ray``: one Ray task per run, at most ``workers`` in flight, each with the resources of ``RayOptions``
  (``ray.init(address=...)`` joins a running cluster; without an address Ray starts one on this machine).

The engines are optional: ``pip install 'rnnlab[slurm]'`` (submitit), ``'rnnlab[ray]'`` (ray).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rnnlab.options import check_option

__all__ = ["LAUNCHERS", "SlurmOptions", "RayOptions", "check_launcher_options", "make_launcher"]

LAUNCHERS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class SlurmOptions:
    """The spec's ``slurm`` mapping: the resources of each run's job (submitit's executor parameters)."""

    cluster: str = "slurm"
    """submitit's executor: "slurm", or "local" (the same jobs as processes of this machine)."""
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    """Default: the sweep's threads_per_worker."""
    mem_gb: float | None = None
    timeout_min: int = 1440
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before the run (``module load ...``, ``source .venv/bin/activate``)."""
    additional: dict = field(default_factory=dict)
    """Any other sbatch option, name -> value (submitit's slurm_additional_parameters)."""


@dataclass(frozen=True)
class RayOptions:
    """The spec's ``ray`` mapping: where the tasks run and what each run reserves."""

    address: str | None = None
    """A running cluster ("auto", "ray://host:10001"); None starts Ray on this machine for the sweep."""
    num_cpus: float | None = None
    """CPUs per run; default: the sweep's threads_per_worker."""
    num_gpus: float = 0.0
    memory_gb: float | None = None
    resources: dict = field(default_factory=dict)
    """Custom resources per run, name -> amount."""
    max_retries: int = 0
    """Ray's retries of a task whose worker died (a run resumes from its checkpoint either way)."""
    init: dict = field(default_factory=dict)
    """Extra keyword arguments of ray.init (e.g. num_cpus, object_store_memory for a local Ray)."""


_OPTIONS = {"slurm": SlurmOptions, "ray": RayOptions}
_MIN_INT = {"gpus_per_node": 0, "max_retries": 0, "num_gpus": 0, "num_cpus": 0}


def check_launcher_options(kind: str, options) -> SlurmOptions | RayOptions:
    """The spec's ``slurm`` or ``ray`` mapping -> its options; ValueError naming a bad key or value."""
    cls = _OPTIONS[kind]
    if not isinstance(options or {}, dict):
        raise ValueError(f"sweep {kind} must be a mapping of options, got {options!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options or {}) - set(names))
    if unknown:
        raise ValueError(f"unknown sweep {kind} option(s) {unknown}; valid options: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for k, v in (options or {}).items():
        check_option(f"sweep {kind}.", k, hints[k], v, min_int=_MIN_INT.get(k, 1))
    opts = cls(**(options or {}))
    if kind == "slurm" and opts.cluster not in ("slurm", "local"):
        raise ValueError(f"sweep slurm.cluster must be slurm or local, got {opts.cluster!r}")
    return opts


def make_launcher(spec: dict):
    """The launcher the spec names (``spec["launcher"]``); ValueError when its engine is not installed."""
    kind = spec["launcher"]
    if kind == "local":
        return LocalLauncher(spec)
    try:
        return (SlurmLauncher if kind == "slurm" else RayLauncher)(spec)
    except ImportError as e:
        extra = {"slurm": "submitit", "ray": "ray"}[kind]
        raise ValueError(f"--launcher {kind} needs {extra} ({e}): pip install 'rnnlab[{kind}]'") from None


class LocalLauncher:
    """Worker processes of this machine, each with ``threads_per_worker`` threads; SIGKILLed if the sweep dies."""

    poll_s = 0.1

    def __init__(self, spec: dict):
        self.slots = spec["workers"]
        # every thread pool a worker may start (torch/OpenMP, MKL, numba's kernels) sized to its share of the cores
        n = str(spec["threads_per_worker"])
        self.env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n)
        self.env.pop("WORLD_SIZE", None)

    def submit(self, config_paths: list[Path]) -> list:
        procs = []
        for path in config_paths:
            with open(path.parent / "stderr.log", "w") as err_file:
                procs.append(subprocess.Popen([sys.executable, "-m", "rnnlab.train.worker", str(path)],
                                              stdout=subprocess.DEVNULL, stderr=err_file, env=self.env,
                                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None))
        return procs

    def poll(self, proc) -> tuple[bool, str] | None:
        """None while the run goes on; (exited cleanly, what the launcher knows of a failure) once it ended."""
        if proc.poll() is None:
            return None
        return proc.returncode == 0, f"worker exited with code {proc.returncode}"

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    """Runs in the worker before exec (Linux): SIGKILL it when the sweep process dies, so a killed
    sweep leaves no orphan training on (the restarted sweep resumes the run from its checkpoint)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SlurmLauncher:
    """One SLURM job per run, submitted as one job array through submitit; logs under ``<out_dir>/slurm/``."""

    poll_s = 1.0

    def __init__(self, spec: dict):
        import submitit

        o = check_launcher_options("slurm", spec.get("slurm"))
        if o.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm: no sbatch on this machine (run the sweep on a SLURM login node, "
                             "or set slurm.cluster: local to try the spec here)")
        self.slots = float("inf")  # every run at once, in one array; SLURM runs `workers` of them at a time
        self.executor = submitit.AutoExecutor(folder=Path(spec["out_dir"]).resolve() / "slurm" / "%j", cluster=o.cluster)
        params = {"name": f"rnnlab-{spec['name']}", "timeout_min": o.timeout_min,
                  "cpus_per_task": o.cpus_per_task or spec["threads_per_worker"], "gpus_per_node": o.gpus_per_node,
                  "slurm_array_parallelism": spec["workers"]}
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(o, key) is not None:
                params[f"slurm_{key}"] = getattr(o, key)
        if o.setup:
            params["slurm_setup"] = list(o.setup)
        if o.additional:
            params["slurm_additional_parameters"] = dict(o.additional)
        self.executor.update_parameters(**params)

    def submit(self, config_paths: list[Path]) -> list:
        from rnnlab.train.worker import run

        with self.executor.batch():  # one job array
            jobs = [self.executor.submit(run, str(p.resolve())) for p in config_paths]
        return jobs

    def poll(self, job) -> tuple[bool, str] | None:
        if not job.done():
            return None
        error = job.exception()
        return error is None, f"SLURM job {job.job_id}: {error}"

    def close(self) -> None:
        pass


class RayLauncher:
    """One Ray task per run; Ray started on this machine for the sweep unless ``ray.address`` names a cluster."""

    poll_s = 0.2

    def __init__(self, spec: dict):
        import ray

        from rnnlab.train.worker import run

        o = check_launcher_options("ray", spec.get("ray"))
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=o.address, include_dashboard=False, log_to_driver=False, **o.init)
        resources = {"num_cpus": o.num_cpus if o.num_cpus is not None else spec["threads_per_worker"],
                     "num_gpus": o.num_gpus, "max_retries": o.max_retries}
        if o.memory_gb is not None:
            resources["memory"] = int(o.memory_gb * 2 ** 30)
        if o.resources:
            resources["resources"] = dict(o.resources)
        self.task = ray.remote(run).options(**resources)
        self.slots = spec["workers"]

    def submit(self, config_paths: list[Path]) -> list:
        return [self.task.remote(str(p.resolve())) for p in config_paths]

    def poll(self, ref) -> tuple[bool, str] | None:
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(ref)
        except Exception as e:  # the task raised, or its worker died
            return False, f"Ray task: {type(e).__name__}: {e}"
        return True, ""

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
