"""train.pack: variable-length examples back to back in a token budget, the same per-token loss."""
import json

import pytest
import torch

from rnnlab import ModelConfig, SequenceModel
from rnnlab.tasks import create_task
from rnnlab.train.packing import packed_batch
from rnnlab.train.trainer import train
from tests.train.conftest import tiny_config

TASKS = {"copy": {"min_len": 2, "max_len": 10}, "parity": {"min_len": 3, "max_len": 20}, "word_problem": {"group": "S3", "min_len": 4, "max_len": 16}}


def _task(name):
    from rnnlab.tasks import available_tasks

    if name not in available_tasks():
        pytest.skip(f"no task {name}")
    return create_task(name, **TASKS[name])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_packed_batch_holds_the_padded_examples_without_padding(name):
    task = _task(name)
    padded = task.train_batch(16, seed=3, step=5)
    lengths = padded.row_lengths()
    assert padded.lengths is not None and min(lengths) < max(lengths), "the task should draw variable lengths"
    budget = sum(lengths[:7])  # exactly the first 7 examples fit
    pk = packed_batch(task, 16, seed=3, step=5, budget=budget)
    assert pk.cu_seqlens.tolist() == [0] + torch.tensor(lengths[:7]).cumsum(0).tolist()
    assert pk.tokens == budget and pk.inputs.shape == (1, budget)
    for i, (a, b) in enumerate(zip(pk.cu_seqlens[:-1].tolist(), pk.cu_seqlens[1:].tolist())):
        assert torch.equal(pk.inputs[0, a:b], padded.inputs[i, : b - a])
        assert torch.equal(pk.targets[0, a:b], padded.targets[i, : b - a])
        assert (padded.targets[i, b - a :] == -100).all(), "padding must not be scored"
    assert int(pk.count) == int(task.count_scored(padded.targets[:7]))
    again = packed_batch(task, 16, seed=3, step=5, budget=budget)
    assert torch.equal(again.inputs, pk.inputs), "a packed batch is a function of (seed, step)"
    # the default budget is the padded batch's size, and is filled by more examples than a padded batch holds
    full = packed_batch(task, 16, seed=3, step=5)
    assert full.tokens <= 16 * task.seq_len and len(full.cu_seqlens) - 1 > 16


@pytest.mark.parametrize("shards", [2, 3])
def test_packed_shards_split_the_global_packed_batch(shards):
    """Shard j of a packed step holds examples j, j + shards, ...: together exactly the one-process packed batch."""
    task = _task("parity")
    whole = packed_batch(task, 16, seed=3, step=5)
    cuts = whole.cu_seqlens.tolist()
    examples = [whole.inputs[0, a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    parts = [packed_batch(task, 16, seed=3, step=5, shard=j, shards=shards) for j in range(shards)]
    for j, part in enumerate(parts):
        c = part.cu_seqlens.tolist()
        mine = [part.inputs[0, a:b] for a, b in zip(c[:-1], c[1:])]
        assert len(mine) == len(examples[j::shards]) and all(torch.equal(x, y) for x, y in zip(mine, examples[j::shards]))
    assert sum(p.count for p in parts) == whole.count and sum(p.tokens for p in parts) == whole.tokens


@pytest.mark.parametrize("mixer", ["lstm", "attention", "mamba"])
def test_packed_loss_and_gradients_equal_the_padded_batch(mixer):
    task = _task("copy")
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(mixer=mixer, d_model=16, n_layers=2, **task.model_io(),
                                      mixer_kwargs={"num_heads": 2} if mixer == "attention" else {}))
    padded = task.train_batch(8, seed=1, step=0)
    pk = packed_batch(task, 8, seed=1, step=0, budget=sum(padded.row_lengths()))
    losses, grads = [], []
    for inputs, targets, kw in ((padded.inputs, padded.targets, {}), (pk.inputs, pk.targets, {"cu_seqlens": pk.cu_seqlens})):
        model.zero_grad()
        out, _ = model(inputs, **kw)
        loss_sum, n = task.loss_terms(out.float(), targets)
        (loss_sum / n).backward()
        losses.append(float((loss_sum / n).detach()))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert abs(losses[0] - losses[1]) < 1e-5 * abs(losses[0])
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_train_with_pack_runs_and_is_deterministic(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / name, steps=8, pack=True)
        cfg["task"].update(min_len=3)
        runs.append(train(cfg))
        logged = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert any("loss" in r for r in logged) and all(r["loss"] == r["loss"] for r in logged if "loss" in r)
    assert runs[0]["steps"] == 8 and runs[0]["score"] == runs[1]["score"]


def test_bad_pack_options_raise(tmp_path):
    with pytest.raises(ValueError, match="train.pack must be"):
        train(tiny_config(tmp_path, pack="yes"))
    with pytest.raises(ValueError, match="train.pack_tokens"):
        train(tiny_config(tmp_path, pack=True, pack_tokens=0))
