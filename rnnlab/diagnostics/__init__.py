"""Diagnostics that read a model through the state contract: per-layer state statistics against position
(``state_stats``) and causal probes that knock out or patch a layer's state, or an attention head, at a position
(``probes``). Pure functions of (model, inputs); ``rnnlab diagnose`` (rnnlab/train/diagnose.py) runs them on a run."""
from rnnlab.diagnostics.probes import intervene, knockout_heads, locate, locate_heads
from rnnlab.diagnostics.state_stats import layer_states, state_stats, states_along

__all__ = ["state_stats", "states_along", "layer_states", "intervene", "locate", "knockout_heads", "locate_heads"]
