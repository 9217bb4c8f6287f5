"""Delta-rule ops: every fast form against its reference loop, values and gradients."""
import pytest
import torch

from rnnlab.ops import delta as D
from rnnlab.ops.chunk import unit_lower_inverse
from rnnlab.testing import assert_close

TOL = 1e-4  # issue 8: float32 relative error of chunkwise vs reference, values and gradients


def make(B, T, H, K, V, gated, beta_max=1.0, nh=None, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    extra = () if nh is None else (nh,)
    q = torch.randn(B, T, H, K, generator=gen)
    k = D.l2norm(torch.randn(B, T, H, *extra, K, generator=gen))
    v = torch.randn(B, T, H, *extra, V, generator=gen)
    beta = torch.rand(B, T, H, *extra, generator=gen) * beta_max
    g = -torch.rand(B, T, H, generator=gen) * 0.2 if gated else None
    h0 = torch.randn(B, H, K, V, generator=gen)
    ins = dict(q=q, k=k, v=v, g=g, beta=beta)
    ins = {n: (t.to(dtype).requires_grad_() if t is not None else None) for n, t in ins.items()}
    return ins, h0.requires_grad_()


def run(fn, ins, h0, seed=1, **kw):
    """Forward, then backward with random cotangents on o and the final state; returns values and grads."""
    o, s = fn(**ins, initial_state=h0, output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum() + (s * torch.randn(s.shape, generator=gen)).sum()
    leaves = [t for t in ins.values() if t is not None] + [h0]
    grads = torch.autograd.grad(loss, leaves)
    names = [n for n, t in ins.items() if t is not None] + ["initial_state"]
    return {"o": o, "final_state": s, **{f"d{n}": gr for n, gr in zip(names, grads)}}


def compare(a, b, tol=TOL):
    assert a.keys() == b.keys()
    for name in a:
        assert_close(a[name], b[name], tol, name)


def delta_fn(form, gated):
    name = f"{form}_{'gated_' if gated else ''}delta_rule"
    fn = getattr(D, name)
    if gated:
        return fn
    return lambda g, **kw: fn(**kw)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 63, 64, 65])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_fast_vs_reference(T, gated, beta_max):
    """Chunkwise (C = 64: one partial chunk, exactly one, one plus a token) and fused recurrent forms
    == the reference loop in values and in the gradients of q, k, v, (g,) β and the initial state."""
    ins, h0 = make(2, T, 2, 16, 8, gated, beta_max)
    ref = run(delta_fn("naive_recurrent", gated), ins, h0)
    for form in ("chunk", "fused_recurrent"):
        compare(run(delta_fn(form, gated), ins, h0), ref)


@pytest.mark.parametrize("gated", [False, True])
def test_chunk_long_beta_near_two(gated):
    """T = 1000 with β ∈ (1.9, 2): negative eigenvalues near −1 over many chunks stay stable and exact."""
    ins, h0 = make(1, 1000, 1, 8, 8, gated, seed=3)
    with torch.no_grad():
        ins["beta"].copy_(1.9 + 0.099 * ins["beta"])
    ref = run(delta_fn("naive_recurrent", gated), ins, h0)
    got = run(delta_fn("chunk", gated), ins, h0)
    compare(got, ref)
    assert ref["final_state"].abs().max() < 1e3  # bounded: the transitions have spectral norm <= 1


def test_chunk_strong_decay():
    """log-decays down to −20 per step (e^{γ} underflows within a chunk): exact, every exponent stays ≤ 0."""
    ins, h0 = make(2, 130, 2, 16, 8, True, beta_max=2.0, seed=7)
    with torch.no_grad():
        ins["g"].mul_(100.0)
    compare(run(D.chunk_gated_delta_rule, ins, h0), run(D.naive_recurrent_gated_delta_rule, ins, h0))


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_sizes_and_l2norm_in_kernel(chunk_size):
    ins, h0 = make(2, 37, 2, 16, 16, True)
    with torch.no_grad():
        ins["k"].mul_(3.0)  # unnormalized: the kernel normalizes
    ref = run(D.naive_recurrent_gated_delta_rule, ins, h0, use_qk_l2norm_in_kernel=True)
    compare(run(D.chunk_gated_delta_rule, ins, h0, use_qk_l2norm_in_kernel=True, chunk_size=chunk_size), ref)
    compare(run(D.fused_recurrent_gated_delta_rule, ins, h0, use_qk_l2norm_in_kernel=True), ref)


