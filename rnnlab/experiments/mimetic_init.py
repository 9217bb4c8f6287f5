"""Trockman, Harutyunyan, Kolter, Kumar & Bhojanapalli 2024, "Mimetic Initialization Helps State Space Models
Learn to Recall": initialize Mamba so its implied attention mimics linear attention (decays near 1, C = B).

Claim: with mimetic initialization Mamba learns multi-query associative recall (and copying) that the default
initialization does not learn at the same size and budget (their Fig. 1 / Sec. 4: large gains on MQAR).
rnnlab measures MQAR at T = 128 with 16 key-value pairs, vocabulary 256, d_model 64, 2 layers, with
model.mixer_kwargs.init = default / mimetic (rnnlab.layers.mamba)."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

MODELS = {"mamba@mimetic": {"model": {"mixer_kwargs": {"init": "mimetic"}}}}


def spec(quick: bool) -> dict:
    tasks = {"mqar": {"task": {"seq_len": 128, "num_kv_pairs": 16, "vocab_size": 256, "test_lengths": [128]},
                      "train": {"target": 0.99}}}
    return sweep(quick, ["mamba", "mamba@mimetic"], tasks, steps=800, full_steps=4000, seeds=2, extra_mixers=MODELS)


EXPERIMENT = Experiment(
    name="mimetic_init",
    title="Mimetic initialization and recall (Trockman et al. 2024)",
    paper="Trockman, Harutyunyan, Kolter, Kumar & Bhojanapalli 2024",
    claim="a Mamba initialized to mimic linear attention learns MQAR where the default initialization does not.",
    spec=spec,
    claims=(
        Claim("Mamba, default init, MQAR T=128, 16 pairs", "mqar", "mamba", outcome="fails",
              source="Fig. 1 / Sec. 4 (default initialization)"),
        Claim("Mamba, mimetic init, MQAR T=128, 16 pairs", "mqar", "mamba@mimetic", outcome="solves",
              source="Fig. 1 / Sec. 4 (mimetic initialization)"),
    ),
    notes="Claims are outcomes: the paper's gains are read from plots over widths and lengths.",
)
