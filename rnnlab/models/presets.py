"""Model presets as functions (torchtune's llama3_8b()): hybrids written as data, from registered mixers.

    hawk(size)        Hawk (De et al. 2024, "Griffin", Sec. 2): RG-LRU recurrent blocks (`hawk`), each with a GeGLU MLP
    griffin(size)     Griffin (ibid.): two recurrent blocks, then one local multi-query attention block, repeated
    recurrentgemma(size)  RecurrentGemma 2B / 9B (Botev et al. 2024): Griffin with recurrentgemma's options
    samba(size)       Samba (Ren et al. 2024): Mamba and sliding-window attention alternating, each with a SwiGLU MLP
    jamba(size)       Jamba (Lieber et al. 2024): Mamba with one attention layer in 8 (offset 4), a mixture of experts
                      (16 experts, top 2) as every other layer's MLP
    hybrid_ratio(linear_mixer, ratio)  ``ratio`` linear-mixer layers, then one full-attention layer, repeated
    titans_mal(...)   Titans' memory as a layer (MAL, Behrouz et al. 2024, §4.3): each pair of layers is the neural
                      memory (`titans`) followed by sliding-window attention (`sliding_attention`)
    titans_mag(...)   Titans' memory as a gate (MAG, §4.2): every layer the `titans_mag` mixer

``size`` picks a published shape ("2b", "1.3b", ...) or "tiny" (a few layers of width 64, for tasks and tests);
``config``: other ModelConfig fields, which win over the preset's. ``build("griffin", size="1.3b")`` builds by name
(``rnnlab train model.preset=griffin model.preset_options.size=tiny``). Hybrids are written with
``ModelConfig.mixer_every`` (period/offset rules) and per-mixer-name kwargs, so changing n_layers keeps the pattern.
"""
from __future__ import annotations

from rnnlab.models.config import ModelConfig

__all__ = ["PRESETS", "build", "hawk", "griffin", "recurrentgemma", "samba", "jamba", "hybrid_ratio", "titans_mal", "titans_mag"]

GRIFFIN_MLP_RATIO = 4.5
"""Griffin's gated MLP has expansion M = 3 (hidden 3 * d_model, Sec. 2.2); rnnlab's rule 2/3 * ratio * d_model gives
that at ratio 4.5."""

# Griffin / Hawk shapes: width D, RNN width, depth, heads (attention heads, and the blocks of the RG-LRU gates), from
# De et al. 2024, Appendix C, Table 2 (shared by their MQA, Hawk and Griffin families); the 7B as the authors' code
# writes it too (google-deepmind/recurrentgemma, common.py, Preset.GRIFFIN_PAPER_7B / HAWK_PAPER_7B). MLP width 3 * D,
# local attention window 1024, vocabulary 256000, embeddings neither scaled by sqrt(D) nor logits soft-capped.
# The size names are nominal: one shape serves all three families, whose non-embedding counts at a shape differ by up
# to 25% (MQA vs Hawk); e.g. 200M is Hawk 177M, Griffin 165M (tests/models/test_presets.py writes every count out).
GRIFFIN_SHAPES = {
    "tiny": (64, 64, 3, 2),
    "100m": (768, 1024, 12, 6),
    "200m": (1024, 1536, 12, 8),
    "400m": (1536, 2048, 12, 12),
    "1.3b": (2048, 2560, 24, 16),
    "3b": (3072, 4096, 24, 24),
    "7b": (4096, 5632, 32, 32),
    "14b": (5120, 8192, 40, 40),
}

# Botev et al. 2024 (RecurrentGemma), Table 1 / the released configs: width, depth, heads, vocabulary; RNN width = width,
# MLP expansion 3, local attention window 2048, one key/value head, RoPE on half of each head (head size 256).
RECURRENTGEMMA_SHAPES = {
    "tiny": (64, 3, 2, 256),
    "2b": (2560, 26, 10, 256000),
    "9b": (4096, 38, 16, 256000),
}

# microsoft/Samba lit_gpt/config.py (Samba_421M, Samba_1.3B): width, layers (Mamba and SWA alternating, each with an
# MLP), heads, SwiGLU hidden size, vocabulary; window 2048.
SAMBA_SHAPES = {
    "tiny": (64, 4, 2, 128, 256),
    "421m": (1536, 12, 12, 4096, 32000),
    "1.3b": (2304, 18, 18, 6144, 32000),
}


