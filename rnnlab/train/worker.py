"""``python -m rnnlab.train.worker CONFIG.json``: one sweep run in its own process (resumes
from its checkpoint if a previous attempt was interrupted). Exit code != 0 = failed.

train() locks the run directory (``<run_dir>/.lock``): with ``wait=True`` a worker left over from a
killed sweep makes the restarted sweep's worker wait for it.
"""
import json
import sys

from rnnlab.runtime import tune_allocator
from rnnlab.train.trainer import train


def main(config_path: str) -> None:
    # a worker is its own process, an entry point: the same allocator setting as the rnnlab command; its
    # thread count is the config's train.threads (the sweep's threads_per_worker), applied by train()
    tune_allocator()
    with open(config_path) as f:
        config = json.load(f)
    train(config, resume=True, wait=True)


if __name__ == "__main__":
    main(sys.argv[1])
