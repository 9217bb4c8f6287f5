"""The fused decode kernels (rnnlab.ops.decode) equal the layers' torch steps: outputs and every state entry over many
tokens, batch rows split over threads, each flag of each layer; they step only where the policy allows, and a
stepped state is never written."""
import pickle

import pytest
import torch

from rnnlab.layers.parts import ShortConv
from rnnlab.layers.registry import create_mixer
from rnnlab.ops import decode
from rnnlab.testing import assert_close

D = 32
CASES = [
    ("deltanet", {"num_heads": 2}),
    ("deltanet_neg", {"num_heads": 2}),
    ("gated_deltanet", {"num_heads": 2}),
    ("gated_deltanet", {"num_heads": 2, "num_v_heads": 4, "negative_eigenvalues": True}),
    ("deltaproduct", {"num_heads": 2}),
    ("mamba2", {"headdim": 8, "d_state": 8}),
    ("mamba2", {"headdim": 8, "d_state": 8, "ngroups": 2, "conv_bias": False, "bias": True}),
    ("mlstm", {"num_heads": 2}),
    ("mlstm", {"num_heads": 4, "forget_gate": "exp", "gate_soft_cap": 15.0, "eps": 1e-6}),
    ("mlstm", {"num_heads": 2, "layout": "dense"}),
    ("mlstm", {"num_heads": 4, "layout": "dense", "qk_dim_factor": 0.5, "gate_soft_cap": 15.0, "forget_gate": "exp"}),
    ("hawk", {}),
    ("hawk", {"expansion": 1.0, "gate_blocks": 4, "reset_first_token": True}),  # RecurrentGemma's
    ("rwkv7", {"head_size": 8, "zero_init_output": False, "layer_idx": 2, "num_layers": 4}),
    ("rwkv6", {"head_size": 8, "zero_init": False, "layer_idx": 1, "num_layers": 3, "mix_rank": 4, "decay_rank": 8}),
    ("gla", {"num_heads": 2}),
    ("retnet", {"num_heads": 2}),
    ("linear_attention", {"num_heads": 2}),
    ("linear_attention", {"num_heads": 2, "normalize": False}),
    ("based", {"num_heads": 2, "feature_dim": 4, "window": 8}),
    ("jrt_rnn", {"num_heads": 2}),  # inside the prefix
    ("jrt_rnn", {"num_heads": 2, "feature_dim": 4, "prefix_len": 12}),  # crosses the prefix's end
    ("h3", {"d_state": 8}),
    ("plstm", {"num_heads": 2}),
    ("rat", {"num_heads": 4, "ngroups": 2, "chunk_size": 4}),  # completes chunks, its summaries grow
    ("rat", {"num_heads": 2, "ngroups": 1, "chunk_size": 5, "rope_base": None}),
    ("plstm", {"num_heads": 4, "transition": "logsigmoid"}),
    ("h3", {"d_state": 4, "head_dim": 2}),
    ("slstm", {"num_heads": 2}),
    ("slstm", {"num_heads": 4, "forget_gate": "exp"}),
    ("mamba", {"d_state": 4}),
    ("mamba_neg", {"d_state": 4, "conv_bias": False}),
    ("mamba", {"d_state": 4, "bcdt_norm_eps": 1e-5, "bias": True}),  # Falcon Mamba's norms
    ("longhorn", {"d_state": 4}),  # the mamba kernel with Longhorn's transition
    ("ttt_linear", {"num_heads": 2, "mini_batch_size": 4}),  # crosses mini-batch ends
    ("ttt_linear", {"num_heads": 4, "mini_batch_size": 8, "rope": False, "token_scale": False, "gate": True}),
    ("ttt_mlp", {"num_heads": 2, "mini_batch_size": 4}),
    ("titans_linear", {"num_heads": 2, "chunk_size": 4}),  # crosses chunk ends
    ("titans_linear", {"num_heads": 4, "chunk_size": 8, "max_grad_norm": 0.05}),  # the clip active
    ("titans", {"num_heads": 2, "chunk_size": 4}),  # the deep memory
    ("titans", {"num_heads": 2, "chunk_size": 8, "max_grad_norm": 0.05, "memory_expansion": 2}),
    ("rwkv4", {"zero_init": False, "layer_id": 1, "num_layers": 3}),
    ("lru", {"d_state": 12}),
    ("lru", {}),
    ("s5", {"d_state": 8, "blocks": 2}),  # the LRU's kernel with S5's discretized weights
    ("lssl", {"d_state": 8}),
    ("lssl", {"d_state": 6, "train_A": False, "method": "zoh"}),
    ("res_rmn", {}),  # O the identity
    ("res_rmn", {"orthogonal": "cycle", "memory_units": 12}),
    ("res_rmn", {"orthogonal": "random", "alpha": 0.9, "beta": 0.5, "bias_scaling": 0.1}),
    ("deep_res_esn", {"layers": 3}),  # O random, the units split unevenly across the layers (concat)
    ("deep_res_esn", {"orthogonal": "cycle", "concat": False, "bias_scaling": 0.1}),
    ("ltc", {}),
    ("ltc", {"unfolds": 2}),
    ("hgrn", {}),
    ("hgrn", {"lower_bound": 0.5}),  # a learned floor
    ("hgrn2", {"expand_ratio": 8}),
    ("hgrn2", {"expand_ratio": 16, "lower_bound": 0.3}),
    ("implicit_mamba2", {"headdim": 8, "d_state": 8, "ngroups": 2, "tol": 1e-6, "max_iter": 200, "init_gain": 0.1}),
    ("implicit_mamba2", {"headdim": 8, "d_state": 4, "tol": 1e-4, "max_iter": 3, "init_gain": 0.5}),  # the budget binds
    ("hippo_rnn", {"memory_order": 16}),  # LegS, bilinear: the clock's Δ / t
    ("hippo_rnn", {"memory_order": 8, "memory_size": 2, "measure": "lagt", "method": "backward", "theta": 20.0}),
    ("hippo_rnn", {"memory_order": 6, "method": "forward"}),
    ("yaad", {"num_heads": 2, "chunk_size": 4}),  # the Miras rules: Huber of ‖e‖
    ("yaad", {"num_heads": 2, "chunk_size": 1, "huber": "sign", "max_grad_norm": 0.05, "memory_expansion": 2}),
    ("moneta", {"num_heads": 2, "chunk_size": 4}),  # ℓ3 bias, ℓ4 retention, normalized at chunk ends
    ("moneta", {"num_heads": 4, "chunk_size": 3, "p": 4.0, "q_norm": 2.0, "max_grad_norm": 0.05}),
    ("memora", {"num_heads": 2, "chunk_size": 4}),  # softmax (KL) retention on logits
    ("lact", {"num_heads": 2, "chunk_size": 4}),  # fast weights updated at chunk ends, with momentum
    ("lact", {"num_heads": 4, "chunk_size": 3, "beta": 0.0, "fast_expansion": 1}),
    ("log_linear_gated_deltanet", {"num_heads": 4, "chunk_size": 8, "negative_eigenvalues": True, "num_levels": 6}),
    ("log_linear_mamba2", {"headdim": 8, "d_state": 8, "ngroups": 2, "chunk_size": 4}),  # levels grow at 8 and 16
    ("log_linear_mamba2", {"headdim": 8, "d_state": 4, "chunk_size": 4, "conv_bias": False, "bias": True, "num_levels": 6}),
    ("log_linear_gated_deltanet", {"num_heads": 2, "chunk_size": 4}),
]


