"""Reproductions: every shipped experiment expands into a valid sweep whose runs cover its claims, and the
verdict rules (number within tolerance, same side of the threshold, other side) hold on synthetic results."""
import pytest

from rnnlab.train.reproduce import Claim, Experiment, available_experiments, evaluate_claims, get_experiment, render
from rnnlab.train.sweep import expand, load_sweep


@pytest.mark.parametrize("name", available_experiments())
@pytest.mark.parametrize("quick", [True, False])
def test_experiment_expands_and_covers_its_claims(name, quick, tmp_path):
    exp = get_experiment(name)
    runs = expand(load_sweep({**exp.spec(quick), "name": name, "out_dir": str(tmp_path), "workers": 2}))
    assert runs
    if quick:  # claims may name what only the full size runs
        labels = {(r["config"]["task"]["name"], f"{r['name']} [{r['variant']}]" if r["variant"] else r["name"]) for r in runs}
        missing = [c.label for c in exp.claims if (c.task, c.mixer) not in labels and "full size" not in c.label]
        assert not missing, f"claims with no run in the quick size: {missing}"
    assert exp.paper and exp.claim and exp.title


def _row(mixer, score_last, seed=0, lr=3e-3, variant="", curve=None):
    metrics = {L: {"acc": 0.9, "last_acc": score_last} for L in ("40", "256")}
    return {"status": "done", "score": 0.9, "task": "parity", "mixer": mixer, "variant": variant, "d_model": 64,
            "n_layers": 2, "lr": lr, "seed": seed, "higher_is_better": 1, "primary_metric": "acc", "steps": 10,
            "wall_s": 1.0, "curve": curve or [[i, 0.1] for i in range(50)], "num_parameters": 1, "state_size": 1,
            "result": {"metrics": metrics, "stopped_early": True}, "config": {}}


def test_verdicts():
    claims = (Claim("a", "parity", "lstm", metric="last_acc", chance=0.5, paper=1.0),          # 0.99 -> 0.98 scaled
              Claim("b", "parity", "mamba", metric="last_acc", chance=0.5, paper=0.0),         # 0.75 -> 0.5
              Claim("c", "parity", "mamba@neg", metric="last_acc", chance=0.5, outcome="solves"),
              Claim("d", "parity", "gru", metric="last_acc", outcome="solves"),
              Claim("e", "parity", "slstm", metric="last_acc", paper=0.5, outcome=None))
    rows = [_row("lstm", 0.99, seed=0), _row("lstm", 0.99, seed=1), _row("mamba", 0.75), _row("mamba@neg", 0.97),
            _row("slstm", 0.97)]
    exp = Experiment("t", "T", "P", "C", spec=lambda q: {}, claims=claims)
    res = {r["claim"].label: r for r in evaluate_claims(exp, rows)}
    assert res["a"]["verdict"] == "reproduced" and abs(res["a"]["value"] - 0.98) < 1e-9
    assert res["a"]["detail"] == "0.98-0.98, n=2" and res["a"]["solved"] == "2/2" and res["b"]["solved"] == "0/1"
    assert res["b"]["verdict"] == "reproduced qualitatively"  # 0.5 is off by 0.5 but both "fail" at 0.9
    assert res["c"]["verdict"] == "reproduced qualitatively"  # an outcome-only claim
    assert res["d"]["verdict"] == "not run"
    assert res["e"]["verdict"] == "not reproduced"            # the paper "fails" (0.5), rnnlab solves (0.97)
    text = render(exp, list(res.values()), "header")
    assert "| a | 1.000 (scaled) |  | 0.980 (0.98-0.98, n=2) | 2/2 |" in text and "1 reproduced, 2 reproduced qualitatively, 1 not reproduced, 1 not run" in text
