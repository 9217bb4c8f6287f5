"""Name -> mixer class registry: the one place a mixer becomes visible.

Registering is all a new mixer needs to be picked up by the conformance suite,
the CLI, the model config and the benchmarks.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

from rnnlab.options import check_option

__all__ = ["register_mixer", "create_mixer", "available_mixers", "mixer_info", "MixerInfo", "check_mixer_options"]


@dataclass(frozen=True)
class MixerInfo:
    """What the registry knows about a mixer name.

    cls: the Mixer subclass.  family: one of FAMILIES.  defaults: kwargs this
    name implies (e.g. ``sliding_attention`` = ``attention`` with a window).
    small: kwargs for a small instance (conformance tests, ``--quick`` benches),
    applied on top of ``defaults`` only by those tools, never by create_mixer.
    """

    name: str
    cls: type
    family: str
    defaults: dict = field(default_factory=dict)
    small: dict = field(default_factory=dict)


FAMILIES = ("attention", "nonlinear", "diagonal", "matrix", "delta", "ttt", "expressive", "other")  # expressive: non-diagonal input-dependent transitions for state tracking
_REGISTRY: dict[str, MixerInfo] = {}


def register_mixer(name: str, *, family: str, defaults: dict | None = None, small: dict | None = None):
    """Class decorator: ``@register_mixer("gla", family="matrix")``. Stack it to
    register one class under several names with different ``defaults``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name].cls.__name__}")
        _REGISTRY[name] = MixerInfo(name, cls, family, dict(defaults or {}), dict(small or {}))
        return cls

    return deco


def _ensure_loaded() -> None:
    import rnnlab.layers  # noqa: F401  (importing the package registers every layer file)


def available_mixers() -> list[str]:
    """Sorted names of all registered mixers."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def mixer_info(name: str) -> MixerInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown mixer {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _accepted_kwargs(cls) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "d_model") and params[p].kind is not inspect.Parameter.VAR_KEYWORD]


def create_mixer(name: str, d_model: int, **kwargs: Any):
    """Build a registered mixer: ``create_mixer("gated_deltanet", d_model=256, num_heads=4)``.

    Raises ValueError naming the valid choices for an unknown name or keyword, or what a bad value should be.
    """
    check_mixer_options(name, d_model, kwargs)
    info = mixer_info(name)
    return info.cls(d_model, **{**info.defaults, **kwargs})


NON_NEGATIVE = ("layer_id", "layer_idx", "persistent_tokens")  # int options that may be 0; every other int option is a size or count >= 1


def check_mixer_options(name: str, d_model: int, kwargs: dict) -> None:
    """What ``create_mixer`` would reject, without building anything: an unknown name or option, or a value
    that does not fit the option's annotation in ``__init__`` (rnnlab.options: types, ints >= 1, finite)."""
    check_options(mixer_info(name).cls, f"mixer {name!r}", d_model, kwargs)


def check_options(cls: type, what: str, d_model: int, kwargs: dict) -> None:
    """``cls(d_model, **kwargs)``'s options against its ``__init__``: unknown names, values off their annotations."""
    valid = _accepted_kwargs(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {what}; valid options: {', '.join(valid) or '(none)'}")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in {"d_model": d_model, **kwargs}.items():
        if key in hints:
            check_option(f"{what}: ", key, hints[key], value, min_int=0 if key in NON_NEGATIVE else 1)
