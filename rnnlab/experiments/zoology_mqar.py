"""Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models" (Fig. 2), and
Based (Arora et al. 2024): multi-query associative recall (MQAR) against state size.

Claim: attention solves MQAR at every width; recurrent models recall in proportion to their state size, with
input-dependent (gated / delta-rule) recurrences far ahead of fixed ones; Based approaches attention. The
paper trains on 64-512-token sequences with up to 64 pairs and vocabulary 8192 for tens of epochs; rnnlab's
quick size is MQAR at T = 64 with 8 pairs and vocabulary 256 (the setting of the issue's independent check),
d_model 64, 1000 steps of batch 64, 2 seeds, the seven models the claims name (about 2000 CPU seconds, the
20-minute bar on 2 cores); the full size runs all twelve models for 6000 steps, 3 seeds, at d_model 64, 128 and
256 (the x-axis of Fig. 2) and three learning rates. The report's state_size.png is the figure's analogue."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

MIXERS = ["attention", "sliding_attention", "based", "gla", "deltanet", "gated_deltanet", "mamba", "mamba2", "rwkv6",
          "rwkv7", "retnet", "hgrn2"]
CLAIMED = ["attention", "sliding_attention", "based", "gla", "deltanet", "gated_deltanet", "mamba"]  # the claims' models


def spec(quick: bool) -> dict:
    tasks = {"mqar": {"task": {"seq_len": 64, "num_kv_pairs": 8, "vocab_size": 256, "test_lengths": [64]},
                      "train": {"target": 0.99}}}
    mixers = CLAIMED if quick else MIXERS
    return sweep(quick, mixers, tasks, steps=1000, full_steps=6000, seeds=2, full_seeds=3, full_d_model=(64, 128, 256))


EXPERIMENT = Experiment(
    name="zoology_mqar",
    title="MQAR recall against state size (Zoology, Arora et al. 2023; Based, 2024)",
    paper="Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré 2023; Arora et al. 2024 (Based)",
    claim="attention recalls at every width; among recurrent models recall grows with state size and is highest "
          "for input-dependent updates (Based, gated linear attention, delta rule, Mamba).",
    spec=spec,
    claims=(
        Claim("attention, MQAR T=64, 8 pairs", "mqar", "attention", paper=1.0, source="Zoology Fig. 2 (every width)"),
        Claim("Based, MQAR", "mqar", "based", outcome="solves", source="Based Fig. 2 / Zoology Fig. 2"),
        Claim("GLA, MQAR", "mqar", "gla", outcome="solves", source="Zoology Fig. 2 (gated linear attention)"),
        Claim("Mamba, MQAR", "mqar", "mamba", outcome="solves", source="Zoology Fig. 2 (Mamba, d >= 128)"),
        Claim("Gated DeltaNet, MQAR", "mqar", "gated_deltanet", outcome="solves",
              source="Yang et al. 2025 (delta rule: MQAR near attention)"),
        Claim("DeltaNet, MQAR", "mqar", "deltanet", outcome="solves", source="Yang et al. 2024, Fig. 2 (MQAR)"),
        Claim("sliding-window attention (w=16 < context), MQAR", "mqar", "sliding_attention", outcome="fails",
              source="Based, Sec. 3 (a window shorter than the key-query gap)"),
    ),
    notes="Zoology's Fig. 2 is a plot; its values are read as outcomes at the widths the paper calls solved.",
)
