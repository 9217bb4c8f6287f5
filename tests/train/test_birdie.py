"""Birdie: each objective's transformation on a small example, the mixture's sampling frequencies, the controller's
direction, and a run through the trainer."""
import json
import math

import numpy as np
import pytest
import torch

from rnnlab.tasks.base import IGNORE_INDEX
from rnnlab.train.birdie import N_SPECIAL, OBJECTIVES, Birdie, Controller, Specials, reward, transform
from rnnlab.train.trainer import train
from tests.train.test_init_state import config

V, T = 10, 24
SP = Specials(V)
SRC = torch.tensor([(3 * i + 1) % V for i in range(T)])


def parts(objective, seed=0):
    x, y = transform(objective, SRC, T, SP, np.random.default_rng(seed))
    assert x.shape == y.shape == (T,)
    scored = y != IGNORE_INDEX
    assert torch.equal(y[scored], torch.cat([x[1:], y[-1:]])[scored])  # targets: the next token of the layout
    sep = int((x == SP.SEP).nonzero()[0])
    assert not scored[:sep].any() and scored[sep:].any()  # only the answer after [SEP] is scored
    assert x[0] == SP.marker[objective]
    return x[1:sep].tolist(), y[scored].tolist()


def test_copying():
    prompt, answer = parts("copying")
    assert prompt == answer == SRC[:(T - 1) // 2].tolist()


def test_deshuffling():
    prompt, answer = parts("deshuffling")
    assert answer == SRC[:(T - 1) // 2].tolist() and sorted(prompt) == sorted(answer) and prompt != answer


@pytest.mark.parametrize("seed", range(5))
def test_infilling_spans_put_back_give_the_source(seed):
    prompt, answer = parts("infilling", seed)
    spans, cur = {}, None
    for t in answer:
        if t in SP.sentinel:
            cur = spans.setdefault(t, [])
        else:
            cur.append(t)
    filled = [u for t in prompt for u in (spans[t] if t in SP.sentinel else [t])]
    k = len(spans)
    assert k >= 1 and filled == SRC[:T - 1 - 2 * k].tolist()
    assert all(a not in SP.sentinel or b not in SP.sentinel for a, b in zip(prompt, prompt[1:]))  # spans apart


@pytest.mark.parametrize("seed", range(5))
def test_selective_copying_answer_lies_between_its_delimiters(seed):
    prompt, answer = parts("selective_copying", seed)
    ctx = prompt[prompt.index(SP.CTX) + 1:]
    queries = prompt[:prompt.index(SP.CTX)]
    q = [i for i, t in enumerate(queries) if t in SP.sentinel]
    a = [i for i, t in enumerate(answer) if t in SP.sentinel]
    assert len(q) == len(a) >= 1
    for i, j in zip(q, a):
        block = queries[i + 1:(q[q.index(i) + 1] if i != q[-1] else len(queries))]
        pre, suf = block[:block.index(SP.MID)], block[block.index(SP.MID) + 1:]
        snippet = answer[j + 1:(a[a.index(j) + 1] if j != a[-1] else len(answer))]
        whole = pre + snippet + suf
        assert any(ctx[p:p + len(whole)] == whole for p in range(len(ctx)))


class _Cfg:
    seed, steps, birdie_weights = 0, 100, None


def test_mixture_samples_the_configured_weights(tmp_path):
    """N steps' objectives: each count within 5 binomial standard deviations of N p."""
    from rnnlab.tasks import create_task

    task = create_task("bytes_lm", corpus=config(tmp_path)["task"]["corpus"], seq_len=24, valid_fraction=0.2)
    cfg = _Cfg()
    cfg.birdie_weights = {"next_token": 4.0, "copying": 2.0, "deshuffling": 1.0, "infilling": 1.0, "selective_copying": 2.0}
    b = Birdie(task, cfg, eval_rows=2)
    N = 5000
    counts = {o: 0 for o in OBJECTIVES}
    for s in range(N):
        counts[b.objective(s)] += 1
    for o in OBJECTIVES:
        p = cfg.birdie_weights[o] / 10
        assert abs(counts[o] - N * p) < 5 * math.sqrt(N * p * (1 - p)), (o, counts[o])
    x = b.train_shard(task, 3, 1, 2, batch_size=4, seed=0, pack=False, pack_tokens=None)
    assert x.inputs.shape == (2, 24) and int(x.inputs.max()) < 256 + N_SPECIAL


def test_reward_sign_and_controller_direction():
    assert reward([2.0], [1.5])[0] > 0 > reward([2.0], [2.5])[0] and reward([2.0], [2.0])[0] == 0
    c = Controller(np.ones(5), total_steps=100)
    assert c.update([2.0] * 5, step=10) is None  # the first measurement: nothing to compare yet
    before = c.weights.copy()
    r = c.update([1.0, 3.0, 2.0, 2.0, 2.0], step=20)  # objective 0's loss fell, objective 1's rose
    assert r[0] > 0 > r[1] and r[2] == 0
    assert c.weights[0] > before[0] and c.weights[1] < before[1] and c.weights.sum() == pytest.approx(1.0)
    assert c.weights[2] == pytest.approx(c.weights[3])


def test_trainer_runs_birdie(tmp_path):
    cfg = config(tmp_path, objective="birdie", birdie_every=2)
    cfg["task"]["seq_len"] = 24
    res = train(cfg)
    assert math.isfinite(res["score"])
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 256 + N_SPECIAL
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    birdie = [r["birdie"] for r in recs if "birdie" in r]
    assert len(birdie) == 3 and "rewards" in birdie[-1]
    assert sum(birdie[-1]["weights"].values()) == pytest.approx(1.0)


def test_birdie_needs_a_token_lm_task_long_enough(tmp_path):
    from rnnlab.tasks import create_task
    from rnnlab.train.birdie import check_birdie
    from tests.train.conftest import tiny_config

    with pytest.raises(ValueError, match="needs a token language-modelling task"):
        check_birdie(create_task("lorenz"))
    with pytest.raises(ValueError, match="needs task.seq_len >= 24, got 12"):
        train(tiny_config(tmp_path, objective="birdie"))


def test_bidirectional_prefix_through_the_trainer(tmp_path):
    """model.bidirectional_every: every objective's rows carry their prompt (the tokens before SEP, none scored) as the
    prefix; next_token rows the task's context (bytes_lm: none); a run trains the reverse mixer and evaluates."""
    cfg = config(tmp_path, objective="birdie", birdie_every=2)
    cfg["task"]["seq_len"] = 24
    cfg["model"] = {**cfg["model"], "bidirectional_every": 2}
    from rnnlab.train.config import resolve

    _, task, _, tc = resolve(cfg)
    bird = Birdie(task, tc)
    for o, (x, y, prefix) in zip(OBJECTIVES, bird.held_out):
        for row, p in zip(x, prefix.tolist()):
            if o == "next_token":
                assert p == 0
            else:
                assert row[p] == bird.sp.SEP and bird.sp.SEP not in row[:p].tolist()
        assert all((y[r, :p] == IGNORE_INDEX).all() for r, p in enumerate(prefix.tolist()))
    res = train(cfg)
    assert math.isfinite(res["score"])
    from safetensors.torch import load_file

    w = load_file(tmp_path / "run/checkpoint.safetensors")
    assert any(k.startswith("model.blocks.0.rev.") for k in w) and not any(k.startswith("model.blocks.1.rev.") for k in w)


def test_a_tasks_context_is_the_prefix_of_its_own_rows():
    from rnnlab.models import ModelConfig, SequenceModel
    from rnnlab.tasks import create_task
    from rnnlab.tasks.base import rng_for
    from rnnlab.train.trainer import context_prefix

    mq = create_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=32)
    b = mq.sample(4, 32, rng_for(0, "test", 32), "test")
    kw = dict(mixer="mamba", vocab_size=32, d_model=16, n_layers=2)
    c = context_prefix(SequenceModel(ModelConfig(**kw, bidirectional_every=2)), mq, b.inputs)
    assert c == mq.context_len(32) > 0 and (b.targets[:, :c] == IGNORE_INDEX).all()  # the key-value pairs, unscored
    assert context_prefix(SequenceModel(ModelConfig(**kw)), mq, b.inputs) is None
