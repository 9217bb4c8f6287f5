"""``python -m rnnlab.train.worker CONFIG.json``: one sweep run in its own process (resumes
from its checkpoint if a previous attempt was interrupted). Exit code != 0 = failed."""
import json
import sys

from rnnlab.train.trainer import train

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        train(json.load(f), resume=True)
