"""Associative treecall (ATR): recall the parent of a query token in a sentence drawn from a random PCFG.

*Arora, Rathi, Selvam, Csordás, Jurafsky & Potts 2025, "Mechanistic evaluation of Transformers and state space
models", Sec. 5.2 (ATR); the generator follows the authors' code (github.com/aryamanarora/tinylang,
``language/pcfg.py``) with its ``pcfg_vary_difficulty`` settings: 20 terminals, 40 nonterminals, up to 5 rules per
nonterminal, right heads, parent queries only, unambiguous queries.* Associative recall with tree-structured
associations instead of adjacent key–value pairs.

The grammar is drawn once from ``grammar_seed`` (the same for the training and test streams): every nonterminal gets
a level in 1..``max_depth`` and 1..``max_rules`` rules whose right-hand sides hold 1..``max_rhs_len`` − 1 symbols (as
the authors' code counts), each uniform over the terminals and the nonterminals of a strictly higher level (so
derivations end), rule probabilities ~ Dirichlet(1), and a head distribution over terminals ~ Dirichlet(1). A
sentence derives from a uniform start nonterminal; each nonterminal emits its rule's symbols and its head terminal
(after them with ``head_position="right"``, before with ``"left"``). A terminal's parent is the head of the
nonterminal that emitted it; a head's parent is the head of the nonterminal above. A query is a terminal with a
parent that is the rightmost occurrence of its label (unambiguous); the parent is drawn first, uniform among the
parents of such queries, then the query among its children (the authors' ``sample_first="target"``). Document:

    BOS s_1 .. s_n SEP q  -> target: the parent's terminal, scored at q only

(the authors append the answer and EOS; only this position is scored there too). Sentences of 3..L − 3 terminals
are kept (longer ones redrawn), right-padded to L. A test length L draws documents of at most L tokens. Tokens:
PAD 0, BOS 1, SEP 2, terminal t = 3 + t. **Diagnoses** recall of an association the model must infer from
hierarchical structure (the parent is not adjacent to the query and need not appear only once); the paper finds the
same mechanism as for associative recall (an induction-like lookup in attention, Based and Mamba's convolution;
others fail), which the probes of issue 23 item 2 locate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, register_task, right_padded

__all__ = ["Treecall", "Sentence"]

PAD, BOS, SEP, TERMINAL = 0, 1, 2, 3
HEADS = ("right", "left")


class _TooLong(Exception):
    pass


@dataclass
class Sentence:
    """One derivation: labels (n,) terminals in order; parent (n,) position of each terminal's parent or −1 (the
    root's head); nonterminal (n,) the nonterminal a head belongs to, −1 for the other terminals; rule (n,) the index
    of the rule that nonterminal used, −1 for the other terminals."""

    labels: np.ndarray
    parent: np.ndarray
    nonterminal: np.ndarray
    rule: np.ndarray


@register_task("treecall")
class Treecall(Task):
    """Associative treecall (Arora et al. 2025): after a PCFG sentence and a query terminal, output its parent."""

    output = "lm"
    report_metrics = ("acc",)

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, num_terminals: int = 20,
                 num_nonterminals: int = 40, max_rhs_len: int = 5, max_rules: int = 5, max_depth: int = 10,
                 head_position: str = "right", grammar_seed: int = 0):
        for name, v, lo in (("num_terminals", num_terminals, 2), ("num_nonterminals", num_nonterminals, 1),
                            ("max_rhs_len", max_rhs_len, 2), ("max_rules", max_rules, 1), ("max_depth", max_depth, 1)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"treecall: {name} must be an int >= {lo}, got {v!r}")
        if head_position not in HEADS:
            raise ValueError(f"treecall: head_position must be one of {HEADS}, got {head_position!r}")
        self.num_terminals, self.num_nonterminals = num_terminals, num_nonterminals
        self.max_rhs_len, self.max_rules, self.max_depth = max_rhs_len, max_rules, max_depth
        self.head_position, self.grammar_seed = head_position, int(grammar_seed)
        self._make_grammar(np.random.default_rng([self.grammar_seed, 23]))
        super().__init__(seq_len, test_lengths)

    def _make_grammar(self, rng: np.random.Generator) -> None:
        """rules[A] = list of right-hand sides (terminal t >= 0, nonterminal B as −1 − B); their probabilities; heads."""
        N, V = self.num_nonterminals, self.num_terminals
        self.levels = rng.integers(1, self.max_depth + 1, size=N)
        self.rules, self.rule_probs = [], []
        for a in range(N):
            deeper = [-1 - b for b in range(N) if self.levels[b] > self.levels[a]]
            symbols = np.array(list(range(V)) + deeper)
            rhs = [rng.choice(symbols, size=int(rng.integers(1, self.max_rhs_len))).tolist()
                   for _ in range(int(rng.integers(1, self.max_rules + 1)))]
            self.rules.append(rhs)
            self.rule_probs.append(rng.dirichlet(np.ones(len(rhs))))
        self.head_probs = rng.dirichlet(np.ones(V), size=N)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 6:
            raise ValueError(f"treecall: length {seq_len} impossible; a document needs >= 6 tokens (3 terminals)")

    def model_io(self):
        return {"vocab_size": TERMINAL + self.num_terminals, "head": "lm"}

    def derive(self, rng: np.random.Generator, max_terminals: int) -> Sentence:
        """One sentence of at most max_terminals terminals (_TooLong past it)."""
        nodes: list[list[int]] = []  # [label, parent node, nonterminal, rule] in creation order
        order: list[int] = []  # node indices in sentence order

        def expand(a: int, parent: int) -> None:
            me = len(nodes)
            r = int(rng.choice(len(self.rules[a]), p=self.rule_probs[a]))
            nodes.append([int(rng.choice(self.num_terminals, p=self.head_probs[a])), parent, a, r])
            if self.head_position == "left":
                order.append(me)
            for s in self.rules[a][r]:
                if s >= 0:
                    order.append(len(nodes))
                    nodes.append([s, me, -1, -1])
                else:
                    expand(-1 - s, me)
                if len(order) > max_terminals:
                    raise _TooLong
            if self.head_position == "right":
                order.append(me)

        expand(int(rng.integers(self.num_nonterminals)), -1)
        if len(order) > max_terminals:
            raise _TooLong
        pos = np.empty(len(nodes), np.int64)
        pos[order] = np.arange(len(order))
        arr = np.array([nodes[i] for i in order], np.int64).reshape(-1, 4)
        parent = np.where(arr[:, 1] >= 0, pos[np.maximum(arr[:, 1], 0)], -1)
        return Sentence(arr[:, 0], parent, arr[:, 2], arr[:, 3])

    @staticmethod
    def queries(s: Sentence) -> np.ndarray:
        """Positions that may be queried: a parent, and the rightmost occurrence of the label."""
        n = len(s.labels)
        last = {int(lab): i for i, lab in enumerate(s.labels)}
        return np.array([i for i in range(n) if s.parent[i] >= 0 and last[int(s.labels[i])] == i], np.int64)

    def documents(self, B: int, L: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """(tokens, targets (B, L), lengths (B,), [(Sentence, query position)])."""
        tokens = np.full((B, L), PAD, np.int64)
        targets = np.full((B, L), IGNORE_INDEX, np.int64)
        lengths, trees = np.empty(B, np.int64), []
        for b in range(B):
            for _ in range(10_000):
                try:
                    s = self.derive(rng, L - 3)
                except _TooLong:
                    continue
                q = self.queries(s)
                if len(s.labels) >= 3 and len(q):
                    break
            else:
                raise ValueError(f"treecall: no sentence of at most {L - 3} terminals in 10000 draws; raise the length")
            parent = rng.choice(np.unique(s.parent[q]))
            query = int(rng.choice(q[s.parent[q] == parent]))
            n = len(s.labels)
            tokens[b, :n + 3] = [BOS, *(TERMINAL + s.labels), SEP, TERMINAL + s.labels[query]]
            targets[b, n + 2] = TERMINAL + s.labels[parent]
            lengths[b] = n + 3
            trees.append((s, query))
        return tokens, targets, lengths, trees

    def sample(self, batch_size, seq_len, rng, split):
        tokens, targets, lengths, _ = self.documents(batch_size, seq_len or self.seq_len, rng)
        return right_padded(tokens, targets, lengths)
