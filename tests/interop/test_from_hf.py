"""HF recurrent checkpoints in rnnlab: tiny random HF models built locally (nothing downloaded) give the same
logits through rnnlab's forms as through transformers, in the parallel form, token by token and in left-padded
batches, within the float32 tolerance of rnnlab.testing (measured: 1e-7 to 5e-7 relative; xLSTM, whose exponential
input gates amplify float32 rounding, 2.4e-6 to 5e-6); to_hf brings them back."""
import importlib.util
import inspect
from types import SimpleNamespace

import pytest
import torch

if importlib.util.find_spec("transformers") is None:
    pytest.skip("HF interop tests need transformers (pip install 'rnnlab[hf]')", allow_module_level=True)
if importlib.util.find_spec("fla") is not None:  # HF's recurrent layers would call its Triton kernels on CPU tensors
    pytest.skip("flash-linear-attention is importable: HF's recurrent layers would run its Triton kernels", allow_module_level=True)

import transformers  # noqa: E402
from rnnlab import ModelConfig, SequenceModel  # noqa: E402
from rnnlab.interop import from_hf, hf_architectures, layer_from_hf, to_hf  # noqa: E402
from rnnlab.testing import assert_close  # noqa: E402

transformers.logging.set_verbosity_error()
V, T = 64, 13

# model_type -> (config class, tiny config): 2 layers, odd sizes where the architecture allows them
CONFIGS = {
    "mamba": ("MambaConfig", dict(hidden_size=24, state_size=5, expand=2, conv_kernel=4, time_step_rank=3, use_bias=True)),
    "falcon_mamba": ("FalconMambaConfig", dict(hidden_size=24, state_size=5, expand=2, conv_kernel=3, mixer_rms_eps=1e-6,
                                               use_conv_bias=False)),
    # n_groups > 1 only from transformers 5: 4.x's CPU path normalizes over all of d_inner instead of per group
    # (mamba_ssm's RMSNormGated(group_size=d_inner / ngroups), which rnnlab's mamba2 and transformers 5 follow)
    "mamba2": ("Mamba2Config", dict(hidden_size=32, state_size=8, expand=2, head_dim=16, num_heads=4,
                                    n_groups=2 if int(transformers.__version__.split(".")[0]) >= 5 else 1,
                                    conv_kernel=4, chunk_size=8, use_bias=True, tie_word_embeddings=False)),
    # two Mamba-2 layers around a grouped-query attention layer (4 query heads, 2 key/value heads, rotary on half)
    "bamba": ("BambaConfig", dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                  attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8,
                                  mamba_chunk_size=8, attention_bias=True, num_hidden_layers=3)),
    "rwkv": ("RwkvConfig", dict(hidden_size=32, attention_hidden_size=32, intermediate_size=96, context_length=64)),
    # (recurrent, recurrent, local attention): RG-LRU width 48 over 4 heads, 4 query heads sharing 2 key/value heads with
    # rotary on half of each, a window of 5 (shorter than the 13 tokens), biased q, k, v, GeGLU of 48 units
    "recurrent_gemma": ("RecurrentGemmaConfig", dict(hidden_size=32, lru_width=48, num_attention_heads=4, num_key_value_heads=2,
                                                     intermediate_size=96, attention_window_size=5, attention_bias=True,
                                                     num_hidden_layers=3)),
}
# Qwen3.5 (dense): gated DeltaNet layers with grouped value heads (2 key heads, 4 value heads) and gated attention layers
# (4 query heads of 16, twice the width, on 2 key/value heads, q/k norms, rotary on a quarter of each head, biases on)
if hasattr(transformers, "Qwen3_5TextConfig"):
    CONFIGS["qwen3_5_text"] = ("Qwen3_5TextConfig", dict(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16, num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"]))
# Qwen3-Next: Qwen3.5's layers (its DeltaNet with per-key-head grouped projections) with sparse MoE blocks: 5 experts
# of 12 units, top 2 renormalized, a gated shared expert of 20 units; layer 2 a dense SwiGLU of 48 (mlp_only_layers)
if hasattr(transformers, "Qwen3NextConfig"):
    CONFIGS["qwen3_next"] = ("Qwen3NextConfig", dict(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16, num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"], num_experts=5,
        num_experts_per_tok=2, moe_intermediate_size=12, shared_expert_intermediate_size=20, mlp_only_layers=[2]))
# xLSTM (transformers 4.57 and later): xLSTM 7B's layout, q/k half the width of v; chunk 8 so that 13 tokens take HF's
# chunkwise kernel and its recurrent tail (4.57's chunkwise kernel cannot run: it calls a tensor, `vecM_k_combine(...)`;
# chunk 64 keeps 4.x on its recurrent kernel); widths multiples of 64 (HF's cache rounds them up to 64); no EOS (its
# default, 2, would be banned by min_new_tokens in HF's generate but not in rnnlab's)
if hasattr(transformers, "xLSTMConfig"):
    CONFIGS["xlstm"] = ("xLSTMConfig", dict(hidden_size=128, num_heads=2, qk_dim_factor=0.5, ffn_round_up_to_multiple_of=8,
                                            chunk_size=8 if int(transformers.__version__.split(".")[0]) >= 5 else 64,
                                            autocast_kernel_dtype="float32",
                                            eos_token_id=None))


def hf_model(model_type, **over):
    cls, kw = CONFIGS[model_type]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls)(vocab_size=V, **{"num_hidden_layers": 2, **kw, **over})
    model = getattr(transformers, hf_architectures()[model_type].hf_class)(cfg).eval()
    with torch.no_grad():  # move every tensor off its initial value (zero biases, unit norms) so that each one matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p) * p.abs().mean().clamp_min(0.1))
        for n, p in model.named_parameters():  # xLSTM: gates of every size (its input bias -10 would keep i~ near -10),
            if "gate_preact" in n:  # so that the soft cap, the stabilizer and the exponential input gate all act
                p.copy_(torch.randn_like(p) * (3.0 if n.endswith("bias") else 0.5))
    return model


def hf_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False).logits


