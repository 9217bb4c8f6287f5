"""Causal probes: interventions on a layer's state, or on an attention head's output, at a position, and their effect
on the answer (the interventions of the mechanistic evaluation of Transformers and SSMs on associative recall and
treecall, Arora et al. 2025, "Mechanistic evaluation of Transformers and state space models": knock out a component,
or patch in its value from another input, and see where the key is stored).

A state intervention at position p splits the forward there, which the mixer contract makes exact (split anywhere ==
whole): run tokens [0, p), change layer i's part of the returned state, continue on [p, T) from it. So it works for
every registered mixer, attention included (its state is the KV cache):

    "none"   the state as returned (the split itself: equals the unmodified model, tested)
    "zero"   every floating-point tensor of the layer's state zeroed, and a KV cache (attention's k / v, growing along
             dim 2) emptied: the layer forgets the prefix; integer positions (``pos``) are kept
    "patch"  the layer's whole state replaced by the state the same model reached on ``source`` after p tokens
             ("replace with another input's state"; the source's row b goes into row b)

The layer's state is its mixer's and its MLP's (``<layer>.mixer.*``, ``<layer>.mlp.*``). Outputs before p are the
clean ones; the state after p tokens determines every output from position p on.

A head knockout (``knockout_heads``) zeroes head h's output at the given positions before the mixer's output projection
``out``, so that head's contribution to the layer's output is removed; mixers whose heads meet there as (h d)
channels (``attention``, ``linear_attention``, ...: ``num_heads``, ``head_dim`` and an ``out`` nn.Linear) take it.

Effects are measured on the scored positions of an lm task (targets != IGNORE_INDEX): the mean change of the
target's log-probability, and the accuracy (argmax == target) with and without the intervention.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.diagnostics.state_stats import states_along
from rnnlab.layers.base import State
from rnnlab.tasks.metrics import IGNORE_INDEX

__all__ = ["MODES", "intervene", "locate", "knockout_heads", "locate_heads", "answer_effect"]

MODES = ("none", "zero", "patch")


def _layer_keys(state: State, layer: int) -> list[str]:
    return [k for k in state if k.split(".", 1)[0] == str(layer)]


def _edit(state: State, layer: int, mode: str, source: State | None, grows: set[str]) -> State:
    """The model state with layer ``layer``'s part changed by ``mode`` (module docstring)."""
    new = dict(state)
    for k in _layer_keys(state, layer):
        t = state[k]
        if mode == "patch":
            new[k] = source[k]
        elif mode == "zero" and (t.is_floating_point() or t.is_complex()):
            new[k] = t[:, :, :0] if k in grows else torch.zeros_like(t)
    return new


def _growing_keys(model) -> set[str]:
    """KV caches: state keys that grow with the tokens along dim 2 (size 0 there in init_state: attention's k / v in
    rnnlab.layers.kv_cache's (B, H, L, dh) layout), which "zero" empties. Tensors growing elsewhere (log-linear
    attention's levels) are zeroed like any state: zeros hold nothing."""
    zero = model.init_state(1, "meta")
    return {k for k, t in zero.items() if t.dim() > 2 and t.shape[2] == 0}


def _check(model, inputs: Tensor, layer: int, position: int, mode: str, source: Tensor | None) -> None:
    if model.config.head != "lm":
        raise ValueError(f"probes need a per-token head (lm), got head={model.config.head!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer must be in [0, {len(model.blocks)}), got {layer}")
    if not 0 <= position < inputs.shape[1]:
        raise ValueError(f"position must be in [0, T = {inputs.shape[1]}), got {position}")
    if (mode == "patch") != (source is not None):
        raise ValueError('mode "patch" needs source inputs (and only it takes them)')
    if source is not None and (source.shape[0] != inputs.shape[0] or source.shape[1] < position):
        raise ValueError(f"source must be (B = {inputs.shape[0]}, >= {position} tokens), got {tuple(source.shape)}")


@torch.no_grad()
def intervene(model, inputs: Tensor, layer: int, position: int, mode: str = "zero", source: Tensor | None = None) -> Tensor:
    """inputs (B, T) -> outputs (B, T, V) of the model with layer ``layer``'s state changed by ``mode`` after
    ``position`` tokens (module docstring); ``source`` (B, >= position): the input whose state "patch" puts in."""
    _check(model, inputs, layer, position, mode, source)
    (_, head, clean), = states_along(model, inputs, [position])
    src = None
    if source is not None:
        (_, _, src), = states_along(model, source, [position])
    with _evaluating(model):
        return _continue(model, inputs, position, layer, mode, clean, src, _growing_keys(model), head)


