"""rnnlab models as transformers models: config, cache, save/load through the Auto classes, generate."""
import importlib.util

import pytest
import torch

if importlib.util.find_spec("transformers") is None:
    pytest.skip("HF interop tests need transformers (pip install 'rnnlab[hf]')", allow_module_level=True)

import rnnlab  # noqa: E402
from rnnlab import ModelConfig, SequenceModel  # noqa: E402
from rnnlab.interop import RnnlabCache, RnnlabConfig, RnnlabForCausalLM  # noqa: E402
from rnnlab.testing import assert_close  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

V = 48
MIXERS = [m for m in rnnlab.available_mixers()]


def tiny(mixer, n_layers=1, **kw):
    torch.manual_seed(0)
    names = mixer if isinstance(mixer, list) else [mixer] * n_layers
    cfg = ModelConfig(mixer=names, mixer_kwargs=[rnnlab.mixer_info(m).small for m in names], vocab_size=V, d_model=32,
                      n_layers=len(names), mlp_ratio=1.0, **kw)
    return SequenceModel(cfg).eval()


def left_padded(lengths, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1
        ids[b, : T - n] = 0  # the pad token
    return ids, mask


def hf_generate(hf, ids, mask=None, n=6, **kw):
    kw.setdefault("do_sample", False)
    return hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids), max_new_tokens=n,
                       min_new_tokens=n, pad_token_id=0, **kw)


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_round_trips_through_save_pretrained_and_auto_classes(mixer, tmp_path):
    """save_pretrained -> AutoModelForCausalLM.from_pretrained gives the same logits (parallel and left-padded) and
    the same greedy generations as the rnnlab model, for every registered mixer."""
    model = tiny(mixer)
    with torch.no_grad():  # as after training: no parameter left at a constant or zero initial value
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    RnnlabForCausalLM.from_rnnlab(model).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.py"))  # weights and config only
    assert AutoConfig.from_pretrained(tmp_path).model_config() == model.config
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf, RnnlabForCausalLM)
    ids, mask = left_padded([9, 4, 1], 9)
    with torch.no_grad():  # equal up to float32 rounding, not bitwise: the loader's tensors are 4-byte aligned
        # (safetensors offsets), which changes the SIMD kernels' summation order (hippo_rnn: 2.4e-7 measured)
        assert_close(hf(ids).logits, model(ids)[0], name="logits")
        assert_close(hf(ids, attention_mask=mask).logits, model(ids, attention_mask=mask)[0], name="padded logits")
    expected = model.generate(ids, 6, temperature=0, attention_mask=mask)
    assert torch.equal(hf_generate(hf, ids, mask), expected)


def test_a_model_trained_with_rnnlab_train_round_trips(tmp_path):
    """`rnnlab train` -> RnnlabForCausalLM.from_run -> save_pretrained -> AutoModelForCausalLM: same logits and generations."""
    from rnnlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "induction_head", "--mixer", "gated_deltanet", "--d-model", "16", "--layers", "2",
                 "--batch-size", "4", "--steps", "3", "--no-progress", "--run-dir", str(run), "train.eval_every=3",
                 "train.eval_examples=4", "model.mixer_kwargs.num_heads=2"]) == 0
    hf = RnnlabForCausalLM.from_run(run)
    hf.save_pretrained(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, hf.config.vocab_size, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, hf.model(ids)[0])
    assert torch.equal(hf_generate(loaded, ids, n=5), hf.model.generate(ids, 5, temperature=0))


def test_generate_greedy_sampling_and_padding_equal_rnnlab_generate():
    model = tiny(["mamba", "attention", "gated_deltanet"])
    hf = RnnlabForCausalLM.from_rnnlab(model)
    ids, mask = left_padded([7, 3, 5], 7, seed=3)
    assert torch.equal(hf_generate(hf, ids, mask, n=8), model.generate(ids, 8, temperature=0, attention_mask=mask))
    for temperature, top_k in [(1.0, None), (0.7, 5)]:  # the same draws from the same seed
        torch.manual_seed(11)
        got = hf_generate(hf, ids, mask, n=8, do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=1.0)
        torch.manual_seed(11)
        assert torch.equal(got, model.generate(ids, 8, temperature=temperature, top_k=top_k, attention_mask=mask))


def test_beam_search_with_the_cache_equals_beam_search_recomputing_the_prefix():
    """Beam search reorders the cache's rows (reorder_cache); without a cache every step recomputes the prefix."""
    hf = RnnlabForCausalLM.from_rnnlab(tiny(["mamba", "attention"]))
    ids, mask = left_padded([6, 2], 6, seed=4)
    kw = dict(num_beams=3, num_return_sequences=2, n=5)
    assert torch.equal(hf_generate(hf, ids, mask, **kw), hf_generate(hf, ids, mask, use_cache=False, **kw))


