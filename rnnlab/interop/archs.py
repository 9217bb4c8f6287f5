"""The HF architectures ``from_hf`` / ``to_hf`` map onto rnnlab mixers (rules: rnnlab/interop/convert.py).

- Mamba (``mamba``) and Falcon Mamba (``falcon_mamba``): embedding -> [RMSNorm -> ``mamba``] x L -> RMSNorm ->
  head, no MLP; the mixer with HF's ``use_bias`` / ``use_conv_bias`` and, for Falcon Mamba, its weightless RMS
  norms of Δ, B, C (``bcdt_norm_eps`` = ``mixer_rms_eps``).
- Mamba-2 (``mamba2``): the same backbone around the ``mamba2`` mixer (z, xBC, dt in one projection, gated
  RMSNorm per group, norm after the gate). HF's ``time_step_limit`` must be its default (0, inf).
- Layers (``layer_from_hf``): Qwen3-Next's and Qwen3.5's gated DeltaNet -> ``gated_deltanet`` (grouped value heads
  ``num_v_heads``), RecurrentGemma's recurrent block -> ``hawk`` (``gate_blocks``, ``reset_first_token``): the
  recurrent layers of those hybrid stacks on their own.
- Bamba (``bamba``): RMSNorm -> (``mamba2`` | ``attention``) -> RMSNorm -> SwiGLU per layer, the attention layers
  at ``attn_layer_indices`` with grouped-query heads (``num_kv_heads``) and rotary embeddings on half of each head
  (``rotary_dim``), HF's q, k, v projections fused into rnnlab's one ``qkv`` matrix.
- RWKV-4 (``rwkv``): embedding -> LayerNorm (ln0) -> [LayerNorm -> ``rwkv4`` time-mix, LayerNorm ->
  ``rwkv4_channel_mix``] x L -> LayerNorm -> head. HF's inference-time rescaling (``rescale_every``: hidden
  states halved every few layers, weights divided to match; equal up to LayerNorm's eps) is undone: rnnlab
  runs the unscaled network, as HF does in training mode.
- xLSTM (``xlstm``, xLSTM 7B's architecture): embedding -> [RMSNorm -> ``mlstm`` (layout "dense": dense q, k, v,
  sigmoid output gate, soft-capped gates from x, eps in the denominator), RMSNorm -> SwiGLU] x L -> RMSNorm -> head
  -> logit soft cap; HF's "single" (q, k, v, o and i, f apart) and "fused" weight layouts.
- Qwen3.5's text model (``qwen3_5_text``) and Qwen3-Next (``qwen3_next``): (1 + w) RMSNorm -> (``gated_deltanet`` |
  ``attention`` with ``output_gate``, ``qk_norm``, ``head_dim``) per ``layer_types`` -> (1 + w) RMSNorm -> MLP: a SwiGLU
  (Qwen3.5; Qwen3-Next's ``mlp_only_layers`` and layers off its ``decoder_sparse_step``) or Qwen3-Next's sparse mixture
  of experts -> ``moe`` (top ``num_experts_per_tok`` of the router's softmax, renormalized as ``norm_topk_prob`` says,
  SwiGLU experts, a shared expert scaled by sigmoid(``shared_expert_gate``)), chosen per layer (ModelConfig ``mlp`` list).
Zamba2 is refused with its reason (NOT_MAPPED).

The residual stream is float32 in rnnlab (HF's ``residual_in_fp32``); HF configs whose activation is not SiLU
(Mamba, Mamba-2) or whose RWKV sizes rnnlab's layers do not have (attention_hidden_size != hidden_size, an
intermediate size that is not a multiple of hidden_size) are refused with a ValueError naming the field.
"""
from __future__ import annotations

import math
import re

import torch
from einops import rearrange

from rnnlab.interop.convert import Arch, Rule, _rename, register_arch
from rnnlab.layers.moe import glu_hidden_size
from rnnlab.layers.registry import create_mixer
from rnnlab.models.config import ModelConfig

_INF = float("inf")


def _need(cfg, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"from_hf({cfg.model_type}): {name} = {getattr(cfg, name, None)!r} has no rnnlab counterpart "
                         f"(rnnlab maps {expected})")


def _squeeze_conv(t):  # HF's nn.Conv1d weight (C, 1, W) <-> ShortConv's (C, W)
    return t[:, 0]


def _unsqueeze_conv(t):
    return t[:, None]


def _backbone(prefix: str, embed: str, final_norm: str, head: str = "lm_head.weight") -> list[Rule]:
    return [Rule(f"{prefix}.{embed}.weight", "embed.weight"), Rule(f"{prefix}.{final_norm}.weight", "norm.weight"),
            Rule(head, "head.weight")]


def _lm(hf_cfg, mixer: str | list[str], mixer_kwargs: dict | list[dict], **kw) -> ModelConfig:
    return ModelConfig(mixer=mixer, mixer_kwargs=mixer_kwargs, d_model=hf_cfg.hidden_size, n_layers=hf_cfg.num_hidden_layers,
                       vocab_size=hf_cfg.vocab_size, tie_embeddings=bool(hf_cfg.tie_word_embeddings),
                       embedding_init="gpt2",  # the embedding enters unscaled, as in every HF recurrent LM here
                       **kw)


# --- Mamba and Falcon Mamba ------------------------------------------------------------------------------------

def _mamba_config(cfg) -> ModelConfig:
    _need(cfg, "hidden_act", cfg.hidden_act == "silu", "SiLU")
    rank = int(cfg.time_step_rank)
    kw = {"d_state": cfg.state_size, "expand": cfg.expand, "d_conv": cfg.conv_kernel,
          "dt_rank": "auto" if rank == math.ceil(cfg.hidden_size / 16) else rank,
          "bias": bool(cfg.use_bias), "conv_bias": bool(cfg.use_conv_bias)}
    if cfg.model_type == "falcon_mamba":
        kw["bcdt_norm_eps"] = float(cfg.mixer_rms_eps)
    return _lm(cfg, "mamba", kw, mlp=None, norm_eps=cfg.layer_norm_epsilon)


def _mamba_to_hf(mc: ModelConfig, model_type: str):
    import transformers

    kw = mc.layer_kwargs()[0]
    falcon = model_type == "falcon_mamba"
    extra = {"mixer_rms_eps": kw["bcdt_norm_eps"]} if falcon and "bcdt_norm_eps" in kw else {}
    cls = transformers.FalconMambaConfig if falcon else transformers.MambaConfig
    return cls(vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers, state_size=kw.get("d_state", 16),
               expand=kw.get("expand", 2), conv_kernel=kw.get("d_conv", 4), time_step_rank=_rank(kw.get("dt_rank", "auto"), mc.d_model),
               use_bias=kw.get("bias", False), use_conv_bias=kw.get("conv_bias", True), layer_norm_epsilon=mc.norm_eps,
               tie_word_embeddings=mc.tie_embeddings, hidden_act="silu", **extra)


