"""State statistics against position: equal to a hand computation on a token-by-token rollout, and to the analytic
state norm of linear attention (S_t = Σ_s k_s v_sᵀ)."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange

from rnnlab.diagnostics import state_stats
from rnnlab.diagnostics.state_stats import positions_for
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.testing import TOLERANCE, assert_close


def _model(mixer, n_layers=1, **kw):
    return SequenceModel(ModelConfig(mixer=mixer, vocab_size=11, d_model=16, n_layers=n_layers, **kw)).double().eval()


def test_positions():
    assert positions_for(10, 3) == [0, 3, 6, 9, 10] and positions_for(4, 8) == [0, 4]


def test_stats_equal_a_hand_computation_on_a_rollout():
    """A mamba + attention hybrid (SSM state, conv tail, growing KV cache, integer positions): the statistics at
    positions 0, 3, 6, 9, 10 equal those computed by hand from the state after stepping token by token."""
    model = _model(["mamba", "attention"], n_layers=2, mixer_kwargs=[{"d_state": 4}, {"num_heads": 2}])
    x = torch.randint(0, 11, (3, 10))
    got = state_stats(model, x, stride=3)
    assert got["positions"] == [0, 3, 6, 9, 10]
    state, hand = model.init_state(3), {p: None for p in got["positions"]}
    with torch.no_grad():
        for t in range(11):
            if t in hand:
                hand[t] = dict(state)
            if t < 10:
                _, state = model.step(x[:, t], state)
    for i in range(2):
        for j, p in enumerate(got["positions"]):
            ts = [v for k, v in hand[p].items() if k.startswith(f"{i}.") and v.is_floating_point()]
            n = sum(v[0].numel() for v in ts)
            sq = torch.stack([sum((v[b] ** 2).sum() for v in ts) for b in range(3)]) if n else torch.zeros(3)
            s1 = torch.stack([sum(v[b].sum() for v in ts) for b in range(3)]) if n else torch.zeros(3)
            norms = sq.sqrt()
            means = s1 / max(n, 1)
            stds = (sq / max(n, 1) - means ** 2).clamp_min(0).sqrt()
            want = {"norm": norms.mean(), "norm_spread": (norms - norms.mean()).pow(2).mean().sqrt(),
                    "mean": means.mean(), "std": stds.mean(),
                    "max_abs": max((v.abs().max() for v in ts), default=torch.tensor(0.0)) if n else torch.tensor(0.0)}
            for k, w in want.items():
                assert math.isclose(got["layers"][i][k][j], float(w), rel_tol=1e-8, abs_tol=1e-10), (i, p, k)
    assert got["layers"][1]["norm"][0] == 0.0 and got["layers"][1]["norm"][-1] > 0  # the empty, then growing cache
    assert got["layers"][0]["norm"][-1] > 0


def test_linear_attention_norm_is_analytic():
    """One linear-attention layer without normalizer: the state is S_t = Σ_{s<t} φ(k_s) v_sᵀ per head, so its norm is
    ‖S_t‖_F computed from the layer's own projections of its (normed) input."""
    model = _model("linear_attention", mlp=None, mixer_kwargs={"num_heads": 2, "normalize": False, "chunk_size": 4})
    x = torch.randint(0, 11, (2, 9))
    seen = []
    mixer = model.blocks[0].mixer
    handle = mixer.register_forward_pre_hook(lambda _, a: seen.append(a[0].detach()))
    model(x)
    handle.remove()
    with torch.no_grad():
        _, k, v = rearrange(mixer.qkv(seen[0]), "b t (three h d) -> three b t h d", three=3, h=2)
        kv = torch.einsum("bthk,bthv->bthkv", F.elu(k) + 1, v).cumsum(1)  # S after t + 1 tokens
    want = [0.0] + [float(kv[:, t].flatten(1).norm(dim=1).mean()) for t in range(9)]
    got = state_stats(model, x, stride=1)
    assert got["positions"] == list(range(10))
    # the op keeps S in float32 even in a float64 model (rnnlab.layers.linear_attention): float32's tolerance
    assert_close(torch.tensor(got["layers"][0]["norm"]), torch.tensor(want), tol=TOLERANCE[torch.float32])
