"""Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (NeurIPS 2024), Sec. 4.1 and Fig. 4: formal
languages (Delétang et al. 2023's tasks), trained on short words and tested on longer ones.

Claims: sLSTM (exponential gating, memory mixing) solves parity and the other regular tasks, as the LSTM does;
mLSTM (no memory mixing, positive gates) and Mamba fail parity; a transformer (Llama) does not extrapolate.
Scaled accuracy as the paper: (acc - chance) / (1 - chance), on test lengths 40-256 after training on 3-40.
rnnlab's deviation: every prefix's parity is supervised (the metric is the final one, `last_acc`); the full
size adds modular arithmetic without brackets. The negative-eigenvalue reproduction runs the same parity
setting for Mamba and DeltaNet with both eigenvalue ranges."""
from rnnlab.experiments._common import sweep
from rnnlab.train.reproduce import Claim, Experiment

LENGTHS = (40, 64, 128, 256)


def spec(quick: bool) -> dict:
    tasks = {"parity": {"task": {"test_lengths": list(LENGTHS)}, "train": {"target": 0.995}}}
    if not quick:
        tasks["modular_arithmetic"] = {"task": {"modulus": 5, "test_lengths": list(LENGTHS)}}
    return sweep(quick, ["attention", "lstm", "slstm", "mlstm", "mamba"], tasks, steps=1000, full_steps=5000)


def _parity(label, mixer, **kw):
    return Claim(label, "parity", mixer, metric="last_acc", lengths=LENGTHS, chance=0.5, source="xLSTM Fig. 4", **kw)


EXPERIMENT = Experiment(
    name="xlstm_formal",
    title="Formal languages: sLSTM vs mLSTM, LSTM, Mamba and attention (xLSTM, Beck et al. 2024)",
    paper="Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter 2024",
    claim="state tracking needs memory mixing or negative/non-linear transitions: sLSTM and LSTM solve parity, "
          "mLSTM, Mamba and Llama do not extrapolate.",
    spec=spec,
    shared="formal_languages",
    claims=(
        _parity("sLSTM, parity 40-256", "slstm", paper=1.0),
        _parity("LSTM, parity 40-256", "lstm", paper=1.0),
        _parity("mLSTM, parity 40-256", "mlstm", outcome="fails"),
        _parity("Mamba, parity 40-256", "mamba", outcome="fails"),
        _parity("Llama-style attention, parity 40-256", "attention", outcome="fails"),
    ),
)