def _rank(dt_rank, d_model: int) -> int:
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def _mamba_rules(cfg) -> list[Rule]:
    m, b = "backbone.layers.{i}.mixer", "blocks.{i}.mixer"
    rules = _backbone("backbone", "embeddings", "norm_f") + [
        Rule("backbone.layers.{i}.norm.weight", "blocks.{i}.norm1.weight"),
        Rule(f"{m}.conv1d.weight", f"{b}.conv.weight", _squeeze_conv, _unsqueeze_conv),
    ]
    names = ["in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"]
    names += ["in_proj.bias", "out_proj.bias"] if cfg.use_bias else []
    rules += [Rule(f"{m}.{n}", f"{b}.{n}") for n in names]
    if cfg.use_conv_bias:
        rules.append(Rule(f"{m}.conv1d.bias", f"{b}.conv.bias"))
    return rules


register_arch(Arch("Mamba", ("mamba",), "MambaForCausalLM", _mamba_config, lambda mc: _mamba_to_hf(mc, "mamba"), _mamba_rules))
register_arch(Arch("Falcon Mamba", ("falcon_mamba",), "FalconMambaForCausalLM", _mamba_config,
                   lambda mc: _mamba_to_hf(mc, "falcon_mamba"), _mamba_rules))


# --- Mamba-2 ---------------------------------------------------------------------------------------------------

def _mamba2_config(cfg) -> ModelConfig:
    _need(cfg, "hidden_act", cfg.hidden_act == "silu", "SiLU")
    _need(cfg, "time_step_limit", tuple(cfg.time_step_limit) == (0.0, _INF), "the default (0.0, inf) only")
    d_inner = cfg.expand * cfg.hidden_size
    _need(cfg, "num_heads", cfg.num_heads * cfg.head_dim == d_inner, f"num_heads * head_dim == expand * hidden_size = {d_inner}")
    kw = {"d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand, "headdim": cfg.head_dim,
          "ngroups": cfg.n_groups, "chunk_size": cfg.chunk_size, "norm_eps": cfg.layer_norm_epsilon,
          "bias": bool(cfg.use_bias), "conv_bias": bool(cfg.use_conv_bias)}
    return _lm(cfg, "mamba2", kw, mlp=None, norm_eps=cfg.layer_norm_epsilon)


def _mamba2_to_hf(mc: ModelConfig):
    import transformers

    kw = mc.layer_kwargs()[0]
    expand, headdim = kw.get("expand", 2), kw.get("headdim", 64)
    return transformers.Mamba2Config(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers, state_size=kw.get("d_state", 128),
        conv_kernel=kw.get("d_conv", 4), expand=expand, head_dim=headdim, num_heads=expand * mc.d_model // headdim,
        n_groups=kw.get("ngroups", 1), chunk_size=kw.get("chunk_size", 64), layer_norm_epsilon=mc.norm_eps,
        use_bias=kw.get("bias", False), use_conv_bias=kw.get("conv_bias", True), tie_word_embeddings=mc.tie_embeddings,
        hidden_act="silu", time_step_limit=(0.0, _INF))


def _mamba2_mixer_rules(m: str, b: str, bias: bool, conv_bias: bool) -> list[Rule]:
    """HF's Mamba2Mixer (or Bamba's copy of it) at ``m`` <-> rnnlab's mamba2 mixer at ``b``."""
    names = ["in_proj.weight", "dt_bias", "A_log", "D", "out_proj.weight"] + (["in_proj.bias", "out_proj.bias"] if bias else [])
    rules = [Rule(f"{m}.{n}", f"{b}.{n}") for n in names]
    rules += [Rule(f"{m}.conv1d.weight", f"{b}.conv.weight", _squeeze_conv, _unsqueeze_conv), Rule(f"{m}.norm.weight", f"{b}.norm_weight")]
    return rules + ([Rule(f"{m}.conv1d.bias", f"{b}.conv.bias")] if conv_bias else [])


def _mamba2_rules(cfg) -> list[Rule]:
    return (_backbone("backbone", "embeddings", "norm_f") + [Rule("backbone.layers.{i}.norm.weight", "blocks.{i}.norm1.weight")]
            + _mamba2_mixer_rules("backbone.layers.{i}.mixer", "blocks.{i}.mixer", cfg.use_bias, cfg.use_conv_bias))


register_arch(Arch("Mamba-2", ("mamba2",), "Mamba2ForCausalLM", _mamba2_config, _mamba2_to_hf, _mamba2_rules))


# --- Bamba: Mamba-2 and attention layers, each followed by a SwiGLU MLP --------------------------------------------

def _swiglu_ratio(d_model: int, hidden: int) -> float:
    """The mlp_ratio whose SwiGLU has exactly ``hidden`` units (rnnlab rounds 2/3·ratio·d up to a multiple of 8)."""
    from rnnlab.models.model import SwiGLU

    ratio = 1.5 * hidden / d_model
    if SwiGLU.hidden_size(d_model, ratio) != hidden:
        raise ValueError(f"intermediate_size {hidden} has no rnnlab SwiGLU counterpart (a multiple of 8 is needed)")
    return ratio


def _bamba_config(cfg) -> ModelConfig:
    _need(cfg, "hidden_act", cfg.hidden_act == "silu", "SiLU")
    _need(cfg, "time_step_limit", tuple(getattr(cfg, "time_step_limit", (0.0, _INF))) == (0.0, _INF), "the default (0.0, inf) only")
    _need(cfg, "mlp_bias", not getattr(cfg, "mlp_bias", False), "SwiGLU MLPs without biases")
    rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    _need(cfg, "rope_parameters", rope.get("rope_type", "default") == "default", "the default rotary embedding")
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    _need(cfg, "head_dim", head_dim * H == cfg.hidden_size, "head_dim == hidden_size / num_attention_heads")
    attn = {"num_heads": H, "num_kv_heads": Hkv, "rotary_dim": int(head_dim * getattr(cfg, "partial_rotary_factor", 0.5)),
            "rope_base": float(rope["rope_theta"]), "bias": bool(getattr(cfg, "attention_bias", False))}
    ssm = {"d_state": cfg.mamba_d_state, "d_conv": cfg.mamba_d_conv, "expand": cfg.mamba_expand, "headdim": cfg.mamba_d_head,
           "ngroups": cfg.mamba_n_groups, "chunk_size": cfg.mamba_chunk_size, "norm_eps": cfg.rms_norm_eps,
           "bias": bool(cfg.mamba_proj_bias), "conv_bias": bool(cfg.mamba_conv_bias)}
    kinds = ["attention" if i in (cfg.attn_layer_indices or []) else "mamba2" for i in range(cfg.num_hidden_layers)]
    return _lm(cfg, kinds, [attn if k == "attention" else ssm for k in kinds], mlp="swiglu",
               mlp_ratio=_swiglu_ratio(cfg.hidden_size, cfg.intermediate_size), norm_eps=cfg.rms_norm_eps)


