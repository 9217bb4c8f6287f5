"""The report's aggregation: best learning rate by the mean over seeds, spread, variants kept apart, and the
converged flag read off the loss curve."""
from rnnlab.train.report import aggregate, converged, spread


def _run(score, lr=1e-3, seed=0, variant="", curve=None, stopped_early=False, mixer="lstm"):
    metrics = {"40": {"acc": score, "last_acc": score}, "256": {"acc": score, "last_acc": score}}
    return {"status": "done", "score": score, "task": "parity", "mixer": mixer, "variant": variant, "d_model": 64,
            "n_layers": 2, "lr": lr, "seed": seed, "higher_is_better": 1, "primary_metric": "acc", "steps": 100,
            "wall_s": 1.0, "curve": curve or [[i, 1.0] for i in range(100)],
            "result": {"metrics": metrics, "stopped_early": stopped_early}}


def test_converged_reads_the_end_of_the_loss_curve():
    flat = [[i, 0.5] for i in range(100)]
    falling = [[i, 1.0 - i / 100] for i in range(100)]
    assert converged(_run(1.0, curve=flat))
    assert not converged(_run(1.0, curve=falling))  # last quarter ~50 % below the quarter before
    slow = [[i, 1.0 - 0.3 * i / 100] for i in range(100)]  # ~3 % per tenth, ~9 % per quarter: still learning
    assert not converged(_run(1.0, curve=slow))
    assert converged(_run(1.0, curve=falling, stopped_early=True))  # reached its target
    assert not converged(_run(1.0, curve=[[0, 1.0], [1, 0.9]]))  # too short to tell


def test_best_lr_by_the_mean_over_seeds_and_variants_apart():
    rows = [_run(1.0, lr=1e-3, seed=0), _run(0.5, lr=1e-3, seed=1),          # mean 0.75, one lucky seed
            _run(0.8, lr=3e-3, seed=0), _run(0.8, lr=3e-3, seed=1),          # mean 0.80: the best lr
            _run(0.6, lr=3e-3, seed=0, variant="model.embedding_init=gpt2")]
    (a, b) = aggregate(rows)
    assert a["mixer"] == "lstm" and a["lr"] == 3e-3 and a["seeds"] == 2 and abs(a["score"] - 0.8) < 1e-12
    assert a["lrs"] == [1e-3, 3e-3] and a["result"]["metrics"]["256"]["acc"] == 0.8
    assert b["mixer"] == "lstm [model.embedding_init=gpt2]" and b["seeds"] == 1
    assert spread(a) == "0.800 (0.80-0.80, n=2)"
    falling = [[i, 1.0 - i / 100] for i in range(100)]
    (c,) = aggregate([_run(0.9, seed=0), _run(0.7, seed=1, curve=falling)])
    assert c["converged"] == 1 and spread(c) == "0.800 (0.70-0.90, n=2) †"
