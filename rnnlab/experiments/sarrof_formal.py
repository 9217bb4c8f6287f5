"""Sarrof, Veitsman & Hahn 2024, "The Expressive Capacity of State Space Models: A Formal Language Perspective"
(NeurIPS 2024): which formal languages an SSM whose transitions are non-negative (Mamba) models at any length.

Claims: such an SSM models every star-free language with perfect length generalization (Theorem 4, Fig. 3; the
flip-flop language with two layers, Sec. 4; D_n), bounded hierarchical structure (Dyck(K, m), Theorem 6, Fig. 4),
and counter languages in distribution (Theorem 5, Fig. 3: "length generalization lags behind"), but no such SSM
recognizes parity (Theorem 2: it fails). Against a transformer, Liu et al. 2023's flip-flop result: attention makes
sporadic errors on the sparse flip-flop test, so not every read of a long sequence is right. rnnlab's sizes: the
flip-flop trained at T = 128 (the paper: 512) and tested on sparse FFL(0.98) at 1x and 4x, D_2, Dyck(8, 10) and
a^n b^n at the task defaults, parity at xLSTM's lengths (3-40, test to 256). Quick: 2 layers, d_model 64, 2 seeds."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

PARITY = (40, 64, 128, 256)


def spec(quick: bool) -> dict:
    tasks = {
        "flip_flop_sparse": {"task": {"seq_len": 128, "test_lengths": [128, 512]}, "train": {"target": 0.999},
                             "grid": {"mixer": ["mamba", "attention"]}},
        "d_n": {"train": {"target": 0.999}},
        "dyck": {"train": {"target": 0.999}},
        "anbn": {"train": {"target": 0.999}},
        "parity": {"task": {"test_lengths": list(PARITY)}, "train": {"target": 0.995}},
    }
    return sweep(quick, ["mamba"], tasks, steps=500, full_steps=3000, seeds=2)


EXPERIMENT = Experiment(
    name="sarrof_formal",
    title="Formal languages and non-negative SSMs (Sarrof, Veitsman & Hahn 2024)",
    paper="Sarrof, Veitsman & Hahn 2024, NeurIPS",
    claim="an SSM with non-negative transitions (Mamba) models star-free languages (flip-flop, D_n) and bounded "
          "Dyck at any length and counter languages in distribution, but not parity.",
    spec=spec,
    claims=(
        Claim("Mamba, flip-flop, sparse test at 4x: every read right", "flip_flop_sparse", "mamba", metric="seq_acc",
              lengths=(512,), outcome="solves", source="Sec. 4 (two layers model flip-flop at any length), Fig. 2"),
        Claim("attention, flip-flop, sparse test at 4x: every read right", "flip_flop_sparse", "attention",
              metric="seq_acc", lengths=(512,), outcome="fails", source="Liu et al. 2023 (sporadic errors), Sarrof Fig. 2"),
        Claim("Mamba, D_2 (star-free), out of distribution", "d_n", "mamba", metric="seq_acc", lengths=(200,),
              outcome="solves", source="Fig. 3 (star-free: perfect length generalization)"),
        Claim("Mamba, Dyck(8, 10) at 2x", "dyck", "mamba", lengths=(256,), outcome="solves",
              source="Theorem 6, Fig. 4 (bounded Dyck)"),
        Claim("Mamba, a^n b^n in distribution", "anbn", "mamba", metric="seq_acc", lengths=(100,), outcome="solves",
              source="Theorem 5, Fig. 3 (counter languages in distribution)"),
        Claim("Mamba, parity 40-256", "parity", "mamba", metric="last_acc", lengths=PARITY, chance=0.5,
              outcome="fails", source="Theorem 2 (non-negative SSMs cannot recognize parity)"),
    ),
)
