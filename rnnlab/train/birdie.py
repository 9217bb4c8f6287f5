"""Birdie (Blouir et al. 2024, "Birdie: Advancing State Space Models with Reward-Driven Objectives and Curricula",
EMNLP 2024): a mixture of pre-training objectives with a reward-driven controller over the mixture
(``train.objective = "birdie"``).

Objectives: each maps a training row of the task (its token inputs, the source s) to (input, target) of the same
length T, laid out for a causal model as [marker] corrupted(s) [SEP] answer, padded with PAD: the targets score only
the answer (and nothing of the padding), so the loss is the answer's next-token loss given the prompt.

- ``next_token``: the task's own batch, unchanged (its own inputs and targets).
- ``copying``: corrupted = s, answer = s (n = (T - 1) // 2 source tokens).
- ``deshuffling``: corrupted = a random permutation of s's tokens, answer = s.
- ``infilling``: k spans (k = clamp(round(T / 20), 1, 8), each ~15 % of s / k tokens, separated by >= 1 kept token)
  replaced by sentinels S_0..S_{k-1}; answer = S_0 span_0 S_1 span_1 ... (T5 / UL2 span corruption).
- ``selective_copying``: q snippets (q = 1, 2 from T >= 64) of l = max(1, T // 16) tokens; the prompt holds, per
  snippet, S_i prefix MID suffix (its d = 2 tokens before and after), then CTX s; answer = S_0 snippet_0 S_1 ...
  (Birdie's "find the span between these delimiters", without its text templates).

Special tokens are appended to the task's vocabulary (``N_SPECIAL``; the resolver widens model.vocab_size), so
birdie needs a token-input "lm" task. The objective of step s is drawn from the current weights with a generator
seeded by (seed, s); the rows' corruptions by (seed, s, row): a step is a function of (seed, s, weights).

Controller. The paper's controller is a learned reward model (a small Transformer predicting each objective's loss
improvement from the history of mixtures and losses), explored during the first half of training and exploited in the
second (the authors' README). That model is NOT reproduced here: this is a simplification, a bandit with the same
reward. Every ``birdie_every`` steps the loss of each objective on a fixed held-out batch is measured, and the
reward of objective i is Birdie's reward function (the authors' ``reward_fn``): rv = (new - old) / old,
r = clamp(-100 e tanh(e sqrt(new old) rv³), -1, 1) (a loss that fell: r > 0). The weights then follow
exponentiated-gradient (Hedge) steps w_i ∝ w_i exp(η r_i), η = ``ETA``, mixed with the configured weights for
exploration: w = (1 - γ) w + γ w_prior, γ decaying from 1/2 to 0.05 by a cosine over the first half of training
(the paper's explore-then-exploit schedule), 0.05 after.

Bidirectional prefix (``model.bidirectional_every``, rnnlab.models.bidirectional, which says how it differs from
the paper): a transformed row's prefix is its prompt, the tokens before SEP (none of them scored); a next_token row's
is the task's declared context (``Task.context_len``, e.g. MQAR's key-value pairs), else 0. Every batch carries its
rows' prefix lengths, and a causal model ignores them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rnnlab.tasks.base import IGNORE_INDEX, Task, rng_for
from rnnlab.train.packing import TrainBatch

__all__ = ["OBJECTIVES", "N_SPECIAL", "Specials", "transform", "reward", "Controller", "Birdie", "check_birdie"]

OBJECTIVES = ("next_token", "copying", "deshuffling", "infilling", "selective_copying")
N_SENTINELS = 8
N_SPECIAL = 4 + len(OBJECTIVES) + N_SENTINELS  # PAD, SEP, MID, CTX, a marker per objective, sentinels
ETA = 1.0
MIN_LEN = 24


class Specials:
    """The special token ids after a vocabulary of V tokens."""

    def __init__(self, V: int):
        self.PAD, self.SEP, self.MID, self.CTX = V, V + 1, V + 2, V + 3
        self.marker = {o: V + 4 + i for i, o in enumerate(OBJECTIVES)}
        self.sentinel = [V + 4 + len(OBJECTIVES) + j for j in range(N_SENTINELS)]


def _layout(prompt: list, answer: list, T: int, sp: Specials) -> tuple[torch.Tensor, torch.Tensor]:
    """[prompt] [SEP] [answer] padded to T + 1 -> (inputs (T,), targets (T,)) scoring the answer only."""
    z = list(prompt) + [sp.SEP] + list(answer)
    assert len(z) <= T + 1, (len(z), T)
    start, end = len(prompt) + 1, len(z)  # the answer is z[start:end]
    z = torch.tensor(z + [sp.PAD] * (T + 1 - len(z)), dtype=torch.int64)
    targets = z[1:].clone()
    pos = torch.arange(T)
    targets[(pos + 1 < start) | (pos + 1 >= end)] = IGNORE_INDEX
    return z[:-1], targets


def transform(objective: str, source: torch.Tensor, T: int, sp: Specials, rng: np.random.Generator):
    """One row: source (>= T tokens) -> (inputs (T,), targets (T,)) of ``objective`` (module docstring)."""
    s = [int(t) for t in source]
    mark = [sp.marker[objective]]
    if objective in ("copying", "deshuffling"):
        src = s[:(T - 1) // 2]
        shown = src if objective == "copying" else [src[i] for i in rng.permutation(len(src))]
        return _layout(mark + shown, src, T, sp)
    if objective == "infilling":
        k = min(max(round(T / 20), 1), N_SENTINELS)
        n = T - 1 - 2 * k
        span = max(1, round(0.15 * n / k))
        kept = n - k * span
        cuts = np.sort(rng.choice(kept + 1, size=k, replace=False))  # span j goes before kept token cuts[j]
        src, prompt, answer, i = s[:n], list(mark), [], 0
        for j, c in enumerate(cuts):
            prompt += src[i:c + j * span]
            prompt.append(sp.sentinel[j])
            answer += [sp.sentinel[j]] + src[c + j * span:c + (j + 1) * span]
            i = c + (j + 1) * span
        return _layout(prompt + src[i:], answer, T, sp)
    if objective == "selective_copying":
        q, d, ln = (1 if T < 64 else 2), 2, max(1, T // 16)
        n = T + 1 - (1 + q * (2 * d + 2) + 1 + 1 + q * (1 + ln))
        src, width = s[:n], 2 * d + ln
        slots = n // width  # snippets (with their delimiters) in disjoint slots of the source
        picks = rng.choice(slots, size=q, replace=False)
        prompt, answer = list(mark), []
        for i, p in enumerate(picks):
            a = p * width
            prompt += [sp.sentinel[i]] + src[a:a + d] + [sp.MID] + src[a + d + ln:a + width]
            answer += [sp.sentinel[i]] + src[a + d:a + d + ln]
        return _layout(prompt + [sp.CTX] + src, answer, T, sp)
    raise ValueError(f"unknown Birdie objective {objective!r}; valid: {', '.join(OBJECTIVES)}")


def reward(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Birdie's reward of a loss going from ``old`` to ``new`` (module docstring): in [-1, 1], > 0 when it fell."""
    old, new = np.asarray(old, float), np.asarray(new, float)
    rv = (new - old) / (old + 1e-8)
    r = -100 * np.tanh(np.sqrt(new * old) * rv ** 3 * math.e) * math.e
    return np.clip(np.nan_to_num(r), -1.0, 1.0)