def _shape(table: dict, size: str, preset: str):
    if size not in table:
        raise ValueError(f"{preset}: unknown size {size!r}; valid sizes: {', '.join(table)}")
    return table[size]


def _griffin_like(mixer_every: dict, size: str, preset: str, vocab_size: int | None, window: int, gate_blocks: int,
                  **config) -> ModelConfig:
    D, rnn, depth, heads = _shape(GRIFFIN_SHAPES, size, preset)
    vocab_size = (256 if size == "tiny" else 256000) if vocab_size is None else vocab_size
    kwargs = {"hawk": {"expansion": rnn / D, "gate_blocks": gate_blocks},
              "sliding_attention": {"num_heads": heads, "num_kv_heads": 1, "window": window if size != "tiny" else 16}}
    base = dict(mixer="hawk", mixer_every=mixer_every, mixer_kwargs={k: kwargs[k] for k in ["hawk", *mixer_every]}, d_model=D,
                n_layers=depth, vocab_size=vocab_size, mlp="geglu", mlp_ratio=GRIFFIN_MLP_RATIO, tie_embeddings=True,
                embedding_init="gpt2")
    return ModelConfig(**{**base, **config})


def hawk(size: str = "tiny", vocab_size: int | None = None, gate_blocks: int = 16, **config) -> ModelConfig:
    """Hawk (De et al. 2024, Sec. 2): ``depth`` residual blocks, each the recurrent block (`hawk`, RNN width from
    GRIFFIN_SHAPES) then a GeGLU MLP of expansion 3; embeddings tied to the head (Sec. 2.1), unscaled
    (embedding_init="gpt2", the authors' 7B preset). The RG-LRU gates W_a, W_x are block-diagonal with 16 blocks, as
    Sec. 4.1 says of all the paper's experiments; the authors' code's paper presets (GRIFFIN_PAPER_7B) use one block
    per head instead: ``gate_blocks=32`` at 7B."""
    return _griffin_like({}, size, "hawk", vocab_size, 1024, gate_blocks, **config)


def griffin(size: str = "tiny", vocab_size: int | None = None, window: int = 1024, gate_blocks: int = 16,
            **config) -> ModelConfig:
    """Griffin (De et al. 2024, Sec. 2.4): blocks repeating (recurrent, recurrent, local MQA attention), i.e.
    `sliding_attention` every 3rd layer at offset 2, window 1024 (the paper's); one key/value head (MQA); GeGLU MLPs
    of expansion 3; tied, unscaled embeddings; RG-LRU gates of ``gate_blocks`` blocks (16, Sec. 4.1; see `hawk`).
    Shapes: GRIFFIN_SHAPES; "tiny" is d_model 64, 3 layers, window 16."""
    return _griffin_like({"sliding_attention": [3, 2]}, size, "griffin", vocab_size, window, gate_blocks, **config)


