"""One vocabulary of computational forms (rnnlab.ops.forms): every op's list is drawn from it, a wrong name
is the same ValueError everywhere listing the op's valid forms, and the earlier spellings still work."""
import re

import pytest
import torch

from rnnlab.ops import log_scan, matrix_scan, rnn, scan, selective_scan, wkv4
from rnnlab.ops.forms import ALIASES, FORMS, check_form, choose

OPS = {"linear_scan": scan.BACKENDS, "selective_scan": selective_scan.BACKENDS, "log_scan": scan.BACKENDS,
       "wkv4": scan.BACKENDS, "rnn": rnn.BACKENDS, "matrix_scan": matrix_scan.BACKENDS}


@pytest.mark.parametrize("name", list(OPS))
def test_op_forms_come_from_the_vocabulary(name):
    assert set(OPS[name]) <= set(FORMS)


def test_check_form():
    assert check_form("chunk", ("auto", "chunk"), "op") == "chunk"
    assert all(check_form(old, ("chunk",), "op") == new for old, new in ALIASES.items())
    with pytest.raises(ValueError, match=re.escape("op: backend must be one of ('auto', 'chunk'), got 'fast'")):
        check_form("fast", ("auto", "chunk"), "op")
    with pytest.raises(ValueError, match="backend must be one of"):
        check_form("recurrent", ("auto", "chunk"), "op")  # a word of the vocabulary this op does not have
    assert choose("parallel", {"chunk": len, "recurrent": abs}, "op") is len


def _calls():
    x = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    return {
        "linear_scan": lambda be: scan.linear_scan(x.sigmoid(), x, backend=be),
        "selective_scan": lambda be: selective_scan.selective_scan(x, x.sigmoid(), -torch.ones(3, 2), x[..., :2], x[..., :2], backend=be),
        "log_scan": lambda be: log_scan.log_scan(-x.abs(), x, backend=be),
        "wkv4": lambda be: wkv4.wkv4(x, x, -torch.ones(3), torch.zeros(3), backend=be),
        "rnn": lambda be: rnn.elman(x, torch.eye(3), backend=be),
        "matrix_scan": lambda be: matrix_scan.matrix_scan(x.unsqueeze(-1), backend=be),
    }


@pytest.mark.parametrize("name", list(OPS))
def test_ops_reject_unknown_forms_listing_theirs(name):
    with pytest.raises(ValueError, match=re.escape(f"backend must be one of {OPS[name]}, got 'fast'")):
        _calls()[name]("fast")


@pytest.mark.parametrize("name, old", [("linear_scan", "parallel"), ("selective_scan", "chunked"), ("log_scan", "parallel"), ("wkv4", "parallel")])
def test_earlier_spellings_run_the_chunk_form(name, old):
    a, b = _calls()[name](old), _calls()[name]("chunk")
    for x, y in zip(a, b):
        assert (x is None and y is None) or torch.equal(x, y)
