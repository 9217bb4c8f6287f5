"""Nonlinear RNN ops (elman, lstm, gru, slstm): the fused numba kernel against the reference loop in
outputs, final states and every gradient (gx, weight_hh, bias_hh, initial states); bfloat16 inputs;
the sLSTM reference against an independent transcription of the paper's equations; backend choice."""
import logging

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops import rnn as ops
from rnnlab.ops.rnn.reference import CELLS
from rnnlab.testing import TOLERANCE, assert_close

# (cell, keyword arguments): every cell and every variant of a cell
VARIANTS = {
    "elman_tanh": ("elman", {}),
    "elman_relu": ("elman", {"nonlinearity": "relu"}),
    "lstm": ("lstm", {}),
    "gru": ("gru", {}),
    "slstm_sigmoid": ("slstm", {"forget_gate": "sigmoid"}),
    "slstm_exp": ("slstm", {"forget_gate": "exp"}),
}


def _inputs(cell, B, T, H, NH, seed=0, dtype=torch.float32, scale=1.0):
    """gx (B, T, G*H), weight_hh dense (NH == 1) or head-wise, bias_hh, a random initial state."""
    G, S = CELLS[cell]
    Kh = H // NH
    gen = torch.Generator().manual_seed(seed)
    gx = torch.randn(B, T, G * H, generator=gen) * scale
    shape = (G * H, H) if NH == 1 else (NH, G * Kh, Kh)
    w = torch.randn(shape, generator=gen) * (0.9 / Kh**0.5)
    b = 0.1 * torch.randn(G * H, generator=gen)
    s0 = [torch.randn(B, H, generator=gen) * 0.5 for _ in range(S)]
    if cell == "slstm":  # n > 0 (a normalizer), m any real
        s0[2] = torch.rand(B, H, generator=gen) + 0.5
        s0[3] = torch.randn(B, H, generator=gen)
    return [gx.to(dtype), w.to(dtype), b], s0


def _run(cell, args, s0, backend, seed=1, **kw):
    """Outputs, final state and the gradients of all inputs under random cotangents."""
    leaves = [a.detach().clone().requires_grad_() for a in args + s0]
    n = len(args)
    h, final = ops.rnn(cell, *leaves[:n], initial_state=tuple(leaves[n:]), output_final_state=True, backend=backend, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (h.float() * torch.randn(h.shape, generator=gen)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=gen)).sum() for s in final)
    return h, final, torch.autograd.grad(loss, leaves)


def _compare(cell, actual, expected, tol=None, grad_tol=None):
    (h, final, grads), (h_r, final_r, grads_r) = actual, expected
    assert_close(h, h_r, tol, name="h")
    for i, (s, s_r) in enumerate(zip(final, final_r)):
        assert_close(s, s_r, tol, name=f"final_state[{i}]")
    names = ["d gx", "d weight_hh", "d bias_hh"] + [f"d initial_state[{i}]" for i in range(CELLS[cell][1])]
    for name, g, g_r in zip(names, grads, grads_r):
        assert g.dtype == g_r.dtype, name
        assert_close(g, g_r, grad_tol if grad_tol is not None else tol, name=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("T", [1, 7, 256])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_kernel_matches_reference(variant, T, num_heads):
    cell, kw = VARIANTS[variant]
    args, s0 = _inputs(cell, B=5, T=T, H=12, NH=num_heads, seed=T)
    _compare(cell, _run(cell, args, s0, "kernel", **kw), _run(cell, args, s0, "reference", **kw))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("num_heads", [1, 2])
def test_kernel_matches_reference_long(variant, num_heads):
    """T = 1000: errors must not build up along the sequence (small B, H keep the loop fast)."""
    cell, kw = VARIANTS[variant]
    args, s0 = _inputs(cell, B=2, T=1000, H=8, NH=num_heads, seed=7)
    _compare(cell, _run(cell, args, s0, "kernel", **kw), _run(cell, args, s0, "reference", **kw))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernel_batch_groups(variant):
    """Batch sizes that do not split evenly into the kernel's per-thread row groups and 4-row blocks."""
    cell, kw = VARIANTS[variant]
    torch.set_num_threads(2)  # the kernel splits the batch into up to 2 groups of >= 4 rows (B=9: 4 + 5)
    for B in (1, 3, 9):
        args, s0 = _inputs(cell, B=B, T=5, H=6, NH=1, seed=B)
        _compare(cell, _run(cell, args, s0, "kernel", **kw), _run(cell, args, s0, "reference", **kw))


@pytest.mark.parametrize("variant", ["lstm", "gru", "slstm_sigmoid"])
def test_default_initial_state_and_no_final_state(variant):
    cell, kw = VARIANTS[variant]
    (gx, w, b), _ = _inputs(cell, B=3, T=9, H=8, NH=2)
    h_k, none = ops.rnn(cell, gx, w, b, backend="kernel", **kw)
    h_r, _ = ops.rnn(cell, gx, w, b, backend="reference", **kw)
    assert none is None
    assert_close(h_k, h_r)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bfloat16_inputs_accumulate_in_float32(variant):
    """bf16 gx and weights: both forms upcast once and run in fp32, so the fp32 final states agree to the
    fp32 tolerance; h and the input gradients come back in bf16 (rounding: the bf16 tolerance)."""
    cell, kw = VARIANTS[variant]
    (gx, w, b), s0 = _inputs(cell, B=3, T=33, H=8, NH=2, dtype=torch.bfloat16)
    k = _run(cell, [gx, w, b], s0, "kernel", **kw)
    r = _run(cell, [gx, w, b], s0, "reference", **kw)
    assert k[0].dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in k[1])
    for s, s_r in zip(k[1], r[1]):
        assert_close(s, s_r, name="final state")
    _compare(cell, k, r, tol=TOLERANCE[torch.bfloat16])


