"""Token mixers, one file per named architecture. Importing this package imports
every module in it, which registers each mixer by name (see registry.py)."""
import importlib
import pkgutil

from rnnlab.layers.base import Mixer, State, no_weight_decay, state_numel
from rnnlab.layers.registry import available_mixers, create_mixer, mixer_info, register_mixer

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "registry") and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Mixer", "State", "available_mixers", "create_mixer", "mixer_info", "register_mixer", "no_weight_decay", "state_numel"]