def test_every_architecture_has_a_tiny_config_here():
    assert set(CONFIGS) == {t for t, arch in hf_architectures().items() if hasattr(transformers, arch.hf_class)}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_logits_equal_hf_parallel_stepped_and_left_padded(model_type):
    hf = hf_model(model_type)
    model = from_hf(hf)
    ids = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        assert_close(model(ids)[0], expected, name="parallel")
        state, steps = None, []
        for t in range(T):  # the recurrent form, one token at a time
            out, state = model(ids[:, t : t + 1], state)
            steps.append(out)
        assert_close(torch.cat(steps, 1), expected, name="stepped")
        # left-padded rows of lengths 13, 6, 1: each row's logits are its sequence's alone (HF run per row, unpadded)
        lengths, mask = [13, 6, 1], torch.zeros(3, T, dtype=torch.long)
        padded = ids.clone()
        for b, n in enumerate(lengths):
            mask[b, T - n :] = 1
            padded[b, : T - n] = 0
        got = model(padded, attention_mask=mask)[0]
        for b, n in enumerate(lengths):
            assert_close(got[b, T - n :], hf_logits(hf, ids[b : b + 1, T - n :])[0], name=f"left-padded row {b}")


# HF models whose own forward honours a left-padding attention_mask (measured on the configs above, transformers 5.25).
# The others run their recurrent layers over the padding: RecurrentGemma's recurrent blocks ignore the mask (rows of
# 6 and 1 real tokens off by 0.25 and 0.53 relative; its RG-LRU also resets at position 0, a padding token), and so do
# RWKV's, xLSTM's, and the CPU paths of Mamba and Mamba-2 (3e-3 to 1): there rnnlab is compared with HF run per row.
HONOURS_LEFT_PADDING = ("bamba", "falcon_mamba", "qwen3_5_text", "qwen3_next")


