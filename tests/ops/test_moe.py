"""Mixture of experts (rnnlab.ops.moe, rnnlab.layers.moe): grouped form vs the per-token loop, routing, the
load-balancing loss, the layer against a per-token transcription, padding, determinism, the trainer's aux loss."""
import json

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers import create_mixer
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.ops.moe import experts_grouped, experts_ref, load_balancing_loss, route
from rnnlab.testing import TOLERANCE, assert_close


def _inputs(N, E=5, k=2, D=6, H=4, dtype=torch.float64, seed=0, skip_expert=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    logits = torch.randn(N, E, generator=g, dtype=dtype)
    if skip_expert is not None:
        logits[:, skip_expert] = -30.0  # an expert no token picks: its group is empty
    w, idx, _ = route(logits, k, normalize=True)
    w13 = torch.randn(E, D, 2 * H, generator=g, dtype=dtype) / D ** 0.5
    w2 = torch.randn(E, H, D, generator=g, dtype=dtype) / H ** 0.5
    return x, idx, w, w13, w2


@pytest.mark.parametrize("N", [1, 7, 37])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_grouped_equals_per_token_loop_values_and_gradients(N, k, dtype, activation):
    x, idx, w, w13, w2 = _inputs(N, k=k, dtype=dtype, skip_expert=3)
    leaves = [t.clone().requires_grad_() for t in (x, w, w13, w2)]
    refs = [t.clone().requires_grad_() for t in (x, w, w13, w2)]
    y = experts_grouped(leaves[0], idx, leaves[1], leaves[2], leaves[3], activation)
    y_ref = experts_ref(refs[0], idx, refs[1], refs[2], refs[3], activation)
    assert_close(y, y_ref, name="output")
    dy = torch.randn_like(y_ref)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    for name, a, b in zip(("x", "weights", "w13", "w2"), leaves, refs):
        assert_close(a.grad, b.grad, tol=TOLERANCE[dtype] * 10, name=f"grad {name}")
    assert leaves[2].grad[3].abs().max() == 0  # the unused expert gets no gradient


def test_routing_normalizations():
    """normalize=True is Mixtral's softmax over the k chosen logits; False keeps the full softmax's probabilities."""
    logits = torch.randn(9, 6, dtype=torch.float64)
    w, idx, probs = route(logits, 2, normalize=True)
    top = logits.topk(2, -1)
    assert torch.equal(idx, top.indices)
    assert_close(w, torch.softmax(top.values, -1))
    w_raw, _, _ = route(logits, 2, normalize=False)
    assert_close(w_raw, torch.softmax(logits, -1).gather(-1, idx))
    assert_close(probs.sum(-1), torch.ones(9, dtype=torch.float64))
    with pytest.raises(ValueError, match="top_k"):
        route(logits, 7, normalize=True)


def test_load_balancing_loss_is_switch_and_k_times_below_hf():
    """1 at perfect balance; equal to HF's load_balancing_loss_func (Mixtral) divided by k; gradient via probs only."""
    E, k = 4, 2
    probs = torch.full((8, E), 1 / E)
    experts = torch.tensor([[0, 1], [2, 3]] * 4)
    assert_close(load_balancing_loss(probs, experts), torch.tensor(1.0))
    logits = torch.randn(50, E, dtype=torch.float64, requires_grad=True)
    _, idx, p = route(logits, k, normalize=True)
    hf = E * (F.one_hot(idx, E).double().mean(0) * p.mean(0)).sum()  # HF: tokens_per_expert (k, E) * router_prob_per_expert
    loss = load_balancing_loss(p, idx)
    assert_close(loss * k, hf)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    collapsed = torch.zeros(50, E, dtype=torch.float64)
    collapsed[:, 0] = 1
    assert load_balancing_loss(collapsed, torch.zeros(50, 1, dtype=torch.int64)) == E  # all on one expert: the maximum


def transcribed_moe(layer, x):
    """The layer token by token, written from the equations: p = softmax(x W_r), top-k, weights (renormalized or not),
    Σ_j w_j (act(x W1_j) ⊙ x W3_j) W2_j, plus the shared expert (times sigmoid(x w_g) when gated)."""
    act = {"silu": F.silu, "gelu": lambda t: F.gelu(t, approximate="tanh")}[layer.activation]
    H = layer.hidden_size
    out = []
    for t in x.reshape(-1, x.shape[-1]):
        p = torch.softmax(t @ layer.router.weight.T, -1)
        order = sorted(range(layer.num_experts), key=lambda e: -float(p[e].detach()))[: layer.top_k]
        wsum = sum(p[e] for e in order) if layer.normalize_topk else 1.0
        y = 0
        for e in order:
            y = y + p[e] / wsum * ((act(t @ layer.w13[e, :, :H]) * (t @ layer.w13[e, :, H:])) @ layer.w2[e])
        if layer.shared is not None:
            Hs = layer.shared["w2"].shape[0]
            s = (act(t @ layer.shared["w13"][:, :Hs]) * (t @ layer.shared["w13"][:, Hs:])) @ layer.shared["w2"]
            y = y + (s if layer.shared_gate is None else torch.sigmoid(t @ layer.shared_gate.weight[0]) * s)
        out.append(y)
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("options", [{}, {"normalize_topk": False, "activation": "gelu"},
                                     {"shared_hidden_size": 8, "shared_gate": True, "top_k": 1, "normalize_topk": False}])
def test_layer_equals_transcription_values_and_parameter_gradients(options):
    torch.manual_seed(0)
    layer = create_mixer("moe", 16, num_experts=5, hidden_size=12, **{"top_k": 2, **options}).double()
    x = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    y, state = layer(x)
    assert state == {} and layer.state_size(11) == 0
    y_ref = transcribed_moe(layer, x)
    assert_close(y, y_ref, name="output")
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, *layer.parameters()])
    grads_ref = torch.autograd.grad((y_ref * dy).sum(), [x, *layer.parameters()])
    for (name, _), a, b in zip([("x", None), *layer.named_parameters()], grads, grads_ref):
        assert_close(a, b, name=f"grad {name}")


