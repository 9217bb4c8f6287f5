"""Jelassi, Brandfonbrener, Kakade & Malach 2024, "Repeat After Me: Transformers are Better than State Space
Models at Copying" (ICML 2024), Sec. 3-4 (Figs. 2, 4, 5).

Claims: a transformer learns to copy long strings and generalizes to longer ones, while a fixed-size state
(Mamba, LSTM) copies only strings that fit in it; looking up an n-gram is easy for both when the key comes
before the answer (prefix key) but hard for a recurrent model when it comes after (suffix key), since it must
keep the whole string. rnnlab's sizes: strings of 4-24 tokens, vocabulary 16, tested on strings of 24 and 48
tokens; d_model 64 (the paper: 5-160M parameters). Quick: 1200 steps, 2 seeds (about 2000 CPU seconds, the
20-minute bar on 2 cores); full: 6000 steps, 5 seeds, three learning rates."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment


def spec(quick: bool) -> dict:
    copy = {"task": {"min_len": 4, "max_len": 24, "vocab_size": 16, "test_lengths": [49, 97]}, "train": {"target": 0.99}}
    look = {"task": {"min_len": 4, "max_len": 24, "vocab_size": 16, "test_lengths": [29, 53]}, "train": {"target": 0.99}}
    tasks = {"copy": copy, "copy_prefix_key": look, "copy_suffix_key": look}
    return sweep(quick, ["attention", "mamba", "lstm"], tasks, steps=1200, full_steps=6000, seeds=2)


EXPERIMENT = Experiment(
    name="jelassi_copy",
    title="Copying and n-gram lookup (Jelassi et al. 2024)",
    paper="Jelassi, Brandfonbrener, Kakade & Malach 2024",
    claim="transformers copy and look up in long strings; fixed-state models fail once the string outgrows the "
          "state, and on suffix-key lookup.",
    spec=spec,
    claims=(
        Claim("attention, copy a 24-token string (train length)", "copy", "attention", metric="seq_acc", lengths=(49,),
              outcome="solves", source="Fig. 2 (transformers copy)"),
        Claim("Mamba, copy a 48-token string (2x)", "copy", "mamba", metric="seq_acc", lengths=(97,), outcome="fails",
              source="Fig. 2 (GSSMs fail past their state)"),
        Claim("LSTM, copy a 48-token string (2x)", "copy", "lstm", metric="seq_acc", lengths=(97,), outcome="fails",
              source="Fig. 2"),
        Claim("attention, suffix-key lookup", "copy_suffix_key", "attention", lengths=(29,), outcome="solves",
              source="Fig. 5"),
        Claim("Mamba, suffix-key lookup", "copy_suffix_key", "mamba", lengths=(29,), outcome="fails", source="Fig. 5"),
        Claim("Mamba, prefix-key lookup", "copy_prefix_key", "mamba", lengths=(29,), outcome="solves", source="Fig. 5"),
    ),
)
