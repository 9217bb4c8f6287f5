"""`rnnlab bench` in a tiny configuration: schema, coverage of every mixer and op, robustness,
--compare, plots. Nothing here asserts a speed (timing never decides pass/fail)."""
from __future__ import annotations

import argparse
import copy
import json
import time

import pytest
import torch

from rnnlab.bench.cli import headline_mixers, register
from rnnlab.bench.registry import available_op_benches
from rnnlab.bench.report import (format_compare, format_tables, load_result, merge_results, plot_headline,
                                 validate_result, write_plots)
from rnnlab.bench.runner import ROW_FIELDS, SCHEMA_VERSION, BenchConfig, Subject, _bench_subject, run_bench
from rnnlab.bench.timing import BenchTimeout, memory_probe_available, peak_rss_delta, time_call, time_limit
from rnnlab.layers.registry import available_mixers
from rnnlab.testing import TOLERANCE, assert_close


def tiny_config(**kw) -> BenchConfig:
    base = dict(seq_lens=[8, 16], batch=1, d_model=32, dtypes=["float32"], decode_batches=[1, 2], decode_steps=2,
                warmup=0, reps=1, budget_s=0.0, max_call_s=5.0, timeout_s=20.0, peers=False, quick=True)
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def tiny_result():
    torch.manual_seed(0)
    return run_bench(tiny_config(), log=lambda s: None)


def test_schema_and_every_mixer_and_op_appear(tiny_result, tmp_path):
    validate_result(tiny_result)
    assert tiny_result["schema"] == SCHEMA_VERSION
    for row in tiny_result["rows"]:
        assert set(row) == set(ROW_FIELDS)
    mixer_rows = [r for r in tiny_result["rows"] if r["kind"] == "mixer"]
    for name in available_mixers():
        modes = {r["mode"] for r in mixer_rows if r["name"] == name}
        assert modes == {"train", "prefill", "decode"}, f"{name}: rows for modes {modes}"
        for r in (r for r in mixer_rows if r["name"] == name):  # measured, or says why not
            assert r["tokens_per_s"] or r["error"] or r["note"], r
    for name in available_op_benches():
        assert any(r["kind"] == "op" and r["name"] == name for r in tiny_result["rows"]), f"op {name} missing"
    # measured rows carry a consistent timing record
    ok = [r for r in mixer_rows if r["tokens_per_s"]]
    assert ok, "no mixer was measured at all"
    for r in ok:
        t = r["time_s"]
        assert t["lo"] <= t["median"] <= t["hi"] and t["n"] >= 1
        tokens = r["batch"] * (r["seq_len"] if r["mode"] != "decode" else 1)
        assert r["tokens_per_s"] == pytest.approx(tokens / t["median"])
    # JSON round trip through the file format the CLI writes
    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_result))
    assert load_result(str(path))["rows"] == json.loads(json.dumps(tiny_result["rows"]))
    text = format_tables(tiny_result)
    assert "attention" in text and "decode" in text


def test_packing_rows_compare_packed_with_padded(tiny_result):
    from rnnlab.bench.packing import PACKING_MIXERS

    rows = [r for r in tiny_result["rows"] if r["kind"] == "packing"]
    assert {(r["name"], r["form"]) for r in rows} == {(m, f) for m in PACKING_MIXERS for f in ("packed", "padded")}
    for r in rows:
        assert r["tokens_per_s"] and r["mode"] == "train" and "real tokens" in r["note"], r
        if r["form"] == "packed":
            pad = next(p for p in rows if p["name"] == r["name"] and p["form"] == "padded")
            assert r["vs"] == "padded" and r["ratio"] == pytest.approx(r["tokens_per_s"] / pad["tokens_per_s"])
    assert "packed / padded" in format_tables(tiny_result)


def test_decode_context_follows_growing_state(tiny_result):
    """Attention's KV cache grows: decode at every context; fixed-state mixers once, after the shortest."""
    dec = [r for r in tiny_result["rows"] if r["kind"] == "mixer" and r["mode"] == "decode" and r["name"] == "attention"]
    assert {r["seq_len"] for r in dec} == {8, 16}
    assert {r["batch"] for r in dec} == {1, 2}
    for r in dec:
        if r["latency_us"]:
            assert r["state_floats"] == 2 * r["seq_len"] * 32 + 1