def test_saturated_gates():
    """Large pre-activations (saturated sigmoids/tanh, sLSTM stabiliser far from 0) stay finite and agree."""
    for variant, (cell, kw) in VARIANTS.items():
        args, s0 = _inputs(cell, B=2, T=40, H=8, NH=1, seed=3, scale=12.0)
        _compare(cell, _run(cell, args, s0, "kernel", **kw), _run(cell, args, s0, "reference", **kw))


def _slstm_paper(gx, w, s0, forget_gate):
    """Beck et al. 2024, eqs. (8)-(17), transcribed independently of reference.py: a per-head loop,
    block-diagonal R applied head by head, gate pre-activations z~, i~, f~, o~."""
    B, T, _ = gx.shape
    NH, _, Kh = w.shape
    H = NH * Kh
    h, c, n, m = (s.clone() for s in s0)
    out = []
    for t in range(T):
        heads = []
        for hd in range(NH):
            sl = slice(hd * Kh, (hd + 1) * Kh)
            rec = h[:, sl] @ w[hd].T  # (B, 4Kh): rows g*Kh + j
            pre = [gx[:, t, g * H + hd * Kh : g * H + (hd + 1) * Kh] + rec[:, g * Kh : (g + 1) * Kh] for g in range(4)]
            i_t, f_t, z_t, o_t = pre
            log_f = F.logsigmoid(f_t) if forget_gate == "sigmoid" else f_t
            m_new = torch.maximum(log_f + m[:, sl], i_t)  # eq. (15)
            i_s = torch.exp(i_t - m_new)  # eq. (16)
            f_s = torch.exp(log_f + m[:, sl] - m_new)  # eq. (17)
            c_new = f_s * c[:, sl] + i_s * torch.tanh(z_t)  # eq. (8)
            n_new = f_s * n[:, sl] + i_s  # eq. (9)
            heads.append((torch.sigmoid(o_t) * c_new / n_new, c_new, n_new, m_new))  # eq. (10)
        h, c, n, m = (torch.cat([x[k] for x in heads], -1) for k in range(4))
        out.append(h)
    return torch.stack(out, 1), (h, c, n, m)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("backend", ["reference", "kernel"])
def test_slstm_matches_paper_equations(forget_gate, backend):
    (gx, w, _), s0 = _inputs("slstm", B=2, T=17, H=12, NH=3, seed=5)
    h, final = ops.slstm(gx, w, initial_state=tuple(s0), output_final_state=True, backend=backend, forget_gate=forget_gate)
    h_p, final_p = _slstm_paper(gx, w, s0, forget_gate)
    assert_close(h, h_p, name="h")
    for s, s_p in zip(final, final_p):
        assert_close(s, s_p, name="state")


def test_slstm_output_invariant_to_stabilizer():
    """h does not depend on the stabiliser m: shifting m_0 by any constant leaves every h_t unchanged
    (the paper's point of m: it only guards exp against overflow)."""
    (gx, w, _), s0 = _inputs("slstm", B=2, T=20, H=8, NH=2, seed=9)
    for backend in ("reference", "kernel"):
        h0, _ = ops.slstm(gx, w, initial_state=tuple(s0), backend=backend)
        c, n, m = s0[1], s0[2], s0[3]
        shifted = (s0[0], c * torch.exp(-torch.ones(())), n * torch.exp(-torch.ones(())), m + 1.0)  # same c/n ratio
        h1, _ = ops.slstm(gx, w, initial_state=shifted, backend=backend)
        assert_close(h1, h0, name=f"h with shifted stabiliser ({backend})")