def recurrentgemma(size: str = "tiny", vocab_size: int | None = None, **config) -> ModelConfig:
    """RecurrentGemma (Botev et al. 2024): Griffin with RNN width = width, (recurrent, recurrent, local MQA attention)
    repeated and truncated at the depth (2B: 26 layers end on two recurrent ones), window 2048, one key/value head of size
    256, RoPE on half of each head (``rotary_dim``), recurrentgemma's block-diagonal RG-LRU gates (one block per head)
    and first-token reset, GeGLU MLPs of expansion 3 with biases, a bias on the attention output (none on q, k, v),
    embeddings scaled by sqrt(width) and tied, logits soft-capped at 30. Differences from the checkpoints, stated:
    rnnlab's RMSNorm scales by w (recurrentgemma's by 1 + w: a reparameterization, converted by rnnlab.interop), and
    the embedding scale is the exact sqrt(width) where HF's code rounds it to bfloat16 (``embed_scale=`` sets it; to_hf
    needs HF's).
    Shapes: google-deepmind/recurrentgemma common.py (RECURRENT_GEMMA_2B_V1 / 9B_V1) and HF's config.json files."""
    D, depth, heads, vocab = _shape(RECURRENTGEMMA_SHAPES, size, "recurrentgemma")
    tiny = size == "tiny"
    head_dim = D // heads
    kwargs = {"hawk": {"expansion": 1.0, "gate_blocks": heads, "reset_first_token": True},
              "sliding_attention": {"num_heads": heads, "num_kv_heads": 1, "window": 16 if tiny else 2048,
                                    "rotary_dim": head_dim // 2, "out_bias": True}}
    base = dict(mixer="hawk", mixer_every={"sliding_attention": [3, 2]}, mixer_kwargs=kwargs, d_model=D, n_layers=depth,
                vocab_size=vocab if vocab_size is None else vocab_size, mlp="geglu", mlp_ratio=GRIFFIN_MLP_RATIO, mlp_bias=True,
                tie_embeddings=True, embedding_init="unit", logit_soft_cap=30.0)
    return ModelConfig(**{**base, **config})


def samba(size: str = "tiny", vocab_size: int | None = None, **config) -> ModelConfig:
    """Samba (Ren et al. 2024, "Samba: Simple Hybrid State Space Models", Sec. 2): layers alternating Mamba and
    sliding-window attention (window 2048, full-width rotary), each followed by a SwiGLU MLP: (Mamba, MLP, SWA, MLP)
    repeated. Shapes from microsoft/Samba's lit_gpt/config.py; untied embeddings (its separate lm_head). "tiny" is
    d_model 64, 4 layers, window 16."""
    D, depth, heads, hidden, vocab = _shape(SAMBA_SHAPES, size, "samba")
    kwargs = {"mamba": {}, "sliding_attention": {"num_heads": heads, "window": 16 if size == "tiny" else 2048}}
    base = dict(mixer="mamba", mixer_every={"sliding_attention": [2, 1]}, mixer_kwargs=kwargs, d_model=D, n_layers=depth,
                vocab_size=vocab if vocab_size is None else vocab_size, mlp="swiglu", mlp_ratio=1.5 * hidden / D)
    return ModelConfig(**{**base, **config})


# Jamba v0.1 (Lieber et al. 2024, Sec. 3.1; ai21labs/Jamba-v0.1 config.json): width, layers, heads, key/value heads,
# experts, top-k, expert (and dense MLP) hidden size, vocabulary.
JAMBA_SHAPES = {
    "tiny": (64, 8, 2, 1, 4, 2, 128, 256),
    "v0.1": (4096, 32, 32, 8, 16, 2, 14336, 65536),
}


def jamba(size: str = "tiny", vocab_size: int | None = None, **config) -> ModelConfig:
    """Jamba (Lieber et al. 2024, "Jamba: A Hybrid Transformer-Mamba Language Model", Sec. 2-3, Fig. 1): Jamba blocks of
    l = 8 layers with an attention-to-Mamba ratio a:m = 1:7, attention at offset 4 of each block (layers 4, 12, 20, 28;
    the released config's attn_layer_period 8 / offset 4), and a mixture of experts replacing the MLP every e = 2 layers
    (odd layers: expert_layer_period 2 / offset 1), n = 16 experts of which K = 2 are used per token, SwiGLU experts
    and MLPs of hidden 14336. Attention: 32 heads, 8 key/value heads (GQA), no positional encoding (Sec. 6.2: the Mamba
    layers supply position; ``rope_base=None``). Mamba (Gu & Dao 2023): d_state 16, conv 4, expand 2, dt rank 256,
    no projection biases, conv bias, RMSNorm on dt, B and C (Sec. 6.3, for stability at scale). Untied embeddings,
    vocabulary 65536, RMSNorm everywhere. Published size (Sec. 3.1, Table 1): 52B total, 12B active parameters;
    ``SequenceModel.num_active_parameters`` counts the latter.

    Choices, stated: the MoE weights are the router's softmax probabilities of the top 2 without renormalizing
    (``normalize_topk=False``: ai21labs' modeling_jamba.py; the paper does not say, mlx-lm's port renormalizes); the
    dt/B/C norms are weightless here (rnnlab's mamba ``bcdt_norm_eps``, Falcon Mamba's), the released checkpoint's have
    weights (256 + 16 + 16 per Mamba layer, 8K parameters in all); the load-balancing loss coefficient is the
    trainer's (``train.aux_loss_coef``; the release's router_aux_loss_coef 0.001 in HF's convention is 0.002 in
    rnnlab's, rnnlab.ops.moe). "tiny": d_model 64, 8 layers (the same pattern), 4 experts of hidden 128, vocabulary 256."""
    D, depth, heads, kv_heads, experts, top_k, hidden, vocab = _shape(JAMBA_SHAPES, size, "jamba")
    kwargs = {"mamba": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto" if size == "tiny" else 256,
                        "bias": False, "conv_bias": True, "bcdt_norm_eps": 1e-6},
              "attention": {"num_heads": heads, "num_kv_heads": kv_heads, "rope_base": None}}
    base = dict(mixer="mamba", mixer_every={"attention": [8, 4]}, mixer_kwargs=kwargs, d_model=D, n_layers=depth,
                vocab_size=vocab if vocab_size is None else vocab_size, mlp="swiglu", mlp_every={"moe": [2, 1]},
                mlp_kwargs={"moe": {"num_experts": experts, "top_k": top_k, "hidden_size": hidden, "normalize_topk": False}},
                mlp_ratio=1.5 * hidden / D, embedding_init="gpt2")
    return ModelConfig(**{**base, **config})


def hybrid_ratio(linear_mixer: str = "gated_deltanet", ratio: int | None = 3, d_model: int = 64, n_layers: int = 8,
                 vocab_size: int | None = 256, linear_kwargs: dict | None = None, num_heads: int = 4, **config) -> ModelConfig:
    """``ratio`` layers of ``linear_mixer``, then one full-attention layer, repeated ("A Systematic Analysis of Hybrid
    Linear Attention", 2025: linear:full at 3:1 to 6:1); ``ratio=None``: every layer linear. Attention sits at the
    layers i with i % (ratio + 1) == ratio, so the stack ends on attention when n_layers is a multiple of ratio + 1."""
    if ratio is not None and (not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1):
        raise ValueError(f"hybrid_ratio: ratio must be an int >= 1 (linear layers per attention layer) or None, got {ratio!r}")
    every = {} if ratio is None else {"attention": [ratio + 1, ratio]}
    kwargs = {linear_mixer: dict(linear_kwargs or {}), "attention": {"num_heads": num_heads}}
    base = dict(mixer=linear_mixer, mixer_every=every, mixer_kwargs={k: kwargs[k] for k in [linear_mixer, *every]},
                d_model=d_model, n_layers=n_layers, vocab_size=vocab_size)
    return ModelConfig(**{**base, **config})


def titans_mal(d_model: int = 256, n_layers: int = 4, vocab_size: int | None = 256, window: int = 64, num_heads: int = 4,
               memory_depth: int = 2, chunk_size: int = 16, persistent_tokens: int = 4, **config) -> ModelConfig:
    """MAL: ``n_layers`` (even) layers alternating the neural memory and sliding-window attention (window ``window``).
    Persistent memory (§3.3; N_p = ``persistent_tokens``, 0: none): learnable tokens every query of each attention layer
    sees besides its window (the attention mixer's option: parameters, not state, so packing and decoding see them
    alike). Choice: the paper prepends them to the memory layer's input; a memory run over fixed learned tokens from a
    learned M_0 only reaches another fixed state, which the learned M_0 expresses, so the memory does not read them.
    ``config``: other ModelConfig fields."""
    if n_layers < 2 or n_layers % 2:
        raise ValueError(f"titans_mal needs an even n_layers >= 2 (memory, then attention), got {n_layers}")
    memory = {"num_heads": num_heads, "memory_depth": memory_depth, "chunk_size": chunk_size}
    attention = {"num_heads": num_heads, "window": window, "persistent_tokens": persistent_tokens}
    return ModelConfig(mixer=["titans", "sliding_attention"] * (n_layers // 2), mixer_kwargs=[memory, attention] * (n_layers // 2),
                       d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, **config)


def titans_mag(d_model: int = 256, n_layers: int = 4, vocab_size: int | None = 256, window: int = 64, num_heads: int = 4,
               memory_depth: int = 2, chunk_size: int = 16, persistent_tokens: int = 4, **config) -> ModelConfig:
    """MAG: ``n_layers`` layers of the `titans_mag` mixer (sliding-window attention gated by the neural memory, with
    ``persistent_tokens`` persistent-memory tokens)."""
    kw = {"num_heads": num_heads, "window": window, "memory_depth": memory_depth, "chunk_size": chunk_size,
          "persistent_tokens": persistent_tokens}
    return ModelConfig(mixer="titans_mag", mixer_kwargs=kw, d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, **config)


PRESETS = {f.__name__: f for f in (hawk, griffin, recurrentgemma, samba, jamba, hybrid_ratio, titans_mal, titans_mag)}


def build(name: str, **options) -> ModelConfig:
    """A preset by name: ``build("recurrentgemma", size="2b")``; ``options`` go to the preset function."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name](**options)