def _bamba_to_hf(mc: ModelConfig):
    import transformers

    from rnnlab.models.model import SwiGLU

    kinds, kws = mc.layer_mixers(), mc.layer_kwargs()
    attn = next((kw for k, kw in zip(kinds, kws) if k == "attention"), {"num_heads": 4})
    ssm = next((kw for k, kw in zip(kinds, kws) if k == "mamba2"), {})
    H = attn.get("num_heads", 4)
    expand, headdim = ssm.get("expand", 2), ssm.get("headdim", 64)
    rope = attn.get("rope_base", 10000.0)
    rope_kw = {"rope_parameters": {"rope_type": "default", "rope_theta": rope}} if int(transformers.__version__.split(".")[0]) >= 5 else {}
    return transformers.BambaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers, tie_word_embeddings=mc.tie_embeddings,
        intermediate_size=SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio), num_attention_heads=H,
        num_key_value_heads=attn.get("num_kv_heads") or H, attention_bias=attn.get("bias", False),
        attn_layer_indices=[i for i, k in enumerate(kinds) if k == "attention"], mamba_n_heads=expand * mc.d_model // headdim,
        mamba_d_head=headdim, mamba_n_groups=ssm.get("ngroups", 1), mamba_d_state=ssm.get("d_state", 128),
        mamba_d_conv=ssm.get("d_conv", 4), mamba_expand=expand, mamba_chunk_size=ssm.get("chunk_size", 64),
        mamba_conv_bias=ssm.get("conv_bias", True), mamba_proj_bias=ssm.get("bias", False), rms_norm_eps=mc.norm_eps,
        hidden_act="silu", mlp_bias=False, **rope_kw)


def _bamba_rules(cfg) -> list[Rule]:
    L, b = "model.layers.{i}", "blocks.{i}"
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    hd = cfg.hidden_size // H
    sizes = [H * hd, Hkv * hd, Hkv * hd]

    def qkv_rule(kind: str) -> Rule:
        return Rule(tuple(f"{L}.self_attn.{n}_proj.{kind}" for n in "qkv"), f"{b}.mixer.qkv.{kind}",
                    to_hf=lambda t: tuple(t.split(sizes, 0)))

    rules = _backbone("model", "embed_tokens", "final_layernorm") + [
        Rule(f"{L}.input_layernorm.weight", f"{b}.norm1.weight"), Rule(f"{L}.pre_ff_layernorm.weight", f"{b}.norm2.weight"),
        Rule((f"{L}.feed_forward.gate_proj.weight", f"{L}.feed_forward.up_proj.weight"), f"{b}.mlp.w13.weight"),
        Rule(f"{L}.feed_forward.down_proj.weight", f"{b}.mlp.w2.weight"),
        qkv_rule("weight"), Rule(f"{L}.self_attn.o_proj.weight", f"{b}.mixer.out.weight"),
    ]
    if getattr(cfg, "attention_bias", False):
        rules += [qkv_rule("bias"), Rule(f"{L}.self_attn.o_proj.bias", f"{b}.mixer.out.bias")]
    return rules + _mamba2_mixer_rules(f"{L}.mamba", f"{b}.mixer", cfg.mamba_proj_bias, cfg.mamba_conv_bias)


register_arch(Arch("Bamba", ("bamba",), "BambaForCausalLM", _bamba_config, _bamba_to_hf, _bamba_rules))


# --- RecurrentGemma: (recurrent, recurrent, local attention) residual blocks, each with a GeGLU MLP ------------------

def _rope(cfg) -> tuple[float, float | None]:
    """(rope_theta, partial_rotary_factor or None) from a 5.x ``rope_parameters`` or 4.x attributes; default RoPE only."""
    rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(cfg, "rope_theta", 10000.0),
                                                     "partial_rotary_factor": getattr(cfg, "partial_rotary_factor", None)}
    _need(cfg, "rope_parameters", rope.get("rope_type", "default") == "default", "the default rotary embedding")
    return float(rope["rope_theta"]), rope.get("partial_rotary_factor")


def _rope_to_hf(theta: float, partial: float) -> dict:
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": partial}}
    return {"rope_theta": theta, "partial_rotary_factor": partial}


def _one_plus(t):  # Gemma's RMSNorm scales by (1 + w): rnnlab's weight is 1 + w (HF computes 1 + w first: the same numbers)
    return t + 1


def _minus_one(t):
    return t - 1


def _gemma_norm(hf: str, rnnlab: str) -> Rule:
    return Rule(hf, rnnlab, _one_plus, _minus_one)


def _bf16_sqrt(d: int) -> float:
    """HF's RecurrentGemma multiplies the embedding by its ``normalizer``, sqrt(hidden_size) stored in bfloat16."""
    return float(torch.tensor(d ** 0.5, dtype=torch.bfloat16))


