"""Every task generator: shapes, scoring masks, determinism, independence of splits, and the
defining property of each task."""
import itertools

import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, available_tasks, create_task
from rnnlab.tasks import metrics as M
from rnnlab.tasks.state_tracking import compose, group_elements

SMALL = {  # fast options per task (the defaults are used where not listed)
    "bytes_lm": {"seq_len": 32, "max_bytes": 2_000_000},
    "lorenz": {"seq_len": 16, "burn_in": 50},
    "memory_capacity": {"seq_len": 60, "max_delay": 10},
}


def make(name, **kw):
    return create_task(name, **{**SMALL.get(name, {}), **kw})


@pytest.mark.parametrize("name", available_tasks())
def test_shapes_masks_determinism(name):
    task = make(name)
    io = task.model_io()
    b1, b2 = task.train_batch(8, seed=3, step=5), task.train_batch(8, seed=3, step=5)
    assert torch.equal(b1.inputs, b2.inputs) and torch.equal(torch.nan_to_num(b1.targets), torch.nan_to_num(b2.targets))
    other = task.train_batch(8, seed=3, step=6)
    assert not torch.equal(b1.inputs, other.inputs)
    for L in task.test_lengths:
        tb = next(task.test_batches(L, 8, 8, seed=3))
        assert tb.inputs.shape[:2] == (tb.inputs.shape[0], L)
        again = next(task.test_batches(L, 8, 8, seed=3))
        assert torch.equal(tb.inputs, again.inputs)
    B, T = b1.inputs.shape[:2]
    if task.output == "lm":
        assert b1.inputs.dtype == torch.int64 and b1.targets.shape == (B, T)
        assert 0 <= b1.inputs.min() and b1.inputs.max() < io["vocab_size"]
        scored = b1.targets[b1.targets != IGNORE_INDEX]
        assert scored.numel() > 0 and scored.min() >= 0 and scored.max() < io["vocab_size"]
    elif task.output == "classify":
        assert b1.inputs.shape == (B, T, io["input_dim"]) and b1.targets.shape == (B,)
    else:
        assert b1.inputs.shape == (B, T, io["input_dim"]) and b1.targets.shape == (B, T, io["out_dim"])
    # train and test streams are independent draws
    if name != "digits":
        tb = next(task.test_batches(task.test_lengths[0], 8, 8, seed=3))
        tr = task.train_batch(8, seed=3, step=0)
        if tb.inputs.shape == tr.inputs.shape:
            assert not torch.equal(tb.inputs, tr.inputs)


def _small_corpus(root):
    for i in range(12):
        (root / f"f{i:02d}.py").write_text(f"# file {i}\n" + "x = %d\n" % i * 40)
    return str(root)


