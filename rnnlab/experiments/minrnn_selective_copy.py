"""Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?" (Table 1): selective copying
with minGRU and minLSTM at 1, 2 and 3 layers.

Claim: a single minGRU/minLSTM layer cannot do selective copying (its gates depend only on the current token,
so one layer cannot decide what to keep from what follows), while stacking layers solves it (the paper: about a
third of the tokens at one layer, near-perfect at three; Mamba's selective copying setting with 4096
positions). rnnlab's size: 16 data tokens among 128 positions, vocabulary 16, d_model 64. Quick: the claims' 1 and 3
layers, 1500 steps, 2 seeds (about 2100 CPU seconds); full: 1-3 layers, 6000 steps, 5 seeds, three learning rates."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment


def spec(quick: bool) -> dict:
    tasks = {"selective_copy": {"task": {"seq_len": 128, "num_tokens": 16, "vocab_size": 16, "test_lengths": [128]},
                                "train": {"target": 0.99}}}
    return sweep(quick, ["mingru", "minlstm"], tasks, steps=1500, full_steps=6000, seeds=2,
                 n_layers=(1, 3) if quick else (1, 2, 3))


EXPERIMENT = Experiment(
    name="minrnn_selective_copy",
    title="Selective copying with minGRU / minLSTM at 1-3 layers (Feng et al. 2024)",
    paper="Feng et al. 2024",
    claim="one minimal-RNN layer cannot do selective copying; three stacked layers can.",
    spec=spec,
    claims=tuple(Claim(f"{m}, {n} layer{'s' if n > 1 else ''}", "selective_copy", m, n_layers=n,
                       outcome="fails" if n == 1 else "solves", source="Table 1")
                 for m in ("mingru", "minlstm") for n in (1, 3)),
)