def _rg_config(cfg) -> ModelConfig:
    D, H = cfg.hidden_size, cfg.num_attention_heads
    _need(cfg, "hidden_activation", cfg.hidden_activation in ("gelu_pytorch_tanh", "gelu_tanh"), "the tanh-approximated GeLU")
    _need(cfg, "head_dim", cfg.head_dim * H == D, "head_dim == hidden_size / num_attention_heads")
    theta, partial = _rope(cfg)
    rec = {"expansion": cfg.lru_width / D, "conv_size": cfg.conv1d_width, "gate_blocks": H, "reset_first_token": True}
    att = {"num_heads": H, "num_kv_heads": cfg.num_key_value_heads, "window": cfg.attention_window_size, "rope_base": theta,
           "rotary_dim": int(cfg.head_dim * (0.5 if partial is None else partial)), "bias": bool(cfg.attention_bias),
           "out_bias": True}
    kinds = ["hawk" if t == "linear_attention" else "sliding_attention" for t in cfg.layers_block_type]
    return _lm(cfg, kinds, [rec if k == "hawk" else att for k in kinds], mlp="geglu", mlp_bias=True,
               mlp_ratio=_swiglu_ratio(D, cfg.intermediate_size // 2), norm_eps=cfg.rms_norm_eps,
               logit_soft_cap=float(cfg.logits_soft_cap), embed_scale=_bf16_sqrt(D))


def _rg_to_hf(mc: ModelConfig):
    import transformers

    from rnnlab.models.model import SwiGLU

    kinds, kws = mc.layer_mixers(), mc.layer_kwargs()
    rec = next((kw for k, kw in zip(kinds, kws) if k == "hawk"), {})
    att = next((kw for k, kw in zip(kinds, kws) if k != "hawk"), {"num_heads": rec.get("gate_blocks", 1)})
    H = att.get("num_heads", 4)
    if mc.logit_soft_cap is None:
        raise ValueError("to_hf(recurrent_gemma): RecurrentGemma always soft-caps its logits; this model has logit_soft_cap=None")
    return transformers.RecurrentGemmaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers, num_attention_heads=H,
        num_key_value_heads=att.get("num_kv_heads") or H, intermediate_size=2 * SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio),
        lru_width=round(rec.get("expansion", 4 / 3) * mc.d_model), attention_window_size=att.get("window") or 0,
        conv1d_width=rec.get("conv_size", 4), logits_soft_cap=mc.logit_soft_cap, rms_norm_eps=mc.norm_eps,
        attention_bias=att.get("bias", False), block_types=["recurrent" if k == "hawk" else "attention" for k in kinds],
        tie_word_embeddings=mc.tie_embeddings, hidden_activation="gelu_pytorch_tanh",
        **_rope_to_hf(att.get("rope_base", 10000.0), (att.get("rotary_dim") or mc.d_model // H) / (mc.d_model // H)))


def _rg_recurrent_rules(t: str, m: str, H: int) -> list[Rule]:
    """HF's RecurrentGemmaRecurrentBlock at prefix ``t`` <-> rnnlab's hawk (gate_blocks=H, reset_first_token) at ``m``
    ("" = the block alone). HF's recurrent_param is -Lambda (log a = -8 r softplus(recurrent_param)); its gate weights
    are (H, in, out) blocks, rnnlab's (H, out, in), or one dense (out, in) matrix when H = 1."""
    hf = lambda n: f"{t}.{n}" if t else n  # noqa: E731
    rl = lambda n: f"{m}.{n}" if m else n  # noqa: E731
    neg = lambda x: -x  # noqa: E731
    if H == 1:
        blocks, unblocks = (lambda x: x[0].T), (lambda x: x.T[None])
    else:
        blocks = unblocks = lambda x: x.transpose(1, 2)
    rules = [Rule(hf(f"{n}.{k}"), rl(f"{n}.{k}")) for n in ("linear_y", "linear_x", "linear_out") for k in ("weight", "bias")]
    rules += [Rule(hf("conv_1d.weight"), rl("conv.weight"), _squeeze_conv, _unsqueeze_conv), Rule(hf("conv_1d.bias"), rl("conv.bias")),
              Rule(hf("rg_lru.recurrent_param"), rl("Lambda"), neg, neg)]
    for g, r in (("input", "gate_x"), ("recurrent", "gate_a")):
        rules += [Rule(hf(f"rg_lru.{g}_gate_weight"), rl(f"{r}.weight"), blocks, unblocks),
                  Rule(hf(f"rg_lru.{g}_gate_bias"), rl(f"{r}.bias"), lambda x: x.reshape(-1), lambda x: x.reshape(H, -1))]
    return rules


def _rg_rules(cfg) -> list[Rule]:
    L, b = "model.layers.{i}", "blocks.{i}"
    t, m, f = f"{L}.temporal_block", f"{b}.mixer", f"{L}.mlp_block"
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    sizes = [H * hd, Hkv * hd, Hkv * hd]

    def qkv_rule(kind: str) -> Rule:
        return Rule(tuple(f"{t}.{n}_proj.{kind}" for n in "qkv"), f"{m}.qkv.{kind}", to_hf=lambda x: tuple(x.split(sizes, 0)))

    rules = [Rule("model.embed_tokens.weight", "embed.weight"), _gemma_norm("model.final_norm.weight", "norm.weight"),
             Rule("lm_head.weight", "head.weight"), _gemma_norm(f"{L}.temporal_pre_norm.weight", f"{b}.norm1.weight"),
             _gemma_norm(f"{L}.channel_pre_norm.weight", f"{b}.norm2.weight"),
             Rule((f"{f}.gate_proj.weight", f"{f}.up_proj.weight"), f"{b}.mlp.w13.weight"),
             Rule((f"{f}.gate_proj.bias", f"{f}.up_proj.bias"), f"{b}.mlp.w13.bias"),
             Rule(f"{f}.down_proj.weight", f"{b}.mlp.w2.weight"), Rule(f"{f}.down_proj.bias", f"{b}.mlp.w2.bias")]
    rules += _rg_recurrent_rules(t, m, H)
    rules += [qkv_rule("weight"), Rule(f"{t}.o_proj.weight", f"{m}.out.weight"), Rule(f"{t}.o_proj.bias", f"{m}.out.bias")]
    return rules + ([qkv_rule("bias")] if cfg.attention_bias else [])


register_arch(Arch("RecurrentGemma", ("recurrent_gemma",), "RecurrentGemmaForCausalLM", _rg_config, _rg_to_hf, _rg_rules,
                   scales_embedding=True))


# --- Qwen3.5 (dense) and Qwen3-Next: gated DeltaNet and gated full-attention layers, each followed by an MLP -------
# (Qwen3.5: a SwiGLU; Qwen3-Next: its sparse mixture of experts with a gated shared expert, or a SwiGLU at the layers
# of mlp_only_layers / off decoder_sparse_step). Their layers are the same but for the DeltaNet's projection layout.

def _qwen_mixers(cfg) -> tuple[list[str], list[dict]]:
    """The per-layer mixers of a Qwen3.5 / Qwen3-Next config (its ``layer_types``) and their options."""
    H = cfg.num_attention_heads
    _need(cfg, "hidden_act", cfg.hidden_act == "silu", "SiLU")
    theta, partial = _rope(cfg)
    attn = {"num_heads": H, "num_kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "rope_base": theta,
            "rotary_dim": int(cfg.head_dim * (1.0 if partial is None else partial)), "bias": bool(cfg.attention_bias),
            "qk_norm": True, "output_gate": True, "norm_eps": float(cfg.rms_norm_eps)}
    gdn = _gdn_kwargs(cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim,
                      cfg.linear_conv_kernel_dim, cfg.hidden_act, cfg.rms_norm_eps)
    kinds = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
    bad = sorted({t for t in cfg.layer_types if t not in kinds})
    _need(cfg, "layer_types", not bad, "linear_attention and full_attention layers")
    mixers = [kinds[t] for t in cfg.layer_types]
    return mixers, [gdn if k == "gated_deltanet" else attn for k in mixers]


def _qwen35_config(cfg) -> ModelConfig:
    mixers, kwargs = _qwen_mixers(cfg)
    return _lm(cfg, mixers, kwargs, mlp="swiglu", mlp_ratio=_swiglu_ratio(cfg.hidden_size, cfg.intermediate_size),
               norm_eps=float(cfg.rms_norm_eps))


def _qwen_config_to_hf(mc: ModelConfig) -> dict:
    """The Qwen3Next / Qwen3_5Text config fields of a model's mixers, sizes and norms (not its MLPs)."""
    kinds, kws = mc.layer_mixers(), mc.layer_kwargs()
    attn = next((kw for k, kw in zip(kinds, kws) if k == "attention"), {"num_heads": 4})
    gdn = next((kw for k, kw in zip(kinds, kws) if k == "gated_deltanet"), {})
    H, K = attn.get("num_heads", 4), gdn.get("head_dim") or mc.d_model // gdn.get("num_heads", 4)
    hd = attn.get("head_dim") or mc.d_model // H
    return dict(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers, num_attention_heads=H,
        num_key_value_heads=attn.get("num_kv_heads") or H, head_dim=hd,
        rms_norm_eps=mc.norm_eps, attention_bias=attn.get("bias", False), tie_word_embeddings=mc.tie_embeddings, hidden_act="silu",
        layer_types=["full_attention" if k == "attention" else "linear_attention" for k in kinds],
        linear_num_key_heads=gdn.get("num_heads", 4), linear_num_value_heads=gdn.get("num_v_heads") or gdn.get("num_heads", 4),
        linear_key_head_dim=K, linear_value_head_dim=int(K * gdn.get("expand_v", 2.0)), linear_conv_kernel_dim=gdn.get("conv_size", 4),
        **_rope_to_hf(attn.get("rope_base", 10000.0), (attn.get("rotary_dim") or hd) / hd))


def _qwen35_to_hf(mc: ModelConfig):
    import transformers

    from rnnlab.models.model import SwiGLU

    return transformers.Qwen3_5TextConfig(intermediate_size=SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio), **_qwen_config_to_hf(mc))


def _swiglu_rules(f: str, b: str) -> list[Rule]:
    """An HF gated MLP (gate_proj, up_proj, down_proj) at ``f`` <-> rnnlab's SwiGLU at ``b``."""
    return [Rule((f"{f}.gate_proj.weight", f"{f}.up_proj.weight"), f"{b}.w13.weight"), Rule(f"{f}.down_proj.weight", f"{b}.w2.weight")]


def _qwen_rules(cfg, qwen3_next: bool) -> list[Rule]:
    """Embedding, (1 + w) norms, gated attention and gated DeltaNet of a Qwen3.5 / Qwen3-Next model (not its MLPs)."""
    L, b = "model.layers.{i}", "blocks.{i}"
    a, m = f"{L}.self_attn", f"{b}.mixer"
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def to_rnnlab(q, k, v):  # HF's q_proj rows per head: [q (hd), gate (hd)]; rnnlab's projection: [q | k | v | gate]
        qg = q.view(H, 2, hd, *q.shape[1:])
        return torch.cat([qg[:, 0].flatten(0, 1), k, v, qg[:, 1].flatten(0, 1)])

    def to_hf(t):
        q, k, v, g = t.split([H * hd, Hkv * hd, Hkv * hd, H * hd])
        return torch.stack([q.view(H, hd, *q.shape[1:]), g.view(H, hd, *g.shape[1:])], 1).flatten(0, 2), k, v

    def proj(kind):
        return Rule(tuple(f"{a}.{n}_proj.{kind}" for n in "qkv"), f"{m}.qkv.{kind}", to_rnnlab, to_hf)

    rules = [Rule("model.embed_tokens.weight", "embed.weight"), _gemma_norm("model.norm.weight", "norm.weight"),
             Rule("lm_head.weight", "head.weight"), _gemma_norm(f"{L}.input_layernorm.weight", f"{b}.norm1.weight"),
             _gemma_norm(f"{L}.post_attention_layernorm.weight", f"{b}.norm2.weight"),
             proj("weight"), Rule(f"{a}.o_proj.weight", f"{m}.out.weight"),
             _gemma_norm(f"{a}.q_norm.weight", f"{m}.q_norm.weight"), _gemma_norm(f"{a}.k_norm.weight", f"{m}.k_norm.weight")]
    if cfg.attention_bias:
        rules += [proj("bias"), Rule(f"{a}.o_proj.bias", f"{m}.out.bias")]
    return rules + _gdn_rules(f"{L}.linear_attn", m, cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                              cfg.linear_value_head_dim, qwen3_next=qwen3_next)


def _qwen35_rules(cfg) -> list[Rule]:
    return _qwen_rules(cfg, qwen3_next=False) + _swiglu_rules("model.layers.{i}.mlp", "blocks.{i}.mlp")


register_arch(Arch("Qwen3.5", ("qwen3_5_text",), "Qwen3_5ForCausalLM", _qwen35_config, _qwen35_to_hf, _qwen35_rules))


def _qwen3_next_moe_layers(cfg) -> list[bool]:
    """Which layers hold HF's Qwen3NextSparseMoeBlock (its Qwen3NextDecoderLayer's rule); the others a dense MLP."""
    return [i not in cfg.mlp_only_layers and cfg.num_experts > 0 and (i + 1) % cfg.decoder_sparse_step == 0
            for i in range(cfg.num_hidden_layers)]


def _qwen3_next_config(cfg) -> ModelConfig:
    mixers, kwargs = _qwen_mixers(cfg)
    sparse = _qwen3_next_moe_layers(cfg)
    _need(cfg, "shared_expert_intermediate_size", cfg.shared_expert_intermediate_size > 0 or not any(sparse), "a shared expert")
    moe = {"num_experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok, "hidden_size": cfg.moe_intermediate_size,
           "activation": "silu", "normalize_topk": bool(cfg.norm_topk_prob),
           "shared_hidden_size": cfg.shared_expert_intermediate_size, "shared_gate": True}
    mlps = ["moe" if s else "swiglu" for s in sparse]
    extra = {"mlp_kwargs": {"moe": moe}} if any(sparse) else {}
    if not all(sparse):  # the dense MLPs' size (unused when every layer is sparse)
        extra["mlp_ratio"] = _swiglu_ratio(cfg.hidden_size, cfg.intermediate_size)
    return _lm(cfg, mixers, kwargs, mlp=mlps[0] if len(set(mlps)) == 1 else mlps, norm_eps=float(cfg.rms_norm_eps), **extra)


def _qwen3_next_to_hf(mc: ModelConfig):
    import transformers

    from rnnlab.models.model import SwiGLU

    mlps = mc.layer_mlps()
    moe = next((kw for m, kw in zip(mlps, mc.layer_mlp_kwargs()) if m == "moe"), None)
    fields = _qwen_config_to_hf(mc)
    if moe is None:  # no sparse layer: HF's num_experts = 0 builds dense MLPs everywhere
        return transformers.Qwen3NextConfig(intermediate_size=SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio), num_experts=0, **fields)
    if not moe.get("shared_hidden_size") or not moe.get("shared_gate", False):
        raise ValueError("to_hf(qwen3_next): Qwen3-Next's sparse blocks always have a shared expert with a sigmoid gate; this "
                         f"model's moe has shared_hidden_size={moe.get('shared_hidden_size')}, shared_gate={moe.get('shared_gate', False)}")
    return transformers.Qwen3NextConfig(
        intermediate_size=SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio), num_experts=moe.get("num_experts", 8),
        num_experts_per_tok=moe.get("top_k", 2), moe_intermediate_size=moe.get("hidden_size") or glu_hidden_size(mc.d_model),
        norm_topk_prob=moe.get("normalize_topk", True), shared_expert_intermediate_size=moe.get("shared_hidden_size") or 0,
        decoder_sparse_step=1, mlp_only_layers=[i for i, m in enumerate(mlps) if m != "moe"], **fields)


