"""Hawk / RG-LRU: the a^c initialisation range, a_t in (0, 1), the paper's eqs. (1)-(4) per token."""
import math

import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.testing import TOLERANCE, assert_close


def test_hawk_lambda_init_range():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hawk", 768)  # D_rnn = 1024
    a_c = torch.sigmoid(m.Lambda.detach().double()) ** 8
    assert m.d_rnn == 1024
    assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
    assert abs(float(a_c.mean()) - (0.9 + 0.999) / 2) < 0.01  # uniform
    # log space: a_t = a^{c r} for r in (0, 1) stays in (a^c, 1)
    r = torch.rand(1024)
    log_a = m.log_a(r).detach()
    assert_close(log_a.exp(), (torch.sigmoid(m.Lambda.double()) ** (8 * r.double())).float())
    assert (log_a < 0).all() and (log_a.exp() >= a_c - 1e-6).all()


def test_hawk_matches_paper_transcription():
    """Griffin Sec. 2.3-2.4 (eqs. 1-4), written per token with explicit conv window."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hawk", 12)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 23, 12)
    y, s = m(x)
    Dr, W = m.d_rnn, m.conv.kernel_size
    buf, h, ys = torch.zeros(2, W - 1, Dr), torch.zeros(2, Dr), []
    a_base = torch.sigmoid(m.Lambda)
    for t in range(23):
        gate = F.gelu(x[:, t] @ m.linear_y.weight.T + m.linear_y.bias, approximate="tanh")
        u = x[:, t] @ m.linear_x.weight.T + m.linear_x.bias
        window = torch.cat([buf, u[:, None]], 1)
        buf = window[:, 1:]
        xc = (window * m.conv.weight.T).sum(1) + m.conv.bias
        r = torch.sigmoid(xc @ m.gate_a.weight.T + m.gate_a.bias)  # (1)
        i = torch.sigmoid(xc @ m.gate_x.weight.T + m.gate_x.bias)  # (2)
        a = a_base ** (8 * r)  # (3)
        h = a * h + torch.sqrt(1 - a**2) * (i * xc)  # (4)
        ys.append((h * gate) @ m.linear_out.weight.T + m.linear_out.bias)
    assert_close(y, torch.stack(ys, 1))
    assert_close(s["h"], h)
    assert_close(s["conv"], buf)


# --- issue 18: RecurrentGemma's residual block against an independent transcription of the paper ------------------

def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _rms(x, g, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def griffin_residual_block(x, w, reset_first_token):
    """x (B, T, D) float64 -> the residual block of De et al. 2024 (Fig. 2), one token at a time, from the paper:
    x + RecurrentBlock(RMSNorm(x)), then + MLP(RMSNorm(.)). Recurrent block (Sec. 2.4): GeLU(W_y x) ⊙ RG-LRU(Conv1D(W_x x))
    with a width-4 temporal conv, then W_out; RG-LRU: r_t = σ(W_a x_t + b_a) (1), i_t = σ(W_x x_t + b_x) (2),
    a_t = a^{c r_t}, a = σ(Λ), c = 8 (3), h_t = a_t ⊙ h_{t−1} + sqrt(1 − a_t²) ⊙ (i_t ⊙ x_t) (4). MLP block (Sec. 2.2):
    W_d (GeLU(W_g x) ⊙ W_u x). Gate matrices are whatever ``w`` holds (recurrentgemma's are block-diagonal);
    ``reset_first_token``: recurrentgemma's reset, the first token enters as i_0 ⊙ x_0 (eq. 4 without sqrt(1 − a_0²))."""
    B, T, _ = x.shape
    W = w["conv"].shape[1]
    window, h, out = x.new_zeros(B, W, w["conv"].shape[0]), 0, []
    a = torch.sigmoid(w["Lambda"])
    for t in range(T):
        n = _rms(x[:, t], w["norm1"])
        gate = _gelu_tanh(n @ w["Wy"].T + w["by"])
        window = torch.cat([window[:, 1:], (n @ w["Wx"].T + w["bx"])[:, None]], 1)  # the last W inputs, oldest first
        xc = (window * w["conv"].T).sum(1) + w["bconv"]
        r = torch.sigmoid(xc @ w["Wa"].T + w["ba"])
        i = torch.sigmoid(xc @ w["Wi"].T + w["bi"])
        a_t = a ** (8 * r)
        h = a_t * h + (1 if reset_first_token and t == 0 else torch.sqrt(1 - a_t**2)) * (i * xc)
        res = x[:, t] + (h * gate) @ w["Wo"].T + w["bo"]
        m = _rms(res, w["norm2"])
        out.append(res + (_gelu_tanh(m @ w["Wg"].T + w["bg"]) * (m @ w["Wu"].T + w["bu"])) @ w["Wd"].T + w["bd"])
    return torch.stack(out, 1)


def _griffin_weights(D, Dr, heads, hidden, W=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.3: torch.randn(*s, generator=gen, dtype=torch.float64) * std  # noqa: E731
    wb = Dr // heads
    blocks = lambda: r(heads, wb, wb, std=wb**-0.5)  # noqa: E731  (out, in) per head
    w = {"norm1": 1 + r(D), "norm2": 1 + r(D), "Wy": r(Dr, D), "by": r(Dr), "Wx": r(Dr, D), "bx": r(Dr), "conv": r(Dr, W),
         "bconv": r(Dr), "Lambda": 2 + r(Dr), "ba": r(Dr), "bi": r(Dr), "Wo": r(D, Dr), "bo": r(D), "Wg": r(hidden, D),
         "bg": r(hidden), "Wu": r(hidden, D), "bu": r(hidden), "Wd": r(D, hidden), "bd": r(D)}
    w["blocks_a"], w["blocks_i"] = blocks(), blocks()
    w["Wa"], w["Wi"] = torch.block_diag(*w["blocks_a"]), torch.block_diag(*w["blocks_i"])  # the dense matrices they are
    return w


def _rnnlab_griffin_block(w, D, Dr, heads, hidden, reset):
    from rnnlab.models.model import Block, SwiGLU

    mixer = rnnlab.create_mixer("hawk", D, expansion=Dr / D, gate_blocks=heads, reset_first_token=reset)
    block = Block(mixer, SwiGLU(D, 1.5 * hidden / D, "gelu", bias=True), D).double()
    pairs = {"norm1.weight": w["norm1"], "norm2.weight": w["norm2"], "mixer.linear_y.weight": w["Wy"], "mixer.linear_y.bias": w["by"],
             "mixer.linear_x.weight": w["Wx"], "mixer.linear_x.bias": w["bx"], "mixer.conv.weight": w["conv"], "mixer.conv.bias": w["bconv"],
             "mixer.Lambda": w["Lambda"], "mixer.gate_a.weight": w["blocks_a"], "mixer.gate_a.bias": w["ba"],
             "mixer.gate_x.weight": w["blocks_i"], "mixer.gate_x.bias": w["bi"], "mixer.linear_out.weight": w["Wo"],
             "mixer.linear_out.bias": w["bo"], "mlp.w13.weight": torch.cat([w["Wg"], w["Wu"]]), "mlp.w13.bias": torch.cat([w["bg"], w["bu"]]),
             "mlp.w2.weight": w["Wd"], "mlp.w2.bias": w["bd"]}
    block.load_state_dict(pairs)
    return block


def test_recurrentgemma_residual_block_equals_the_paper_transcription_and_hf():
    """rnnlab's Block(hawk with per-head gates, GeGLU with biases) == the transcription above, float64, with and without
    recurrentgemma's first-token reset, in the parallel form and token by token; and (transformers installed) HF's
    RecurrentGemmaDecoderLayer with the same weights == the transcription with the reset, to float32 (HF's RG-LRU
    scan accumulates in float32 whatever the input dtype)."""
    D, Dr, heads, hidden, T = 16, 24, 4, 40, 11
    w = _griffin_weights(D, Dr, heads, hidden)
    x = torch.randn(2, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for reset in (False, True):
        expected = griffin_residual_block(x, w, reset)
        block = _rnnlab_griffin_block(w, D, Dr, heads, hidden, reset)
        with torch.no_grad():
            got, _ = block(x, block.init_state(2))
            state, steps = block.init_state(2), []
            for t in range(T):
                y, state = block(x[:, t : t + 1], state)
                steps.append(y)
        assert_close(got, expected, name=f"parallel, reset={reset}")
        assert_close(torch.cat(steps, 1), expected, name=f"stepped, reset={reset}")
    try:
        import transformers
        from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaDecoderLayer
    except ImportError:
        return
    cfg = transformers.RecurrentGemmaConfig(hidden_size=D, lru_width=Dr, num_attention_heads=heads, intermediate_size=2 * hidden,
                                            num_hidden_layers=1, conv1d_width=4, rms_norm_eps=1e-6)
    layer = RecurrentGemmaDecoderLayer(cfg, 0).double().eval()
    hf = {"temporal_pre_norm.weight": w["norm1"] - 1, "channel_pre_norm.weight": w["norm2"] - 1,  # Gemma's norms scale by 1 + w
          "temporal_block.linear_y.weight": w["Wy"], "temporal_block.linear_y.bias": w["by"], "temporal_block.linear_x.weight": w["Wx"],
          "temporal_block.linear_x.bias": w["bx"], "temporal_block.conv_1d.weight": w["conv"][:, None], "temporal_block.conv_1d.bias": w["bconv"],
          "temporal_block.rg_lru.recurrent_param": -w["Lambda"],  # HF: log a = -softplus(recurrent_param)
          "temporal_block.rg_lru.recurrent_gate_weight": w["blocks_a"].transpose(1, 2), "temporal_block.rg_lru.recurrent_gate_bias": w["ba"].view(heads, -1),
          "temporal_block.rg_lru.input_gate_weight": w["blocks_i"].transpose(1, 2), "temporal_block.rg_lru.input_gate_bias": w["bi"].view(heads, -1),
          "temporal_block.linear_out.weight": w["Wo"], "temporal_block.linear_out.bias": w["bo"], "mlp_block.gate_proj.weight": w["Wg"],
          "mlp_block.gate_proj.bias": w["bg"], "mlp_block.up_proj.weight": w["Wu"], "mlp_block.up_proj.bias": w["bu"],
          "mlp_block.down_proj.weight": w["Wd"], "mlp_block.down_proj.bias": w["bd"]}
    layer.load_state_dict(hf)
    with torch.no_grad():
        got = layer(x, torch.arange(T)[None].expand(2, -1), None, use_cache=False)
    assert_close(got, griffin_residual_block(x, w, True), TOLERANCE[torch.float32], name="HF RecurrentGemmaDecoderLayer")


def test_decode_follows_a_changed_lambda():
    """Without autograd softplus(-Lambda) is cached (parts.param_derived): an in-place update of Lambda (an optimizer
    step) must reach the next decode step, which then equals the step computed under autograd."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hawk", 12)
    x, s = torch.randn(2, 1, 12), m.init_state(2)
    with torch.no_grad():
        before, _ = m(x, s)
        m.Lambda.add_(1.5)
        after, _ = m(x, s)
    ref, _ = m(x, s)  # under autograd: computed from Lambda, nothing cached (the gate projections one by one)
    assert not torch.equal(before, after)
    assert_close(after, ref.detach())
