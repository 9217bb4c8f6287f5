"""The passkey sweep that Stuffed Mamba's and Buitrago & Gu's reproductions share (one database, each run trained
once): Mamba trained on passkey retrieval at T = 64 and tested to 16x, from the zero state with its default state
(d_state 16), with a small state (d_state 1), and with the two state-coverage interventions (Gaussian initial states at
scale 1 and at 0.3, about the entries' std of the states the zero-started model reaches: 0.28-0.56)."""
from rnnlab.experiments._common import sweep

MODELS = {
    "mamba@small_state": {"model": {"mixer_kwargs": {"d_state": 1}}},
    "mamba@gaussian": {"train": {"init_state": "gaussian"}},
    "mamba@gaussian_0.3": {"train": {"init_state": "gaussian", "init_state_scale": 0.3}},  # ~ the trained states' entry std
    "mamba@other_sequence": {"train": {"init_state": "other_sequence"}},
}
LENGTHS = (64, 128, 256, 512, 1024)
DIAGNOSE = {"examples": 32, "probe": "off"}  # the state statistics to 16x (probes at 1024 tokens would cost more than training)


def spec(quick: bool) -> dict:
    tasks = {"passkey": {"task": {"seq_len": 64, "test_lengths": list(LENGTHS)}, "train": {"target": 0.999}}}
    return sweep(quick, ["mamba", *MODELS], tasks, steps=600, full_steps=4000, seeds=2, extra_mixers=MODELS)


SHARED = {"spec": spec, "shared": "passkey_state", "diagnose": {"passkey": DIAGNOSE}}
"""What both experiments pass to Experiment: this sweep, its one database, and its diagnosis."""