def test_deterministic_and_aux_loss_recorded():
    torch.manual_seed(0)
    layer = create_mixer("moe", 16, num_experts=8, top_k=2, hidden_size=12)
    x = torch.randn(4, 33, 16, requires_grad=True)
    runs = []
    for _ in range(2):
        y, _ = layer(x)
        (y.square().sum() + layer.aux_loss).backward()
        runs.append((y.detach().clone(), x.grad.clone(), layer.w13.grad.clone(), layer.router.weight.grad.clone()))
        x.grad = None
        layer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    _, idx, probs = route(layer.router(x.reshape(-1, 16)), 2, normalize=True)
    assert torch.equal(layer.aux_loss, load_balancing_loss(probs, idx))  # the last call's, over all its tokens
    with pytest.raises(ValueError, match="top_k"):
        create_mixer("moe", 16, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="activation"):
        create_mixer("moe", 16, activation="relu")


def _moe_model():
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(mixer="gla", n_layers=2, d_model=32, vocab_size=20, mlp="moe",
                                     mlp_every={"swiglu": [2, 0]}, mlp_kwargs={"moe": {"num_experts": 4, "top_k": 2, "hidden_size": 16}}))


def test_model_padding_never_reaches_the_router():
    """Left-padded rows give the packed run's outputs and aux loss (the padding is dropped before the layers); the
    unmasked padded batch has another aux loss (the padding tokens routed too)."""
    model = _moe_model()
    assert model.config.layer_mlps() == ["swiglu", "moe"]
    seqs = [torch.randint(0, 20, (n,)) for n in (5, 9, 2)]
    T = 9
    padded = torch.stack([torch.cat([torch.zeros(T - len(s), dtype=torch.int64), s]) for s in seqs])
    mask = torch.stack([torch.cat([torch.zeros(T - len(s)), torch.ones(len(s))]) for s in seqs]).long()
    out, _ = model(padded, attention_mask=mask)
    aux_masked = model.aux_loss()
    cu = torch.tensor([0, 5, 14, 16])
    packed, _ = model(torch.cat(seqs)[None], cu_seqlens=cu)
    assert_close(aux_masked, model.aux_loss(), name="aux loss")
    assert_close(out[mask.bool()], packed[0], name="outputs")
    model(padded)
    assert not torch.allclose(model.aux_loss(), aux_masked)
    # a token's output depends on that token only (through the MoE): alone, it gets the same as in the batch
    alone, _ = model(seqs[1][None])
    assert_close(alone[0], packed[0, 5:14], name="a sequence alone vs packed")


def test_active_parameters():
    m = _moe_model()
    moe = m.blocks[1].mlp
    per_expert = moe.w13[0].numel() + moe.w2[0].numel()
    assert m.num_parameters() - m.num_active_parameters() == (4 - 2) * per_expert


def test_trainer_adds_and_logs_the_aux_loss(tmp_path):
    """train.aux_loss_coef weights the load-balancing loss in the update; metrics.jsonl logs it unweighted."""
    from rnnlab.train.trainer import train

    def run(coef, name):
        cfg = {"task": {"name": "induction_head", "seq_len": 16, "vocab_size": 16},
               "model": {"mixer": "gla", "d_model": 32, "n_layers": 2, "mlp": "moe",
                         "mlp_kwargs": {"num_experts": 4, "top_k": 2, "hidden_size": 16}},
               "train": {"steps": 4, "batch_size": 4, "log_every": 1, "eval_every": 4, "eval_examples": 4,
                         "progress": False, "aux_loss_coef": coef},
               "run_dir": str(tmp_path / name)}
        train(cfg)
        recs = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if "loss" in r]

    with_aux, without = run(1.0, "a"), run(0.0, "b")
    assert all("aux_loss" in r and 0 < r["aux_loss"] < 4 for r in with_aux)
    assert with_aux[0]["loss"] == without[0]["loss"] and with_aux[0]["aux_loss"] == without[0]["aux_loss"]  # same start
    assert with_aux[-1]["loss"] != without[-1]["loss"]  # the coefficient changed the updates