def test_validate_result_names_the_problem(tiny_result):
    bad = copy.deepcopy(tiny_result)
    del bad["machine"]
    with pytest.raises(ValueError, match="machine"):
        validate_result(bad)
    bad = copy.deepcopy(tiny_result)
    bad["rows"][0]["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        validate_result(bad)
    bad = copy.deepcopy(tiny_result)
    bad["schema"] = "rnnlab-bench/0"
    with pytest.raises(ValueError, match="schema"):
        validate_result(bad)


def test_failing_subject_is_recorded_and_the_run_continues():
    def boom(x):
        raise RuntimeError("kaput")

    lin = torch.nn.Linear(32, 32)
    sub = Subject("mixer", "broken", "other", lin, fwd=boom, prefill=boom, step=lambda x, s: boom(x))
    rows = _bench_subject(sub, tiny_config(), log=lambda s: None)
    assert rows and all(r["error"] and "kaput" in r["error"] for r in rows if not r["note"])
    assert {r["mode"] for r in rows} == {"train", "prefill", "decode"}
    result = run_bench(tiny_config(mixers=["no_such_mixer", "attention"], ops=[], modes=["prefill"]), log=lambda s: None)
    by_name = {r["name"]: r for r in result["rows"]}
    assert "unknown mixer" in by_name["no_such_mixer"]["error"]
    assert by_name["attention"]["tokens_per_s"]


def test_out_of_memory_row_is_recorded_and_the_run_continues():
    """Under the run's memory cap (memory_cap, as run_bench holds it) a subject that allocates past it fails its own rows
    with the allocator's error; the next subject still runs."""
    from rnnlab.bench.timing import memory_cap

    def hog(x):
        return x + torch.ones(1 << 31, dtype=torch.uint8).sum()  # 2 GiB

    lin = torch.nn.Linear(32, 32)
    cfg = tiny_config(modes=["prefill"], memory=False)
    with memory_cap(256 << 20) as cap:
        if cap is None:
            pytest.skip("no RLIMIT_DATA here")
        rows = _bench_subject(Subject("mixer", "hog", "other", lin, fwd=hog), cfg, log=lambda s: None)
        ok = _bench_subject(Subject("mixer", "linear", "other", lin, fwd=lin), cfg, log=lambda s: None)
    assert "allocate" in rows[0]["error"] and not rows[0]["tokens_per_s"]
    assert all(r["tokens_per_s"] for r in ok)


def _cli(argv, capsys) -> str:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_compare_prints_ratios(tiny_result, tmp_path, capsys):
    old = copy.deepcopy(tiny_result)
    for r in old["rows"]:
        if r["tokens_per_s"]:
            r["tokens_per_s"] /= 2  # the old run was twice as slow
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(tiny_result))
    text = format_compare(tiny_result, old)
    assert "geometric mean speed ratio 2" in text
    out = _cli(["--from-json", str(tmp_path / "new.json"), "--compare", str(tmp_path / "old.json"),
                "--markdown", str(tmp_path / "t.md")], capsys)
    assert "speed new/old" in out and "geometric mean speed ratio 2" in out
    assert (tmp_path / "t.md").read_text().count("|") > 10
    unrelated = copy.deepcopy(old)
    unrelated["rows"] = []
    assert "no measurement in common" in format_compare(tiny_result, unrelated)


