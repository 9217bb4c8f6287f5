"""Chen et al. 2024, "Stuffed Mamba: Oversized States Lead to the Inability to Forget" (arXiv 2410.07145, v2+):
passkey retrieval and state collapse past the training length.

Claims: a Mamba trained on contexts short for its state size never learns to forget, so past its training length
its state grows out of the range it was trained on (state collapse, Sec. 4) and retrieval fails; the minimum
training length that teaches forgetting grows linearly with the state size (Sec. 5), so at a fixed training length
a small enough state does learn to forget and keeps retrieving. rnnlab measures it at T = 64 (tested to 16x =
1024, the 5-digit key at a uniform depth in a repeated filler), d_model 64, 2 layers: the default d_state 16 against
d_state 1 (the paper's mitigation here is the state size at a fixed length; its training-free mitigations of v1,
forget-strength adjustment and state normalization, are not built). Every run is then diagnosed at 16x: the state
norm against position (report/state_stats.png) and its growth from 1x to 16x ("diag.norm_growth").
The sweep is shared with length_generalization (rnnlab/experiments/_passkey.py)."""
from rnnlab.experiments._passkey import SHARED
from rnnlab.train.reproduce import Claim, Experiment

EXPERIMENT = Experiment(
    name="stuffed_mamba",
    title="Passkey retrieval and state collapse (Stuffed Mamba, Chen et al. 2024)",
    paper="Chen, Zhang, Hu, Han, Liu & Sun 2024 (COLM 2025)",
    claim="a Mamba whose state is large for its training length fails past that length as its state leaves the "
          "trained range; a state small enough for the training length learns to forget and keeps retrieving.",
    **SHARED,
    claims=(
        Claim("Mamba (d_state 16), passkey at the training length", "passkey", "mamba", metric="seq_acc",
              lengths=(64,), outcome="solves", source="Sec. 5 (in-length retrieval)"),
        Claim("Mamba (d_state 16), passkey at 16x", "passkey", "mamba", metric="seq_acc", lengths=(1024,),
              outcome="fails", source="Sec. 4 (state collapse past the training length)"),
        Claim("Mamba (d_state 1), passkey at 16x", "passkey", "mamba@small_state", metric="seq_acc",
              lengths=(1024,), outcome="solves",
              source="Sec. 5 (training length beyond the state's capacity teaches forgetting)"),
    ),
    notes="Claims are outcomes: the paper's numbers are for Mamba-2 language models (130M-1.3B) on 8K-256K contexts.",
)
