"""The test-time-memory mixers (family "ttt"): finite forward and backward at T = 8192 in float32 and under bfloat16
autocast with a float32 memory; Titans' gradient clipping guards a memory that otherwise blows up; the options the
registry's small instances do not cover pass the contract checks."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab.testing import assert_close
from tests.conformance.checks import (D_MODEL, check_gradients, check_packed_equals_separate, check_parallel_equals_step,
                                      check_split_equals_full, factory)

FAMILY = ["ttt_linear", "ttt_mlp", "titans", "titans_linear", "titans_mag", "titans_mac", "yaad", "moneta", "memora", "lact", "atlas"]


def _finite(t):
    return bool(torch.isfinite(t.float()).all())


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast_bf16"])
@pytest.mark.parametrize("name", FAMILY)
def test_long_sequence_finite(name, autocast):
    """T = 8192 (512 mini-batches of 16) from the initial state: output, every gradient and the memory finite; under
    bfloat16 autocast the memory state stays float32."""
    torch.manual_seed(0)
    mixer = rnnlab.create_mixer(name, D_MODEL, num_heads=2)
    x = torch.randn(1, 8192, D_MODEL, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, state = mixer(x)
    y.float().pow(2).mean().backward()
    assert _finite(y) and _finite(x.grad)
    for n, p in mixer.named_parameters():
        assert p.grad is not None and _finite(p.grad), n
    for n, t in state.items():
        if t.is_floating_point() and not n.startswith(("conv_", "attn_")):
            assert t.dtype == torch.float32 and _finite(t), n


def test_titans_gradient_clipping_bounds_the_memory():
    """A deep memory driven hard (θ ceiling 20, momentum ≈ 0.95) blows up without a guard; clipping each token's
    inner gradient to norm 1 keeps it bounded (‖M‖ <= ‖S‖ / α with ‖S‖ <= θ / (1 − η))."""
    x = torch.randn(1, 2048, D_MODEL)

    def run(max_grad_norm):
        torch.manual_seed(0)
        mixer = rnnlab.create_mixer("titans", D_MODEL, num_heads=2, base_lr=20.0, max_grad_norm=max_grad_norm)
        with torch.no_grad():
            mixer.gate_proj.bias[2:4].fill_(3.0)    # η ≈ 0.95
            mixer.gate_proj.bias[4:6].fill_(-3.0)   # α ≈ 0.05
            y, s = mixer(x)
        return y, max(float(s[n].abs().max()) for n in ("m_w1", "m_w2"))

    y, size = run(None)
    assert not _finite(y) or size > 1e6, f"the unguarded memory did not blow up (|M| = {size})"
    y, size = run(1.0)
    assert _finite(y) and size < 1e3, f"clipped memory: |M| = {size}"


OPTIONS = [
    ("ttt_linear", dict(token_scale=False)),
    ("ttt_linear", dict(gate=True, rope=False)),
    ("ttt_mlp", dict(mini_batch_size=1)),
    ("titans", dict(memory_depth=1)),
    ("titans", dict(memory_bias=True, max_grad_norm=0.5, chunk_size=5)),
    ("yaad", dict(chunk_size=1, max_grad_norm=1.0)),
    ("moneta", dict(p=2.0, q_norm=2.0, chunk_size=3)),
    ("lact", dict(beta=0.0, chunk_size=5)),
    ("atlas", dict(window=1, feature_degree=None, memory_depth=1, chunk_size=1)),
    ("atlas", dict(window=6, newton_schulz="none", chunk_size=5)),  # (with Newton–Schulz, g's scale cancels: the lr gate's gradient is ~0)
]


@pytest.mark.parametrize("name,options", OPTIONS, ids=[f"{n}-{'-'.join(o)}" for n, o in OPTIONS])
@pytest.mark.parametrize("check", [check_parallel_equals_step, check_split_equals_full, check_packed_equals_separate, check_gradients],
                         ids=lambda c: c.__name__[6:])
def test_options_conform(name, options, check):
    check(factory(name, **options))


@pytest.mark.parametrize("check", [check_parallel_equals_step, check_split_equals_full], ids=lambda c: c.__name__[6:])
def test_atlas_muon_conforms(check):
    """ATLAS with Muon's quintic Newton–Schulz (the paper's): decoding and splits equal the parallel form in float32.
    (Packed vs separate gradients differ by 1.02e-5 there, over the suite's 1e-5: the quintic's slope 3.4445 per step
    amplifies the rounding of the momentum's small singular values; it is exact in float64, tests/ops/test_atlas.py.)"""
    check(factory("atlas", newton_schulz="muon"))


@pytest.mark.parametrize("preset", ["titans_mal", "titans_mag"])
def test_titans_hybrid_presets(preset):
    """The MAL / MAG presets build a model whose prefill + token-by-token decoding equals the whole forward."""
    from rnnlab.models import SequenceModel, presets

    torch.manual_seed(0)
    model = SequenceModel(getattr(presets, preset)(d_model=32, n_layers=2, vocab_size=50, window=8, num_heads=2, chunk_size=4)).eval()
    tokens = torch.randint(0, 50, (2, 13))
    with torch.no_grad():
        full, _ = model(tokens)
        _, state = model(tokens[:, :6])
        steps = []
        for t in range(6, 13):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
    assert_close(torch.stack(steps, 1), full[:, 6:], name=f"{preset}: decoding vs full forward")


def test_titans_mal_needs_pairs():
    from rnnlab.models import presets

    with pytest.raises(ValueError, match="even n_layers"):
        presets.titans_mal(n_layers=3)