def test_cli_runs_end_to_end(tmp_path, capsys):
    out = _cli(["--mixers", "attention", "--ops", "none", "--no-peers", "--seq-lens", "8,16", "--batch", "1",
                "--d-model", "32", "--dtype", "float32,bfloat16", "--decode-batches", "1", "--reps", "1",
                "--threads", "1", "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots")], capsys)
    result = load_result(str(tmp_path / "r.json"))
    assert result["machine"]["threads"] == 1 and "torch" in result["machine"]
    assert {r["dtype"] for r in result["rows"]} == {"float32", "bfloat16"}
    assert "machine:" in out and "roofline:" in out
    assert (tmp_path / "plots" / "tokens_train_float32.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "decode_float32.png").exists()


def test_plots_and_headline(tiny_result, tmp_path):
    paths = write_plots(tiny_result, str(tmp_path))
    names = {p.split("/")[-1] for p in paths}
    assert {"tokens_train_float32.png", "tokens_prefill_float32.png", "memory_train_float32.png", "decode_float32.png"} <= names
    assert plot_headline(tiny_result, str(tmp_path / "img" / "h.png")).endswith("h.png")
    picks = headline_mixers()
    assert picks[0] == "attention" and len(picks) == len(set(picks))


def test_merge_later_rows_win(tiny_result):
    newer = copy.deepcopy(tiny_result)
    newer["rows"] = newer["rows"][:1]
    newer["rows"][0]["tokens_per_s"] = 123.0
    merged = merge_results([tiny_result, newer])
    assert len(merged["rows"]) == len(tiny_result["rows"])
    assert merged["rows"][0]["tokens_per_s"] == 123.0


def test_peers_build_and_run_on_the_same_inputs(monkeypatch):
    from rnnlab.bench import peers

    real = peers.importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    subs, notes = peers.build_peers(32)
    assert {s.name for s in subs} == {"torch.nn.LSTM", "torch.nn.GRU", "torch.sdpa"}
    assert any("transformers not installed" in n for n in notes)
    rows = []
    for s in subs:
        rows += _bench_subject(s, tiny_config(), log=lambda s: None)
    assert all(r["tokens_per_s"] for r in rows), [r for r in rows if not r["tokens_per_s"]]


def test_hf_peers_when_transformers_is_installed():
    pytest.importorskip("transformers")
    from rnnlab.bench.peers import build_peers

    subs, notes = build_peers(32)
    names = {s.name for s in subs}
    assert {"hf.Mamba", "hf.Mamba2", "hf.RWKV4", "hf.RG-LRU", "hf.xLSTM-mLSTM", "hf.Qwen3Next-GatedDeltaNet"} <= names, notes
    x = torch.randn(1, 64, 32)
    for s in subs:
        y = s.fwd(x)
        assert y.shape == x.shape and torch.isfinite(y).all(), s.name


def test_hf_models_time_the_import_against_its_original(tmp_path):
    """--hf-models: an HF model and its from_hf import timed in one run, the original's row carrying the ratio;
    a checkpoint folder works as an entry too."""
    transformers = pytest.importorskip("transformers")
    transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2)).save_pretrained(tmp_path)
    cfg = tiny_config(mixers=[], ops=[], packing=False, memory=False, decode_batches=[1], hf_models=["mamba2", str(tmp_path)])
    result = run_bench(cfg, log=lambda s: None)
    validate_result(result)
    rows = {(r["kind"], r["name"], r["mode"], r["seq_len"]): r for r in result["rows"]}
    for ours, theirs in (("from_hf:mamba2", "hf:Mamba2ForCausalLM"), (f"from_hf:{tmp_path.name}", "hf:RwkvForCausalLM")):
        for mode in ("train", "prefill"):
            assert rows[("mixer", ours, mode, 16)]["tokens_per_s"] > 0, result["notes"]
            assert rows[("peer", theirs, mode, 16)]["ratio"] > 0
        assert rows[("peer", theirs, "decode", 8)]["latency_us"] > 0
    assert "from_hf:mamba2" in format_tables(result)


def test_generate_times_models_and_hf_generate_on_the_same_weights(tmp_path, capsys):
    """--generate: a row per mixer model, and for an HF architecture its import and HF's generate on the same
    weights, the import's row carrying the ratio; greedy tokens of the two agree."""
    pytest.importorskip("transformers")
    out = _cli(["--generate", "--quick", "--mixers", "lstm,attention", "--hf-models", "mamba", "--threads", "1",
                "--json", str(tmp_path / "g.json")], capsys)
    rows = {r["name"]: r for r in json.load(open(tmp_path / "g.json"))["rows"]}
    assert set(rows) == {"lstm", "attention", "from_hf:mamba", "hf:MambaForCausalLM"}
    assert all(r["prefill_tok_s"] > 0 and r["generate_tok_s"] > 0 for r in rows.values())
    assert rows["from_hf:mamba"]["ratio"] > 0 and rows["from_hf:mamba"]["same_tokens"] is True
    assert "from_hf:mamba" in out and "vs HF" in out


