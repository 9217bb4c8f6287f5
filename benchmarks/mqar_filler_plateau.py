"""How long rnnlab's attention sits on MQAR's plateau before recall, per seed: held-out accuracy every 250 steps.

One of the cumulative settings of ``benchmarks/mqar_sensitivity.py`` (its ``STEPS_TOWARD_CHECK``; 4 = up to "+ filler
tokens 0", 3 = the same with random filler), rnnlab's attention model with unit embeddings, that script's loop. Run:
``python benchmarks/mqar_filler_plateau.py --seeds 0,1,2,3,4 --steps 1500 --settings 4``; results go to
docs/reproductions.md ("MQAR: what the bimodality depends on")."""
from __future__ import annotations

import argparse
import json
import time

import mqar_sensitivity as M  # this script's folder is on sys.path when it is run as a script

from rnnlab.runtime import set_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--settings", type=int, default=4, help="how many of mqar_sensitivity's cumulative steps apply")
    args = ap.parse_args()
    set_threads(1)
    setting = dict(M.RNNLAB)
    for _, change in M.STEPS_TOWARD_CHECK[:args.settings]:
        setting.update(change)
    print(json.dumps(setting), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.time()
        accs = M.run("rnnlab", setting, seed, args.steps, every=250)
        row = {"seed": seed, "steps": args.steps, "acc_every_250": accs, "s": round(time.time() - t0)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
