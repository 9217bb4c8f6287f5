"""Reproductions of the source papers' claims, one file per paper, each defining ``EXPERIMENT``
(rnnlab.train.reproduce.Experiment): the sweep that measures the claims and the paper's numbers.
Run with ``rnnlab reproduce <name>``; the results and verdicts are collected in docs/reproductions.md."""
