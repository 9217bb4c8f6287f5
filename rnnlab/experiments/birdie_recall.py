"""Blouir, Smith, Anastasopoulos & Shehu 2024, "Birdie: Advancing State Space Models with Reward-Driven Objectives
and Curricula" (EMNLP 2024): a mixture of objectives with a reward-driven controller, and a bidirectional prefix.

Claim: an SSM (Hawk, Gated SSM) trained with the Birdie mixture and the bidirectional prefix recalls what one
trained only on next-token prediction does not (their Table 2 / Fig. 3: multi-phone-number retrieval and
SQuAD-style extraction, where next-token Hawk stays far below a Transformer). rnnlab measures MQAR (T = 64, 8 pairs,
vocabulary 256) with Hawk, d_model 64, 2 layers: next-token training against train.objective = birdie with
model.bidirectional_every = 2 (rnnlab.train.birdie, rnnlab.models.bidirectional; both say how they simplify the
paper). The mixture's non-next-token objectives are built from MQAR's own sequences."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

MODELS = {"hawk@birdie": {"train": {"objective": "birdie"}, "model": {"bidirectional_every": 2}}}


def spec(quick: bool) -> dict:
    tasks = {"mqar": {"task": {"seq_len": 64, "num_kv_pairs": 8, "vocab_size": 256, "test_lengths": [64]},
                      "train": {"target": 0.99}}}
    return sweep(quick, ["hawk", "hawk@birdie"], tasks, steps=1000, full_steps=6000, seeds=2, extra_mixers=MODELS)


EXPERIMENT = Experiment(
    name="birdie_recall",
    title="Birdie's objective mixture and bidirectional prefix on recall (Blouir et al. 2024)",
    paper="Blouir, Smith, Anastasopoulos & Shehu 2024, EMNLP",
    claim="Hawk trained with the Birdie mixture and a bidirectional prefix recalls where next-token Hawk does not.",
    spec=spec,
    claims=(
        Claim("Hawk, next-token, MQAR", "mqar", "hawk", outcome="fails", source="Table 2 (next-token Hawk, retrieval)"),
        Claim("Hawk, Birdie + bidirectional prefix, MQAR", "mqar", "hawk@birdie", outcome="solves",
              source="Table 2 (Birdie-trained Hawk, retrieval)"),
    ),
    notes="Claims are outcomes: the paper's numbers are for 1.4B models pre-trained on The Pile.",
)
