"""`rnnlab bench`: speed and memory of every mixer, op form and peer, on this machine.

    rnnlab bench --quick                                   # every mixer, small shapes, < 3 min on 2 cores
    rnnlab bench --seq-lens 512,2048,8192 --json run.json --plots plots/
    rnnlab bench --mixers gla,attention --compare old.json # speed ratio to an earlier run
    rnnlab bench --headline docs/img/headline.png          # README plot (attention + one mixer per family)
    rnnlab bench --from-json a.json b.json --markdown t.md # re-render saved results, no timing
    rnnlab bench --mixers none --ops none --no-peers --hf-models mamba,rwkv  # from_hf imports vs their HF originals
    rnnlab bench --generate                                # SequenceModel.generate tokens/s, 6 layers, next to HF's generate
"""
from __future__ import annotations

import json
import os
import sys

from rnnlab.options import csv_list, positive_int

__all__ = ["register", "cmd_bench", "HEADLINE_PREFERENCE", "headline_mixers"]

# one recurrent mixer per family for the headline plot, in order of preference (else the first registered)
HEADLINE_PREFERENCE = {
    "attention": ["attention"],
    "nonlinear": ["lstm", "gru", "slstm", "elman"],
    "diagonal": ["mamba", "hawk", "lru", "s4d", "hgrn"],
    "matrix": ["gla", "mamba2", "retnet", "linear_attention", "mlstm"],
    "delta": ["gated_deltanet", "deltanet"],
    "ttt": ["ttt_linear", "titans"],
    "expressive": ["block_diag_lrnn", "bilinear"],
}




def headline_mixers() -> list[str]:
    """attention plus one registered mixer of each recurrent family (HEADLINE_PREFERENCE order)."""
    from rnnlab.layers.registry import available_mixers, mixer_info

    names = available_mixers()
    out = []
    for fam, prefs in HEADLINE_PREFERENCE.items():
        pick = next((p for p in prefs if p in names), None)
        if pick is None:
            pick = next((n for n in names if mixer_info(n).family == fam), None)
        if pick:
            out.append(pick)
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="speed and memory of every mixer, op form and peer",
        description="Times every registered mixer (train = forward+backward tokens/s, prefill = forward tokens/s, "
        "decode = per-token latency at batch 1 and 16), every registered op form against its baseline, and peers "
        "(torch.nn.LSTM/GRU, SDPA, HF transformers' recurrent layers if installed). Peak memory is the RSS peak "
        "above the pre-call RSS. Run timing under `flock /tmp/rnnlab-bench.lock` on shared machines.",
    )
    p.add_argument("--mixers", help="comma-separated mixer names, 'all' (default) or 'none'")
    p.add_argument("--ops", help="comma-separated op benchmark names, 'all' (default) or 'none'")
    p.add_argument("--no-peers", action="store_true", help="skip the peer implementations")
    p.add_argument("--no-packing", action="store_true", help="skip the packed-vs-padded training rows")
    p.add_argument("--hf-models", help="comma-separated HF model types (mamba, falcon_mamba, mamba2, bamba, rwkv: random weights) "
                   "or local checkpoint folders: each timed as imported by rnnlab.interop.from_hf and as the transformers original")
    p.add_argument("--generate", action="store_true",
                   help="model-level generation: SequenceModel.generate tokens/s of a 6-layer d_model 256 model per mixer "
                        "(--mixers; default one per family), prefill 512, 256 new tokens, next to HF's generate on the same "
                        "weights for --hf-models (default mamba,mamba2,rwkv,xlstm,recurrent_gemma,qwen3_5_text)")
    p.add_argument("--seq-lens", help="comma-separated lengths (default 512,2048,8192; --quick 128,512)")
    p.add_argument("--batch", type=int, help="batch for train/prefill (default 4; --quick 2)")
    p.add_argument("--d-model", type=int, help="model width (default 256; --quick 128)")
    p.add_argument("--modes", help="comma-separated subset of train,prefill,decode (default all)")
    p.add_argument("--dtype", help="comma-separated dtypes: float32,bfloat16 (default both; --quick float32)")
    p.add_argument("--decode-batches", help="comma-separated decode batch sizes (default 1,16)")
    p.add_argument("--threads", type=int, help="torch and numba threads for the run (default: the CPUs this process may use)")
    p.add_argument("--reps", type=int, help="timed repetitions per measurement (default 5; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed warm-up calls (default 1)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per measurement before stopping early")
    p.add_argument("--max-call-s", type=float, help="skip lengths whose predicted single call exceeds this (s)")
    p.add_argument("--slow-call-s", type=float, help="a call predicted (from the previous length) to take longer than this runs "
                   "once: no warm-up, one timed call that is also the memory probe (default 30)")
    p.add_argument("--timeout-s", type=float, help="hard limit of one measurement in seconds (default 120; its warm-up: 3x)")
    p.add_argument("--max-baseline-len", type=int, help="run every op's baseline (reference) loop up to this T (default: each "
                   "op's own, 2048)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    p.add_argument("--max-memory-gb", type=float, help="memory cap of the run beyond what it holds at the start (default: 90%% of "
                   "the available memory); a row that needs more is recorded as failed and the run goes on")
    p.add_argument("--quick", action="store_true", help="small shapes and few reps: every mixer in < 3 min on 2 cores")
    p.add_argument("--json", metavar="OUT", help="write the result (schema rnnlab-bench/1) to this file")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots to this folder")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown to this file")
    p.add_argument("--compare", metavar="OLD.json", help="print new/old ratios against a previous --json result")
    p.add_argument("--from-json", nargs="+", metavar="RUN.json", help="render saved result(s) instead of timing")
    p.add_argument("--headline", nargs="?", const="docs/img/headline.png", metavar="PNG",
                   help="README plot: train tokens/s vs T for attention and one mixer per family (default docs/img/headline.png)")
    p.set_defaults(func=cmd_bench)


