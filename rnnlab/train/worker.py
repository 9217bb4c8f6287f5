"""One sweep run in its own process: ``python -m rnnlab.train.worker CONFIG.json`` (the local launcher), or
``run(CONFIG.json)`` as a SLURM job or a Ray task (rnnlab.train.launchers). The run trains in the directory that
holds the config file, resuming from its checkpoint if an earlier attempt was interrupted. Failure = an
exception (exit code != 0); its traceback is also written to ``stderr.log`` there, for the coordinator.

train() locks the run directory (``<run_dir>/.lock``): with ``wait=True`` a worker left over from a
killed sweep (or a job that outlived it) makes the restarted sweep's worker wait for it.
"""
import json
import sys
import traceback
from pathlib import Path

from rnnlab.runtime import tune_allocator
from rnnlab.train.checkpoint import atomic_write
from rnnlab.train.trainer import train


def run(config_path: str, log_errors: bool = True) -> None:
    """Train the run of ``config_path`` (its ``run_dir``: the file's directory) to its end; ``log_errors``: write a
    failure's traceback to ``stderr.log`` (the local launcher sends the whole stderr there itself)."""
    # a worker is its own process, an entry point: the same allocator setting as the rnnlab command; its
    # thread count is the config's train.threads (the sweep's threads_per_worker), applied by train()
    tune_allocator()
    path = Path(config_path)
    config = json.loads(path.read_text())
    config["run_dir"] = str(path.parent)  # absolute on a cluster: a job's working directory is not the sweep's
    try:
        train(config, resume=True, wait=True)
    except BaseException:
        if log_errors:
            atomic_write(path.parent / "stderr.log", traceback.format_exc())
        raise


if __name__ == "__main__":
    run(sys.argv[1], log_errors=False)