def test_gru_and_lstm_reference_match_torch_cells():
    """The reference cells are torch's formulas: one step equals torch.lstm_cell / torch.gru_cell."""
    gen = torch.Generator().manual_seed(0)
    B, D, H = 3, 5, 7
    x, h, c = torch.randn(B, D, generator=gen), torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
    for cell, fn, G in (("lstm", torch.lstm_cell, 4), ("gru", torch.gru_cell, 3)):
        w_ih, w_hh = torch.randn(G * H, D, generator=gen), torch.randn(G * H, H, generator=gen)
        b_ih, b_hh = torch.randn(G * H, generator=gen), torch.randn(G * H, generator=gen)
        expected = fn(x, (h, c) if cell == "lstm" else h, w_ih, w_hh, b_ih, b_hh)
        expected = expected if isinstance(expected, tuple) else (expected,)
        gx = F.linear(x, w_ih, b_ih if cell == "gru" else b_ih + b_hh)[:, None]
        for backend in ("reference", "kernel"):
            _, final = ops.rnn(cell, gx, w_hh, b_hh if cell == "gru" else None, initial_state=(h, c)[: CELLS[cell][1]],
                               output_final_state=True, backend=backend)
            for s, e in zip(final, expected):
                assert_close(s, e, name=f"{cell} {backend}")


def test_backend_validation_and_logging(caplog, monkeypatch):
    gx, w = torch.randn(2, 3, 8), torch.randn(8, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.lstm(gx, w, backend="fast")
    with pytest.raises(ValueError, match="CPU"):
        ops.resolve_backend("kernel", torch.device("cuda"), "lstm")
    assert ops.resolve_backend("auto", torch.device("cuda"), "lstm") == "reference"
    assert ops.resolve_backend("auto", torch.device("cpu"), "lstm") == "kernel"
    monkeypatch.setattr(ops, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="rnnlab.ops.rnn"):
        for _ in range(3):
            ops.lstm(gx, w, backend="auto")
    msgs = [r.getMessage() for r in caplog.records if "backend=" in r.getMessage()]
    assert len(msgs) == 1 and "'kernel'" in msgs[0], msgs


@pytest.mark.parametrize("backend", ["reference", "kernel"])
def test_bad_inputs(backend):
    with pytest.raises(ValueError, match=r"gx must be \(B, T, 4\*H\)"):
        ops.lstm(torch.randn(2, 3, 7), torch.randn(4, 1), backend=backend)
    with pytest.raises(ValueError, match="weight_hh must be"):
        ops.lstm(torch.randn(2, 3, 8), torch.randn(8, 3), backend=backend)
    with pytest.raises(ValueError, match="NH\\*Kh"):
        ops.gru(torch.randn(2, 3, 12), torch.randn(3, 3, 1), backend=backend)
    with pytest.raises(ValueError, match="bias_hh must be"):
        ops.gru(torch.randn(2, 3, 12), torch.randn(12, 4), torch.randn(11), backend=backend)
    with pytest.raises(ValueError, match="initial_state must be a tuple of 2"):
        ops.lstm(torch.randn(2, 3, 8), torch.randn(8, 2), initial_state=(torch.zeros(2, 2),), backend=backend)
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        ops.elman(torch.randn(2, 3, 4), torch.randn(4, 4), initial_state=(torch.zeros(3, 4),), backend=backend)
    with pytest.raises(ValueError, match="forget_gate must be one of"):
        ops.slstm(torch.randn(2, 3, 8), torch.randn(8, 2), backend=backend, forget_gate="tanh")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        ops.elman(torch.randn(2, 3, 4), torch.randn(4, 4), backend=backend, nonlinearity="gelu")
    with pytest.raises(ValueError, match="unknown cell"):
        ops.rnn("mlstm", torch.randn(2, 3, 4), torch.randn(4, 4), backend=backend)


def test_kernel_backward_detects_inplace_weight_update():
    """The kernel saves weight_hh itself for the backward, so autograd's version check still guards it."""
    gx, w = torch.randn(2, 5, 16, requires_grad=True), torch.randn(16, 4, requires_grad=True)
    h, _ = ops.lstm(gx, w, backend="kernel")
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_the_reference_loop():
    """On CUDA, 'auto' is the reference loop (same numbers as the CPU kernel); 'kernel' is refused, not replaced."""
    (gx, w, b), s0 = _inputs("lstm", B=2, T=9, H=8, NH=2)
    h_cpu, _ = ops.lstm(gx, w, b, initial_state=tuple(s0), backend="kernel")
    h_gpu, _ = ops.lstm(gx.cuda(), w.cuda(), b.cuda(), initial_state=tuple(s.cuda() for s in s0), backend="auto")
    assert_close(h_gpu.cpu(), h_cpu)
    with pytest.raises(ValueError, match="CPU"):
        ops.lstm(gx.cuda(), w.cuda(), backend="kernel")
