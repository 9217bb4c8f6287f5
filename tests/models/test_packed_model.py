"""Variable-length batches through the whole model: packed (cu_seqlens), padded (attention_mask), and
batched generation of prompts of different lengths, each equal to its run alone."""
import pytest
import torch

import rnnlab
from rnnlab import ModelConfig, SequenceModel
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.testing import assert_close

MODELS = {
    "recurrent": ["lstm", "gated_deltanet"],
    "attention": ["attention", "sliding_attention"],
    "hybrid": ["mamba", "attention", "rwkv6"],
    "layer_norm": ["rwkv4", "mamba"],  # RWKV-4's model: LayerNorms, ln0 after the embedding, a mixer as the MLP
}
OPTIONS = {"layer_norm": dict(norm="layer", embed_norm=True, mlp="rwkv4_channel_mix", mlp_kwargs={"expansion": 2})}
LENGTHS = (1, 5, 40)


def model_of(kind, head="lm", **kw):
    torch.manual_seed(0)
    mixers = MODELS[kind]
    kwargs = [rnnlab.mixer_info(m).small for m in mixers]
    cfg = ModelConfig(mixer=mixers, vocab_size=50 if head != "regress" else 0, input_dim=6 if head == "regress" else None,
                      d_model=32, n_layers=len(mixers), mixer_kwargs=kwargs, head=head,
                      **({"num_classes": 3} if head == "classify" else {}), **({"out_dim": 2} if head == "regress" else {}),
                      **{**OPTIONS.get(kind, {}), **kw})
    return SequenceModel(cfg).eval()


def prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (L,), generator=g) for L in lengths]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_packed_forward_equals_separate_runs(kind):
    model = model_of(kind)
    ps = prompts((7, 1, 23, 4))
    with torch.no_grad():
        alone = [model(p[None]) for p in ps]
        out, state = model(torch.cat(ps)[None], cu_seqlens=cu_seqlens_from_lengths([len(p) for p in ps]))
    for i, (part, (ref, _)) in enumerate(zip(out[0].split([len(p) for p in ps]), alone)):
        assert_close(part, ref[0], name=f"sequence {i}")
    # the packed final states continue each sequence exactly
    nxt = torch.randint(0, 50, (len(ps), 1), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cont, _ = model(nxt, state)
        for i, (p, (_, s)) in enumerate(zip(ps, alone)):
            ref, _ = model(nxt[i : i + 1], s)
            assert_close(cont[i], ref[0], name=f"continuation of sequence {i}")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_left_padded_attention_mask_equals_separate_runs(kind):
    model = model_of(kind)
    ps = prompts((6, 2, 9))
    T = max(len(p) for p in ps)
    ids = torch.zeros(len(ps), T, dtype=torch.int64)
    mask = torch.zeros(len(ps), T, dtype=torch.int64)
    for b, p in enumerate(ps):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    with torch.no_grad():
        out, _ = model(ids, attention_mask=mask)
        for b, p in enumerate(ps):
            ref, _ = model(p[None])
            assert_close(out[b, T - len(p):], ref[0], name=f"row {b}")
            assert out[b, : T - len(p)].abs().max() == 0 if len(p) < T else True


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_batched_generation_of_different_lengths_equals_alone(kind):
    model = model_of(kind)
    ps = prompts()
    alone = [model.generate(p[None], 8, temperature=0)[0] for p in ps]
    together = model.generate(ps, 8, temperature=0)
    for p, a, t in zip(ps, alone, together):
        assert torch.equal(a, t), f"prompt of length {len(p)}: {t.tolist()} != alone {a.tolist()}"
    T = max(LENGTHS)
    ids = torch.zeros(len(ps), T, dtype=torch.int64)
    mask = torch.zeros(len(ps), T, dtype=torch.int64)
    for b, p in enumerate(ps):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    padded = model.generate(ids, 8, temperature=0, attention_mask=mask)
    for b, (p, a) in enumerate(zip(ps, alone)):
        assert torch.equal(padded[b, T - len(p):], a), f"left-padded row {b}"


def test_packed_classify_pools_each_sequence():
    for pool in ("last", "mean"):
        model = model_of("hybrid", head="classify", pool=pool)
        ps = prompts((3, 8, 1))
        with torch.no_grad():
            out, _ = model(torch.cat(ps)[None], cu_seqlens=cu_seqlens_from_lengths([3, 8, 1]))
            ref = torch.cat([model(p[None])[0] for p in ps])
        assert out.shape == (3, 3)
        assert_close(out, ref, name=f"pool={pool}")


def test_packed_gradients_equal_separate_runs():
    model = model_of("hybrid")
    model.train()
    ps = prompts((9, 1, 17))
    out, _ = model(torch.cat(ps)[None], cu_seqlens=cu_seqlens_from_lengths([9, 1, 17]))
    out.float().pow(2).mean().mul(len(ps)).backward()  # the separate losses below have the same total weight per token
    g_packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = sum(model(p[None])[0].float().pow(2).sum() for p in ps) / out[0].numel() * len(ps)
    total.backward()
    for (name, p), gp in zip(model.named_parameters(), g_packed):
        assert_close(gp, p.grad, name=name)


def test_bad_variable_length_inputs_raise():
    model = model_of("recurrent")
    ids = torch.zeros(2, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\(1, T_total\)"):
        model(ids, cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="end at"):
        model(ids[:1], cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="not both"):
        model(ids, cu_seqlens=torch.tensor([0, 5]), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="0/1"):
        model(ids, attention_mask=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="at least one real token"):
        model(ids, attention_mask=torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(ids, 2, attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="1-D"):
        model.generate([torch.zeros(2, 2, dtype=torch.int64)], 2)


@pytest.mark.parametrize("change, match", [
    ({"n_layers": 0}, "n_layers must be a positive int"), ({"mlp_ratio": 0}, "mlp_ratio must be a number > 0"),
    ({"norm_eps": -1}, "norm_eps must be a number > 0"), ({"vocab_size": 0}, "vocab_size must be a positive int"),
    ({"d_model": True}, "d_model must be a positive int"), ({"dropout": 1.5}, "dropout must be in"),
    ({"norm": "batch"}, "norm must be one of"), ({"embed_norm": 1}, "embed_norm must be a bool"),
    ({"mlp_kwargs": {"expansion": 2}}, "mlp_kwargs must be a dict, empty unless"),
    ({"mlp": "rwkv4_channel_mix", "mlp_kwargs": {"width": 2}}, "unknown option"),
])
def test_bad_model_configs_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{"vocab_size": 10, **change})


def test_bad_tokens_states_and_generation_arguments_raise():
    model = model_of("recurrent")
    with pytest.raises(ValueError, match=r"vocab_size = 50"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match=r"vocab_size = 50"):
        model(torch.tensor([[-1, 2]]))
    state = model.init_state(1)
    with pytest.raises(ValueError, match="belong to no layer"):
        model(torch.tensor([[1]]), {**state, "9.mixer.h": torch.zeros(1)})
    p = torch.tensor([[1, 2]])
    for kw, match in (({"max_new_tokens": -1}, "max_new_tokens"), ({"max_new_tokens": 2, "temperature": -1.0}, "temperature"),
                      ({"max_new_tokens": 2, "temperature": float("inf")}, "temperature"), ({"max_new_tokens": 2, "top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=match):
            model.generate(p, **kw)
