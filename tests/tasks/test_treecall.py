"""treecall: every sentence is a derivation of the drawn grammar (each head's children spell one of its rules, levels
rise so derivations end), the target is the query's parent looked up in the tree, the query is the rightmost
occurrence of its label, one scored position per document, the grammar fixed by its seed, and the quick path."""
import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.quick import train_briefly

BOS, SEP, T0 = 1, 2, 3


def _check_derivation(task, s):
    """Each head's children, in sentence order, are its rule's right-hand side (terminals by label, nonterminals by
    the head that stands for them), the head right after them (head_position="right")."""
    n = len(s.labels)
    roots = [i for i in range(n) if s.parent[i] < 0]
    assert len(roots) == 1 and s.nonterminal[roots[0]] >= 0
    for h in range(n):
        if s.nonterminal[h] < 0:
            assert s.rule[h] == -1 and s.parent[h] >= 0  # a leaf terminal has a parent head
            continue
        kids = [i for i in range(n) if s.parent[i] == h]
        spelled = [int(s.labels[i]) if s.nonterminal[i] < 0 else -1 - int(s.nonterminal[i]) for i in kids]
        assert spelled == task.rules[s.nonterminal[h]][s.rule[h]]
        for i in kids:
            assert i < h  # the head follows its constituent
            if s.nonterminal[i] >= 0:
                assert task.levels[s.nonterminal[i]] > task.levels[s.nonterminal[h]]


def test_documents_and_targets():
    task = create_task("treecall", seq_len=64)
    assert task.model_io()["vocab_size"] == 23 and len(task.rules) == 40
    rng = np.random.default_rng(0)
    tokens, targets, lengths, trees = task.documents(64, 64, rng)
    for x, y, n, (s, q) in zip(tokens, targets, lengths, trees):
        m = len(s.labels)
        _check_derivation(task, s)
        assert n == m + 3 and 3 <= m <= 61 and x[0] == BOS and x[m + 1] == SEP and (x[n:] == 0).all()
        assert np.array_equal(x[1:m + 1], T0 + s.labels) and x[m + 2] == T0 + s.labels[q]
        assert s.labels[q] not in s.labels[q + 1:]  # unambiguous: the rightmost occurrence of its label
        assert np.flatnonzero(y != IGNORE_INDEX).tolist() == [m + 2]
        assert y[m + 2] == T0 + s.labels[s.parent[q]]  # the parent, looked up in the tree
    b = task.train_batch(16, seed=0, step=0)
    assert torch.equal(b.inputs, task.train_batch(16, seed=0, step=0).inputs)
    assert ((b.targets != IGNORE_INDEX).sum(1) == 1).all() and (b.lengths <= 64).all()


def test_grammar_is_fixed_by_its_seed_and_long_sentences_are_redrawn():
    a, b, c = (create_task("treecall", grammar_seed=g) for g in (0, 0, 1))
    assert a.rules == b.rules and np.array_equal(a.head_probs, b.head_probs) and a.rules != c.rules
    for t in (a, c):  # every rule's right-hand side holds 1 .. max_rhs_len − 1 symbols; deeper nonterminals only
        for lhs, rules in enumerate(t.rules):
            assert 1 <= len(rules) <= 5 and all(1 <= len(r) <= 4 for r in rules)
            assert all(t.levels[-1 - s] > t.levels[lhs] for r in rules for s in r if s < 0)
    tokens, _, lengths, _ = a.documents(64, 8, np.random.default_rng(2))
    assert lengths.max() <= 8 and tokens.shape == (64, 8)
    with pytest.raises(ValueError, match="head_position"):
        create_task("treecall", head_position="middle")


def test_left_heads_precede_their_constituent():
    task = create_task("treecall", head_position="left")
    for _ in range(20):
        s = task.derive(np.random.default_rng(_), 100)
        assert all(s.parent[i] < i for i in range(len(s.labels)) if s.parent[i] >= 0)


def test_quick_path(tmp_path):
    train_briefly(tmp_path, "treecall", "task.seq_len=32")
