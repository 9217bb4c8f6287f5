"""HF recurrent checkpoints <-> rnnlab SequenceModels.

    model = from_hf(hf_model_or_path)   # a SequenceModel holding the checkpoint's weights (float32)
    hf = to_hf(model, "mamba")           # back to the transformers model of that architecture

An architecture (``Arch``) is three things: how its HF config becomes a ``ModelConfig`` (``config_from_hf``), the
reverse (``config_to_hf``), and one ``Rule`` per tensor (its HF name, its rnnlab name, the layout change between
them, ``{i}`` standing for the layer index). Both directions run through the same rules, so a rule cannot be
right one way and wrong the other; every tensor must be claimed by a rule and every rnnlab parameter filled
(a checkpoint with something rnnlab would silently drop is refused). ``to_hf`` accepts a model only if its
config survives the round trip ``config_from_hf(config_to_hf(config)) == config``: an rnnlab option the HF
architecture has no counterpart for is an error naming the field, never a silent approximation.

A path is read without running any modeling code: its ``config.json`` through ``AutoConfig`` and its
``*.safetensors`` files (pickled ``*.bin`` checkpoints are refused). The architectures are in
``rnnlab/interop/archs.py``; docs/interop.md lists what each maps to and what it leaves out.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from rnnlab.layers.registry import mixer_info
from rnnlab.models.config import MLPS, ModelConfig
from rnnlab.models.model import SequenceModel, SwiGLU

__all__ = ["Rule", "Arch", "register_arch", "from_hf", "to_hf", "hf_architectures"]


@dataclass(frozen=True)
class Rule:
    """rnnlab tensor(s) and HF tensor(s) holding the same numbers: ``hf`` one HF name or several, ``rnnlab`` one rnnlab
    name or several (``{i}`` = layer index). Several HF names into one rnnlab tensor: rows of one fused projection
    (SwiGLU's gate and up, attention's q, k, v); one HF tensor into several rnnlab ones: the reverse (Qwen3.5's
    in_proj_qkv into q_proj, k_proj, v_proj). ``to_rnnlab(*hf_tensors)`` and ``to_hf(*rnnlab_tensors)`` change the
    layout, each returning a tensor or a tuple (one per name on the other side); by default several tensors
    concatenate their rows and one tensor splits into equal parts."""

    hf: str | tuple[str, ...]
    rnnlab: str | tuple[str, ...]
    to_rnnlab: Callable[..., Tensor | tuple[Tensor, ...]] | None = None
    to_hf: Callable[..., Tensor | tuple[Tensor, ...]] | None = None

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,) if isinstance(self.hf, str) else tuple(self.hf)

    @property
    def rnnlab_names(self) -> tuple[str, ...]:
        return (self.rnnlab,) if isinstance(self.rnnlab, str) else tuple(self.rnnlab)

    def names(self, side: str) -> tuple[str, ...]:
        return self.hf_names if side == "hf" else self.rnnlab_names

    def convert(self, src: str, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors of side ``src`` ("hf" or "rnnlab"), in its name order -> the other side's, in its name order."""
        fn = self.to_rnnlab if src == "hf" else self.to_hf
        n_out = len(self.names("rnnlab" if src == "hf" else "hf"))
        if fn is not None:
            out = fn(*tensors)
        elif len(tensors) > 1:
            out = torch.cat(tensors, 0)
        else:
            out = tensors[0] if n_out == 1 else tensors[0].chunk(n_out, 0)
        return out if isinstance(out, tuple) else (out,)


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(name).replace(r"\{i\}", r"(\d+)") + "$")


@dataclass(frozen=True)
class Arch:
    """An HF architecture rnnlab maps: its model types, causal-LM class name, config maps and tensor rules.

    ``rules(hf_config)`` lists the rules for that config (optional tensors such as biases appear only when
    present); ``fix_hf_state(hf_model, state)`` undoes what an HF model does to its own weights in place
    (RWKV's inference rescaling), given the live model. ``scales_embedding``: the HF model multiplies the embedding
    lookup itself (RecurrentGemma's normalizer), so ``to_hf`` checks rnnlab's scale through the config instead of
    folding it into the exported embedding. ``read_hf_state(state)`` brings any HF state (a checkpoint's or a live
    model's) to the one layout the rules read (Qwen3-Next's experts: one tensor per expert on disk and in 4.x models,
    stacked in 5.x models) and drops what the HF causal LM itself ignores on load."""

    name: str
    model_types: tuple[str, ...]
    hf_class: str
    config_from_hf: Callable[[object], ModelConfig]
    config_to_hf: Callable[[ModelConfig], object]
    rules: Callable[[object], list[Rule]]
    fix_hf_state: Callable[[object, dict], dict] | None = None
    scales_embedding: bool = False
    read_hf_state: Callable[[dict], dict] | None = None


_ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    for t in arch.model_types:
        _ARCHS[t] = arch
    return arch


def hf_architectures() -> dict[str, Arch]:
    """model_type -> Arch for every architecture from_hf reads."""
    import rnnlab.interop.archs  # noqa: F401  (registers them)

    return dict(_ARCHS)


def _arch_of(model_type: str) -> Arch:
    from rnnlab.interop.archs import NOT_MAPPED

    archs = hf_architectures()
    if model_type not in archs:
        why = f" ({NOT_MAPPED[model_type]})" if model_type in NOT_MAPPED else ""
        raise ValueError(f"from_hf: no mapping for HF model_type {model_type!r}{why}; supported: {', '.join(sorted(archs))}")
    return archs[model_type]


def _read_path(path: Path) -> tuple[object, dict[str, Tensor]]:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    if not path.is_dir() or not (path / "config.json").exists():
        raise ValueError(f"from_hf: {path} is not a local HF checkpoint folder (config.json + *.safetensors)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in path.iterdir())
        raise ValueError(f"from_hf: {path} holds no *.safetensors weights (found {found}); pickled checkpoints are not read")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return AutoConfig.from_pretrained(str(path)), state


def _rename(state: dict[str, Tensor], rules: list[Rule], src: str) -> dict[str, Tensor]:
    """Map every tensor of ``state`` from side ``src`` ("hf" or "rnnlab") to the other; unclaimed names are an error."""
    dst = "rnnlab" if src == "hf" else "hf"
    out: dict[str, Tensor] = {}
    unclaimed = []
    parts: dict[tuple[int, str | None], dict[int, Tensor]] = {}  # (rule, layer) -> {part: tensor}, side src
    matchers = [(n, j, _pattern(name)) for n, rule in enumerate(rules) for j, name in enumerate(rule.names(src))]
    for name, t in state.items():
        for n, j, pat in matchers:
            m = pat.match(name)
            if m:
                parts.setdefault((n, m.group(1) if m.groups() else None), {})[j] = t
                break
        else:
            unclaimed.append(name)
    if unclaimed:
        raise ValueError(f"no {dst} counterpart for tensor(s) {unclaimed[:6]}{' ...' if len(unclaimed) > 6 else ''}")
    for (n, layer), got in parts.items():
        rule = rules[n]
        if len(got) != len(rule.names(src)):
            raise ValueError(f"{rule.names(dst)}: the {src} side has {len(got)} of its {len(rule.names(src))} parts {rule.names(src)}")
        for name, piece in zip(rule.names(dst), rule.convert(src, *(got[j] for j in range(len(got)))), strict=True):
            out[name.replace("{i}", layer) if layer is not None else name] = piece
    return out


def from_hf(model_or_path, dtype: torch.dtype = torch.float32) -> SequenceModel:
    """An HF causal LM (a transformers model, or the path of a local checkpoint folder) -> rnnlab SequenceModel.

    Supported model types: ``hf_architectures()`` (Mamba, Falcon Mamba, Mamba-2, Bamba, RWKV-4, xLSTM, RecurrentGemma,
    Qwen3.5's text model, Qwen3-Next). The model runs through rnnlab's own forms, state and boundary handling; its logits equal
    the HF model's (tests/interop)."""
    if isinstance(model_or_path, (str, Path)):
        hf_config, state = _read_path(Path(model_or_path))
        live = None
    else:
        hf_config, live = model_or_path.config, model_or_path
        state = {k: v.detach() for k, v in model_or_path.state_dict().items()}
    arch = _arch_of(hf_config.model_type)
    if live is not None and arch.fix_hf_state is not None:
        state = arch.fix_hf_state(live, state)
    if arch.read_hf_state is not None:
        state = arch.read_hf_state(state)
    config = arch.config_from_hf(hf_config)
    rules = arch.rules(hf_config)
    if config.tie_embeddings:  # the tied head is the embedding: HF may list it under the head's name too
        head = [_pattern(h) for r in rules if r.rnnlab == "head.weight" for h in r.hf_names]
        state = {k: v for k, v in state.items() if not any(p.match(k) for p in head)}
        rules = [r for r in rules if r.rnnlab != "head.weight"]
    tensors = _rename(state, rules, "hf")
    model = SequenceModel(config)
    expected = set(model.state_dict())
    if config.tie_embeddings:
        expected.discard("head.weight")
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(f"from_hf({hf_config.model_type}): the checkpoint does not fill the rnnlab model: missing {missing[:6]}, "
                         f"unexpected {extra[:6]}")
    model.load_state_dict(tensors, strict=not config.tie_embeddings)
    return model.to(dtype).eval()


# options that choose an initialization or a kernel, not the function a layer computes: ignored when checking
# that an rnnlab model has an HF equivalent (a trained model's dt_min says nothing about its weights)
INIT_OR_KERNEL_OPTIONS = frozenset({"dt_min", "dt_max", "dt_init_floor", "A_init_range", "zero_init", "init", "layer_id",
                                    "num_layers", "backend", "chunk_size", "a_min", "a_max"})
# ModelConfig fields that do not change the function of a token LM in eval mode, or that to_hf accounts for
# (embedding_init: its scale is folded into the exported embedding)
_NOT_FUNCTIONAL = ("dropout", "embedding_init", "pool", "num_classes", "out_dim", "input_dim")


def _complete(name: str, kwargs: dict) -> dict:
    """A mixer's options with every default filled in, initialization and kernel choices left out."""
    info = mixer_info(name)
    params = inspect.signature(info.cls.__init__).parameters
    full = {p: v.default for p, v in params.items() if v.default is not inspect.Parameter.empty}
    full.update(info.defaults)
    full.update(kwargs)
    return {k: v for k, v in full.items() if k not in INIT_OR_KERNEL_OPTIONS}


def _functional(mc: ModelConfig) -> dict:
    """What a ModelConfig computes: mixers per layer with complete options, norms, sizes, heads."""
    d = {k: v for k, v in mc.to_dict().items() if k not in _NOT_FUNCTIONAL}
    d["embed_scale"] = mc.embedding_scale()  # what embedding_init and embed_scale compute together
    d["mixer"] = mc.layer_mixers()
    d["mixer_kwargs"] = [_complete(m, k) for m, k in zip(mc.layer_mixers(), mc.layer_kwargs())]
    d["mlp"] = mlps = mc.layer_mlps()
    d["mlp_kwargs"] = [_complete(m, k) if m not in MLPS else {} for m, k in zip(mlps, mc.layer_mlp_kwargs())]
    for key in ("mlp_ratio", "mixer_every", "mlp_every"):  # the rules are in the per-layer lists
        d.pop(key)
    if any(m in ("swiglu", "geglu") for m in mlps):  # what the ratio computes: the hidden size (ratios rounding to the same size are one function)
        d["mlp_hidden"] = SwiGLU.hidden_size(mc.d_model, mc.mlp_ratio)
    return d


def to_hf(model: SequenceModel, model_type: str):
    """rnnlab SequenceModel -> the transformers causal LM of ``model_type`` (same weights, copied), when the
    model computes what that architecture can express; a ValueError names the fields it cannot.

    Initialization and kernel options do not matter (INIT_OR_KERNEL_OPTIONS). rnnlab's embedding scale (the lookup
    times sqrt(d_model) for "unit") is folded into the exported embedding when the head is not tied to it, except for
    architectures that scale the lookup themselves (``Arch.scales_embedding``: RecurrentGemma), where it must equal
    theirs (ModelConfig ``embed_scale``)."""
    import transformers

    arch = _arch_of(model_type)
    mc = model.config
    if mc.head != "lm" or mc.vocab_size is None:
        raise ValueError(f'to_hf: needs a token language model (head="lm"), got head={mc.head!r}')
    if model.embed_scale != 1.0 and mc.tie_embeddings and not arch.scales_embedding:
        raise ValueError(f"to_hf: the embedding is scaled by {model.embed_scale:.4g} (embedding_init={mc.embedding_init!r}) and tied "
                         f"to the head; {arch.name} has an unscaled embedding, so the two cannot both be exported")
    hf_config = arch.config_to_hf(mc)
    want, back = _functional(mc), _functional(arch.config_from_hf(hf_config))
    if not arch.scales_embedding:  # folded into the exported embedding below
        want.pop("embed_scale"), back.pop("embed_scale")
    if want != back:
        diff = {k: v for k, v in want.items() if back.get(k) != v}
        raise ValueError(f"to_hf: this rnnlab model has no exact {arch.name} equivalent; differing field(s): {diff}")
    rules = arch.rules(hf_config)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    if not arch.scales_embedding:
        state["embed.weight"] = state["embed.weight"] * model.embed_scale
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
        rules = [r for r in rules if r.rnnlab != "head.weight"]
    tensors = _rename(state, rules, "rnnlab")
    hf = getattr(transformers, arch.hf_class)(hf_config)
    result = hf.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight", "head.weight"} if model.config.tie_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(f"to_hf({model_type}): missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()