def test_l2norm_in_kernel_normalizes():
    """use_qk_l2norm_in_kernel=True on raw q, k == the op on l2norm(q), l2norm(k)."""
    ins, h0 = make(1, 20, 2, 8, 8, True)
    raw = dict(ins, q=ins["q"] * 2.5, k=ins["k"] * 3.0)
    o, s = D.chunk_gated_delta_rule(**raw, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True, chunk_size=8)
    o2, s2 = D.chunk_gated_delta_rule(**dict(ins, q=D.l2norm(ins["q"])), initial_state=h0, output_final_state=True, chunk_size=8)
    assert_close(o, o2, 1e-5)
    assert_close(s, s2, 1e-5)


def test_no_initial_state_and_no_final_state():
    ins, _ = make(1, 20, 2, 8, 8, True)
    o, s = D.chunk_gated_delta_rule(**ins, chunk_size=8)
    assert s is None
    o_ref, _ = D.naive_recurrent_gated_delta_rule(**ins)
    assert_close(o, o_ref, TOL)


def test_split_sequence_with_state():
    ins, h0 = make(1, 50, 2, 8, 8, True)
    o, s = D.chunk_gated_delta_rule(**ins, initial_state=h0, output_final_state=True, chunk_size=16)
    first = {n: t[:, :23] for n, t in ins.items()}
    second = {n: t[:, 23:] for n, t in ins.items()}
    o1, s1 = D.chunk_gated_delta_rule(**first, initial_state=h0, output_final_state=True, chunk_size=16)
    o2, s2 = D.chunk_gated_delta_rule(**second, initial_state=s1, output_final_state=True, chunk_size=16)
    assert_close(torch.cat([o1, o2], 1), o, 1e-5)
    assert_close(s2, s, 1e-5)


@pytest.mark.parametrize("gated", [False, True])
def test_bf16_runs_with_fp32_state(gated):
    ins, h0 = make(2, 70, 2, 16, 16, gated, dtype=torch.bfloat16)
    o, s = delta_fn("chunk", gated)(**ins, initial_state=h0, output_final_state=True, chunk_size=32)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    ref, s_ref = delta_fn("naive_recurrent", gated)(**{n: (t.float() if t is not None else None) for n, t in ins.items()}, initial_state=h0, output_final_state=True)
    assert_close(o.float(), ref, 2e-2)
    assert_close(s, s_ref, 2e-2)
    o.float().sum().backward()
    assert ins["q"].grad.dtype == torch.bfloat16 and torch.isfinite(ins["q"].grad.float()).all()


@pytest.mark.parametrize("C", [1, 5, 16, 37, 64])
def test_unit_lower_inverse(C):
    """The blocked inverse of the UT transform == torch.linalg.inv of I + tril₋₁(A); A's other entries are ignored."""
    gen = torch.Generator().manual_seed(C)
    k = D.l2norm(torch.randn(3, C, 8, generator=gen))
    A = 2 * torch.rand(3, C, 1, generator=gen) * (k @ k.mT) + torch.randn(3, C, C, generator=gen).triu()  # β ≤ 2; garbage on and above the diagonal
    ref = torch.linalg.inv((torch.eye(C) + A.tril(-1)).double())
    assert_close(unit_lower_inverse(A), ref, 1e-6)