@pytest.mark.parametrize("model_type", [t for t in HONOURS_LEFT_PADDING if t in CONFIGS])
def test_left_padded_batches_equal_hf_left_padded(model_type):
    """Where HF's forward honours the mask, rnnlab's left-padded batch equals HF's at every real token (measured 1.8e-7
    to 2.1e-7 for Qwen3.5: its DeltaNet layers zero the padding, its attention masks it, rotary is relative)."""
    hf = hf_model(model_type)
    ids = torch.randint(1, V, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate([13, 6, 1]):
        mask[b, T - n :] = 1
    padded = ids * mask
    with torch.no_grad():
        got, expected = from_hf(hf)(padded, attention_mask=mask)[0], hf_logits(hf, padded, mask)
    for b, n in enumerate([13, 6, 1]):
        assert_close(got[b, T - n :], expected[b, T - n :], name=f"row {b}")


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_to_hf_round_trips_and_paths_load(model_type, tmp_path):
    hf = hf_model(model_type)
    model = from_hf(hf)
    back = to_hf(model, model_type)
    assert type(back) is type(hf)
    ids = torch.randint(0, V, (2, T))
    assert torch.equal(hf_logits(back, ids), hf_logits(hf, ids))
    hf.save_pretrained(tmp_path)  # a local checkpoint folder: config.json + safetensors, read without modeling code
    loaded = from_hf(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


def test_hf_generate_from_a_cache_equals_rnnlab_generate():
    """HF's own recurrent decoding (its cache) and rnnlab's give the same greedy tokens. (HF's RWKV decodes one row
    only: its single-token shift broadcasts a (B, D) state against (B, 1, D) inputs into (B, B, D).)"""
    for model_type in sorted(CONFIGS):
        hf = hf_model(model_type)
        ids = torch.randint(1, V, (1 if model_type == "rwkv" else 2, 7))
        got = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(got, from_hf(hf).generate(ids, 8, temperature=0)), model_type


def test_the_recurrentgemma_preset_exports_with_hfs_embedding_scale():
    """rnnlab's `recurrentgemma` preset is RecurrentGemma's architecture: it exports exactly (its (1 + w) norms, per-head
    gates, biases, window, soft cap) when its embedding scale is HF's bfloat16 sqrt(d_model) (the tiny shape's sqrt(64) = 8
    is one; 2B's sqrt(2560) = 50.596 is 50.5 in HF: set embed_scale), and another scale is refused."""
    from rnnlab.models import presets

    model = SequenceModel(presets.recurrentgemma("tiny", vocab_size=V)).eval()
    hf = to_hf(model, "recurrent_gemma")
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert_close(hf_logits(hf, ids), model(ids)[0])
    with pytest.raises(ValueError, match="embed_scale"):
        to_hf(SequenceModel(presets.recurrentgemma("tiny", vocab_size=V, embed_scale=8.5)), "recurrent_gemma")


def test_recurrentgemma_with_one_head_has_dense_gates():
    """One head: HF's (1, w, w) gate blocks are rnnlab's dense (w, w) gate matrices (hawk gate_blocks=1); both ways."""
    hf = hf_model("recurrent_gemma", num_attention_heads=1, num_key_value_heads=1)
    model = from_hf(hf)
    assert isinstance(model.blocks[0].mixer.gate_a, torch.nn.Linear)
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert_close(model(ids)[0], hf_logits(hf, ids))
    assert torch.equal(hf_logits(to_hf(model, "recurrent_gemma"), ids), hf_logits(hf, ids))


def test_rwkv_inference_rescaling_is_undone():
    """HF's RWKV halves its hidden states every `rescale_every` layers in eval mode and divides its weights in place;
    from_hf multiplies them back: the model equals HF's unscaled network (train mode, which restores the weights)."""
    hf = hf_model("rwkv", rescale_every=1)
    ids = torch.randint(0, V, (2, T))
    hf_logits(hf, ids)  # an eval-mode run rescales the weights in place
    assert hf.rwkv.layers_are_rescaled
    model = from_hf(hf)
    with torch.no_grad():
        unscaled = hf.train()(ids, use_cache=False).logits
    assert not hf.rwkv.layers_are_rescaled
    assert_close(model(ids)[0], unscaled)


def test_what_has_no_counterpart_is_refused():
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf(hf_model("mamba", hidden_act="gelu"))
    with pytest.raises(ValueError, match="attention_hidden_size"):
        from_hf(hf_model("rwkv", attention_hidden_size=16))
    if hasattr(transformers, "Zamba2Config"):  # shared attention blocks on concatenated embeddings: refused with the reason
        zamba2 = SimpleNamespace(config=transformers.Zamba2Config(), state_dict=dict)  # the config decides; no 1.2B model built
        with pytest.raises(ValueError, match="'zamba2' \\(Zamba2's attention is one block shared"):
            from_hf(zamba2)
    if "qwen3_next" in CONFIGS:  # a sparse layer without a shared expert: rnnlab's moe has no gate without one
        with pytest.raises(ValueError, match="shared_expert_intermediate_size"):
            from_hf(hf_model("qwen3_next", shared_expert_intermediate_size=0))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=V)))
    neg = SequenceModel(ModelConfig(mixer="mamba", mixer_kwargs={"negative_eigenvalues": True}, vocab_size=V, d_model=16, n_layers=1, mlp=None))
    with pytest.raises(ValueError, match="negative_eigenvalues"):
        to_hf(neg, "mamba")
    with pytest.raises(ValueError, match="mlp"):
        to_hf(SequenceModel(ModelConfig(mixer="mamba", vocab_size=V, d_model=16, n_layers=1)), "mamba")  # SwiGLU MLP