def test_timing_and_memory_probe():
    t = time_call(lambda: sum(range(1000)), warmup=1, reps=4, budget_s=10.0)
    assert t.n == 4 and t.lo <= t.median <= t.hi
    if not memory_probe_available():
        pytest.skip("RSS peak probe needs Linux + glibc")
    mib = 64

    def alloc():
        a = torch.ones(mib * 2**20 // 4)
        del a

    peak = peak_rss_delta(alloc)
    assert 0.9 * mib * 2**20 <= peak <= 1.5 * mib * 2**20


def _spin(seconds):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


def test_time_limit_waits_for_numba_to_finish_compiling():
    """The alarm must not land inside numba's compiler (it can break numba for the rest of the process): it is put
    off while the compiler lock (held by every compile and cache load) is held, and fires right after."""
    pytest.importorskip("numba")
    from numba.core.compiler_lock import global_compiler_lock

    released_at = None
    with pytest.raises(BenchTimeout):
        with time_limit(0.01):
            with global_compiler_lock:
                _spin(0.2)
            released_at = time.perf_counter()
            _spin(5.0)
    assert released_at is not None and time.perf_counter() - released_at < 1.0


@pytest.mark.parametrize("argv, match", [
    (["--mixers", "nosuch"], "unknown mixer"), (["--ops", "nosuch"], "unknown op benchmark"),
    (["--reps", "0"], "reps must be >= 1"), (["--threads", "0"], "threads must be a positive int"),
    (["--hf-models", "gpt2"], "neither model types"),
])
def test_bad_bench_arguments_exit_2_before_timing(argv, match, capsys):
    from rnnlab.cli import main

    assert main(["bench", "--quick", *argv]) == 2
    assert match in capsys.readouterr().err


def test_bad_compare_file_fails_before_timing(tmp_path, capsys):
    from rnnlab.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["bench", "--quick", "--mixers", "none", "--ops", "none", "--compare", str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_slow_calls_run_once_and_the_baseline_length_can_be_lifted():
    """A call predicted (from the previous length) over slow_call_s runs once: no warm-up, one timed call that is also
    the memory probe. BenchConfig.max_baseline_len lifts an op's own cap on its reference loop; without it the
    reference row above the cap is a skipped row with a note."""
    from rnnlab.bench.registry import OpBench
    from rnnlab.bench.runner import _bench_op

    calls = []

    def form(x):
        calls.append(x.shape[1])
        return x * 2

    op = OpBench(name="toy", family="toy", make_inputs=lambda B, T, dtype, device: dict(x=torch.randn(B, T, requires_grad=True)),
                 forms={"reference": form, "fast": form}, max_baseline_len=8)
    rows = _bench_op(op, tiny_config(modes=["train"], warmup=1, reps=3, budget_s=60.0, slow_call_s=1e-9, max_baseline_len=16), {}, lambda s: None)
    at = {(r["form"], r["seq_len"]): r for r in rows}
    assert at["reference", 8]["time_s"]["n"] == 3 and at["fast", 8]["time_s"]["n"] == 3
    assert at["reference", 16]["time_s"]["n"] == 1 and at["fast", 16]["time_s"]["n"] == 1
    assert calls.count(16) == 1 + 1 + 1  # the cotangent's no-grad call, then one call per form
    assert at["fast", 16]["ratio"] is not None and at["reference", 16]["error"] is None
    capped = _bench_op(op, tiny_config(), {}, lambda s: None)
    ref16 = next(r for r in capped if r["form"] == "reference" and r["seq_len"] == 16)
    assert ref16["time_s"] is None and "max_baseline_len=8" in ref16["note"]


def test_segmented_loop_rows_carry_the_state_and_say_so():
    """OpBench.segments: a token loop's train row above the segment length runs segment by segment from the carried
    state (its note says so); forward values of the segments equal the whole (split anywhere == whole)."""
    from rnnlab.bench import ops_ttt
    from rnnlab.bench.registry import get_op_bench
    from rnnlab.bench.runner import _bench_op, _segmented_backward

    op = get_op_bench("chunk_titans_linear")
    rows = _bench_op(op, tiny_config(modes=["train"], seq_lens=[8, 24], batch=1), {}, lambda s: None)
    at = {(r["form"], r["seq_len"]): r for r in rows}
    seg = ops_ttt.LOOP_SEGMENTS["reference"]
    assert all(r["error"] is None for r in rows)
    assert "segments" not in (at["reference", 24]["note"] or "")  # T <= seg: one piece
    torch.manual_seed(0)
    T = 2 * seg + 3
    ins = op.make_inputs(1, T, torch.float32, "cpu")
    outs = []

    def record(**kw):
        o, st = op.forms["reference"](**kw)
        outs.append(o.detach())
        return o, st

    _segmented_backward(record, ins, T, seg, torch.ones(1, T, 4, 64))
    assert [o.shape[1] for o in outs] == [seg, seg, 3] and ins["q"].grad is not None
    with torch.no_grad():
        whole = op.forms["chunk"](**ins)[0]
    assert_close(torch.cat(outs, 1), whole, TOLERANCE[torch.float32], "segments vs the whole")