# --------------------------------------------------------------------------- DeltaProduct
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 63, 64, 65])
def test_delta_product_vs_reference(T, gated):
    """Both fast forms == the reference loop written from eq. 3 (n_h = 2, β up to 2), values and gradients."""
    ins, h0 = make(2, T, 2, 8, 8, gated, beta_max=2.0, nh=2)
    ref = run(D.naive_recurrent_delta_product, ins, h0, num_householder=2)
    compare(run(D.chunk_delta_product, ins, h0, num_householder=2), ref)
    compare(run(D.fused_recurrent_delta_product, ins, h0, num_householder=2), ref)


def test_delta_product_long_beta_near_two():
    """T = 1000 tokens (2000 Householder steps) with β ∈ (1.9, 2) and the l2norm option: chunkwise == reference."""
    ins, h0 = make(1, 1000, 1, 4, 4, True, nh=2, seed=5)
    with torch.no_grad():
        ins["beta"].copy_(1.9 + 0.099 * ins["beta"])
        ins["k"].mul_(2.0)
    ref = run(D.naive_recurrent_delta_product, ins, h0, num_householder=2, use_qk_l2norm_in_kernel=True)
    compare(run(D.chunk_delta_product, ins, h0, num_householder=2, use_qk_l2norm_in_kernel=True), ref)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_product_nh1_is_delta_rule(gated):
    """n_h = 1 is DeltaNet (g absent: chunk_delta_rule) or Gated DeltaNet, values and gradients."""
    ins, h0 = make(2, 40, 2, 8, 8, gated, beta_max=2.0, nh=1)
    got = run(D.chunk_delta_product, ins, h0, num_householder=1, chunk_size=16)

    def flat(k, v, beta, **kw):  # drop the n_h axis, same leaves
        return delta_fn("chunk", gated)(k=k[:, :, :, 0], v=v[:, :, :, 0], beta=beta[..., 0], **kw)

    compare(got, run(flat, ins, h0, chunk_size=16), 1e-6)


@pytest.mark.parametrize("form", ["naive_recurrent", "chunk"])
def test_delta_product_nh2_is_interleaved_delta_rule(form):
    """DeltaProduct (n_h = 2) == the delta rule on the interleaved sequence (sub-steps of a token
    adjacent, the gate on the first, the query on the last), each side in the same form."""
    ins, h0 = make(1, 9, 2, 8, 8, True, nh=2)
    o, s = getattr(D, f"{form}_delta_product")(**ins, num_householder=2, initial_state=h0, output_final_state=True)
    B, T, H, nh, K = ins["k"].shape
    k2 = ins["k"].transpose(2, 3).reshape(B, T * nh, H, K)  # (B, T, n_h, H, K): sub-steps of a token adjacent
    v2 = ins["v"].transpose(2, 3).reshape(B, T * nh, H, -1)
    b2 = ins["beta"].transpose(2, 3).reshape(B, T * nh, H)
    q2 = torch.zeros(B, T, nh, H, K)
    q2[:, :, -1] = ins["q"]
    g2 = torch.zeros(B, T, nh, H)
    g2[:, :, 0] = ins["g"]
    o2, s2 = getattr(D, f"{form}_gated_delta_rule")(q2.reshape(B, T * nh, H, K), k2, v2, g2.reshape(B, T * nh, H), b2, scale=K**-0.5,
                                                     initial_state=h0, output_final_state=True)
    assert_close(o, o2[:, nh - 1 :: nh], 1e-6)
    assert_close(s, s2, 1e-6)


# --------------------------------------------------------------------------- grouped value heads
def make_grouped(B, T, H, G, K, V, seed=0):
    """q, k with H heads; v, g, beta and the state with G·H (value head j reads key head j // G)."""
    gen = torch.Generator().manual_seed(seed)
    ins = dict(q=torch.randn(B, T, H, K, generator=gen), k=D.l2norm(torch.randn(B, T, H, K, generator=gen)),
               v=torch.randn(B, T, G * H, V, generator=gen), g=-torch.rand(B, T, G * H, generator=gen) * 0.2,
               beta=torch.rand(B, T, G * H, generator=gen) * 2)
    return {n: t.requires_grad_() for n, t in ins.items()}, torch.randn(B, G * H, K, V, generator=gen).requires_grad_()