def test_forward_cache_continues_rows_and_labels_give_the_lm_loss():
    model = tiny(["lstm", "attention"])
    hf = RnnlabForCausalLM.from_rnnlab(model)
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full = hf(ids).logits
        first = hf(ids[:, :6], use_cache=True)
        assert isinstance(first.cache, RnnlabCache) and first.cache.get_seq_length() == 6
        second = hf(ids[:, 6:], cache=first.cache)
        assert torch.allclose(torch.cat([first.logits, second.logits], 1), full, atol=1e-5)
        third = hf(ids[:, 6:], past_key_values=first.past_key_values)  # transformers 4.x's name
        assert torch.equal(third.logits, second.logits)
        out = hf(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected)


def test_what_a_recurrent_state_cannot_do_raises_clearly():
    hf = RnnlabForCausalLM.from_rnnlab(tiny("mamba"))
    cache = hf(torch.randint(0, V, (1, 4)), use_cache=True).cache
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(2)
    assistant = RnnlabForCausalLM.from_rnnlab(tiny("mamba"))
    with pytest.raises(NotImplementedError, match="assisted"):
        hf.generate(torch.randint(0, V, (1, 4)), assistant_model=assistant, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with pytest.raises(NotImplementedError, match="assisted"):
        hf.generate(torch.randint(0, V, (1, 4)), prompt_lookup_num_tokens=2, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with pytest.raises(ValueError, match="position"):
        hf(torch.randint(0, V, (1, 4)), position_ids=torch.arange(4)[None])
    with pytest.raises(TypeError, match="unexpected keyword"):
        hf(torch.randint(0, V, (1, 4)), not_an_argument=1)
    with pytest.raises(ValueError, match='head="lm"'):
        RnnlabConfig(ModelConfig(mixer="lstm", input_dim=3, head="regress", out_dim=2).to_dict())


def test_tied_embeddings_stay_tied_after_loading(tmp_path):
    model = tiny("gla", tie_embeddings=True)
    RnnlabForCausalLM.from_rnnlab(model).save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.model.head.weight is hf.model.embed.weight
    assert torch.equal(hf.model.embed.weight, model.embed.weight)


def test_the_lm_eval_harness_loading_path(tmp_path):
    """What lm-evaluation-harness's HF backend (lm_eval.models.huggingface.HFLM, 0.4.x) does with a model folder,
    without the harness: AutoConfig and AutoModelForCausalLM.from_pretrained with its arguments, logits of a
    right-padded batch (loglikelihood), generate with a left-padded mask, stopping criteria and use_cache."""
    import transformers
    from transformers import StoppingCriteria, StoppingCriteriaList

    model = tiny(["gated_deltanet", "attention"])
    RnnlabForCausalLM.from_rnnlab(model, pad_token_id=0, eos_token_id=1).save_pretrained(tmp_path)
    AutoConfig.from_pretrained(str(tmp_path), revision="main", trust_remote_code=False)
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), revision="main", trust_remote_code=False, gguf_file=None,
                                              quantization_config=None, subfolder="", **{dtype_arg: "auto"}).eval()
    rows = [torch.randint(2, V, (n,)) for n in (9, 4)]
    batch = torch.zeros(2, 9, dtype=torch.long)  # right padding, as the harness pads loglikelihood batches
    for b, r in enumerate(rows):
        batch[b, : len(r)] = r
    with torch.no_grad():
        logits = hf(batch).logits
        for b, r in enumerate(rows):
            assert torch.allclose(logits[b, : len(r)], model(r[None])[0][0], atol=1e-5)

    class StopAfter(StoppingCriteria):  # the harness's stop-sequence criteria return one flag per row
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids, mask = left_padded([6, 3], 6, seed=5)
    out = hf.generate(input_ids=ids, attention_mask=mask, max_length=6 + 5, stopping_criteria=StoppingCriteriaList([StopAfter()]),
                      pad_token_id=0, use_cache=True, do_sample=False)
    expected = model.generate(ids, 5, temperature=0, attention_mask=mask)
    done = (expected[:, 6:] == 1).int().cumsum(1) > 0  # after an eos (1) HF pads with pad_token_id
    assert torch.equal(out[:, :6], ids) and torch.equal(out[:, 6:][~done], expected[:, 6:][~done])


def test_import_rnnlab_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, rnnlab, rnnlab.models, rnnlab.train, rnnlab.bench, rnnlab.cli; "
            "rnnlab.SequenceModel; assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
