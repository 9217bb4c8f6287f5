"""Layers name their forms from rnnlab.ops.forms and validate them there: a bad ``backend`` is a ValueError
listing the layer's valid forms, an earlier spelling is stored as the canonical one, and the matrix mixers'
``_mix`` takes a form ("chunk" | "recurrent") instead of a flag."""
import re

import pytest
import torch

from rnnlab.layers import create_mixer
from rnnlab.layers.registry import mixer_info
from rnnlab.ops.forms import FORMS

BACKEND_MIXERS = ["hawk", "hgrn", "lru", "mingru", "minlstm", "rwkv4", "slstm", "lstm", "gru", "elman", "s4", "s4d", "s5",
                  "mamba", "longhorn"]
FORM_MIXERS = ["gla", "hgrn2", "retnet", "mamba2", "mlstm", "linear_attention", "based", "deltanet", "gated_deltanet", "deltaproduct"]


@pytest.mark.parametrize("name", BACKEND_MIXERS)
def test_bad_backend_lists_the_valid_forms(name):
    with pytest.raises(ValueError, match=r"backend must be one of \(.*\), got 'fast'") as e:
        create_mixer(name, d_model=16, backend="fast")
    valid = re.search(r"one of \((.*)\)", str(e.value)).group(1)
    assert {w.strip(" '") for w in valid.split(",")} <= set(FORMS)


def test_earlier_spelling_is_stored_canonical():
    assert create_mixer("hawk", d_model=16, backend="parallel").backend == "chunk"
    assert create_mixer("mamba", d_model=16, backend="chunked").backend == "chunk"


@pytest.mark.parametrize("name", FORM_MIXERS)
def test_matrix_mixers_mix_by_form(name):
    torch.manual_seed(0)
    m = create_mixer(name, d_model=32, **mixer_info(name).small)
    x = torch.randn(2, 1, 32)
    s = m.init_state(2)
    y_chunk, _ = m._mix(x, s, "chunk")
    y_rec, _ = m._mix(x, s, "recurrent")
    torch.testing.assert_close(y_chunk, y_rec, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=re.escape("backend must be one of ('chunk', 'recurrent'), got 'fast'")):
        m._mix(x, s, "fast")
