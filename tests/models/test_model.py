import re

import pytest
import torch

import rnnlab
from rnnlab import ModelConfig, SequenceModel


def lm(mixer="attention", **kw):
    torch.manual_seed(0)
    cfg = dict(mixer=mixer, vocab_size=40, d_model=32, n_layers=2, mixer_kwargs={"num_heads": 2})
    cfg.update(kw)
    return SequenceModel(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("mixer", ["attention", "sliding_attention", ["attention", "sliding_attention"]])
def test_greedy_generation_with_state_equals_recompute(mixer):
    model = lm(mixer, mixer_kwargs={"num_heads": 2} if mixer == "attention" else {"num_heads": 2, "window": 4})
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    fast = model.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(seq)  # recompute the whole prefix, no state
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, seq)


@pytest.mark.parametrize("mixers", [["lstm", "gated_deltanet"], ["mamba", "gla", "attention"], ["rwkv7", "hawk"]])
def test_greedy_generation_of_recurrent_hybrids_equals_recompute(mixers):
    """Prefill with the parallel forms, then recurrent steps == recomputing the prefix every token."""
    torch.manual_seed(0)
    kwargs = [rnnlab.mixer_info(m).small for m in mixers]
    model = SequenceModel(ModelConfig(mixer=mixers, vocab_size=40, d_model=32, n_layers=len(mixers), mixer_kwargs=kwargs)).eval()
    prompt = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    fast = model.generate(prompt, 10, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, seq)


def test_forward_in_pieces_equals_whole_and_state_size():
    model = lm(["attention", "sliding_attention"], mixer_kwargs=[{"num_heads": 2}, {"num_heads": 2, "window": 5}])
    x = torch.randint(0, 40, (3, 23))
    with torch.no_grad():
        full, s_full = model(x)
        a, s = model(x[:, :10])
        b, s = model(x[:, 10:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    held = sum(v[0].numel() for v in s.values())
    assert held == model.state_size(23)
    assert set(s) == set(s_full)


def test_heads_shapes_and_tied_embeddings():
    torch.manual_seed(0)
    clf = SequenceModel(ModelConfig(mixer="attention", input_dim=3, head="classify", num_classes=10, d_model=16, mixer_kwargs={"num_heads": 2}))
    out, _ = clf(torch.randn(4, 7, 3))
    assert out.shape == (4, 10)
    reg = SequenceModel(ModelConfig(mixer="attention", input_dim=3, head="regress", out_dim=3, d_model=16, mixer_kwargs={"num_heads": 2}))
    assert reg(torch.randn(4, 7, 3))[0].shape == (4, 7, 3)
    tied = lm(tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight


def test_param_groups_partition_every_parameter():
    model = lm()
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    no_decay = {id(p) for p in groups[1]["params"]}
    assert all(id(p) in no_decay for p in model.parameters() if p.dim() < 2)


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="valid choices"):
        ModelConfig(mixer="nope", vocab_size=10)
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig(mixer=["attention"], n_layers=2, vocab_size=10)
    with pytest.raises(ValueError, match="exactly one"):
        ModelConfig(mixer="attention")
    with pytest.raises(ValueError, match="valid fields"):
        ModelConfig.from_dict({"mixer": "attention", "vocab_size": 10, "layers": 3})
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        lm()(torch.randn(2, 3))
    cfg = ModelConfig(mixer="attention", vocab_size=10, mixer_kwargs={"num_heads": 2}, d_model=16)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_registry_errors_name_choices():
    with pytest.raises(ValueError, match="valid choices: .*attention"):
        rnnlab.create_mixer("no_such_mixer", 32)
    with pytest.raises(ValueError, match="valid options: .*num_heads"):
        rnnlab.create_mixer("attention", 32, heads=2)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("attention", {"num_heads": 0}, "num_heads must be an int >= 1, got 0"),
    ("gated_deltanet", {"num_heads": 0}, "num_heads must be an int >= 1, got 0"),
    ("attention", {"num_heads": "2"}, "num_heads must be int, got '2'"),
    ("mamba", {"d_state": -3}, "d_state must be an int >= 1"),
    ("gla", {"expand_k": float("inf")}, "expand_k must be a finite number"),
    ("lstm", {"hidden_size": 2.5}, "hidden_size must be int or None"),
    ("rwkv6", {"layer_idx": -1}, "layer_idx must be an int >= 0"),
])
def test_mixer_options_checked_from_annotations(name, kwargs, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        rnnlab.create_mixer(name, 32, **kwargs)
    with pytest.raises(ValueError, match="d_model must be int, got True"):
        rnnlab.create_mixer(name, True)
    rnnlab.create_mixer("mamba", 32, dt_rank=4)  # int | str: both kinds accepted
    rnnlab.create_mixer("gla", 32, expand_k=1)   # an int where a float is expected