def _qwen3_next_rules(cfg) -> list[Rule]:
    """Qwen3-Next: Qwen3.5's layers with its own DeltaNet layout, and sparse MoE blocks -> rnnlab's moe: router (E, D),
    experts' gate_up_proj (E, 2I, D) = [gate | up] rows and down_proj (E, D, I) transposed into w13 (E, D, 2I) and
    w2 (E, I, D), the shared expert's gate and up into the shared w13 (D, 2S), its sigmoid gate as it is. Where a
    layer's MLP is dense the SwiGLU rules apply (a rule claims only the tensors present)."""
    f, r = "model.layers.{i}.mlp", "blocks.{i}.mlp"
    T = lambda t: t.transpose(-1, -2)  # noqa: E731
    return _qwen_rules(cfg, qwen3_next=True) + _swiglu_rules(f, r) + [
        Rule(f"{f}.gate.weight", f"{r}.router.weight"), Rule(f"{f}.shared_expert_gate.weight", f"{r}.shared_gate.weight"),
        Rule(f"{f}.experts.gate_up_proj", f"{r}.w13", T, T), Rule(f"{f}.experts.down_proj", f"{r}.w2", T, T),
        Rule((f"{f}.shared_expert.gate_proj.weight", f"{f}.shared_expert.up_proj.weight"), f"{r}.shared.w13",
             lambda g, u: torch.cat([g, u]).T, lambda w: tuple(w.T.chunk(2))),
        Rule(f"{f}.shared_expert.down_proj.weight", f"{r}.shared.w2", T, T)]