def _steps(m, x, state, kernels: bool):
    ys = []
    with decode.enabled(kernels):
        for t in range(x.shape[1]):
            y, state = m(x[:, t : t + 1], state)
            ys.append(y)
    return torch.cat(ys, 1), state


def _mixer(name, kw, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = create_mixer(name, D, **kw).eval().to(dtype)
    with torch.no_grad():  # trained-looking gates: the defaults' biases keep some of them saturated
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("batch", [1, 8])  # 8 rows: split over two threads (hawk's kernel stops at 4: the torch step)
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_kernel_equals_torch_step(name, kw, batch):
    m = _mixer(name, kw)
    x = torch.randn(batch, 16, D)
    with torch.inference_mode():
        _, s0 = m(torch.randn(batch, 7, D))  # a prefilled state
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
    assert_close(y, y_ref, name=f"{name} y")
    assert s.keys() == s_ref.keys()
    for key in s_ref:
        assert s[key].dtype == s_ref[key].dtype and s[key].shape == s_ref[key].shape
        if s[key].is_floating_point():
            assert_close(s[key], s_ref[key], name=f"{name} state {key}")
        else:  # positions
            assert torch.equal(s[key], s_ref[key])


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_kernels_write_before_they_read(name, kw, monkeypatch):
    """Every array ``decode`` allocates for a kernel (outputs, new states, scratch) starts as garbage (NaN, or a
    large integer): a kernel that reads an entry before writing it gives NaN here, not a value that depends on what
    the allocator happened to return."""
    import types

    import numpy as np

    def garbage(shape, dtype=float, **_):
        dtype = np.dtype(dtype)
        return np.full(shape, np.nan if dtype.kind == "f" else -(1 << 20), dtype)

    fake = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("__")})
    fake.empty, fake.empty_like = garbage, lambda a, dtype=None, **kw: garbage(a.shape, dtype or a.dtype)
    m = _mixer(name, kw)
    x = torch.randn(2, 6, D)
    with torch.inference_mode():
        _, s0 = m(torch.randn(2, 5, D))
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        monkeypatch.setattr(decode, "np", fake)
        y, s = _steps(m, x, s0, kernels=True)
    assert_close(y, y_ref, name=f"{name} y")
    for key in s_ref:
        if s[key].is_floating_point():
            assert_close(s[key], s_ref[key], name=f"{name} state {key}")