@pytest.mark.parametrize("T", [1, 37, 65])
def test_grouped_value_heads(T):
    """The reference with G·H value heads == the reference with q, k repeated per group (the specification: every value
    head a gated delta rule on its key head); chunk and fused == the reference in values and in every gradient (q's and
    k's summed over their group), with an initial state, at lengths 1, a prime and one past a chunk."""
    ins, h0 = make_grouped(2, T, 2, 3, 16, 8)
    ref = run(D.naive_recurrent_gated_delta_rule, ins, h0)
    with torch.no_grad():
        o, s = D.naive_recurrent_gated_delta_rule(ins["q"].repeat_interleave(3, 2), ins["k"].repeat_interleave(3, 2), ins["v"], ins["g"],
                                                  ins["beta"], initial_state=h0, output_final_state=True)
    assert_close(ref["o"], o, name="o")
    assert_close(ref["final_state"], s, name="final_state")
    for form in ("chunk", "fused_recurrent"):
        compare(run(getattr(D, f"{form}_gated_delta_rule"), ins, h0), ref)
    with pytest.raises(ValueError, match="grouped value heads"):
        D.chunk_gated_delta_rule(ins["q"], ins["k"], ins["v"][:, :, :5], ins["g"][..., :5], ins["beta"][..., :5])


# --------------------------------------------------------------------------- bad input
def test_bad_shapes_raise():
    ins, h0 = make(1, 5, 2, 8, 8, True)
    with pytest.raises(ValueError, match="beta"):
        D.chunk_gated_delta_rule(**dict(ins, beta=ins["beta"][..., None]))
    with pytest.raises(ValueError, match="g must be"):
        D.chunk_gated_delta_rule(**dict(ins, g=ins["g"][:, :3]))
    with pytest.raises(ValueError, match="initial_state"):
        D.chunk_gated_delta_rule(**ins, initial_state=h0[:, :1])
    with pytest.raises(ValueError, match="k must be"):
        D.chunk_delta_product(**ins, num_householder=2)
    with pytest.raises(ValueError, match="chunk_size"):
        D.chunk_gated_delta_rule(**ins, chunk_size=0)


# --------------------------------------------------------------------------- peer
@pytest.mark.parametrize("l2", [False, True])
def test_matches_transformers_qwen3_next(l2):
    """Equal in values to HF transformers' pure-PyTorch torch_chunk_gated_delta_rule (Qwen3-Next), with one value head
    per key head and with two (its grouped value heads)."""
    pytest.importorskip("transformers", reason="HF transformers (optional extra rnnlab[peers]) is not installed")
    try:
        from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    except ImportError:
        pytest.skip("this transformers version has no Qwen3-Next (torch_chunk_gated_delta_rule)")
    # HF's conventions: same (B, T, H, K) layout and argument order, scale fixed at K^-1/2 (our default),
    # use_qk_l2norm_in_kernel normalizes q and k with eps 1e-6 inside, outputs in q's dtype.
    for what, (ins, h0) in (("", make(2, 100, 2, 16, 16, True, beta_max=2.0)), (" (grouped value heads)", make_grouped(2, 100, 2, 2, 16, 16))):
        with torch.no_grad():
            o, s = D.chunk_gated_delta_rule(**ins, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
            o_hf, s_hf = torch_chunk_gated_delta_rule(ins["q"], ins["k"], ins["v"], ins["g"], ins["beta"], chunk_size=64,
                                                      initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
        assert_close(o, o_hf.to(o.dtype), 1e-5, "o" + what)
        assert_close(s, s_hf.float(), 1e-5, "final_state" + what)