@contextmanager
def _evaluating(model):
    """model.eval() inside the block, its training flag restored after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _continue(model, inputs, position, layer, mode, state, src, grows, head: Tensor | None) -> Tensor:
    """The outputs of the whole sequence: ``head`` (the clean outputs of [0, position), None for position 0) and those
    of [position, T) continued from the edited state."""
    tail, _ = model(inputs[:, position:], _edit(state, layer, mode, src, grows))
    return tail if head is None else torch.cat([head, tail], 1)


def answer_effect(outputs: Tensor, targets: Tensor) -> tuple[float, float]:
    """outputs (B, T, V), targets (B, T) -> (mean log-probability of the target, accuracy) over scored positions."""
    scored = targets != IGNORE_INDEX
    if not bool(scored.any()):
        raise ValueError("targets score no position (all IGNORE_INDEX)")
    logp = F.log_softmax(outputs.float(), -1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    return float(logp[scored].mean()), float((outputs.argmax(-1) == targets)[scored].float().mean())


@torch.no_grad()
def locate(model, inputs: Tensor, targets: Tensor, positions: list[int] | None = None, layers: list[int] | None = None,
           mode: str = "zero", source: Tensor | None = None) -> dict:
    """Sweep layers x positions: inputs, targets (B, T) -> {"positions", "layers", "clean": {"logp", "acc"},
    "delta_logp" and "acc": [layer][position] after the intervention, "located": the (layer, position) whose
    intervention lowers the target's log-probability most}. ``source``: for mode "patch" (module docstring)."""
    T = inputs.shape[1]
    positions = list(range(T)) if positions is None else sorted(positions)
    layers = list(range(len(model.blocks))) if layers is None else list(layers)
    for i in layers:
        for p in positions:
            _check(model, inputs, i, p, mode, source)
    with _evaluating(model):
        return _locate(model, inputs, targets, positions, layers, mode, source)


def _locate(model, inputs, targets, positions, layers, mode, source) -> dict:
    grows = _growing_keys(model)
    clean = answer_effect(model(inputs)[0], targets)
    srcs = {p: s for p, _, s in states_along(model, source, positions)} if source is not None else {}
    delta = [[0.0] * len(positions) for _ in layers]
    acc = [[0.0] * len(positions) for _ in layers]
    outs = []
    for j, (p, out, state) in enumerate(states_along(model, inputs, positions)):
        if out is not None:
            outs.append(out)
        head = torch.cat(outs, 1) if outs else None
        for a, i in enumerate(layers):
            lp, ac = answer_effect(_continue(model, inputs, p, i, mode, state, srcs.get(p), grows, head), targets)
            delta[a][j], acc[a][j] = lp - clean[0], ac
    a, j = min(((a, j) for a in range(len(layers)) for j in range(len(positions))), key=lambda aj: delta[aj[0]][aj[1]])
    return {"mode": mode, "positions": positions, "layers": layers, "clean": {"logp": clean[0], "acc": clean[1]},
            "delta_logp": delta, "acc": acc,
            "located": {"layer": layers[a], "position": positions[j], "delta_logp": delta[a][j], "acc": acc[a][j]}}


def _out_proj(mixer) -> nn.Linear:
    out, h, d = getattr(mixer, "out", None), getattr(mixer, "num_heads", None), getattr(mixer, "head_dim", None)
    if not isinstance(out, nn.Linear) or not h or not d or out.in_features != h * d:
        raise ValueError(f"{type(mixer).__name__} has no heads meeting at an output projection (num_heads, head_dim and "
                         f"an `out` nn.Linear over (h d) channels); head knockout works on attention-like mixers")
    return out


@contextmanager
def knockout_heads(model, layer: int, heads: list[int], positions: list[int] | None = None):
    """Inside the block, head h (each of ``heads``) of layer ``layer``'s mixer outputs zeros at ``positions`` (None:
    every position) of each call: its channels are zeroed in the input of the mixer's output projection."""
    mixer = model.blocks[layer].mixer
    out = _out_proj(mixer)
    bad = [h for h in heads if not 0 <= h < mixer.num_heads]
    if bad:
        raise ValueError(f"heads {bad} out of range: layer {layer} has {mixer.num_heads}")
    d = mixer.head_dim

    def hook(_, args):
        o = args[0].clone()
        where = slice(None) if positions is None else [p for p in positions if p < o.shape[1]]
        for h in heads:
            o[:, where, h * d:(h + 1) * d] = 0
        return (o,) + args[1:]

    handle = out.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def locate_heads(model, inputs: Tensor, targets: Tensor, positions: list[int] | None = None) -> dict:
    """Knock out each head of each layer with heads in turn (at ``positions``, None: all): {"heads": [[layer, head]...],
    "delta_logp", "acc" per head, "clean", "located": the head whose knockout lowers the target's log-probability most};
    {"heads": []} for a model without such layers."""
    with _evaluating(model):
        return _locate_heads(model, inputs, targets, positions)


def _locate_heads(model, inputs, targets, positions) -> dict:
    clean = answer_effect(model(inputs)[0], targets)
    heads, delta, acc = [], [], []
    for i, block in enumerate(model.blocks):
        try:
            _out_proj(block.mixer)
        except ValueError:
            continue
        for h in range(block.mixer.num_heads):
            with knockout_heads(model, i, [h], positions):
                lp, ac = answer_effect(model(inputs)[0], targets)
            heads.append([i, h])
            delta.append(lp - clean[0])
            acc.append(ac)
    if not heads:
        return {"heads": []}
    k = min(range(len(heads)), key=delta.__getitem__)
    return {"heads": heads, "delta_logp": delta, "acc": acc, "clean": {"logp": clean[0], "acc": clean[1]},
            "located": {"layer": heads[k][0], "head": heads[k][1], "delta_logp": delta[k], "acc": acc[k]}}