def test_float64_policy():
    """The delta rule and mLSTM compute in float32 inside, so their float64 steps stay the torch step's (a float64 kernel
    would be more exact than the layer's own forms); mamba2, hawk and attention compute in float64 and take it."""
    x1 = torch.randn(1, 1, D, dtype=torch.float64)
    for name in ("gated_deltanet", "mlstm"):
        assert not decode.usable(x1, *_mixer(name, {"num_heads": 2}, torch.float64).parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_tokens_from_the_empty_state(dtype):
    """Stepping from the initial state: RG-LRU's first-token reset (pos 0), the test-time memories' learned initial weights, and
    mamba2's and the reservoirs' float64 arithmetic (their torch steps compute in float64: the kernels equal them to 1e-10)."""
    cases = [("hawk", {"expansion": 1.0, "gate_blocks": 2, "reset_first_token": True}), ("mamba2", {"headdim": 8, "d_state": 8}),
             ("res_rmn", {"orthogonal": "random"}), ("deep_res_esn", {"orthogonal": "identity"})]
    if dtype == torch.float32:  # TTT-Linear and Titans from their learned initial weights (expanded in the state)
        cases += [("ttt_linear", {"num_heads": 2, "mini_batch_size": 4}), ("ttt_mlp", {"num_heads": 2, "mini_batch_size": 4}),
                  ("titans_linear", {"num_heads": 2, "chunk_size": 4}), ("titans", {"num_heads": 2, "chunk_size": 4}),
                  ("yaad", {"num_heads": 2, "chunk_size": 4}), ("moneta", {"num_heads": 2, "chunk_size": 4}),
                  ("memora", {"num_heads": 2, "chunk_size": 4}), ("lact", {"num_heads": 2, "chunk_size": 4})]
    for name, kw in cases:
        m = _mixer(name, kw, dtype)
        x = torch.randn(2, 12, D, dtype=dtype)
        with torch.inference_mode():
            y_ref, s_ref = _steps(m, x, None, kernels=False)
            y, s = _steps(m, x, None, kernels=True)
        assert_close(y, y_ref, name=f"{name} y")
        for key in s_ref:
            if s[key].is_floating_point():
                assert_close(s[key], s_ref[key], name=f"{name} {key}")
            else:  # positions
                assert torch.equal(s[key], s_ref[key])


@pytest.mark.parametrize("name,kw", [("ltc", {}), ("hippo_rnn", {"memory_order": 8}), ("hippo_rnn", {"memory_order": 8, "measure": "lagt"})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_steps(name, kw, dtype):
    """LTC's and HiPPO-RNN's kernels advance each row by its own elapsed time dt (B, 1) (LTC's ODE, LegS's clock and
    LagT's step), as their torch steps; float64 in float64."""
    m = _mixer(name, kw, dtype)
    x, dt = torch.randn(3, 10, D, dtype=dtype), 2 * torch.rand(3, 10, dtype=dtype)
    ys = {}
    with torch.inference_mode():
        for kernels in (True, False):
            state, out = None, []
            with decode.enabled(kernels):
                for t in range(10):
                    y, state = m(x[:, t:t + 1], state, dt=dt[:, t:t + 1])
                    out.append(y)
            ys[kernels] = torch.cat(out, 1), state
    assert_close(ys[True][0], ys[False][0], name="y")
    for key in ys[False][1]:
        assert_close(ys[True][1][key], ys[False][1][key], name=key)


def test_slstm_without_conv():
    """sLSTM built without its conv (conv_kernel=0, a constructor option the registry's option policy does not offer)."""
    from rnnlab.layers.slstm import SLSTM

    torch.manual_seed(0)
    m = SLSTM(D, num_heads=2, conv_kernel=0).eval()
    x = torch.randn(3, 10, D)
    with torch.inference_mode():
        _, s0 = m(torch.randn(3, 4, D))
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
    assert_close(y, y_ref)
    assert s.keys() == s_ref.keys()
    for key in s_ref:
        assert_close(s[key], s_ref[key], name=key)


def test_retnet_far_positions():
    """RetNet's rotation far into a stream: the kernel's float32 angles are the torch path's."""
    m = _mixer("retnet", {"num_heads": 2})
    with torch.inference_mode():
        _, s0 = m(torch.randn(2, 3, D))
        s0 = {**s0, "pos": torch.tensor([10**6, 3 * 10**6 + 7])}
        x = torch.randn(2, 5, D)
        y_ref, _ = _steps(m, x, s0, kernels=False)
        y, _ = _steps(m, x, s0, kernels=True)
    assert_close(y, y_ref)


def test_policy():
    x1 = torch.randn(1, 1, D)
    p = torch.randn(3, requires_grad=True)
    assert decode.usable(x1, p.detach())
    assert not decode.usable(x1, p)  # a gradient is wanted
    with torch.no_grad():
        assert decode.usable(x1, p)
        assert not decode.usable(torch.randn(1, 2, D), p)  # two tokens: the layer's parallel form
        assert not decode.usable(x1.bfloat16(), p.bfloat16())
        assert not decode.usable(x1, p.double())  # mixed dtypes
        with decode.enabled(False):
            assert not decode.usable(x1, p)
        assert decode.usable(torch.randn(8, 1, D), p, max_batch=8) and not decode.usable(torch.randn(9, 1, D), p, max_batch=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the torch step computes in bfloat16: its numbers, its dtypes
            assert not decode.usable(x1, p) and not decode.linear_usable(x1, torch.randn(4, D))


def test_autocast_runs_the_torch_step():
    """Under CPU autocast a decode step is the torch step's (bfloat16 outputs; RWKV-4's projection in bfloat16 once
    reached its kernel and failed there)."""
    for name, kw in [("rwkv4", {"zero_init": False}), ("mamba2", {"headdim": 8, "d_state": 8}), ("attention", {"num_heads": 2})]:
        m = _mixer(name, kw)
        x = torch.randn(2, 4, D)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, s = m(x)
            y, _ = m(x[:, :1], s)
            with decode.enabled(False):
                y_ref, _ = m(x[:, :1], s)
        assert y.dtype == y_ref.dtype and torch.equal(y, y_ref), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_equals_nn_linear(dtype, bias, threads, monkeypatch):
    """decode.linear (the kernel's rows, its outputs over threads) equals the module at 1-8 rows, widths that are not
    multiples of four included."""
    monkeypatch.setattr(decode, "_SPLIT_WORK", 0)  # the threaded path at these small widths
    layer = torch.nn.Linear(37, 23, bias=bias).to(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for B in (1, 3, 8):
                x = torch.randn(B, 1, 37, dtype=dtype)
                y = decode.linear(layer, x)
                assert y.shape == (B, 1, 23) and y.dtype == dtype
                assert_close(y, layer(x), name=f"B={B}")
    finally:
        torch.set_num_threads(before)


def test_linear_policy():
    """decode.linear runs the module itself (its forward and hooks) for anything but decode rows without autograd,
    and its cached weight views follow in-place updates and replaced parameters."""
    layer = torch.nn.Linear(16, 8)
    calls = []
    forward = layer.forward
    layer.forward = lambda x: calls.append(x.shape) or forward(x)
    with torch.no_grad():
        decode.linear(layer, torch.randn(2, 1, 16))
        assert calls == []  # the kernel
        for shape in [(9, 1, 16), (2, 3, 16), (2, 16)]:  # too many rows, several tokens, no token axis
            decode.linear(layer, torch.randn(shape))
        with pytest.raises(RuntimeError):  # dtypes differ: the module's own error
            decode.linear(layer, torch.randn(2, 1, 16).double())
        with pytest.raises(RuntimeError):  # a wrong width: the module's own error, not a read out of bounds
            decode.linear(layer, torch.randn(2, 1, 15))
    assert len(calls) == 5
    calls.clear()
    decode.linear(layer, torch.randn(2, 1, 16))  # a gradient is wanted
    with torch.no_grad():
        with decode.enabled(False):
            decode.linear(layer, torch.randn(2, 1, 16))
        handle = layer.register_forward_pre_hook(lambda mod, args: None)
        decode.linear(layer, torch.randn(2, 1, 16))
        handle.remove()
        handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
        decode.linear(layer, torch.randn(2, 1, 16))
        handle.remove()
    assert len(calls) == 4
    x = torch.randn(1, 1, 16)
    with torch.no_grad():
        decode.linear(layer, x)  # views cached
        layer.weight.mul_(2.0)  # in place: the views see it
        assert_close(decode.linear(layer, x), forward(x), name="in place")
        layer.weight = torch.nn.Parameter(torch.randn(8, 16))  # replaced: rebuilt
        layer.bias = None
        assert_close(decode.linear(layer, x), forward(x), name="replaced")


def test_sequential():
    """decode.sequential: an MLP's Linears by the kernel equal the module; a hooked Sequential is the module call."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 9))
    x = torch.randn(3, 1, 12)
    with torch.no_grad():
        assert_close(decode.sequential(mlp, x), mlp(x))
        mlp.register_forward_hook(lambda mod, args, out: out * 0)
        assert torch.equal(decode.sequential(mlp, x), torch.zeros(3, 1, 9))


def test_training_mode_keeps_autograd():
    m = _mixer("gated_deltanet", {"num_heads": 2})
    y, s = m(torch.randn(2, 1, D))
    y.sum().backward()  # the torch step ran: gradients reach the projections
    assert m.q_proj.weight.grad is not None and m.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,kw", [CASES[2], CASES[5], CASES[7], CASES[-1], ("h3", {"d_state": 8}), ("lru", {})])  # h3, lru: weights derived from parameters
def test_weights_follow_updates(name, kw):
    """The weights' cached views see in-place updates (an optimizer step, load_state_dict; rwkv4's derived weights are
    recomputed) and are rebuilt when a parameter is replaced."""
    m = _mixer(name, kw)
    x = torch.randn(2, 4, D)
    with torch.inference_mode():
        _steps(m, x, None, kernels=True)  # views cached
    other = _mixer(name, kw, seed=1)
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.01)
    for conv in [mod for mod in m.modules() if isinstance(mod, ShortConv)]:  # read by every kernel
        conv.weight = torch.nn.Parameter(conv.weight.detach() * 0.9)
    with torch.inference_mode():
        y_ref, _ = _steps(m, x, None, kernels=False)
        y, _ = _steps(m, x, None, kernels=True)
    assert_close(y, y_ref, name="y")


def test_stepped_state_unchanged():
    m = _mixer("mlstm", {"num_heads": 2})
    with torch.inference_mode():
        _, s0 = m(torch.randn(1, 5, D))
        before = {k: v.clone() for k, v in s0.items()}
        x1 = torch.randn(1, 1, D)
        y1, _ = m(x1, s0)
        y2, _ = m(x1, s0)  # the same state stepped twice (a branch): the same token out, s0 untouched
    assert torch.equal(y1, y2)
    for k in before:
        assert torch.equal(s0[k], before[k])


@pytest.mark.parametrize("name,kw", [("mamba2", {"headdim": 8, "d_state": 8}), ("titans", {"num_heads": 2, "chunk_size": 4})])
def test_state_views_follow_the_tensors(name, kw):
    """A token reuses the numpy arrays behind the states the last one made (decode's ``_tensor`` / ``_arr``): a state
    edited in place between tokens is seen, a replaced entry or a branch from an older state is converted afresh, the
    mixer still pickles, and the record of a tensor goes with it. Each against the torch step on the same states."""
    m = _mixer(name, kw)
    x = torch.randn(2, 6, D)
    with torch.inference_mode():
        _, s = m(torch.randn(2, 5, D))
        older = s
        for t in range(6):
            x1 = x[:, t : t + 1]
            key = [k for k, v in s.items() if v.is_floating_point()][t % 2]
            if t == 2:
                s[key].mul_(0.5)  # in place: the cached view sees it
            elif t == 4:
                s = {**s, key: s[key] * 0.5}  # a new tensor for one entry
            elif t == 5:
                s = older  # a branch from an earlier state
            with decode.enabled(False):
                y_ref, s_ref = m(x1, {k: v.clone() for k, v in s.items()})
            y, s = m(x1, s)
            assert_close(y, y_ref, name=f"{name} token {t}")
            for k in s_ref:
                if s[k].is_floating_point():
                    assert_close(s[k], s_ref[k], name=f"{name} token {t} state {k}")
                else:
                    assert torch.equal(s[k], s_ref[k])
    made = [k for k, v in s.items() if id(v) in decode._MADE]
    assert made and all(decode._arr(s[k]) is decode._MADE[id(s[k])][1] for k in made)
    key = made[0]
    gone = id(s[key])
    s = {**s, key: None}
    assert gone not in decode._MADE  # the record dies with its tensor
    s = {**s, key: torch.zeros_like(s_ref[key])}
    m2 = pickle.loads(pickle.dumps(m))
    with torch.inference_mode():
        y, _ = m2(x[:, :1], s)
    assert y.shape == (2, 1, D)


@pytest.mark.parametrize("name,kw,anchors", [
    ("lact", {"num_heads": 2, "chunk_size": 4}, ("w1", "w2", "w3", "m_w1", "m_w2", "m_w3")),
    ("titans_linear", {"num_heads": 2, "chunk_size": 4}, ("w1",)),
    ("titans", {"num_heads": 2, "chunk_size": 4}, ("w1", "w2")),
    ("memora", {"num_heads": 2, "chunk_size": 4}, ("w1", "w2")),
])
def test_memory_anchors_held_within_a_chunk(name, kw, anchors):
    """Within a chunk a test-time memory's anchors pass through (the new state holds the old tensors: no copy per
    token); where one row ends its chunk and another does not, every row gets fresh ones. Either way the kernel equals
    the torch step and the caller's state is never written."""
    m = _mixer(name, kw)
    with torch.inference_mode():
        _, mid = m(torch.randn(1, 5, D))  # position 1 of 4
        _, s1 = m(torch.randn(1, 1, D), mid)
        assert all(s1[k] is mid[k] for k in anchors)
        parts = [m(torch.randn(1, n, D))[1] for n in (6, 7)]  # positions 2 and 3: the second row ends its chunk first
        s0 = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        before = {k: v.clone() for k, v in s0.items()}
        x = torch.randn(2, 6, D)
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
        _, s2 = m(x[:, :1], s0)
    assert all(s2[k] is not s0[k] for k in anchors)
    assert_close(y, y_ref, name=f"{name} y")
    for k in s_ref:
        assert_close(s[k].float(), s_ref[k].float(), name=f"{name} {k}")
    for k in before:
        assert torch.equal(s0[k], before[k]), k


def test_bad_state_still_fails():
    m = _mixer("mamba2", {"headdim": 8, "d_state": 8})
    with torch.inference_mode():
        _, s = m(torch.randn(1, 3, D))
        s = {**s, "h": s["h"][..., :-1]}
        with pytest.raises(ValueError, match="h"):
            m(torch.randn(1, 1, D), s)


ATTENTION = [
    ("attention", {"num_heads": 2}),
    ("attention", {"num_heads": 4, "num_kv_heads": 2, "output_gate": True}),
    ("attention", {"num_heads": 2, "rope_base": None}),
    ("sliding_attention", {"num_heads": 2, "window": 6}),
    ("attention", {"num_heads": 2, "qk_norm": True, "output_gate": True, "rotary_dim": 4}),  # Qwen3.5's
    ("sliding_attention", {"num_heads": 2, "window": 5, "rotary_dim": 8}),  # RecurrentGemma's partial rotary
    ("sliding_attention", {"num_heads": 2, "window": 6, "persistent_tokens": 3}),  # Titans' MAG / MAC branch
    ("attention", {"num_heads": 4, "num_kv_heads": 2, "qk_norm": True, "persistent_tokens": 2}),
    ("attention", {"num_heads": 2, "head_dim": 8}),  # H·d = 16 < d_model: the out projection's rows are narrower
]


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("name,kw", ATTENTION, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ATTENTION)])
def test_attention_kernel_equals_torch_step(name, kw, threads, monkeypatch):
    """The attention kernel (the projections, rotation, the cache write in place, softmax attention) against the torch
    step; threads: the projections' outputs and the units spread over numba's threads (two threads, the threshold
    lowered so that small shapes take that path)."""
    before = torch.get_num_threads()
    if threads:
        monkeypatch.setattr(decode, "_SPLIT_WORK", 0)
        torch.set_num_threads(2)
    try:
        _test_attention(name, kw, torch.float32)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [False, True])
def test_attention_kernel_with_hooked_projection(threads, monkeypatch):
    """A hook on the output projection (diagnostics' head knockouts) keeps the module calls around the attention's
    kernel: the hook fires every token and the numbers are the torch step's with the same hook."""
    if threads:
        monkeypatch.setattr(decode, "_SPLIT_WORK", 0)
    m = _mixer("attention", {"num_heads": 2})
    calls = []

    def knockout(module, args):
        calls.append(1)
        return (args[0] * torch.tensor([0.0] * (D // 2) + [1.0] * (D // 2)),)

    m.out.register_forward_pre_hook(knockout)
    x = torch.randn(2, 6, D)
    with torch.inference_mode():
        _, s0 = m(torch.randn(2, 5, D))
        y_ref, _ = _steps(m, x, s0, kernels=False)
        calls.clear()
        y, _ = _steps(m, x, s0, kernels=True)
    assert len(calls) == 6
    assert_close(y, y_ref, name="y")


def test_attention_token_is_one_call(monkeypatch):
    """With plain projections the whole token (projections included) is the one kernel call, head_dim != D/H too."""
    kernels = decode._kernels()
    calls = []
    token = kernels.attention_token
    monkeypatch.setattr(kernels, "attention_token", lambda *a: calls.append(1) or token(*a))
    m = _mixer("attention", {"num_heads": 2, "head_dim": 8})
    with torch.inference_mode():
        _, s = m(torch.randn(1, 5, D))
        m(torch.randn(1, 1, D), s)
    assert calls == [1]


def test_attention_kernel_float64():
    _test_attention("attention", {"num_heads": 2}, torch.float64)


def _test_attention(name, kw, dtype):
    m = _mixer(name, kw, dtype)
    x = torch.randn(3, 20, D, dtype=dtype)
    with torch.inference_mode():
        _, s0 = m(torch.randn(3, 9, D, dtype=dtype))
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
        y_again, _ = _steps(m, x, s0, kernels=True)  # s0 stepped again (a branch): its cache was not written over
    assert_close(y, y_ref, name="y")
    assert torch.equal(y, y_again)
    for key in ("k", "v"):
        assert_close(s[key], s_ref[key], name=key)
    assert torch.equal(s["pos"], s_ref["pos"])


@pytest.mark.parametrize("delta", [False, True])
def test_log_linear_levels_over_threads(delta):
    """The log-linear op's one-token kernel with its (row, head) units over numba's threads (levels large enough to
    split), from rows at different positions, across level growth: equal to the torch loop."""
    from rnnlab.ops.log_linear import fused_recurrent_log_linear_gated_delta_rule, fused_recurrent_log_linear_simple_gla

    torch.manual_seed(0)
    B, T, H, K, V, NL = 4, 12, 4, 32, 32, 8
    q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    g, beta, lam = -torch.rand(B, T, H), torch.rand(B, T, H), torch.rand(B, T, H, NL)
    op = fused_recurrent_log_linear_gated_delta_rule if delta else fused_recurrent_log_linear_simple_gla
    s0 = {"S": torch.randn(B, 4, H, K, V), "pos": torch.tensor([5, 7, 12, 15])}

    def run(kernels):
        ys, s = [], s0
        with torch.inference_mode(), decode.enabled(kernels):
            for t in range(T):
                gates = (g[:, t:t + 1], beta[:, t:t + 1]) if delta else (g[:, t:t + 1],)
                y, s = op(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], *gates, lam[:, t:t + 1], initial_state=s, output_final_state=True)
                ys.append(y)
        return torch.cat(ys, 1), s

    (y_ref, s_ref), (y, s) = run(False), run(True)
    assert B * H * s["S"].shape[1] * K * V >= decode._SPLIT_WORK  # the threaded kernel ran
    assert_close(y, y_ref)
    assert_close(s["S"], s_ref["S"])
    assert torch.equal(s["pos"], s_ref["pos"])


@pytest.mark.parametrize("name,kw", [("rat", {"num_heads": 4, "ngroups": 2, "chunk_size": 4}),
                                     ("titans", {"num_heads": 2, "chunk_size": 4}), ("yaad", {"num_heads": 2, "chunk_size": 4}),
                                     ("ttt_linear", {"num_heads": 2, "mini_batch_size": 4}),
                                     ("ttt_mlp", {"num_heads": 2, "mini_batch_size": 4})])
def test_rows_at_different_positions(name, kw):
    """Rows that end their chunks at different steps (a packed prefill leaves them at different positions): RAT's
    right-aligned summaries, which grow only when a row has no front padding to spare; the test-time memories' anchors,
    passed through while no row's chunk ends and copied for the other rows when one does."""
    m = _mixer(name, kw)
    lengths = [3, 9, 6]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    with torch.inference_mode():
        _, s0 = m(torch.randn(1, sum(lengths), D), cu_seqlens=cu)
        assert len(set(s0["pos"].tolist())) == 3
        x = torch.randn(3, 10, D)
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
    assert_close(y, y_ref)
    for key in s_ref:
        assert s[key].shape == s_ref[key].shape
        assert_close(s[key].float(), s_ref[key].float(), name=key)


@pytest.mark.parametrize("name,kw", [("titans", {"num_heads": 4, "chunk_size": 4}), ("yaad", {"num_heads": 4, "chunk_size": 4}),
                                     ("moneta", {"num_heads": 2, "chunk_size": 3}), ("memora", {"num_heads": 2, "chunk_size": 4}),
                                     ("ttt_mlp", {"num_heads": 4, "mini_batch_size": 4}),
                                     ("lact", {"num_heads": 4, "chunk_size": 3}), ("ltc", {}), ("lssl", {"d_state": 8}),
                                     ("log_linear_mamba2", {"headdim": 8, "d_state": 8, "ngroups": 2, "chunk_size": 4}),
                                     ("log_linear_gated_deltanet", {"num_heads": 4, "chunk_size": 4})])
def test_memory_heads_over_threads(name, kw, monkeypatch):
    """A few rows of a large memory: the kernel's ``_heads`` variant runs the (row, head) units over numba's threads
    (the size threshold lowered so that small shapes take it); equal to the torch step, rows at different positions.
    LTC's variant cuts each sub-step's columns over the threads instead, LSSL's its (row, channel) units."""
    kernels = decode._kernels()
    kernel = {"titans": "titans_mlp_decode", "ttt_mlp": "ttt_mlp_decode", "lact": "lact_decode", "ltc": "ltc_decode",
              "lssl": "dense_ssm_decode", "log_linear_mamba2": "log_linear_ssd_decode",
              "log_linear_gated_deltanet": "log_linear_delta_decode"}.get(name, "miras_decode")
    kernel += "_heads"
    calls = []
    inner = getattr(kernels, kernel)
    monkeypatch.setattr(kernels, kernel, lambda *a: (calls.append(1), inner(*a))[1])
    monkeypatch.setattr(decode, "_SPLIT_WORK", 0)
    torch.set_num_threads(2)  # the fixture restores one thread
    m = _mixer(name, kw)
    lengths = [3, 6, 5]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    with torch.inference_mode():
        _, s0 = m(torch.randn(1, sum(lengths), D), cu_seqlens=cu)
        x = torch.randn(3, 9, D)
        y_ref, s_ref = _steps(m, x, s0, kernels=False)
        y, s = _steps(m, x, s0, kernels=True)
    assert calls
    assert_close(y, y_ref)
    for key in s_ref:
        assert_close(s[key].float(), s_ref[key].float(), name=key)


_MLSTM_CASES = [case for case in CASES if case[0] == "mlstm"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kw", [kw for _, kw in _MLSTM_CASES], ids=[f"mlstm-{i}" for i in range(len(_MLSTM_CASES))])
def test_mlstm_prompt_equals_chunk_form(kw, threads, monkeypatch):
    """mLSTM's prompt kernel (the recurrent form over a whole prompt, ``decode.fused_prompt``, in place of the chunk form
    without autograd) equals the layer's torch step token by token (the same recurrence; the chunk form's own rounding
    differs from both by up to 1.2e-5 with the exp forget gate): from the empty state and from a prefilled one, at
    lengths off the chunk grid, rows (and heads) split over threads, packed sequences, and with every allocated array
    garbage first."""
    import types

    import numpy as np

    torch.set_num_threads(threads)  # the fixture restores one thread
    m = _mixer("mlstm", {**kw, "chunk_size": 8})
    x, x2 = torch.randn(3, 21, D), torch.randn(3, 13, D)
    lengths = [5, 1, 12]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    xp = torch.randn(1, sum(lengths), D)
    with torch.inference_mode():
        y1_ref, s1_ref = _steps(m, x, m.init_state(3), kernels=False)
        y2_ref, s2_ref = _steps(m, x2, s1_ref, kernels=False)
        seqs = [_steps(m, xp[:, a:b], m.init_state(1), kernels=False) for a, b in zip(cu[:-1], cu[1:])]
        yp_ref, sp_ref = torch.cat([y for y, _ in seqs], 1), {k: torch.cat([s[k] for _, s in seqs]) for k in seqs[0][1]}
    fake = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("__")})
    fake.empty = lambda shape, dtype=float, **_: np.full(shape, np.nan, dtype)
    fake.empty_like = lambda a, dtype=None, **_: np.full(a.shape, np.nan, dtype or a.dtype)
    monkeypatch.setattr(decode, "np", fake)
    calls = []
    kernels = decode._kernels()
    inner = kernels.mlstm_prefill
    monkeypatch.setattr(kernels, "mlstm_prefill", lambda *a: (calls.append(1), inner(*a))[1])
    with torch.inference_mode():
        y1, s1 = m(x)
        y2, s2 = m(x2, s1)
        yp, sp = m(xp, cu_seqlens=cu)
    assert len(calls) == 4 * threads  # four prompts (the packed length-1 sequence is a decode step), units over the threads
    for got, ref in ((y1, y1_ref), (y2, y2_ref), (yp, yp_ref)):
        assert_close(got, ref)
    for got, ref in ((s1, s1_ref), (s2, s2_ref), (sp, sp_ref)):
        assert got.keys() == ref.keys()
        for key in ref:
            assert got[key].dtype == ref[key].dtype
            assert_close(got[key], ref[key], name=key)


def test_mlstm_prompt_policy():
    """The prompt kernel runs only where a decode kernel may (CPU, no gradient wanted, float32): training keeps the
    chunk form and its autograd graph."""
    m = _mixer("mlstm", {"num_heads": 2})
    x = torch.randn(2, 9, D)
    assert decode.usable(x, m.norm_weight.detach(), prompt=True)
    assert not decode.usable(x, m.norm_weight.detach())  # T > 1 is a prompt kernel's only
    y, _ = m.train()(x)
    assert y.grad_fn is not None
    y.sum().backward()
    assert m.in_proj.weight.grad is not None if hasattr(m, "in_proj") else m.proj_up.weight.grad is not None


def test_implicit_iterations_as_the_torch_step():
    """Implicit Mamba-2's kernel runs the fixed-point iteration per row, as ``solve`` does: the same number of
    applications of f (``last_iterations``, the most over the rows) at every token."""
    m = _mixer("implicit_mamba2", {"headdim": 8, "d_state": 8, "tol": 1e-5, "max_iter": 100, "init_gain": 0.3})
    x = torch.randn(3, 6, D)
    counts = {}
    with torch.inference_mode():
        _, s0 = m(torch.randn(3, 4, D))
        for kernels in (True, False):
            state, counts[kernels] = s0, []
            with decode.enabled(kernels):
                for t in range(x.shape[1]):
                    _, state = m(x[:, t:t + 1], state)
                    counts[kernels].append(m.last_iterations)
    assert counts[True] == counts[False] and min(counts[True]) > 1


@pytest.mark.parametrize("name", ["log_linear_mamba2", "log_linear_gated_deltanet"])
def test_log_linear_capacity_still_fails(name):
    """The log-linear layers' fused steps keep the op's capacity error: a position whose level has no weight (``num_levels``)
    is a ValueError with the kernels as without them, not a read past the weights."""
    kw = {"headdim": 8, "d_state": 8, "chunk_size": 4} if name == "log_linear_mamba2" else {"num_heads": 2, "chunk_size": 4}
    m = _mixer(name, {**kw, "num_levels": 3})  # positions 0..3
    for kernels in (True, False):
        with torch.inference_mode(), decode.enabled(kernels):
            _, state = m(torch.randn(2, 3, D))
            _, state = m(torch.randn(2, 1, D), state)  # position 3: the last one covered
            with pytest.raises(ValueError, match="levels"):
                m(torch.randn(2, 1, D), state)
