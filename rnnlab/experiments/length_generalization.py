"""Buitrago & Gu 2025, "Understanding and Improving Length Generalization in Recurrent Models" (Sec. 4-5), with
LongSSM (Wang et al. 2024): state-coverage interventions.

Claims: a recurrent model trained from the zero state at length T fails at longer lengths because it never saw the
states that long sequences reach ("unexplored states"); training from other initial states — Gaussian noise, or the
final state of another sequence (state passing) — covers them, and the model then generalizes (their Fig. 1 and
Table 1: Mamba trained at 2k extrapolates to 8x and beyond with state passing). rnnlab measures it on the passkey
task at T = 64 tested at 8x (512), Mamba d_model 64, 2 layers, with train.init_state = zeros / gaussian (scale 1 and
0.3) / other_sequence (rnnlab.train.init_state). The sweep is shared with stuffed_mamba (rnnlab/experiments/_passkey.py)."""
from rnnlab.experiments._passkey import SHARED
from rnnlab.train.reproduce import Claim, Experiment

EXPERIMENT = Experiment(
    name="length_generalization",
    title="State coverage and length generalization (Buitrago & Gu 2025; LongSSM)",
    paper="Buitrago & Gu 2025; Wang et al. 2024 (LongSSM)",
    claim="a Mamba trained from the zero state fails at 8x its training length; trained from Gaussian or "
          "passed (another sequence's) initial states it does not.",
    **SHARED,
    claims=(
        Claim("Mamba from zeros, passkey at 8x", "passkey", "mamba", metric="seq_acc", lengths=(512,),
              outcome="fails", source="Sec. 4 (trained from zeros: fails past the training length)"),
        Claim("Mamba from Gaussian states, passkey at 8x", "passkey", "mamba@gaussian", metric="seq_acc",
              lengths=(512,), outcome="solves", source="Sec. 5, Table 1 (random-noise initial state)"),
        Claim("Mamba from Gaussian states at scale 0.3, passkey at 8x", "passkey", "mamba@gaussian_0.3",
              metric="seq_acc", lengths=(512,), outcome="solves", source="Sec. 5, Table 1 (random-noise initial state)"),
        Claim("Mamba with state passing, passkey at 8x", "passkey", "mamba@other_sequence", metric="seq_acc",
              lengths=(512,), outcome="solves", source="Sec. 5, Table 1 (state passing)"),
    ),
    notes="Claims are outcomes: the paper measures language-model perplexity and passkey retrieval at 130M-1.3B.",
)
