"""set_disjointness (JRT §3.1) and the jrt_prompt evaluation mode (JRT-Prompt, §3.2)."""
from __future__ import annotations

import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from rnnlab.tasks.base import rng_for
from rnnlab.tasks.set_disjointness import ANSWER, SET_A, SET_B
from rnnlab.train.config import TrainConfig
from rnnlab.train.trainer import evaluate


@pytest.mark.parametrize("short_first", [True, False])
def test_sets_share_exactly_the_answer(short_first):
    task = create_task("set_disjointness", seq_len=20, test_lengths=[20, 40], short_length=4, short_first=short_first)
    for T in (20, 40):
        b = task.sample(64, T, rng_for(0, "test", T), "test")
        assert b.inputs.shape == (64, T) and b.targets.shape == (64, T)
        for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
            i = x.index(SET_B)
            assert x[0] == SET_A and x[-1] == ANSWER
            a, c = x[1:i], x[i + 1 : -1]
            assert len(set(a)) == len(a) and len(set(c)) == len(c)
            short, long = (a, c) if short_first else (c, a)
            assert len(short) == 4 and len(long) == T - 7
            common = set(a) & set(c)
            assert len(common) == 1 and y[-1] == common.pop()
            assert all(t == IGNORE_INDEX for t in y[:-1])


def test_bad_lengths():
    with pytest.raises(ValueError, match="impossible"):
        create_task("set_disjointness", seq_len=7, short_length=4)
    with pytest.raises(ValueError, match="impossible"):
        create_task("set_disjointness", seq_len=200, vocab_size=64)


@pytest.mark.parametrize("name,kw", [("mqar", {"seq_len": 32, "num_kv_pairs": 4}), ("set_disjointness", {"seq_len": 16})])
def test_jrt_prompt_reads_the_context_twice(name, kw):
    task = create_task(name, **kw)
    b = task.sample(8, None, rng_for(0, "train", 0), "train")
    c = task.context_len(b.inputs.shape[1])
    j = task.jrt_prompt(b)
    assert torch.equal(j.inputs[:, :c], b.inputs[:, :c]) and torch.equal(j.inputs[:, c:], b.inputs)
    assert (j.targets[:, :c] == IGNORE_INDEX).all() and torch.equal(j.targets[:, c:], b.targets)


def test_jrt_prompt_needs_a_context():
    with pytest.raises(ValueError, match="jrt_prompt"):
        task = create_task("copy")
        task.jrt_prompt(task.sample(2, None, rng_for(0, "train", 0), "train"))
    with pytest.raises(ValueError, match="eval_prompt"):
        TrainConfig(eval_prompt="twice")


def test_evaluate_in_jrt_prompt_mode_shows_the_model_the_repeated_context():
    task = create_task("set_disjointness", seq_len=16)
    seen = []

    class Probe(torch.nn.Module):  # records what it is shown; predicts uniformly
        def forward(self, inputs):
            seen.append(inputs.shape[1])
            return torch.zeros(*inputs.shape, task.vocab_size), None

    plain = evaluate(Probe(), task, TrainConfig(eval_examples=4, eval_batch_size=4), torch.device("cpu"))
    jrt = evaluate(Probe(), task, TrainConfig(eval_examples=4, eval_batch_size=4, eval_prompt="jrt_prompt"), torch.device("cpu"))
    assert seen == [16, 16 + 15]
    assert set(plain[16]) == set(jrt[16])