class Controller:
    """The mixture's weights: Hedge steps on Birdie's reward, mixed with the prior (module docstring)."""

    def __init__(self, prior: np.ndarray, total_steps: int):
        self.prior = np.asarray(prior, float) / np.sum(prior)
        self.weights, self.total, self.last = self.prior.copy(), total_steps, None

    def explore(self, step: int) -> float:
        half = max(1, self.total // 2)
        return 0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * min(step, half) / half))

    def update(self, losses, step: int) -> np.ndarray | None:
        """New held-out losses per objective -> the rewards (None on the first call); the weights updated."""
        losses = np.asarray(losses, float)
        if self.last is None:
            self.last = losses
            return None
        r = reward(self.last, losses)
        w = self.weights * np.exp(ETA * r)
        g = self.explore(step)
        self.weights = (1 - g) * w / w.sum() + g * self.prior
        self.last = losses
        return r

    def state(self) -> dict:
        return {"weights": self.weights.tolist(), "last": None if self.last is None else self.last.tolist()}

    def load(self, state: dict | None) -> None:
        if state:
            self.weights = np.asarray(state["weights"], float)
            self.last = None if state["last"] is None else np.asarray(state["last"], float)


def check_birdie(task: Task) -> None:
    io = task.model_io()
    if task.output != "lm" or not io.get("vocab_size"):
        raise ValueError(f'train.objective="birdie" needs a token language-modelling task (output "lm" with a vocabulary); '
                         f"{task.name} has output {task.output!r}")
    if task.seq_len < MIN_LEN:
        raise ValueError(f'train.objective="birdie" needs task.seq_len >= {MIN_LEN}, got {task.seq_len}')