def test_an_rnnlab_trained_mamba_exports_with_its_embedding_scale_folded():
    model = SequenceModel(ModelConfig(mixer="mamba", mixer_kwargs={"d_state": 4, "dt_min": 1e-4}, vocab_size=V, d_model=16,
                                      n_layers=2, mlp=None)).eval()
    assert model.embed_scale != 1.0  # "unit" embeddings
    hf = to_hf(model, "mamba")
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert_close(hf_logits(hf, ids), model(ids)[0])


def check_layer_equals_hf(mixer, hf, x, cut):
    """An rnnlab mixer == an HF layer (``hf``: x (B, T, D) -> y) in the parallel form, token by token, and packed:
    row 0's first ``cut`` tokens and row 1 back to back, each equal to HF on that sequence alone."""
    with torch.no_grad():
        expected = hf(x)
        assert_close(mixer(x)[0], expected, name="parallel")
        state, steps = None, []
        for t in range(x.shape[1]):
            y, state = mixer(x[:, t : t + 1], state)
            steps.append(y)
        assert_close(torch.cat(steps, 1), expected, name="stepped")
        packed, _ = mixer(torch.cat([x[0, :cut], x[1]])[None], cu_seqlens=torch.tensor([0, cut, cut + x.shape[1]]))
        assert_close(packed[0, :cut], hf(x[:1, :cut])[0], name="packed 0")
        assert_close(packed[0, cut:], expected[1], name="packed 1")


