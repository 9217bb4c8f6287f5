"""Initial states of the training sequences (``train.init_state``): the state-coverage interventions of Buitrago &
Gu 2025 ("Understanding and Improving Length Generalization in Recurrent Models", Sec. 5) and LongSSM (Wang et al.
2024, "LongSSM: On the Length Extension of State-space Models in Language Modelling": non-zero initial states).

A recurrent model trained only from the zero state sees only the states that T tokens reach from it, and may fail on
the states that longer sequences reach (the "unexplored states" hypothesis). The options:

- ``zeros``: every sequence starts from ``init_state`` (the default; nothing here runs).
- ``gaussian``: every recurrent state tensor (``SequenceModel.recurrent_state_keys``: the fixed-size float and
  complex tensors: SSM / matrix states, RNN hidden and cell states, conv tails, token-shift states) is drawn
  i.i.d. N(0, ``init_state_scale``²) per entry (real and imaginary parts each, for complex states), fresh for every
  sequence (a generator seeded by (seed, step, shard): resume-exact). Integer tensors (positions) and tensors that grow
  with the tokens (attention's KV cache) stay as ``init_state`` gives them. Buitrago & Gu's "random noise"; LongSSM's
  random initial state.
- ``other_sequence``: the recurrent state tensors start from the final state of another sequence: row i of a shard
  takes the final state (detached) of row i mod N' of the same shard's batch at the previous step (N' its rows),
  an unrelated sequence of the training distribution; the first step starts from zeros. The other tensors as for
  gaussian. Buitrago & Gu's "state passing" from a different sequence.
- ``passed``: state passing along one stream (truncated BPTT, Buitrago & Gu's TBTT): the task's own generator
  draws a training sequence ``passed_windows`` times the training length (``task.sample(rows, K * seq_len, rng,
  "train")``, rng = ``rng_for(seed, "train", episode)``; for bytes_lm that is K * T contiguous bytes of the corpus),
  and K consecutive steps train on its K consecutive windows: step s trains on window s mod K of episode s // K,
  starting from the whole final state (every tensor: positions and caches too) of window s mod K - 1, detached; window
  0 starts from zeros. Running the K windows with the passed state is running the long sequence (tested). Needs a
  per-token task (lm / regress) that can generate length K * seq_len, and no packing.
- ``learned``: a learned initial state (``ModelConfig.learned_init_state``, set by the config resolver): a
  parameter per recurrent state tensor of each layer, trained with the model and saved in its checkpoints; the
  model starts every sequence from it, in evaluation too. LongSSM's learned initial state.

Carried states (other_sequence, passed) go into the checkpoint (``carry.<shard>.<key>``), so a resumed run continues
exactly; they need one process (the carry of another process's shards would not be in the checkpoint).
Evaluation always starts from the model's own initial state (zeros, or the learned one).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from rnnlab.layers.base import State
from rnnlab.tasks.base import Task, rng_for
from rnnlab.train.packing import TrainBatch, train_shard

__all__ = ["INIT_STATES", "StartStates", "stream_shard", "start_states"]

INIT_STATES = ("zeros", "gaussian", "other_sequence", "passed", "learned")
CARRIED = ("other_sequence", "passed")


def check_init_state(task: Task, tc, world: int = 1) -> None:
    """ValueError where train.init_state cannot run with this task or setup."""
    if tc.init_state in CARRIED and world > 1:
        raise ValueError(f"train.init_state={tc.init_state!r} carries states between steps and needs one process, got {world}")
    if tc.init_state == "passed":
        if tc.pack:
            raise ValueError('train.init_state="passed" trains on windows of streams: it cannot be combined with train.pack')
        if task.output == "classify":
            raise ValueError(f'train.init_state="passed" needs a per-token task (lm or regress); {task.name} classifies')
        task.check_length(tc.passed_windows * task.seq_len)


def start_states(model, task: Task, tc, world: int = 1) -> "StartStates | None":
    """The StartStates of a run, or None where every sequence starts from the model's own initial state."""
    check_init_state(task, tc, world)
    if tc.init_state in ("zeros", "learned"):
        return None
    return StartStates(model, tc.init_state, tc.init_state_scale, tc.seed, tc.passed_windows)