def _qwen3_next_stack_experts(state: dict) -> dict:
    """Checkpoints (and transformers 4.x models) hold each expert's gate_proj, up_proj, down_proj apart; 5.x stacks them
    as experts.gate_up_proj (E, 2I, D) = [gate | up] rows and experts.down_proj (E, D, I), the layout the rules read
    (transformers' own qwen2_moe conversion on load). ``mtp.*`` (the multi-token-prediction head) is dropped, as
    HF's causal LM drops it on load."""
    out, experts = {}, {}
    for k, t in state.items():
        m = re.match(r"(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", k)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = t
        elif not k.startswith("mtp."):
            out[k] = t
    for prefix, parts in experts.items():
        E = len(parts) // 3
        if set(parts) != {(e, n) for e in range(E) for n in ("gate_proj", "up_proj", "down_proj")}:
            raise ValueError(f"from_hf(qwen3_next): {prefix} does not hold gate_proj, up_proj and down_proj of experts 0..{E - 1}")
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([parts[e, "gate_proj"], parts[e, "up_proj"]]) for e in range(E)])
        out[f"{prefix}.down_proj"] = torch.stack([parts[e, "down_proj"] for e in range(E)])
    return out


register_arch(Arch("Qwen3-Next", ("qwen3_next",), "Qwen3NextForCausalLM", _qwen3_next_config, _qwen3_next_to_hf, _qwen3_next_rules,
                   read_hf_state=_qwen3_next_stack_experts))


# --- RWKV-4 ----------------------------------------------------------------------------------------------------