@pytest.mark.parametrize("value_heads", [2, 4])
@pytest.mark.parametrize("cls", ["qwen3_next.modeling_qwen3_next.Qwen3NextGatedDeltaNet", "qwen3_5.modeling_qwen3_5.Qwen3_5GatedDeltaNet"])
def test_qwen_gated_deltanet_layers_equal_rnnlab_gated_deltanet(cls, value_heads):
    """The gated DeltaNet layers of Qwen3-Next's and Qwen3.5's hybrid stacks -> rnnlab's gated_deltanet, with one value
    head per key head and with two (grouped value heads, as the released checkpoints): the same outputs in the parallel
    form, token by token and for packed sequences (each equal to HF on that sequence)."""
    import importlib

    module, name = cls.rsplit(".", 1)
    try:
        layer_cls = getattr(importlib.import_module(f"transformers.models.{module}"), name)
    except (ImportError, AttributeError):
        pytest.skip(f"this transformers has no {name}")
    config_cls = {"Qwen3NextGatedDeltaNet": "Qwen3NextConfig", "Qwen3_5GatedDeltaNet": "Qwen3_5TextConfig"}[name]
    cfg = getattr(transformers, config_cls)(hidden_size=32, linear_num_value_heads=value_heads, linear_num_key_heads=2, linear_key_head_dim=8,
                                            linear_value_head_dim=16, linear_conv_kernel_dim=4, num_hidden_layers=1,
                                            layer_types=["linear_attention"], num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    layer = layer_cls(cfg, 0).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mixer = layer_from_hf(layer)
    # state: S (value_heads, 8, 16) and conv tails of 3 tokens over q, k (2 heads of 8) and v (value_heads of 16)
    assert mixer.num_v_heads == value_heads and mixer.state_size(T) == value_heads * 8 * 16 + 3 * (2 * 8 + 2 * 8 + value_heads * 16)
    x = torch.randn(2, T, 32)

    def hf(x):
        out = layer(x)
        return out[0] if isinstance(out, tuple) else out

    check_layer_equals_hf(mixer, hf, x, cut=5)


def test_recurrentgemma_recurrent_block_equals_rnnlab_hawk():
    """RecurrentGemma's recurrent block (conv + RG-LRU with per-head gates and the first-token reset) -> rnnlab's hawk
    with gate_blocks and reset_first_token: the same outputs, parallel, token by token, and packed."""
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

    cfg = transformers.RecurrentGemmaConfig(hidden_size=32, lru_width=48, num_attention_heads=4, num_key_value_heads=1,
                                            conv1d_width=4, num_hidden_layers=1, head_dim=8)
    torch.manual_seed(0)
    takes_index = "layer_idx" in inspect.signature(RecurrentGemmaRecurrentBlock.__init__).parameters  # 5.x
    block = (RecurrentGemmaRecurrentBlock(cfg, 0) if takes_index else RecurrentGemmaRecurrentBlock(cfg)).eval()
    with torch.no_grad():  # HF leaves these uninitialized until the model's _init_weights
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.3)
    mixer = layer_from_hf(block)
    x = torch.randn(2, T, 32)

    def hf(x):
        pos = torch.arange(x.shape[1])
        extra = {"cache_position": pos} if "cache_position" in inspect.signature(block.forward).parameters else {}  # 4.x
        block.rg_lru.recurrent_states = None  # 4.x keeps the last call's state in the module even without a cache
        out = block(x, pos[None].expand(x.shape[0], -1), None, use_cache=False, **extra)
        return out[0] if isinstance(out, tuple) else out  # 5.x returns (y, None)

    check_layer_equals_hf(mixer, hf, x, cut=4)


needs_xlstm = pytest.mark.skipif(not hasattr(transformers, "xLSTMConfig"), reason="this transformers has no xLSTM (4.57 and later)")


