"""attention's decode fast path (Attention.step): the same numbers as the general form ``_attend``, bit for bit, and
the rotation at one position (parts.rotary_rows / rotary_at) equal to the full rotary."""
import pytest
import torch

from rnnlab.layers.parts import positions, rotary, rotary_at, rotary_cos_sin, rotary_rows
from rnnlab.layers.registry import create_mixer
from rnnlab.ops import decode
from rnnlab.testing import assert_close


@pytest.mark.parametrize("dim", [2, 8, 20, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rotary_at_one_position_equals_rotary(dim, dtype):
    g = torch.Generator().manual_seed(dim)
    pos = torch.tensor([0, 1, 17, 511, 4097, 70001])
    x = torch.randn(len(pos), 3, 1, dim, generator=g).to(dtype)  # (B, h, 1, d)
    C, S = rotary_rows(int(pos.max()) + 1, dim, 500.0)[pos].unbind(1)
    for b in range(len(pos)):  # the full form on one row at a time: its angles computed, not looked up
        cos, sin = rotary_cos_sin(positions(pos[b:b + 1], 1), dim, 500.0)
        ref = rotary(x[b:b + 1].transpose(1, 2), cos, sin).transpose(1, 2)  # rotary takes (B, T, h, d)
        got = rotary_at(x[b:b + 1], C[b:b + 1], S[b:b + 1])
        assert got.dtype == dtype and torch.equal(got, ref)


CONFIGS = [
    {},
    {"window": 5},
    {"num_kv_heads": 1},
    {"qk_norm": True, "output_gate": True, "head_dim": 12},
    {"rope_base": None, "bias": True},
    {"rotary_dim": 4},            # partial rotary: the general form
    {"persistent_tokens": 3},     # persistent tokens: the general form
]


def _steps(m, x, state, form):
    ys = []
    for t in range(x.shape[1]):
        m.check_state(state, x.shape[0], x_dtype=x.dtype)
        y, state = form(x[:, t:t + 1], state)
        ys.append(y)
    return torch.cat(ys, 1), state


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_equals_the_general_form_bit_for_bit(kw, dtype):
    torch.manual_seed(0)
    m = create_mixer("attention", 24, num_heads=2, **kw).to(dtype).eval()
    x = torch.randn(3, 19, 24, dtype=dtype)
    with torch.no_grad(), decode.enabled(False):  # the torch step (the fused kernel is tests/ops/test_decode.py's)
        _, s0 = m(x[:, :7])
        y_fast, s_fast = _steps(m, x[:, 7:], s0, m.step)
        y_ref, s_ref = _steps(m, x[:, 7:], s0, m._attend)
    assert torch.equal(y_fast, y_ref)
    assert all(torch.equal(s_fast[k], s_ref[k]) for k in s_ref)


def test_rows_at_different_positions_take_the_masked_form():
    """A row merged from a shorter one (pos < cache length) needs the mask: the step hands it to ``_attend``."""
    torch.manual_seed(0)
    m = create_mixer("attention", 16, num_heads=2).eval()
    with torch.no_grad():
        _, s = m(torch.randn(2, 6, 16))
        s["pos"] = torch.tensor([6, 2])  # row 1: only its last 2 cache entries are real
        x1 = torch.randn(2, 1, 16)
        y, _ = m(x1, s)
        y_ref, _ = m._attend(x1, s)
    assert torch.equal(y, y_ref)


def test_rotary_rows_stay_few_far_into_a_sequence():
    """The cached cos/sin rows cover the positions being decoded, not all positions so far: a sliding window far into
    a stream keeps constant memory, and the step still equals the general form there."""
    torch.manual_seed(0)
    m = create_mixer("sliding_attention", 16, num_heads=2, window=4).eval()
    with torch.no_grad():
        _, s = m(torch.randn(2, 6, 16))
        s["pos"] = torch.tensor([10**7, 10**7 + 3])  # rows far on, at different positions (caches all real)
        x1 = torch.randn(2, 1, 16)
        with decode.enabled(False):
            y, _ = m(x1, s)
        y_kernel, _ = m(x1, s)  # the fused kernel reads the same rows
        y_ref, _ = m._attend(x1, s)
    assert torch.equal(y, y_ref)
    assert_close(y_kernel, y_ref)
    start, rows = m.__dict__["_rotary_rows_cache"]
    assert start == 10**7 and rows.shape[0] == 256