def _equal(a, b):
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@pytest.mark.parametrize("name", available_tasks())
def test_a_shard_of_the_train_batch_is_the_slice_of_the_whole(name, tmp_path, monkeypatch):
    """``train_batch(rows=)`` (what rnnlab.train.packing.train_shard reads for one process's micro-batch) equals the
    whole batch's rows, for every task; bytes_lm (on a small local corpus) also reads only the windows it returns."""
    from rnnlab.train.packing import train_shard

    task = make(name, corpus=_small_corpus(tmp_path), seq_len=16, valid_fraction=0.3) if name == "bytes_lm" else make(name)
    whole = task.train_batch(12, seed=3, step=5)
    if name == "bytes_lm":
        read = []
        real = type(task)._windows
        monkeypatch.setattr(type(task), "_windows", staticmethod(lambda d, starts, T: read.append(len(starts)) or real(d, starts, T)))
    for shards in (2, 3, 4):
        b = 12 // shards
        for j in range(shards):
            part = task.train_batch(12, seed=3, step=5, rows=slice(j * b, (j + 1) * b))
            ref = whole.rows(slice(j * b, (j + 1) * b))
            assert _equal(part.inputs, ref.inputs) and _equal(part.targets, ref.targets), (shards, j)
            assert (part.lengths is None) == (ref.lengths is None) and (part.lengths is None or torch.equal(part.lengths, ref.lengths))
            shard = train_shard(task, 5, j, shards, batch_size=12, seed=3, pack=False, pack_tokens=None)
            assert _equal(shard.inputs, ref.inputs) and _equal(shard.targets, ref.targets) and shard.cu_seqlens is None
            assert shard.count == int(task.count_scored(ref.targets)) and shard.tokens == ref.inputs.shape[0] * ref.inputs.shape[1]
    if name == "bytes_lm":
        assert read == [b for shards in (2, 3, 4) for b in [12 // shards] * (2 * shards)]  # its own windows only


def test_registry_errors_name_choices():
    with pytest.raises(ValueError, match="valid choices: .*mqar"):
        create_task("mqarr")
    with pytest.raises(ValueError, match="valid options: .*num_kv_pairs"):
        create_task("mqar", num_pairs=3)
    with pytest.raises(ValueError, match="length 30 impossible"):
        create_task("mqar", num_kv_pairs=8, test_lengths=[30])
    with pytest.raises(ValueError, match="only length is 64"):
        create_task("digits", test_lengths=[128])
    with pytest.raises(ValueError, match="does not exist"):
        create_task("bytes_lm", corpus="/nonexistent/corpus")
    with pytest.raises(ValueError, match="valid choices: Z<m>"):
        create_task("word_problem", group="D4")


def test_mqar_queries_only_context_keys():
    task = create_task("mqar", seq_len=64, num_kv_pairs=6, vocab_size=64)
    b = task.train_batch(32, 0, 0)
    x, y = b.inputs.numpy(), b.targets.numpy()
    for row_x, row_y in zip(x, y):
        ctx = row_x[:12]
        keys, vals = ctx[0::2], ctx[1::2]
        assert (keys >= 1).all() and (keys < 32).all() and (vals >= 32).all() and len(set(keys)) == 6
        pos = np.nonzero(row_y != IGNORE_INDEX)[0]
        assert len(pos) == 6 and (pos >= 12).all()  # every key queried once, after the context
        pairs = dict(zip(keys, vals))
        for p in pos:
            assert row_x[p] in pairs and row_y[p] == pairs[row_x[p]]
        assert sorted(row_x[pos]) == sorted(keys)


def test_mqar_query_gaps_follow_the_power_law():
    """Query slots (gaps) are drawn with p(g) ∝ a·g^(a−1): at Zoology's a=0.01 the first slot is
    the most likely and far slots are rare; power_a=1 is uniform. random_non_queries=False
    leaves the non-query positions 0."""
    n, T = 4, 64
    space = (T - 2 * n) // 2

    def slot_counts(a):
        task = create_task("mqar", seq_len=T, num_kv_pairs=n, vocab_size=128, power_a=a, random_non_queries=False)
        b = task.train_batch(512, 0, 0)
        pos = np.nonzero(b.targets.numpy() != IGNORE_INDEX)[1]
        assert ((b.inputs[:, 2 * n:] == 0).sum(1) == T - 2 * n - n).all()  # only the n queries are non-zero
        return np.bincount((pos - 2 * n) // 2, minlength=space)

    power, uniform = slot_counts(0.01), slot_counts(1.0)
    assert power.argmax() == 0 and power[0] > 3 * power[space // 2:].mean()
    assert uniform.max() < 2 * uniform.min()  # 2048 draws over 28 equally likely slots


def test_selective_copy_targets_are_data_in_order():
    task = create_task("selective_copy", seq_len=40, num_tokens=5, vocab_size=10)
    b = task.train_batch(16, 0, 0)
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        data = x[:35][x[:35] != 0]
        assert len(data) == 5 and (x[35:] == 9).all()
        assert (y[35:] == data).all() and (y[:35] == IGNORE_INDEX).all()


def test_induction_head_target_follows_trigger_and_16x_lengths():
    task = create_task("induction_head", seq_len=32, vocab_size=8)
    assert task.test_lengths == [32, 64, 128, 256, 512]
    b = next(task.test_batches(512, 16, 16, 0))
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        trig = np.nonzero(x == 0)[0]
        assert len(trig) == 2 and trig[1] == len(x) - 1
        assert y[-1] == x[trig[0] + 1] and (y[:-1] == IGNORE_INDEX).all()


@pytest.mark.parametrize("name", ["copy", "copy_prefix_key", "copy_suffix_key"])
def test_copy_and_lookup(name):
    task = create_task(name, min_len=5, max_len=12, vocab_size=12, ngram=2)
    b = task.train_batch(32, 0, 1)
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        sep = int(np.nonzero(x == 2)[0][0])
        s = x[1:sep]
        assert x[0] == 1 and 5 <= len(s) <= 12 and (s >= 3).all()
        scored = np.nonzero(y != IGNORE_INDEX)[0]
        if name == "copy":
            assert (y[scored] == s).all() and scored[0] == sep and len(scored) == len(s)
        else:
            key, ans = x[sep + 1:sep + 3], y[scored[0]]
            assert len(scored) == 1 and scored[0] == sep + 2
            win = np.lib.stride_tricks.sliding_window_view(s, 2)
            hits = np.nonzero((win == key).all(1))[0]
            assert len(hits) == 1
            i = hits[0]
            assert ans == (s[i + 2] if name == "copy_prefix_key" else s[i - 1])
    for L in task.test_lengths + [2 * 30 + 1 if name == "copy" else 30 + 4]:
        tb = next(task.test_batches(L, 4, 4, 0))
        assert tb.inputs.shape == (4, L)
    with pytest.raises(ValueError, match="impossible"):
        create_task("copy", test_lengths=[20])  # copy lengths are odd


@pytest.mark.parametrize("group", ["S3", "S5", "A5", "Z7"])
def test_word_problem_labels_are_true_prefix_products(group):
    task = create_task("word_problem", group=group, min_len=10, max_len=10, test_lengths=[10, 20])
    el = group_elements(group)
    assert len(el) == {"S3": 6, "S5": 120, "A5": 60, "Z7": 7}[group]
    b = next(task.test_batches(20, 8, 8, 1))
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        acc = el[x[0]]
        assert el[y[0]] == acc
        for t in range(1, len(x)):
            acc = compose(group, acc, el[x[t]])
            assert el[y[t]] == acc


def test_a5_is_closed_and_non_abelian():
    el = group_elements("A5")
    s = set(el)
    assert all(compose("A5", a, b) in s for a, b in itertools.product(el[:10], el))
    assert any(compose("A5", a, b) != compose("A5", b, a) for a, b in itertools.product(el[:5], el[:5]))


def test_parity_and_modular_sum():
    par = create_task("parity")
    assert (par.min_len, par.max_len, par.test_lengths[-1]) == (3, 40, 256)
    b = par.train_batch(64, 0, 0)
    lens = (b.targets != IGNORE_INDEX).sum(1)
    assert lens.min() >= 3 and lens.max() <= 40 and len(set(lens.tolist())) > 5
    for x, y, n in zip(b.inputs.numpy(), b.targets.numpy(), lens.numpy()):
        assert (y[:n] == np.cumsum(x[:n]) % 2).all() and (y[n:] == IGNORE_INDEX).all()
    ms = create_task("modular_sum", modulus=7, test_lengths=[33])
    tb = next(ms.test_batches(33, 4, 4, 0))
    assert (tb.targets.numpy() == np.cumsum(tb.inputs.numpy(), 1) % 7).all()


def test_parity_supervised_at_the_last_position_only():
    t = create_task("parity", supervise="last")
    b = t.sample(64, None, np.random.default_rng(0), "train")
    scored = b.targets != -100
    assert scored.sum(1).tolist() == [1] * 64
    assert (scored.float().argmax(1) == b.lengths - 1).all()
    full = create_task("parity").prefix_products(b.inputs.numpy())
    assert (b.targets[scored] == torch.as_tensor(full)[scored]).all()
    b = t.sample(8, 256, np.random.default_rng(1), "test")
    assert (b.targets[:, -1] == torch.as_tensor(b.inputs.sum(1) % 2)).all() and (b.targets[:, :-1] == -100).all()


def test_modular_arithmetic_answers_follow_operator_precedence():
    t = create_task("modular_arithmetic", modulus=5)
    sym = {5: "+", 6: "-", 7: "*"}
    lengths = t.sample(300, None, np.random.default_rng(3), "train").lengths
    assert lengths.min() == 4 and lengths.max() == 40 and (lengths % 2 == 0).all()  # k = 2..20 numbers
    for seq_len in (None, 40, 6):
        b = t.sample(300, seq_len, np.random.default_rng(2), "train" if seq_len is None else "test")
        for i in range(len(b.inputs)):
            L = int(b.lengths[i]) if b.lengths is not None else b.inputs.shape[1]
            toks = b.inputs[i, :L].tolist()
            assert toks[-1] == 8 and (b.targets[i] != -100).sum() == 1
            expr = "".join(str(x) if x < 5 else sym[x] for x in toks[:-1])
            assert int(b.targets[i, L - 1]) == eval(expr) % 5, expr  # Python's precedence: * before + and -
    with pytest.raises(ValueError, match="even"):
        create_task("modular_arithmetic", test_lengths=[41])


def test_bytes_lm_split_by_file_and_hash(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.py").write_text(f"# file {i}\n" + "x = %d\n" % i * 50)
    task = create_task("bytes_lm", corpus=str(tmp_path), seq_len=16, valid_fraction=0.3)
    d = task.describe()
    assert d["corpus_files"] == 40 and len(d["corpus_sha256"]) == 64
    train, valid = bytes(task.train_bytes), bytes(task.valid_bytes)
    for i in range(40):
        marker = f"# file {i}\n".encode()
        assert (marker in train) != (marker in valid)  # each file in exactly one split
    b = task.train_batch(4, 0, 0)
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    (tmp_path / "f00.py").write_text("changed")
    assert create_task("bytes_lm", corpus=str(tmp_path), seq_len=16, valid_fraction=0.3).describe()["corpus_sha256"] != d["corpus_sha256"]


def test_default_corpus_is_stdlib():
    task = create_task("bytes_lm", seq_len=32, max_bytes=2_000_000)
    assert task.describe()["corpus_files"] > 10 and "site-packages" not in task.corpus


def test_digits_split_and_permutation():
    plain, perm = create_task("digits"), create_task("digits", permute=True)
    assert len(plain.x_train) + len(plain.x_test) == 1797
    a = next(plain.test_batches(64, 0, 10, 0)).inputs[..., 0]
    p = next(perm.test_batches(64, 0, 10, 0)).inputs[..., 0]
    assert torch.equal(a[:, perm.perm], p) and not torch.equal(a, p)
    n = sum(b.targets.numel() for b in plain.test_batches(64, 0, 100, 0))
    assert n == len(plain.x_test)


def test_lorenz_targets_are_future_inputs():
    task = create_task("lorenz", seq_len=32, horizons=[1, 3], burn_in=50)
    b = task.train_batch(4, 0, 0)
    x, y = b.inputs, b.targets
    assert torch.allclose(y[:, :-1, :3], x[:, 1:]) and torch.allclose(y[:, :-3, 3:], x[:, 3:])
    perfect = task.finalize(task.metric_sums(y, y))
    assert perfect["nrmse"] == 0 and perfect["nrmse@3"] == 0
    zero = task.finalize(task.metric_sums(torch.zeros_like(y), y))
    assert 0.5 < zero["nrmse"] < 2.0  # predicting the mean of a unit-variance signal


def test_lorenz_integrator_is_fourth_order_rk4():
    """The trajectories solve Lorenz-63: against scipy's DOP853 at tolerance 1e-12, our RK4 error
    over 0.5 time units is small and shrinks 2^4 = 16x when dt halves (measured: 1.6e-6 -> 9.7e-8)."""
    from scipy.integrate import solve_ivp

    from rnnlab.tasks.lorenz import _f, integrate
    from rnnlab.testing import rel_err

    s0, horizon = np.array([[1.0, 2.0, 20.0], [-5.0, -3.0, 30.0]]), 0.5
    errs = []
    for dt in (0.01, 0.005):
        n = int(round(horizon / dt))
        ours = integrate(s0, n, dt, stride=1)  # (2, n, 3)
        ref = np.stack([solve_ivp(lambda t, s: _f(s), (0, horizon), x, t_eval=np.arange(1, n + 1) * dt, method="DOP853",
                                  rtol=1e-12, atol=1e-12).y.T for x in s0])
        errs.append(rel_err(torch.from_numpy(ours), torch.from_numpy(ref)))
    assert errs[0] < 1e-5 and 12 < errs[0] / errs[1] < 20


def test_metrics_on_scored_positions_only():
    targets = torch.tensor([[IGNORE_INDEX, 1, 2], [0, IGNORE_INDEX, IGNORE_INDEX]])
    logits = torch.full((2, 3, 3), -10.0)
    logits[0, 0, 0] = logits[0, 1, 1] = logits[0, 2, 0] = logits[1, 0, 0] = 10.0  # (0,2) wrong, unscored (0,0)
    m = M.finalize(M.metric_sums("lm", logits, targets))
    assert m["acc"] == pytest.approx(2 / 3) and m["seq_acc"] == 0.5 and m["last_acc"] == 0.5
    loss, count = M.loss_terms("lm", logits, targets)
    assert count == 3
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss / count, ref)
    assert m["bpb"] == pytest.approx(m["loss"] / np.log(2))


def test_mod_arith_targets_are_the_expression_values():
    """Every scored target is Python's value of the expression read so far (× before + and −), mod M."""
    task = create_task("mod_arith", modulus=7, min_len=5, max_len=21)
    sym = {7: "+", 8: "-", 9: "*"}
    b = task.train_batch(16, seed=0, step=0)
    for row, tgt, n in zip(b.inputs.tolist(), b.targets.tolist(), b.lengths.tolist()):
        assert n % 2 == 1
        expr = "".join(str(x) if x < 7 else sym[x] for x in row[:n])
        for i in range(n):
            assert tgt[i] == (eval(expr[: i + 1]) % 7 if i % 2 == 0 else IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in tgt[n:])
    with pytest.raises(ValueError, match="odd length"):
        create_task("mod_arith", test_lengths=[40])


def test_even_pair_and_sum_targets():
    b = create_task("even_pair", num_symbols=2).train_batch(8, seed=0, step=0)
    x = b.inputs.numpy()
    # binary EvenPair: #"ab" + #"ba" in the prefix is even iff its last symbol equals its first
    changes = np.cumsum(np.concatenate([np.zeros((8, 1), int), (x[:, 1:] != x[:, :-1]).astype(int)], 1), 1)
    assert np.array_equal(b.targets.numpy(), (changes % 2 == 0).astype(int))
    task = create_task("sum")
    b = task.train_batch(8, seed=0, step=0)
    assert b.inputs.shape == (8, 40) and task.test_lengths == [40, 160, 500]
    assert np.array_equal(b.targets.numpy(), np.cumsum(b.inputs.numpy(), 1) % 5)
