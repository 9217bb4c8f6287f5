"""Imported HF models against their originals: ``rnnlab bench --hf-models mamba,rwkv,path/to/checkpoint``.

Each entry is an HF model type that ``rnnlab.interop.from_hf`` maps (MODEL_TYPES: a 2-layer model of width ``--d-model``
with random weights, vocabulary 512: nothing is downloaded) or a local checkpoint folder. The transformers
model and its rnnlab import (``from_hf``) are timed in the same process on the same token ids, as whole causal
LMs: train (forward + backward through the logits), prefill (forward), decode (one token with the cache /
state after a prefill). The import is a row of kind "mixer" named ``from_hf:<type>``; the original a "peer" row
whose ratio is the import's speed over the original's. Token ids come from the runner's inputs (x (B, T, D) ->
ids (B, T)), so both see the same tokens; the train cotangent is applied to the first D logits.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import Tensor

from rnnlab.bench.runner import Subject

__all__ = ["build_hf_model_pairs", "check_hf_entries", "hf_bench_config", "hf_bench_model", "MODEL_TYPES"]

VOCAB, LAYERS = 512, 2
MODEL_TYPES = ("mamba", "falcon_mamba", "mamba2", "bamba", "rwkv", "xlstm", "recurrent_gemma", "qwen3_5_text", "qwen3_next")  # what hf_bench_config builds


def check_hf_entries(entries: list[str]) -> None:
    """Each entry is a model type of MODEL_TYPES or an existing folder: a ValueError before any timing otherwise."""
    bad = [e for e in entries if e not in MODEL_TYPES and not Path(e).is_dir()]
    if bad:
        raise ValueError(f"--hf-models: {bad} are neither model types ({', '.join(MODEL_TYPES)}) nor checkpoint folders")


def _ids(x: Tensor, vocab: int) -> Tensor:
    """The runner's float inputs (B, T, D) -> token ids (B, T), the same for both models."""
    return (x[..., 0].float().abs() * 7919).long().remainder(vocab)


