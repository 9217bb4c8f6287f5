"""Greedy generation with the recurrent state equals recomputing the whole prefix, for every registered mixer
in the model (float64, so that a near-tie cannot flip a token): the decode fast paths (in-place KV cache, fused
projections, the cells' kernels) change no token."""
import pytest
import torch

from rnnlab import ModelConfig, SequenceModel
from rnnlab.layers.registry import available_mixers, mixer_info


@pytest.mark.parametrize("mixer", available_mixers())
def test_greedy_generation_equals_recomputing_the_prefix(mixer):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(mixer=mixer, mixer_kwargs=mixer_info(mixer).small, vocab_size=32, d_model=32,
                                      n_layers=2)).double().eval()
    prompt = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    fast = model.generate(prompt, 6, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            logits, _ = model(seq)  # no state: the parallel form over everything so far
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, seq)