class Birdie:
    """The trainer's side: the step's objective and batch, and the controller's updates (module docstring)."""

    def __init__(self, task: Task, tc, eval_rows: int = 16):
        check_birdie(task)
        w = tc.birdie_weights or {}
        unknown = sorted(set(w) - set(OBJECTIVES))
        if unknown:
            raise ValueError(f"train.birdie_weights: unknown objective(s) {unknown}; valid: {', '.join(OBJECTIVES)}")
        prior = np.array([float(w.get(o, 0.0 if w else 1.0)) for o in OBJECTIVES])
        if (prior < 0).any() or prior.sum() <= 0:
            raise ValueError(f"train.birdie_weights must be >= 0 with a positive sum, got {w}")
        self.task, self.seed, self.sp = task, tc.seed, Specials(task.model_io()["vocab_size"])
        self.controller = Controller(prior, tc.steps)
        src = task.sample(eval_rows, task.seq_len, rng_for(tc.seed, "test", task.seq_len), "test")
        self.held_out = [self._batch(o, src, [np.random.default_rng([tc.seed, 5, i]) for i in range(eval_rows)])
                         for o in OBJECTIVES]

    def objective(self, step: int) -> str:
        """The objective of step ``step``: drawn from the current weights."""
        return OBJECTIVES[np.random.default_rng([self.seed, 3, step]).choice(len(OBJECTIVES), p=self.controller.weights)]

    def _batch(self, objective: str, batch, rngs):
        """-> (inputs, targets, prefix_len (b,): each row's prompt, the tokens before SEP; the task's context for
        next_token rows)."""
        if objective == "next_token":
            context = self.task.context_len(batch.inputs.shape[1]) or 0
            return batch.inputs, batch.targets, torch.full((batch.inputs.shape[0],), context, dtype=torch.int64)
        rows = [transform(objective, x, self.task.seq_len, self.sp, g) for x, g in zip(batch.inputs, rngs)]
        x = torch.stack([r[0] for r in rows])
        return x, torch.stack([r[1] for r in rows]), (x == self.sp.SEP).int().argmax(1)

    def train_shard(self, task: Task, step: int, shard: int, shards: int, *, batch_size: int, seed: int, pack: bool,
                    pack_tokens: int | None) -> TrainBatch:
        """The shard's rows of step ``step``, transformed by the step's objective."""
        b = batch_size // shards
        rows = range(shard * b, (shard + 1) * b)
        batch = task.train_batch(batch_size, seed, step, rows=slice(rows.start, rows.stop))
        x, y, prefix = self._batch(self.objective(step), batch, [np.random.default_rng([seed, 4, step, r]) for r in rows])
        return TrainBatch(x, y, None, int(task.count_scored(y)), x.shape[0] * x.shape[1], prefix)

    @torch.no_grad()
    def update(self, model, step: int, device) -> dict:
        """Measure each objective's held-out loss, update the weights. -> a metrics record."""
        was = model.training
        model.eval()
        losses = []
        for x, y, prefix in self.held_out:
            out, _ = model(x.to(device), prefix_len=prefix.to(device))
            s, n = self.task.loss_terms(out.float(), y.to(device))
            losses.append(float(s) / max(float(n), 1.0))
        model.train(was)
        r = self.controller.update(losses, step)
        rec = {"losses": dict(zip(OBJECTIVES, losses)), "weights": dict(zip(OBJECTIVES, self.controller.weights.tolist()))}
        if r is not None:
            rec["rewards"] = dict(zip(OBJECTIVES, r.tolist()))
        return rec
