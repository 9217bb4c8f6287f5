"""Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues" (ICLR 2025).

Claim: a linear RNN whose state transitions have eigenvalues in [0, 1] (Mamba, DeltaNet as published) cannot
solve parity at any length; extending the range to [-1, 1] (Mamba: 2 exp(Δ A) - 1; DeltaNet: β in [0, 2])
lets both solve it; sLSTM (non-linear) and the LSTM solve it, mLSTM (diagonal, positive gates) does not.
Their Table 2: trained on lengths 3-40, tested on 40-256, scaled accuracy (acc - 1/2) / (1 - 1/2) of the
whole word's parity. Deviation: rnnlab supervises every prefix parity (a denser signal for a laptop budget;
the metric is still the final parity, `last_acc`, averaged over test lengths 40, 64, 128, 256). The full size
adds modular arithmetic without brackets (mod 5; Delétang et al. 2023's task, the paper's second column)."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

LENGTHS = (40, 64, 128, 256)
SRC = "Grazzi et al. Table 2"


def spec(quick: bool) -> dict:
    tasks = {"parity": {"task": {"test_lengths": list(LENGTHS)}, "train": {"target": 0.995}}}
    if not quick:
        tasks["modular_arithmetic"] = {"task": {"modulus": 5, "test_lengths": list(LENGTHS)}}
    return sweep(quick, ["lstm", "slstm", "mlstm", "mamba", "mamba@neg", "deltanet", "deltanet@neg"], tasks,
                 steps=1000, full_steps=5000)


def _parity(label, mixer, source=SRC, **kw):
    return Claim(label, "parity", mixer, metric="last_acc", lengths=LENGTHS, chance=0.5, source=source, **kw)


EXPERIMENT = Experiment(
    name="negative_eigenvalues",
    title="Negative eigenvalues unlock parity (Grazzi et al. 2024)",
    paper="Grazzi, Siems, Zela, Franke, Hutter & Pontil 2024, ICLR 2025",
    claim="[0, 1] transitions cannot solve parity, [-1, 1] transitions can (Mamba, DeltaNet); sLSTM and LSTM can.",
    spec=spec,
    shared="formal_languages",
    claims=(
        _parity("LSTM, parity 40-256", "lstm", outcome="solves", source="Delétang et al. 2023, Table 2"),
        _parity("sLSTM, parity 40-256", "slstm", paper=1.0),
        _parity("mLSTM, parity 40-256", "mlstm", outcome="fails"),
        _parity("Mamba [0, 1], parity 40-256", "mamba", paper=0.0),
        _parity("Mamba [-1, 1], parity 40-256", "mamba@neg", paper=1.0),
        _parity("DeltaNet [0, 1], parity 40-256", "deltanet", outcome="fails"),
        _parity("DeltaNet [-1, 1], parity 40-256", "deltanet@neg", outcome="solves"),
        Claim("LSTM, mod arithmetic 40-256 (full size)", "modular_arithmetic", "lstm", lengths=LENGTHS, chance=0.2,
              outcome="solves", source="Delétang et al. 2023, Table 2"),
    ),
    notes="Paper values given as outcomes (solves / fails) are those the paper states in words; numbers are "
          "the table's scaled accuracies where rnnlab quotes them.",
)