@needs_xlstm
def test_xlstm_maps_onto_the_dense_mlstm_layout_and_its_caps_matter():
    """xLSTM -> mlstm layout="dense" with HF's gate soft cap, denominator eps and the model's logit soft cap.

    Measured (transformers 5.25, the tiny config above, gate weights N(0, 0.5^2) over width 128, biases N(0, 3^2):
    pre-activations up to the cap 15): rnnlab vs HF in test_logits_equal_hf_parallel_stepped_and_left_padded 2.4e-6
    relative parallel, 5.0e-6 token by token; over input seeds 0-5 at most 5.3e-6 and 5.1e-6. That is float32
    rounding amplified by the large gates, not the mapping: HF's own cached steps differ from its parallel form by
    4.1e-6, and rnnlab float32 and HF float32 are 2.2e-6 and 2.1e-6 from rnnlab run in float64. (With N(0, 1) gate
    weights, 2.7e-5 parallel: one token after a chunk boundary with i~ = 13.7, where rnnlab float32 is 3.2e-5 and HF
    float32 1.3e-4 from float64.) Dropping the gate cap changes the logits by 0.39, the logit cap by 5.7e-4, so both
    are exercised; eps = 1e-6 is below float32 rounding here (2.9e-6 without it). to_hf reproduces HF bit for bit."""
    hf = hf_model("xlstm")
    model = from_hf(hf)
    kw = model.config.mixer_kwargs
    assert (kw["layout"], kw["qk_dim_factor"], kw["gate_soft_cap"], kw["eps"]) == ("dense", 0.5, 15.0, 1e-6)
    assert model.config.logit_soft_cap == 30.0
    ids = torch.randint(0, V, (2, T))
    expected = hf_logits(hf, ids)
    for change in ({"mixer_kwargs": {**kw, "gate_soft_cap": None}}, {"logit_soft_cap": None}):
        other = SequenceModel(model.config.replace(**change)).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(other(ids)[0], expected, rtol=1e-4, atol=1e-4), change


@needs_xlstm
def test_xlstm_fused_weight_layout_loads(tmp_path):
    """weight_mode="fused" checkpoints ([q | k | v | o], [i~ | f~], [gate | up] in one matrix each: rnnlab's own layout)
    load from a folder. (transformers 5.25 cannot build a fused xLSTM itself: its _init_weights fails on the fused
    gate bias; the folder is the single-layout model's tensors concatenated.)"""
    import json

    from safetensors.torch import load_file, save_file

    hf = hf_model("xlstm")
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    fused = {}
    for name, t in state.items():
        layer, _, leaf = name.rpartition(".mlstm_layer.")
        if layer and leaf in ("q.weight", "k.weight", "v.weight", "ogate_preact.weight"):
            if leaf == "q.weight":
                fused[f"{layer}.mlstm_layer.qkv_opreact.weight"] = torch.cat(
                    [state[f"{layer}.mlstm_layer.{n}.weight"] for n in ("q", "k", "v", "ogate_preact")])
        elif layer and leaf.startswith(("igate_preact", "fgate_preact")):
            kind = leaf.split(".")[1]
            fused[f"{layer}.mlstm_layer.ifgate_preact.{kind}"] = torch.cat(
                [state[f"{layer}.mlstm_layer.{g}_preact.{kind}"] for g in ("igate", "fgate")])
        elif name.endswith(("ffn.proj_up_gate.weight", "ffn.proj_up.weight")):
            block = name.rpartition(".ffn.")[0]
            fused[f"{block}.ffn.proj_up_gate_z.weight"] = torch.cat([state[f"{block}.ffn.proj_up_gate.weight"], state[f"{block}.ffn.proj_up.weight"]])
        else:
            fused[name] = t
    save_file({k: v.contiguous() for k, v in fused.items()}, str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "weight_mode": "fused"}))
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert torch.equal(from_hf(tmp_path)(ids)[0], from_hf(hf)(ids)[0])


@needs_xlstm
def test_an_rnnlab_dense_mlstm_model_exports_to_xlstm_and_the_rest_is_refused():
    kw = {"layout": "dense", "num_heads": 2, "proj_factor": 1.0, "qk_dim_factor": 0.5, "gate_soft_cap": 15.0, "norm_eps": 1e-6}
    model = SequenceModel(ModelConfig(mixer="mlstm", mixer_kwargs=kw, vocab_size=V, d_model=64, n_layers=2, logit_soft_cap=30.0)).eval()
    hf = to_hf(model, "xlstm")  # rnnlab's "unit" embedding scale folded into HF's embedding (untied head)
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert_close(hf_logits(hf, ids), model(ids)[0])
    for bad, field in (({**kw, "norm_eps": 1e-5}, "norm_eps"), ({**kw, "layout": "block", "qk_dim_factor": 1.0}, "layout"),
                       ({**kw, "gate_soft_cap": None}, "gate_soft_cap")):
        with pytest.raises(ValueError, match=field):
            to_hf(SequenceModel(model.config.replace(mixer_kwargs=bad)), "xlstm")
    with pytest.raises(ValueError, match="use_bias"):
        from_hf(hf_model("xlstm", use_bias=True))


