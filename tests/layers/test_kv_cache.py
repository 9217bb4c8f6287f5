"""The in-place KV cache (rnnlab.layers.kv_cache) behind attention's state: same numbers as concatenating,
exact-size content, and no state a caller holds ever changes (branching, beam search)."""
import pytest
import torch

from rnnlab.layers.kv_cache import kv_append
from rnnlab.layers.registry import create_mixer


def _cat_reference(cache, new, keep):
    full = torch.cat([cache, new], 2)
    n = full.shape[2] if keep is None else min(keep, full.shape[2])
    return full, full[:, :, full.shape[2] - n:]


@pytest.mark.parametrize("keep", [None, 1, 5, 70])
def test_append_equals_concatenation_across_reallocations(keep):
    g = torch.Generator().manual_seed(0)
    cache = ref = torch.zeros(2, 3, 0, 4)
    for t in range(200):  # several doublings / window moves; a multi-token append now and then
        new = torch.randn(2, 3, 1 + (t % 17 == 0) * 3, 4, generator=g)
        with torch.no_grad():
            full, cache = kv_append(cache, new, keep)
        rfull, ref = _cat_reference(ref, new, keep)
        assert torch.equal(full, rfull) and torch.equal(cache, ref)
    assert hasattr(cache, "_kv_buf")  # the fast path was taken


def test_a_state_stepped_twice_is_never_changed():
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, s0 = kv_append(torch.zeros(1, 2, 0, 4), torch.randn(1, 2, 3, 4, generator=g))
        snapshot = s0.clone()
        a, b = torch.randn(1, 2, 1, 4, generator=g), torch.randn(1, 2, 1, 4, generator=g)
        _, s1 = kv_append(s0, a)       # in place: the slot after s0 in s0's buffer
        _, s2 = kv_append(s0, b)       # s0 again: must not overwrite s1's token
        _, s11 = kv_append(s1, b)      # s1 continues in place
    assert torch.equal(s0, snapshot)
    assert torch.equal(s1[:, :, -1:], a) and torch.equal(s2[:, :, -1:], b)
    assert torch.equal(s11, torch.cat([snapshot, a, b], 2))
    assert s1.untyped_storage().data_ptr() == s0.untyped_storage().data_ptr()  # the first append wrote in place
    assert s2.untyped_storage().data_ptr() != s0.untyped_storage().data_ptr()  # the branch copied


def test_gradients_flow_through_the_cache_under_autograd():
    cache = torch.randn(1, 2, 3, 4, requires_grad=True)
    new = torch.randn(1, 2, 1, 4, requires_grad=True)
    full, kept = kv_append(cache, new, keep=2)
    (full.sum() + 2 * kept.sum()).backward()
    assert torch.equal(cache.grad, torch.tensor([1.0, 1.0, 3.0]).view(1, 1, 3, 1).expand(1, 2, 3, 4))
    assert torch.equal(new.grad, torch.full_like(new, 3.0))


@pytest.mark.parametrize("window", [None, 6])
def test_attention_decode_with_the_cache_equals_recomputing_the_prefix(window):
    torch.manual_seed(0)
    m = create_mixer("attention", 32, num_heads=2, window=window).eval()
    x = torch.randn(2, 150, 32)
    with torch.no_grad():
        y_par, _ = m(x)
        y, s = m(x[:, :10])
        steps = [y]
        for t in range(10, 150):
            y, s = m(x[:, t:t + 1], s)
            steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), y_par, rtol=1e-5, atol=1e-5)
    assert s["k"].shape[2] == (150 if window is None else window - 1)  # content only: exact-size views
    assert m.state_size(150) == sum(t[0].numel() for t in s.values())
