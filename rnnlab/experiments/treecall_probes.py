"""Arora, Rathi, Selvam, Csordás, Jurafsky & Potts 2025, "Mechanistic evaluation of Transformers and state space
models": associative treecall (ATR) and causal interventions.

Claims: attention and Mamba both learn ATR (Sec. 5: the same models that succeed at associative recall succeed at
ATR); attention does it with induction — the association is read by a head of its second layer (Sec. 4: the
knockout of that head destroys the answer), while an SSM computes the association in its state (Sec. 4: "only at
the last state"). rnnlab trains 2-layer models (d_model 64) on ATR at the task's defaults (grammar seed 0, T = 64),
then diagnoses each run on 256 test documents (rnnlab diagnose: each layer's state zeroed at 16 positions, each
attention head knocked out at every position); "diag.head_layer" is the layer (0-based) of the head whose knockout hurts the answer most, and
"diag.located_layer" the layer whose state-zeroing does."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment


def spec(quick: bool) -> dict:
    tasks = {"treecall": {"train": {"target": 0.99}}}
    return sweep(quick, ["attention", "mamba"], tasks, steps=1000, full_steps=5000, seeds=2)


EXPERIMENT = Experiment(
    name="treecall_probes",
    title="Associative treecall and where the association is stored (Arora et al. 2025)",
    paper="Arora, Rathi, Selvam, Csordás, Jurafsky & Potts 2025",
    claim="attention and Mamba both learn associative treecall; attention reads the association in its second "
          "layer (an induction head), and an SSM holds it in a single layer's state.",
    spec=spec,
    diagnose={"treecall": {"examples": 256}},
    claims=(
        Claim("attention, ATR accuracy", "treecall", "attention", outcome="solves", source="Sec. 5 (ATR: succeeds)"),
        Claim("Mamba, ATR accuracy", "treecall", "mamba", outcome="solves", source="Sec. 5 (ATR: succeeds)"),
        Claim("attention, the layer whose state (KV cache) zeroed hurts most", "treecall", "attention",
              metric="diag.located_layer", paper=1.0, tolerance=0.25, solved_at=0.5,
              source="Sec. 4 (induction: the second layer reads the association)"),
        Claim("attention, the layer of the head whose knockout (everywhere) hurts most", "treecall", "attention",
              metric="diag.head_layer", paper=1.0, tolerance=0.25, solved_at=0.5,
              source="Sec. 4 (induction: a second-layer head reads the key)"),
        Claim("Mamba, the layer whose state zeroed hurts most", "treecall", "mamba", metric="diag.located_layer",
              paper=1.0, tolerance=0.25, solved_at=0.5,
              source="Sec. 4 (SSMs: the association in a single layer's last state)"),
    ),
    notes="rnnlab's located layers are 0-based: 1 is the second of two layers.",
)