def _config_from_args(args):
    from rnnlab.bench.runner import BenchConfig
    from rnnlab.runtime import usable_cpus

    def names(s):
        if s is None or s == "all":
            return None
        return [] if s == "none" else csv_list(s)

    mixers, ops, peers = names(args.mixers), names(args.ops), not args.no_peers
    seq_lens = csv_list(args.seq_lens, positive_int, "--seq-lens")
    modes, dtypes = csv_list(args.modes, what="--modes"), csv_list(args.dtype, what="--dtype")
    batch, d_model = args.batch, args.d_model
    if args.headline and not args.from_json:  # the headline preset; explicit flags still win
        mixers = mixers if mixers is not None else headline_mixers()
        ops, peers = [] if args.ops is None else ops, False
        seq_lens = seq_lens or ([256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096, 8192])
        modes, dtypes = modes or ["train"], dtypes or ["float32"]
        batch, d_model = batch or 1, d_model or 256
    threads = args.threads if args.threads is not None else usable_cpus()
    return BenchConfig.preset(
        quick=args.quick, mixers=mixers, ops=ops, peers=peers, seq_lens=seq_lens, batch=batch, d_model=d_model,
        modes=modes, dtypes=dtypes, decode_batches=csv_list(args.decode_batches, positive_int, "--decode-batches"), threads=threads, reps=args.reps,
        warmup=args.warmup, budget_s=args.budget, max_call_s=args.max_call_s, max_memory_gb=args.max_memory_gb,
        slow_call_s=args.slow_call_s, timeout_s=args.timeout_s, max_baseline_len=args.max_baseline_len,
        memory=False if args.no_memory else None, packing=False if args.no_packing or args.headline else None,
        hf_models=csv_list(args.hf_models, what="--hf-models"),
    )


