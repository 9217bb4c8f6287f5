"""One test body over the whole registry: every registered mixer, every check."""
import pytest

import rnnlab
from tests.conformance.checks import CHECKS, factory


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", rnnlab.available_mixers())
def test_mixer_conforms(name, check):
    CHECKS[check](factory(name))


# options that change what a mixer computes, added for checkpoint mappings (rnnlab.interop, issue 19): every check
# holds with them on too
VARIANTS = {"mamba[bias,no conv bias,falcon norms]": ("mamba", {"bias": True, "conv_bias": False, "bcdt_norm_eps": 1e-6}),
            "mamba2[bias,no conv bias]": ("mamba2", {"bias": True, "conv_bias": False}),
            "mamba[mimetic init]": ("mamba", {"init": "mimetic"}),
            "mamba2[mimetic init,bias]": ("mamba2", {"init": "mimetic", "bias": True}),
            "hawk[gate_blocks=4,reset_first_token]": ("hawk", {"gate_blocks": 4, "reset_first_token": True}),
            "attention[gqa,partial rotary]": ("attention", {"num_heads": 4, "num_kv_heads": 2, "rotary_dim": 4}),
            "sliding_attention[gqa]": ("sliding_attention", {"num_heads": 4, "num_kv_heads": 1}),
            "attention[nope,gqa]": ("attention", {"num_heads": 4, "num_kv_heads": 2, "rope_base": None}),
            "moe[shared expert gated,gelu,raw top-k]": ("moe", {"shared_hidden_size": 16, "shared_gate": True,
                                                                "activation": "gelu", "normalize_topk": False}),
            "sliding_attention[gqa,out bias (RecurrentGemma)]": ("sliding_attention", {"num_heads": 4, "num_kv_heads": 2, "out_bias": True}),
            "attention[head_dim,qk norm,output gate (Qwen3.5)]": ("attention", {"num_heads": 4, "num_kv_heads": 2, "head_dim": 12,
                                                                             "qk_norm": True, "output_gate": True, "rotary_dim": 4}),
            "sliding_attention[gqa,persistent tokens]": ("sliding_attention", {"num_heads": 4, "num_kv_heads": 2, "persistent_tokens": 3}),
            "attention[persistent tokens]": ("attention", {"persistent_tokens": 2}),
            "attention[persistent tokens,head_dim,qk norm,output gate]": ("attention", {"num_heads": 4, "num_kv_heads": 2, "head_dim": 12,
                                                                                  "qk_norm": True, "output_gate": True,
                                                                                  "persistent_tokens": 2}),
            "mlstm[dense (xLSTM 7B),qk half,gate soft cap,eps]": ("mlstm", {"layout": "dense", "qk_dim_factor": 0.5,
                                                                           "gate_soft_cap": 15.0, "eps": 1e-6}),
            "mlstm[block,gate soft cap,eps]": ("mlstm", {"gate_soft_cap": 15.0, "eps": 1e-6}),
            "gated_deltanet[num_v_heads=4 (grouped value heads)]": ("gated_deltanet", {"num_heads": 2, "num_v_heads": 4, "chunk_size": 16}),
            "rat[nope,ngroups=1,chunk 3]": ("rat", {"rope_base": None, "ngroups": 1, "chunk_size": 3})}


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mixer_option_variants_conform(variant, check):
    name, options = VARIANTS[variant]
    CHECKS[check](factory(name, **options))