class StartStates:
    """The initial state of each training shard (module docstring), and the carried final states."""

    def __init__(self, model, mode: str, scale: float = 1.0, seed: int = 0, windows: int = 1):
        self.model, self.mode, self.scale, self.seed, self.windows = model, mode, scale, seed, windows
        self.keys = model.recurrent_state_keys()
        self.carry: dict[int, State] = {}

    def train_shard(self, task: Task, step: int, shard: int, shards: int, *, batch_size: int, seed: int, pack: bool,
                    pack_tokens: int | None) -> TrainBatch:
        """The shard's batch: rnnlab.train.packing.train_shard, or with "passed" the window of its streams."""
        if self.mode == "passed":
            return stream_shard(task, step, shard, shards, batch_size=batch_size, seed=seed, windows=self.windows)
        return train_shard(task, step, shard, shards, batch_size=batch_size, seed=seed, pack=pack, pack_tokens=pack_tokens)

    def initial(self, step: int, shard: int, rows: int, device) -> State:
        """The initial state of shard ``shard`` of step ``step`` (``rows`` sequences)."""
        state = self.model.init_state(rows, device)
        prev = self.carry.get(shard)
        if self.mode == "gaussian":
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 2, step, shard]).generate_state(1)[0]))
            for k in self.keys:
                t = state[k]
                noise = torch.randn(t.shape + ((2,) if t.is_complex() else ()), generator=g) * self.scale
                state[k] = (torch.view_as_complex(noise) if t.is_complex() else noise).to(device=t.device, dtype=t.dtype)
        elif self.mode == "other_sequence" and prev is not None:
            idx = torch.arange(rows, device=device) % next(iter(prev.values())).shape[0]
            state.update({k: prev[k][idx] for k in self.keys})
        elif self.mode == "passed" and prev is not None and step % self.windows:
            state = dict(prev)
        return state

    def record(self, shard: int, final: State) -> None:
        """Keep the shard's final states (detached) for the next step (other_sequence, passed)."""
        if self.mode in CARRIED:
            self.carry[shard] = {k: v.detach() for k, v in final.items() if self.mode == "passed" or k in self.keys}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The carried states for the checkpoint: ``carry.<shard>.<key>``."""
        return {f"carry.{j}.{k}": v.detach().cpu().contiguous() for j, s in self.carry.items() for k, v in s.items()}

    def load(self, tensors: dict[str, torch.Tensor], device) -> None:
        self.carry = {}
        for name, v in tensors.items():
            if name.startswith("carry."):
                _, j, k = name.split(".", 2)
                self.carry.setdefault(int(j), {})[k] = v.to(device)


def stream_shard(task: Task, step: int, shard: int, shards: int, *, batch_size: int, seed: int, windows: int) -> TrainBatch:
    """Shard ``shard`` of step ``step`` under state passing: window step mod K of the streams of episode step // K."""
    b = batch_size // shards
    inputs, targets = _episode(task, batch_size, seed, step // windows, windows)
    T = task.seq_len
    w = slice((step % windows) * T, (step % windows + 1) * T)
    x, y = inputs[shard * b:(shard + 1) * b, w], targets[shard * b:(shard + 1) * b, w]
    return TrainBatch(x, y, None, int(task.count_scored(y)), x.shape[0] * x.shape[1])


@lru_cache(maxsize=1)
def _episode(task: Task, batch_size: int, seed: int, episode: int, windows: int):
    """The streams of one episode: batch_size training sequences of windows * seq_len tokens (drawn once)."""
    batch = task.sample(batch_size, windows * task.seq_len, rng_for(seed, "train", episode), "train")
    return batch.inputs, batch.targets
