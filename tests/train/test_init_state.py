"""train.init_state: gaussian (its scale, the tensors it touches), other_sequence, passed (equals running the
concatenated stream), learned (a parameter of the model, trained and checkpointed); through the trainer and resume."""
import math

import pytest
import torch
from safetensors.torch import load_file

from rnnlab import ModelConfig, SequenceModel
from rnnlab.tasks import create_task
from rnnlab.tasks.base import rng_for
from rnnlab.testing import assert_close
from rnnlab.train.init_state import StartStates, stream_shard
from rnnlab.train.trainer import train

HYBRID = {"mixer": ["mamba", "attention"], "d_model": 16, "n_layers": 2,
          "mixer_kwargs": {"mamba": {"d_state": 4, "chunk_size": 8}, "attention": {"num_heads": 2}}}


def model(**kw):
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(vocab_size=256, **{**HYBRID, **kw}))


def corpus(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (tmp_path / f"f{i:02d}.py").write_text("".join(f"v{i}_{j} = {j * i}\n" for j in range(60)))
    return str(tmp_path)


def config(tmp_path, steps=6, **train_opts):
    return {"task": {"name": "bytes_lm", "corpus": corpus(tmp_path / "corpus"), "seq_len": 16, "test_lengths": [16, 64],
                     "valid_fraction": 0.2},
            "model": HYBRID, "run_dir": str(tmp_path / "run"),
            "train": {"steps": steps, "batch_size": 4, "eval_every": 3, "eval_examples": 8, "ckpt_every": 3,
                      "progress": False, "warmup": 1, **train_opts}}


def test_recurrent_state_keys_leave_out_positions_and_caches():
    m = model()
    state = m.init_state(2)
    keys = m.recurrent_state_keys()
    assert keys == ["0.mixer.conv", "0.mixer.ssm"]
    assert {k for k in state if k.startswith("1.")} == {"1.mixer.k", "1.mixer.v", "1.mixer.pos"}


def test_gaussian_has_the_configured_scale_and_touches_only_recurrent_tensors():
    m, scale = model(), 0.37
    starts = StartStates(m, "gaussian", scale, seed=3)
    s = starts.initial(step=5, shard=1, rows=64, device="cpu")
    zero = m.init_state(64)
    noise = torch.cat([s[k].flatten() for k in starts.keys])
    n = noise.numel()
    # sample sd of n normals: sd / sqrt(2 n) standard error; the mean: sd / sqrt(n); 5 standard errors each
    assert abs(noise.std().item() - scale) < 5 * scale / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 5 * scale / math.sqrt(n)
    for k in s:
        if k not in starts.keys:  # attention's KV cache and position as init_state gives them
            assert torch.equal(s[k], zero[k]) and s[k].dtype == zero[k].dtype, k
    again = starts.initial(step=5, shard=1, rows=64, device="cpu")
    other = starts.initial(step=6, shard=1, rows=64, device="cpu")
    assert all(torch.equal(s[k], again[k]) for k in s)  # a function of (seed, step, shard): resume-exact
    assert not torch.equal(s["0.mixer.ssm"], other["0.mixer.ssm"])


def test_other_sequence_starts_from_the_previous_batch_final_state():
    m = model()
    starts = StartStates(m, "other_sequence")
    first = starts.initial(0, 0, 3, "cpu")
    assert all(torch.equal(first[k], v) for k, v in m.init_state(3).items())  # nothing to take yet
    x = torch.randint(0, 256, (2, 9))
    _, final = m(x, first_rows := starts.initial(0, 0, 2, "cpu"))
    assert first_rows["0.mixer.ssm"].abs().sum() == 0
    starts.record(0, final)
    s = starts.initial(1, 0, 3, "cpu")  # 3 rows from 2: rows 0, 1, 0
    for k in starts.keys:
        assert torch.equal(s[k], final[k][[0, 1, 0]]) and not s[k].requires_grad
    assert torch.equal(s["1.mixer.pos"], m.init_state(3)["1.mixer.pos"])  # not a recurrent tensor: a fresh start


def test_state_passing_equals_running_the_concatenated_stream(tmp_path):
    """K windows, each from the state the previous one left (as the trainer runs them), give the outputs of the
    K * T stream in one call: the SSM state, conv tail, KV cache and position all carried."""
    task = create_task("bytes_lm", corpus=corpus(tmp_path), seq_len=16, valid_fraction=0.2)
    m, K = model(), 3
    starts = StartStates(m, "passed", windows=K)
    outs = []
    for step in range(K):
        batch = starts.train_shard(task, step, 1, 2, batch_size=4, seed=0, pack=False, pack_tokens=None)
        y, final = m(batch.inputs, starts.initial(step, 1, batch.inputs.shape[0], "cpu"))
        starts.record(1, final)
        outs.append(y)
    stream = task.sample(4, K * 16, rng_for(0, "train", 0), "train")  # episode 0: 4 streams of K * T bytes
    full, _ = m(stream.inputs[2:4])
    assert torch.equal(torch.cat([b.inputs for b in [stream_shard(task, s, 1, 2, batch_size=4, seed=0, windows=K)
                                                        for s in range(K)]], 1), stream.inputs[2:4])
    assert_close(torch.cat(outs, 1), full, name="windows with passed states vs the whole stream")
    assert starts.initial(K, 1, 2, "cpu")["0.mixer.ssm"].abs().sum() == 0  # a new episode starts from zeros
    assert stream_shard(task, K, 1, 2, batch_size=4, seed=0, windows=K).inputs.shape == (2, 16)


def test_learned_initial_state_is_a_trained_checkpointed_parameter(tmp_path):
    res = train(config(tmp_path, init_state="learned", lr=3e-2))
    w = load_file(tmp_path / "run/checkpoint.safetensors")
    keys = sorted(k for k in w if k.startswith("model.init_params."))
    assert keys == ["model.init_params.0", "model.init_params.1"]  # the mamba layer's conv tail and SSM state
    assert all(w[k].abs().sum() > 0 for k in keys)  # zeros at initialization, moved by training
    assert math.isfinite(res["score"])
    m = model(learned_init_state=True)
    assert all(p.abs().sum() == 0 for p in m.init_params) and {id(p) for p in m.init_params} <= {
        id(p) for g in m.param_groups(0.1) if g["weight_decay"] == 0 for p in g["params"]}


@pytest.mark.parametrize("mode", ["gaussian", "other_sequence", "passed"])
def test_trainer_runs_and_resumes_exactly(tmp_path, mode):
    """6 steps straight vs the step-3 checkpoint resumed: the same weights (carried states are checkpointed)."""
    cfg = config(tmp_path, init_state=mode, init_state_scale=0.5, passed_windows=2)
    first = train(cfg)
    assert math.isfinite(first["score"])
    straight = load_file(tmp_path / "run/checkpoint.safetensors")
    if mode != "gaussian":
        assert any(k.startswith("carry.0.") for k in straight)
    (tmp_path / "run/checkpoint.safetensors").unlink()  # back to the step-3 checkpoint (.prev)
    train(cfg, resume=True)
    resumed = load_file(tmp_path / "run/checkpoint.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight if k.startswith("model."))


def test_modes_change_training(tmp_path):
    base = load_file(_run(tmp_path / "z", "zeros"))
    for mode in ("gaussian", "other_sequence", "passed"):
        w = load_file(_run(tmp_path / mode, mode))
        assert not torch.equal(w["model.head.weight"], base["model.head.weight"]), mode


def _run(path, mode):
    train(config(path, steps=3, init_state=mode))
    return path / "run/checkpoint.safetensors"


def test_bad_settings_rejected(tmp_path):
    with pytest.raises(ValueError, match="train.init_state must be one of zeros, gaussian"):
        train(config(tmp_path, init_state="noise"))
    with pytest.raises(ValueError, match="cannot be combined with train.pack"):
        train(config(tmp_path, init_state="passed", pack=True))
    with pytest.raises(ValueError, match="init_state_scale must be >= 0"):
        train(config(tmp_path, init_state="gaussian", init_state_scale=-1.0))