def _rwkv_config(cfg) -> ModelConfig:
    D = cfg.hidden_size
    att = cfg.attention_hidden_size or D
    inter = cfg.intermediate_size or 4 * D
    _need(cfg, "attention_hidden_size", att == D, "attention_hidden_size == hidden_size")
    _need(cfg, "intermediate_size", inter % D == 0, "a multiple of hidden_size")
    _need(cfg, "layer_norm_epsilon", cfg.layer_norm_epsilon == 1e-5, "1e-5, the eps of HF's final LayerNorm")
    return _lm(cfg, "rwkv4", {}, mlp="rwkv4_channel_mix", mlp_kwargs={"expansion": inter // D}, norm="layer",
               embed_norm=True, norm_eps=cfg.layer_norm_epsilon)


def _rwkv_to_hf(mc: ModelConfig):
    import transformers

    return transformers.RwkvConfig(vocab_size=mc.vocab_size, hidden_size=mc.d_model, num_hidden_layers=mc.n_layers,
                                   attention_hidden_size=mc.d_model, intermediate_size=mc.mlp_kwargs.get("expansion", 4) * mc.d_model,
                                   layer_norm_epsilon=mc.norm_eps, tie_word_embeddings=mc.tie_embeddings)


def _flat(t):  # HF's time_mix_* (1, 1, D) <-> rnnlab's (D,)
    return t.reshape(-1)


def _unflat(t):
    return rearrange(t, "d -> 1 1 d")


def _rwkv_rules(cfg) -> list[Rule]:
    a, f, b = "rwkv.blocks.{i}.attention", "rwkv.blocks.{i}.feed_forward", "blocks.{i}"
    rules = _backbone("rwkv", "embeddings", "ln_out", head="head.weight") + [
        Rule("rwkv.ln_out.bias", "norm.bias"),
        Rule("rwkv.blocks.0.pre_ln.weight", "embed_norm.weight"), Rule("rwkv.blocks.0.pre_ln.bias", "embed_norm.bias"),
    ]
    for n in ("weight", "bias"):
        rules += [Rule(f"rwkv.blocks.{{i}}.ln1.{n}", f"{b}.norm1.{n}"), Rule(f"rwkv.blocks.{{i}}.ln2.{n}", f"{b}.norm2.{n}")]
    rules += [Rule(f"{a}.{n}", f"{b}.mixer.{n}") for n in ("time_decay", "time_first", "key.weight", "value.weight",
                                                           "receptance.weight", "output.weight")]
    rules += [Rule(f"{a}.time_mix_{hf}", f"{b}.mixer.time_mix_{r}", _flat, _unflat) for hf, r in (("key", "k"), ("value", "v"), ("receptance", "r"))]
    rules += [Rule(f"{f}.time_mix_{hf}", f"{b}.mlp.time_mix_{r}", _flat, _unflat) for hf, r in (("key", "k"), ("receptance", "r"))]
    rules += [Rule(f"{f}.{n}.weight", f"{b}.mlp.{n}.weight") for n in ("key", "receptance", "value")]
    return rules


def _rwkv_unrescale(hf_model, state: dict) -> dict:
    """HF's RwkvModel divides each block's attention.output and feed_forward.value weights by 2^(i // rescale_every)
    in place when it first runs in eval mode (and halves the hidden states to match); multiply them back."""
    base = getattr(hf_model, "rwkv", hf_model)
    every = hf_model.config.rescale_every
    if not getattr(base, "layers_are_rescaled", False) or not every:
        return state
    state = dict(state)
    for k in list(state):
        m = k.split(".")
        if k.endswith(("attention.output.weight", "feed_forward.value.weight")) and "blocks" in m:
            state[k] = state[k] * 2 ** (int(m[m.index("blocks") + 1]) // every)
    return state


register_arch(Arch("RWKV-4", ("rwkv",), "RwkvForCausalLM", _rwkv_config, _rwkv_to_hf, _rwkv_rules, fix_hf_state=_rwkv_unrescale))


# --- xLSTM (xLSTM 7B's architecture): mLSTM layers ("dense" layout) and SwiGLU MLPs ----------------------------

def _xlstm_config(cfg) -> ModelConfig:
    D, H = cfg.hidden_size, cfg.num_heads
    qk, v = int(D * cfg.qk_dim_factor), int(D * cfg.v_dim_factor)  # the widths HF's xLSTMLayer builds
    _need(cfg, "use_bias", not cfg.use_bias, "xLSTM 7B's layers without biases")
    _need(cfg, "add_out_norm", cfg.add_out_norm, "a final RMSNorm (HF's own xLSTMModel always applies it)")
    _need(cfg, "v_dim_factor", v == round(D * cfg.v_dim_factor) and v % H == 0, "hidden_size * v_dim_factor a multiple of num_heads")
    _need(cfg, "qk_dim_factor", qk % H == 0, "hidden_size * qk_dim_factor a multiple of num_heads")
    kw = {"num_heads": H, "proj_factor": v / D, "layout": "dense", "qk_dim_factor": qk / v, "norm_eps": float(cfg.norm_eps),
          "eps": float(cfg.eps), "gate_soft_cap": None if cfg.gate_soft_cap is None else float(cfg.gate_soft_cap),
          "chunk_size": cfg.chunk_size}
    up = int(((D * cfg.ffn_proj_factor + cfg.ffn_round_up_to_multiple_of - 1) // cfg.ffn_round_up_to_multiple_of)
             * cfg.ffn_round_up_to_multiple_of)  # HF's xLSTMFeedForward.up_proj_dim
    cap = cfg.output_logit_soft_cap
    return _lm(cfg, "mlstm", kw, mlp="swiglu", mlp_ratio=_swiglu_ratio(D, up), norm_eps=float(cfg.norm_eps),
               logit_soft_cap=None if cap is None else float(cap))


def _xlstm_to_hf(mc: ModelConfig):
    import transformers

    from rnnlab.models.model import SwiGLU

    kw = mc.layer_kwargs()[0]
    D, proj = mc.d_model, kw.get("proj_factor", 2.0)
    hidden = SwiGLU.hidden_size(D, mc.mlp_ratio)
    if kw.get("gate_soft_cap") is None or mc.logit_soft_cap is None:  # HF's config types them as numbers
        raise ValueError(f"to_hf(xlstm): xLSTMConfig needs both soft caps; this model has mlstm gate_soft_cap="
                         f"{kw.get('gate_soft_cap')} and logit_soft_cap={mc.logit_soft_cap}")
    return transformers.xLSTMConfig(
        vocab_size=mc.vocab_size, hidden_size=D, num_hidden_layers=mc.n_layers, num_heads=kw.get("num_heads", 4),
        qk_dim_factor=kw.get("qk_dim_factor", 1.0) * proj, v_dim_factor=proj, norm_eps=mc.norm_eps, eps=kw.get("eps", 0.0),
        gate_soft_cap=kw.get("gate_soft_cap"), output_logit_soft_cap=mc.logit_soft_cap, ffn_proj_factor=hidden / D,
        ffn_round_up_to_multiple_of=8, chunk_size=kw.get("chunk_size", 64), use_bias=False, add_out_norm=True,
        tie_word_embeddings=mc.tie_embeddings, weight_mode="single", autocast_kernel_dtype="float32")


def _xlstm_rules(cfg) -> list[Rule]:
    L, b = "backbone.blocks.{i}", "blocks.{i}"
    m, x = f"{L}.mlstm_layer", f"{b}.mixer"
    qk, v = int(cfg.hidden_size * cfg.qk_dim_factor), int(cfg.hidden_size * cfg.v_dim_factor)
    rules = _backbone("backbone", "embeddings", "out_norm") + [
        Rule(f"{L}.norm_mlstm.weight", f"{b}.norm1.weight"), Rule(f"{L}.norm_ffn.weight", f"{b}.norm2.weight"),
        Rule(f"{m}.multihead_norm.weight", f"{x}.norm_weight"), Rule(f"{m}.out_proj.weight", f"{x}.proj_down.weight"),
        Rule(f"{L}.ffn.proj_down.weight", f"{b}.mlp.w2.weight"),
    ]
    if cfg.weight_mode == "fused":  # HF's fused layout is rnnlab's: [q | k | v | o], [i~ | f~], [gate | up]
        return rules + [Rule(f"{m}.qkv_opreact.weight", f"{x}.in_proj.weight"), Rule(f"{m}.ifgate_preact.weight", f"{x}.gates.weight"),
                        Rule(f"{m}.ifgate_preact.bias", f"{x}.gates.bias"), Rule(f"{L}.ffn.proj_up_gate_z.weight", f"{b}.mlp.w13.weight")]
    return rules + [
        Rule(tuple(f"{m}.{n}.weight" for n in ("q", "k", "v", "ogate_preact")), f"{x}.in_proj.weight",
             to_hf=lambda t: tuple(t.split([qk, qk, v, v], 0))),
        Rule((f"{m}.igate_preact.weight", f"{m}.fgate_preact.weight"), f"{x}.gates.weight"),
        Rule((f"{m}.igate_preact.bias", f"{m}.fgate_preact.bias"), f"{x}.gates.bias"),
        Rule((f"{L}.ffn.proj_up_gate.weight", f"{L}.ffn.proj_up.weight"), f"{b}.mlp.w13.weight"),
    ]


register_arch(Arch("xLSTM", ("xlstm",), "xLSTMForCausalLM", _xlstm_config, _xlstm_to_hf, _xlstm_rules))


# --- architectures refused, and why (from_hf names the reason) -------------------------------------------------

NOT_MAPPED = {
    "zamba2": "Zamba2's attention is one block shared by several layers: it reads the hidden state concatenated with the "
              "embeddings (width 2 * hidden_size), carries per-layer LoRA adapters on q, k, v and its MLP, and its output "
              "enters through a per-layer linear added to the next Mamba-2 layer's input; an rnnlab layer owns its weights "
              "and sees only the residual stream, so the mapping is not direct (its Mamba-2 layers alone would be)",
    "qwen3_5": "a Qwen3.5 checkpoint with its vision tower: only the text model maps, as a Qwen3_5ForCausalLM "
               "(model_type 'qwen3_5_text') holding the language model's weights",
}


# --- layers of hybrid stacks: Qwen3-Next / Qwen3.5 gated DeltaNet -----------------------------------------------

def layer_from_hf(layer):
    """A transformers layer of a hybrid stack -> the rnnlab mixer computing the same function, with its weights.
    Supported: Qwen3NextGatedDeltaNet, Qwen3_5GatedDeltaNet (-> gated_deltanet), RecurrentGemmaRecurrentBlock (-> hawk)."""
    name = type(layer).__name__
    if name not in LAYERS:
        raise ValueError(f"layer_from_hf: no mapping for {name}; supported: {', '.join(sorted(LAYERS))}")
    return LAYERS[name](layer)


def gated_deltanet_from_hf(layer):
    """A transformers ``Qwen3NextGatedDeltaNet`` or ``Qwen3_5GatedDeltaNet`` layer -> rnnlab ``gated_deltanet`` mixer
    with its weights, grouped value heads included (``num_v_heads``: the released checkpoints' 32 value heads on 16 key
    heads). Whole Qwen3.5 and Qwen3-Next models map with ``from_hf``."""
    dims = (layer.num_k_heads, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim)
    mixer = create_mixer("gated_deltanet", layer.hidden_size, **_gdn_kwargs(*dims, layer.conv_kernel_size, layer.activation,
                                                                            layer.layer_norm_epsilon))
    rules = _gdn_rules("", "", *dims, qwen3_next=hasattr(layer, "in_proj_qkvz"))
    mixer.load_state_dict(_rename({k: v.detach() for k, v in layer.state_dict().items()}, rules, "hf"))
    return mixer.eval()


def _gdn_kwargs(H: int, Hv: int, K: int, V: int, conv: int, activation: str, eps: float) -> dict:
    """The gated_deltanet options of a Qwen3-Next / Qwen3.5 gated DeltaNet: key heads H, value heads Hv, head sizes K, V."""
    if activation != "silu":
        raise ValueError(f"gated DeltaNet: conv activation {activation!r}; rnnlab's is SiLU")
    if Hv % H:
        raise ValueError(f"gated DeltaNet: {Hv} value heads for {H} key heads (not a multiple)")
    return {"num_heads": H, "num_v_heads": Hv, "head_dim": K, "expand_v": V / K, "conv_size": conv, "norm_eps": float(eps)}


def _gdn_rules(m: str, x: str, H: int, Hv: int, K: int, V: int, qwen3_next: bool) -> list[Rule]:
    """HF's Qwen3.5 (or Qwen3-Next) gated DeltaNet at prefix ``m`` <-> rnnlab's gated_deltanet at ``x`` ("" = the layer
    alone). Qwen3.5 holds [q | k | v] in in_proj_qkv and z, b, a apart; Qwen3-Next groups rows per key head:
    [q, k, v (G heads), z (G heads)] and [b (G), a (G)]. The conv is over [q | k | v] in both."""
    hf = lambda n: f"{m}.{n}" if m else n  # noqa: E731
    rl = lambda *ns: tuple(f"{x}.{n}" if x else n for n in ns)  # noqa: E731
    G, qkv = Hv // H, [H * K, H * K, Hv * V]
    rules = [Rule(hf("conv1d.weight"), rl("q_conv.weight", "k_conv.weight", "v_conv.weight"),
                  lambda w: tuple(w[:, 0].split(qkv, 0)), lambda *t: torch.cat(t, 0)[:, None]),
             Rule(hf("A_log"), rl("A_log")), Rule(hf("dt_bias"), rl("dt_bias")), Rule(hf("norm.weight"), rl("o_norm.weight")),
             Rule(hf("out_proj.weight"), rl("o_proj.weight"))]
    if not qwen3_next:
        return rules + [Rule(hf("in_proj_qkv.weight"), rl("q_proj.weight", "k_proj.weight", "v_proj.weight"), lambda w: tuple(w.split(qkv, 0))),
                        Rule(hf("in_proj_z.weight"), rl("g_proj.weight")), Rule(hf("in_proj_b.weight"), rl("b_proj.weight")),
                        Rule(hf("in_proj_a.weight"), rl("a_proj.weight"))]

    def ungroup(sizes):  # per-key-head row groups -> one matrix per part, heads in order (value head h·G + g)
        return lambda w: tuple(rearrange(t, "h r d -> (h r) d") for t in w.view(H, sum(sizes), w.shape[-1]).split(sizes, 1))

    def group(*parts):
        return torch.cat([t.view(H, -1, t.shape[-1]) for t in parts], 1).flatten(0, 1)

    return rules + [Rule(hf("in_proj_qkvz.weight"), rl("q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight"),
                         ungroup([K, K, G * V, G * V]), group),
                    Rule(hf("in_proj_ba.weight"), rl("b_proj.weight", "a_proj.weight"), ungroup([G, G]), group)]


def hawk_from_hf(block):
    """A transformers ``RecurrentGemmaRecurrentBlock`` (Griffin's recurrent block with the RG-LRU) -> rnnlab ``hawk``
    with recurrentgemma's options: block-diagonal gates (one block per head) and the first-token reset."""
    act = type(block.act_fn).__name__
    D, Dr, H = block.hidden_size, block.lru_width, block.rg_lru.num_attention_heads
    mixer = create_mixer("hawk", D, expansion=Dr / D, conv_size=block.conv1d_width, gate_blocks=H, reset_first_token=True)
    if mixer.d_rnn != Dr or act not in ("PytorchGELUTanh", "GELUTanh"):
        raise ValueError(f"hawk_from_hf: lru_width {Dr} for hidden_size {D} and activation {act}; rnnlab maps "
                         "round(expansion * d_model) channels and tanh-approximated GeLU")
    mixer.load_state_dict(_rename({k: v.detach() for k, v in block.state_dict().items()}, _rg_recurrent_rules("", "", H), "hf"))
    return mixer.eval()


LAYERS = {"Qwen3NextGatedDeltaNet": gated_deltanet_from_hf, "Qwen3_5GatedDeltaNet": gated_deltanet_from_hf,
          "RecurrentGemmaRecurrentBlock": hawk_from_hf}
