"""One policy for checking option values against their annotations (mixer ``__init__`` options, the
train config's fields): the annotated type (no bool where an int or float is meant, an int is a
float), ints >= 1 unless named non-negative, floats finite. Errors are ValueErrors naming the
option, what was expected and what was given."""
from __future__ import annotations

import argparse
import math
import types
import typing

__all__ = ["allowed_types", "check_option", "csv_list", "positive_int", "OptionError"]


class OptionError(argparse.ArgumentTypeError, ValueError):
    """A bad option value: a ValueError to library callers; argparse prints its message as the usage error."""


def allowed_types(annotation) -> tuple:
    """The runtime types an annotation admits: ``int | None`` -> (int, NoneType), ``list[str]`` -> (list,)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for a in typing.get_args(annotation) for t in allowed_types(a))
    origin = typing.get_origin(annotation)
    return (origin,) if origin is not None else (annotation,)


def _admits(allowed: tuple, value) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never a size or a rate here
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return any(t is typing.Any or (isinstance(t, type) and isinstance(value, t)) for t in allowed)


def check_option(where: str, key: str, annotation, value, min_int: int | None = 1) -> None:
    """ValueError unless ``value`` fits ``annotation``; ints must be >= ``min_int`` (None: any int).
    ``where`` prefixes the option's name in the message ("train." or "mixer 'gla': ")."""
    allowed = allowed_types(annotation)
    if not _admits(allowed, value):
        names = " or ".join(getattr(t, "__name__", str(t)).replace("NoneType", "None") for t in allowed)
        raise ValueError(f"{where}{key} must be {names}, got {value!r} ({type(value).__name__})")
    counts = int in allowed  # a float option given as an int (grad_clip=0) is a number, not a count
    if counts and min_int is not None and isinstance(value, int) and not isinstance(value, bool) and value < min_int:
        raise ValueError(f"{where}{key} must be an int >= {min_int}, got {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}{key} must be a finite number, got {value}")


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count or size: an int >= 1 (argparse turns the ValueError into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise OptionError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise OptionError(f"expected an int >= 1, got {value}")
    return value


def csv_list(text: str | None, cast=str, what: str = "value") -> list | None:
    """``"512, 2048"`` -> [512, 2048] with ``cast=positive_int``; None stays None. A bad item is a ValueError
    naming the item and what was expected."""
    if text is None:
        return None
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            out.append(cast(item))
        except ValueError as e:
            raise OptionError(f"{what}: {e}" if cast is positive_int else f"{what}: bad item {item!r} ({e})") from None
    if not out:
        raise OptionError(f"{what}: expected a comma-separated list, got {text!r}")
    return out
