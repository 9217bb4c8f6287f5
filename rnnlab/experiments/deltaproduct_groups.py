"""Siems, Carstensen, Zela, Hutter, Pontil & Grazzi 2025, "DeltaProduct: Increasing the Expressivity of
DeltaNet Through Products of Householders" (Sec. 5.1, Fig. 3): group word problems.

Claims (with β in [0, 2], i.e. eigenvalues in [-1, 1]): a product of n_h generalized Householder reflections per
token can represent a group's transitions when n_h is large enough — one reflection per token (DeltaNet,
n_h = 1) does not solve S3 (its elements include 3-cycles, rotations, which need two reflections), n_h = 2
does, and it extrapolates to longer words. rnnlab's sizes: one of the paper's settings scaled down — S3 words of
4-32 elements, tested at 32 and 128 (4x), d_model 64, 2 layers; quick: 1500 steps, 2 seeds (about 1700 CPU seconds);
full: best of three learning rates, 5 seeds, 6000 steps."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

NH = {f"deltaproduct@{n}": {"model": {"mixer_kwargs": {"num_householder": n, "negative_eigenvalues": True,
                                                       "use_forget_gate": False}}} for n in (1, 2, 3)}


def spec(quick: bool) -> dict:
    tasks = {"word_problem": {"task": {"group": "S3", "min_len": 4, "max_len": 32, "test_lengths": [32, 128]},
                              "train": {"target": 0.995}}}
    return sweep(quick, list(NH), tasks, steps=1500, full_steps=6000, seeds=2, extra_mixers=NH)


EXPERIMENT = Experiment(
    name="deltaproduct_groups",
    title="Group word problems with products of Householders (DeltaProduct, Siems et al. 2025)",
    paper="Siems et al. 2025",
    claim="DeltaNet (one reflection per token) cannot track S3; DeltaProduct with two reflections per token can, "
          "and extrapolates.",
    spec=spec,
    claims=(
        Claim("n_h = 1 (DeltaNet [-1, 1]), S3 at 4x", "word_problem", "deltaproduct@1", lengths=(128,), outcome="fails",
              source="Fig. 3 (S3, n_h = 1)"),
        Claim("n_h = 2, S3 at 4x", "word_problem", "deltaproduct@2", lengths=(128,), outcome="solves",
              source="Fig. 3 (S3, n_h = 2)"),
        Claim("n_h = 3, S3 at 4x", "word_problem", "deltaproduct@3", lengths=(128,), outcome="solves",
              source="Fig. 3 (S3, n_h >= 2)"),
    ),
)