def hf_bench_config(model_type: str, D: int, layers: int = LAYERS, vocab: int = VOCAB):
    """A transformers config of ``model_type`` at width D with ``layers`` layers (random weights, nothing downloaded)."""
    import transformers

    if model_type in ("mamba", "falcon_mamba"):
        cls = transformers.FalconMambaConfig if model_type == "falcon_mamba" else transformers.MambaConfig
        return cls(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, state_size=16)
    if model_type == "mamba2":
        head_dim = 64 if (2 * D) % 64 == 0 else 2 * D // 4
        return transformers.Mamba2Config(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, state_size=64,
                                         head_dim=head_dim, num_heads=2 * D // head_dim, n_groups=1, chunk_size=64)
    if model_type == "bamba":  # a Mamba-2 layer, then a grouped-query attention layer
        return transformers.BambaConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, intermediate_size=2 * D,
                                        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=list(range(1, layers, 2)),
                                        mamba_n_heads=2 * D // 64 if D % 32 == 0 else 4, mamba_d_head="auto", mamba_n_groups=1,
                                        mamba_d_state=64, mamba_chunk_size=64)
    if model_type == "rwkv":
        return transformers.RwkvConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, context_length=1 << 16)
    if model_type == "xlstm":  # xLSTM 7B's layout (q/k half of v), heads of 128 (HF's cache rounds q/k head widths up to 64),
        return transformers.xLSTMConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, num_heads=max(1, D // 128),
                                        qk_dim_factor=0.5, chunk_size=64, autocast_kernel_dtype="float32", eos_token_id=None)  # float32 kernels, no EOS
    if model_type == "recurrent_gemma":  # Griffin's (recurrent, recurrent, local attention) pattern; 2 layers: one of each
        return transformers.RecurrentGemmaConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, intermediate_size=6 * D,
                                                 num_attention_heads=max(1, D // 64), num_key_value_heads=1,
                                                 block_types=["recurrent", "recurrent", "attention"] if layers >= 3 else ["recurrent", "attention"])
    if model_type in ("qwen3_5_text", "qwen3_next"):  # gated DeltaNet layers (twice as many value heads as key heads), gated
        heads = max(1, D // 64)                        # attention every 4th; Qwen3-Next: sparse MoE blocks (8 experts, top 2)
        kw = dict(vocab_size=vocab, hidden_size=D, num_hidden_layers=layers, intermediate_size=3 * D, num_attention_heads=heads,
                  num_key_value_heads=1, head_dim=64, linear_num_key_heads=heads, linear_num_value_heads=2 * heads,
                  linear_key_head_dim=64, linear_value_head_dim=64,
                  layer_types=["full_attention" if i % 4 == 3 or (layers < 4 and i == layers - 1) else "linear_attention" for i in range(layers)])
        if model_type == "qwen3_next":
            return transformers.Qwen3NextConfig(**kw, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=D // 2,
                                                shared_expert_intermediate_size=D)
        return transformers.Qwen3_5TextConfig(**kw)
    raise ValueError(f"--hf-models: no bench config for model type {model_type!r}")


def hf_bench_model(model_type: str, D: int, layers: int = LAYERS, vocab: int = VOCAB):
    """A random-weight transformers causal LM of ``hf_bench_config``'s shape, in eval mode (the caller seeds torch)."""
    import transformers

    from rnnlab.interop import hf_architectures

    return getattr(transformers, hf_architectures()[model_type].hf_class)(hf_bench_config(model_type, D, layers, vocab)).eval()


def _hf_subject(hf, vs: str, label: str) -> Subject:
    """The transformers model as a Subject; decode passes its cache back under the name its output used.
    RecurrentGemma returns no cache (its recurrent state lives in its modules): it is handed one, updated in place,
    and told each step's position."""
    V = hf.config.vocab_size
    D = hf.config.hidden_size
    params = inspect.signature(hf.forward).parameters
    takes_position = "cache_position" in params
    handed = type(hf).__name__ == "RecurrentGemmaForCausalLM"

    def prefill(x):
        if handed:
            from transformers import DynamicCache

            name = "cache" if "cache" in params else "past_key_values"
            cache = DynamicCache(config=hf.config)
            hf(_ids(x, V), use_cache=True, **{name: cache})
            return {"name": name, "cache": cache, "pos": x.shape[1]}
        out = hf(_ids(x, V), use_cache=True)
        name = next(n for n in ("cache", "cache_params", "past_key_values", "state") if getattr(out, n, None) is not None)
        return {"name": name, "cache": getattr(out, name), "pos": x.shape[1]}

    def step(x, s):
        kw = {s["name"]: s["cache"]}
        if takes_position:  # transformers 4.x's Mamba needs it with a cache
            kw["cache_position"] = torch.tensor([s["pos"]])
        if handed:
            kw["position_ids"] = torch.full((x.shape[0], 1), s["pos"])
        out = hf(_ids(x, V), use_cache=True, **kw)
        return out.logits, {**s, "cache": s["cache"] if handed else getattr(out, s["name"]), "pos": s["pos"] + 1}

    return Subject("peer", f"hf:{type(hf).__name__}", "model", hf, fwd=lambda x: hf(_ids(x, V), use_cache=False).logits[..., :D],
                   prefill=prefill, step=step, vs=vs, note=f"{label}; transformers' CPU path")


def _rnnlab_subject(model, name: str, label: str) -> Subject:
    V, D = model.config.vocab_size, model.config.d_model
    return Subject("mixer", name, "model", model, fwd=lambda x: model(_ids(x, V))[0][..., :D],
                   prefill=lambda x: model(_ids(x, V))[1], step=lambda x, s: model(_ids(x, V), s),
                   state_floats=model.state_size, note=f"{label}; rnnlab.interop.from_hf")


def build_hf_model_pairs(entries: list[str], d_model: int, seed: int = 0) -> tuple[list[Subject], list[str]]:
    """--hf-models entries -> (subjects: the rnnlab import then the HF original, per entry; notes on failures)."""
    import importlib.util

    if importlib.util.find_spec("fla") is not None:
        return [], ["--hf-models: flash-linear-attention is importable (HF's layers would call its Triton kernels on CPU); skipped"]
    if importlib.util.find_spec("transformers") is None:
        return [], ["--hf-models: HF transformers not installed (pip install 'rnnlab[hf]'); skipped"]
    import transformers
    from transformers.utils import logging as hf_logging

    from rnnlab.interop import from_hf

    hf_logging.set_verbosity_error()
    subjects, notes = [], []
    for entry in entries:
        try:
            torch.manual_seed(seed)
            if Path(entry).is_dir():
                hf = transformers.AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32)
                label, tag = f"checkpoint {entry}", Path(entry).name
            else:
                hf = hf_bench_model(entry, d_model)
                label, tag = f"{LAYERS} layers, d_model {d_model}, vocab {VOCAB}, random weights", entry
            hf.eval()
            name = f"from_hf:{tag}"
            subjects += [_rnnlab_subject(from_hf(hf), name, label), _hf_subject(hf, name, label)]
        except Exception as e:
            notes.append(f"--hf-models {entry}: could not be built ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return subjects, notes
