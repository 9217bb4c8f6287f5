"""Model-level generation speed: ``rnnlab bench --generate``.

Times ``SequenceModel.generate`` (greedy) for a model of ``layers`` blocks of one mixer each (default 6 layers,
d_model 256, SwiGLU MLP, vocabulary 512, random weights): prefill a prompt of ``prompt`` tokens, then generate
``new`` tokens (default 512 and 256) at each decode batch. Next to it, for the architectures transformers has and
``rnnlab.interop`` maps (``--hf-models``; default mamba, mamba2, rwkv, xlstm, recurrent_gemma and qwen3_5_text),
HF's own ``generate`` and rnnlab's on the *same weights* (``from_hf``), in the same process, interleaved, with
the greedy tokens compared (identical weights, so they agree unless float32 rounding flips a near-tie).

Reported per model: prefill tokens/s (one forward over the prompts), decode tokens/s (new tokens of all rows per
second of the decode loop: generate's time minus the prefill's), and generate tokens/s end to end. The median of
``reps`` runs of each; rows of one pair run alternately, so load drifts hit both.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

__all__ = ["GenerateConfig", "run_generate", "format_generate", "GENERATE_MIXERS", "GENERATE_HF"]

# one mixer per family (and the architectures HF has), the default set of the table
GENERATE_MIXERS = ["attention", "lstm", "gru", "mamba", "hawk", "rwkv4", "gla", "mamba2", "mlstm", "gated_deltanet",
                   "rwkv7", "ttt_linear", "bilinear"]
GENERATE_HF = ["mamba", "mamba2", "rwkv", "xlstm", "recurrent_gemma", "qwen3_5_text"]


@dataclass
class GenerateConfig:
    mixers: list[str] = field(default_factory=lambda: list(GENERATE_MIXERS))
    hf_models: list[str] = field(default_factory=lambda: list(GENERATE_HF))
    layers: int = 6
    d_model: int = 256
    vocab: int = 512
    prompt: int = 512
    new: int = 256
    batches: list[int] = field(default_factory=lambda: [1])
    reps: int = 3
    threads: int = 2
    seed: int = 0

    @classmethod
    def quick(cls, **kw) -> "GenerateConfig":
        return cls(**{"layers": 2, "d_model": 128, "prompt": 32, "new": 8, "reps": 1, **kw})


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _measure(cfg: GenerateConfig, runners: list[tuple[str, object, object]], B: int, log) -> list[dict]:
    """runners: (label, prefill(ids), generate(ids) -> tokens). Reps alternate between the runners."""
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(cfg.vocab, (B, cfg.prompt), generator=g)
    times = {label: ([], []) for label, _, _ in runners}
    outs = {}
    for label, prefill, generate in runners:  # warm-up (and the tokens to compare)
        with torch.no_grad():
            prefill(ids[:, :8])
            outs[label] = generate(ids)
    for _ in range(cfg.reps):
        for label, prefill, generate in runners:
            with torch.no_grad():
                times[label][0].append(_time(lambda: prefill(ids)))
                times[label][1].append(_time(lambda: generate(ids)))
    rows = []
    for label, _, _ in runners:
        tp, tg = statistics.median(times[label][0]), statistics.median(times[label][1])
        td = tg - tp if tg > tp else float("nan")  # nan: the prefill's noise exceeded the decode loop (a loaded machine)
        rows.append({"name": label, "batch": B, "prefill_tok_s": B * cfg.prompt / tp, "decode_tok_s": B * cfg.new / td,
                     "generate_tok_s": B * cfg.new / tg, "decode_us_per_step": 1e6 * td / cfg.new,
                     "tokens": outs[label][:, cfg.prompt:]})
        log(f"  {label} B={B}: prefill {rows[-1]['prefill_tok_s']:.0f} tok/s, decode {rows[-1]['decode_tok_s']:.0f} tok/s")
    return rows


def _rnnlab_runner(model, new: int):
    return (lambda ids: model(ids), lambda ids: model.generate(ids, new, temperature=0))


def _hf_runner(hf, new: int):
    def generate(ids):
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
    return (lambda ids: hf(ids, use_cache=True), generate)


def run_generate(cfg: GenerateConfig, log=print) -> dict:
    """-> {"config": ..., "rows": [...], "notes": [...]}: a row per model and batch; HF pairs carry ``vs`` (the
    HF row's name) and ``ratio`` (rnnlab's generate tokens/s over HF's) on the rnnlab row, ``same_tokens`` on both."""
    from rnnlab.models import ModelConfig, SequenceModel

    torch.set_num_threads(cfg.threads)
    rows, notes = [], []
    for name in cfg.mixers:
        try:
            torch.manual_seed(cfg.seed)
            model = SequenceModel(ModelConfig(mixer=name, d_model=cfg.d_model, n_layers=cfg.layers, vocab_size=cfg.vocab)).eval()
        except Exception as e:  # a mixer that cannot be built at this width: a note, the others go on
            notes.append(f"{name}: not built ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        log(f"rnnlab bench --generate: {name}")
        for B in cfg.batches:
            for r in _measure(cfg, [(name, *_rnnlab_runner(model, cfg.new))], B, log):
                r.pop("tokens")
                rows.append({**r, "kind": "rnnlab"})
    for model_type in cfg.hf_models:
        try:
            hf, model = _hf_pair(model_type, cfg)
        except Exception as e:
            notes.append(f"hf {model_type}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        log(f"rnnlab bench --generate: {model_type} (HF generate vs rnnlab on the same weights)")
        mine, theirs = f"from_hf:{model_type}", f"hf:{type(hf).__name__}"
        for B in cfg.batches:
            try:
                a, b = _measure(cfg, [(mine, *_rnnlab_runner(model, cfg.new)), (theirs, *_hf_runner(hf, cfg.new))], B, log)
            except Exception as e:
                notes.append(f"hf {model_type} B={B}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                continue
            same = torch.equal(a.pop("tokens"), b.pop("tokens"))
            rows.append({**a, "kind": "rnnlab", "vs": theirs, "ratio": a["generate_tok_s"] / b["generate_tok_s"], "same_tokens": same})
            rows.append({**b, "kind": "hf", "same_tokens": same})
    return {"config": {k: v for k, v in vars(cfg).items()}, "rows": rows, "notes": notes}


def _hf_pair(model_type: str, cfg: GenerateConfig):
    """A random-weight HF model of ``cfg``'s size and its rnnlab import (same weights)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise RuntimeError("HF transformers not installed (pip install 'rnnlab[hf]')")
    from transformers.utils import logging as hf_logging

    from rnnlab.bench.hf_models import hf_bench_model
    from rnnlab.interop import from_hf, hf_architectures

    hf_logging.set_verbosity_error()
    torch.manual_seed(cfg.seed)
    archs = hf_architectures()
    if model_type not in archs:
        raise ValueError(f"rnnlab.interop has no mapping for {model_type!r} (maps: {', '.join(sorted(archs))})")
    hf = hf_bench_model(model_type, cfg.d_model, cfg.layers, cfg.vocab)
    return hf, from_hf(hf).eval()


def format_generate(result: dict, fmt: str = "text") -> str:
    c = result["config"]
    head = (f"generate: {c['layers']} layers, d_model {c['d_model']}, vocab {c['vocab']}, prompt {c['prompt']}, "
            f"{c['new']} new tokens, greedy, {c['threads']} threads, median of {c['reps']}")
    cols = ["model", "B", "prefill tok/s", "decode tok/s", "decode us/step", "generate tok/s", "vs HF", "same tokens"]
    lines = []
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        same = {True: "yes", False: "no"}.get(r.get("same_tokens"), "")
        lines.append([r["name"], str(r["batch"]), f"{r['prefill_tok_s']:.0f}", f"{r['decode_tok_s']:.0f}",
                      f"{r['decode_us_per_step']:.0f}", f"{r['generate_tok_s']:.0f}", ratio, same])
    if fmt == "md":
        out = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(x) + " |" for x in lines]
    else:
        w = [max(len(cols[i]), *(len(x[i]) for x in lines)) if lines else len(cols[i]) for i in range(len(cols))]
        out = [head, "  ".join(h.ljust(n) for h, n in zip(cols, w))] + ["  ".join(v.ljust(n) for v, n in zip(x, w)) for x in lines]
    return "\n".join(out + [f"note: {n}" for n in result["notes"]])