needs_qwen3_next = pytest.mark.skipif("qwen3_next" not in CONFIGS, reason="this transformers has no Qwen3-Next")


@needs_qwen3_next
@pytest.mark.parametrize("variant", [{}, {"norm_topk_prob": False, "decoder_sparse_step": 2, "mlp_only_layers": []}])
def test_qwen3_next_routes_every_token_to_hfs_experts(variant):
    """Qwen3-Next's sparse blocks -> rnnlab's moe: each token's top-k experts are HF's (compared per layer from the
    router logits each side computes), with the top-k probabilities renormalized or not (norm_topk_prob), and the
    dense layers where decoder_sparse_step / mlp_only_layers put them; the logits equal HF's."""
    hf = hf_model("qwen3_next", **variant)
    from rnnlab.ops.moe import route

    model = from_hf(hf)
    sparse = [i for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "gate")]
    assert model.config.layer_mlps() == ["moe" if i in sparse else "swiglu" for i in range(4)]
    assert sparse == ([0, 1, 3] if not variant else [1, 3])
    assert all(model.blocks[i].mlp.normalize_topk == hf.config.norm_topk_prob for i in sparse)
    chosen = {"hf": {}, "rnnlab": {}}

    def keep(side, i):  # HF's router returns (logits, weights, indices); rnnlab's moe ranks its router's logits (route)
        def hook(module, inputs, output):
            top = output[2] if side == "hf" else route(output, 2, True)[1]
            chosen[side][i] = top.sort(-1).values
        return hook

    for i in sparse:
        hf.model.layers[i].mlp.gate.register_forward_hook(keep("hf", i))
        model.blocks[i].mlp.router.register_forward_hook(keep("rnnlab", i))
    ids = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(2))
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        assert_close(model(ids)[0], expected)
    for i in sparse:
        assert torch.equal(chosen["rnnlab"][i], chosen["hf"][i]), i
        assert len(chosen["hf"][i].unique()) == 5, "every expert serves some token"
    moe = model.config.mlp_kwargs["moe"]
    flipped = {"moe": {**moe, "normalize_topk": not moe["normalize_topk"]}}
    other = SequenceModel(model.config.replace(mlp_kwargs=flipped)).eval()  # the renormalization matters here
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other(ids)[0], expected, rtol=1e-4, atol=1e-4)


@needs_qwen3_next
def test_an_rnnlab_moe_hybrid_exports_to_qwen3_next():
    """An rnnlab model of Qwen3-Next's shape (gated DeltaNet + gated attention, moe MLPs with a gated shared expert)
    exports (to_hf) with the same logits; a moe without the shared gate has no Qwen3-Next counterpart."""
    gdn = {"num_heads": 2, "num_v_heads": 4, "head_dim": 8, "expand_v": 2.0, "norm_eps": 1e-6}
    att = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "rotary_dim": 4, "qk_norm": True, "output_gate": True, "norm_eps": 1e-6}
    moe = {"num_experts": 4, "top_k": 2, "hidden_size": 16, "shared_hidden_size": 24, "shared_gate": True}
    config = ModelConfig(mixer=["gated_deltanet", "attention"], mixer_kwargs={"gated_deltanet": gdn, "attention": att}, d_model=32,
                         n_layers=2, vocab_size=V, mlp="moe", mlp_kwargs={"moe": moe})
    model = SequenceModel(config).eval()
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert_close(hf_logits(to_hf(model, "qwen3_next"), ids), model(ids)[0])
    with pytest.raises(ValueError, match="shared_gate=False"):
        to_hf(SequenceModel(config.replace(mlp_kwargs={"moe": {**moe, "shared_gate": False}})), "qwen3_next")
