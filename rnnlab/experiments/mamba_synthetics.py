"""Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces": selective copying
(Table 1) and induction heads with length extrapolation (Table 2 / Fig. 4 of the arXiv version).

Claims: an LTI SSM (S4, fixed Δ, B, C) cannot do selective copying (18.3 % as a layer without gating) while the
selective S6 layer can (97.0 %, 99.8 % in the Mamba block); Mamba learns induction heads at length 256 and
extrapolates to 1M tokens (100 %) while softmax attention with RoPE fails beyond about twice its training
length. rnnlab's sizes: selective copying with 16 data tokens in 128 positions, vocabulary 16 (the paper: 4096
positions); induction heads trained at 64 and tested to 16x (1024). S4 is rnnlab's `s4d` (the diagonal LTI
SSM in a gated block: a stronger baseline than the paper's ungated S4 layer). Quick: batch 32, 1200 steps, 2 seeds
(about 2000 CPU seconds); full: batch 64, 6000 steps, 5 seeds, three learning rates."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment


def spec(quick: bool) -> dict:
    tasks = {
        "selective_copy": {"task": {"seq_len": 128, "num_tokens": 16, "vocab_size": 16, "test_lengths": [128]},
                           "train": {"target": 0.99}, "grid": {"mixer": ["s4d", "mamba", "attention"]}},
        "induction_head": {"task": {"seq_len": 64, "vocab_size": 16, "test_lengths": [64, 128, 256, 512, 1024]},
                           "train": {"target": 0.99}, "grid": {"mixer": ["mamba", "attention"]}},
    }
    if quick:  # batch 32 (the full size's 64 would take ~80 CPU minutes at 3 seeds)
        for t in tasks.values():
            t["train"]["batch_size"] = 32
    return sweep(quick, ["s4d", "mamba", "attention"], tasks, steps=1200, full_steps=6000, seeds=2)


EXPERIMENT = Experiment(
    name="mamba_synthetics",
    title="Selective copying and induction heads (Mamba, Gu & Dao 2023)",
    paper="Gu & Dao 2023, COLM 2024",
    claim="selection (input-dependent Δ, B, C) is what selective copying needs, and Mamba's induction heads "
          "extrapolate in length where RoPE attention does not.",
    spec=spec,
    claims=(
        Claim("S4 (LTI), selective copying", "selective_copy", "s4d", paper=0.183,
              source="Table 1 (S4 layer, no gate)", solved_at=0.9),
        Claim("Mamba (S6), selective copying", "selective_copy", "mamba", paper=0.998, source="Table 1 (Mamba, S6)"),
        Claim("Mamba, induction heads at 16x the training length", "induction_head", "mamba", lengths=(1024,), paper=1.0,
              source="Table 2 (100 % to 2^20)"),
        Claim("attention (RoPE), induction heads at 16x", "induction_head", "attention", lengths=(1024,),
              outcome="fails", source="Table 2 (MHA-RoPE fails past 2x)"),
        Claim("attention (RoPE), induction heads at the training length", "induction_head", "attention", lengths=(64,),
              paper=1.0, source="Table 2 (100 % at 256, the training length)"),
    ),
)