def _check_names(cfg) -> None:
    """The command line's mixer and op names exist (run_bench itself records an unknown one as a failed row)."""
    from rnnlab.bench.registry import available_op_benches
    from rnnlab.layers.registry import available_mixers

    for what, names, valid in (("mixer", cfg.mixers, available_mixers()), ("op benchmark", cfg.ops, available_op_benches())):
        bad = sorted(set(names or []) - set(valid))
        if bad:
            raise ValueError(f"unknown {what}(s) {bad}; valid choices: {', '.join(valid)}")
    if cfg.hf_models:
        from rnnlab.bench.hf_models import check_hf_entries

        check_hf_entries(cfg.hf_models)


def _cmd_generate(args) -> int:
    from rnnlab.bench.generate import GenerateConfig, format_generate, run_generate
    from rnnlab.layers.registry import available_mixers
    from rnnlab.runtime import usable_cpus

    try:
        kw = {"threads": args.threads if args.threads is not None else usable_cpus()}
        if args.mixers is not None:
            kw["mixers"] = available_mixers() if args.mixers == "all" else [] if args.mixers == "none" else csv_list(args.mixers)
            bad = sorted(set(kw["mixers"]) - set(available_mixers()))
            if bad:
                raise ValueError(f"unknown mixer(s) {bad}; valid choices: {', '.join(available_mixers())}")
        if args.hf_models is not None:
            kw["hf_models"] = [] if args.hf_models == "none" else csv_list(args.hf_models, what="--hf-models")
        for key, value in (("d_model", args.d_model), ("reps", args.reps)):
            if value is not None:
                kw[key] = positive_int(value)
        if args.decode_batches:
            kw["batches"] = csv_list(args.decode_batches, positive_int, "--decode-batches")
        cfg = GenerateConfig.quick(**kw) if args.quick else GenerateConfig(**kw)
    except ValueError as e:
        print(f"rnnlab bench: error: {e}", file=sys.stderr)
        return 2
    result = run_generate(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_generate(result))
    _write_files(args, result, lambda: format_generate(result, fmt="md"))
    return 0


def _write_files(args, result: dict, markdown) -> None:
    """--json: the result as JSON; --markdown: ``markdown()``'s text (built only when asked for)."""
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown() + "\n")
        print(f"wrote {args.markdown}")


def cmd_bench(args) -> int:
    if args.generate:
        return _cmd_generate(args)
    from rnnlab.bench.report import (format_compare, format_machine, format_tables, load_result, merge_results,
                                     plot_headline, validate_result, write_plots)
    from rnnlab.bench.runner import run_bench

    try:  # every input is checked before any timing starts
        old = load_result(args.compare) if args.compare else None
        if args.from_json:
            result = merge_results([load_result(p) for p in args.from_json])
        else:
            cfg = _config_from_args(args)
            _check_names(cfg)
    except (ValueError, OSError) as e:
        print(f"rnnlab bench: error: {e}", file=sys.stderr)
        return 2
    if not args.from_json:
        log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  progress on stderr, tables on stdout
        log(f"rnnlab bench: {len(cfg.mixers) if cfg.mixers is not None else 'all'} mixers, T={cfg.seq_lens}, batch {cfg.batch}, "
            f"d_model {cfg.d_model}, modes {cfg.modes}, dtypes {cfg.dtypes}, threads {cfg.threads}")
        result = run_bench(cfg, log=log)
        validate_result(result)
    print(format_machine(result))
    print()
    print(format_tables(result))
    _write_files(args, result, lambda: "```\n" + format_machine(result) + "\n```\n\n" + format_tables(result, fmt="md"))
    if args.plots:
        for path in write_plots(result, args.plots):
            print(f"wrote {path}")
    if args.headline:
        names = headline_mixers() if args.from_json and args.mixers is None else None  # a saved full run: one per family
        print(f"wrote {plot_headline(result, args.headline, names=names)}")
    if args.compare:
        print()
        print(format_compare(result, old))
    return 0
