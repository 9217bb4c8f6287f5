"""One vocabulary for the computational form ("backend") of every op and layer, and its validation.

Every op or layer that can run more than one way names the ways it has from :data:`FORMS` (the tuple of
its valid forms, in its own ``BACKENDS``) and validates a request with :func:`check_form`, so a wrong name
is the same ValueError everywhere and lists what that op accepts:

    auto       the op's choice for the tensors' device, decided in one place per op and logged once
    kernel     the compiled CPU loop (numba), CPU tensors only (ValueError elsewhere, never a silent swap)
    chunk      chunkwise-parallel torch, any device: the matrix ops' ``chunk_*``, linear_scan's two-level
               scan, selective_scan's checkpointed chunks
    recurrent  token by token with the step fused into few ops (``fused_recurrent_*``): the decode form
    fft        a long convolution through FFTs (the LTI SSMs S4, S4D)
    scan       a log-depth (Hillis–Steele) prefix scan over the whole sequence (``matrix_scan``)
    wavefront  a 2-D grid's anti-diagonals in turn, each batched over its cells (``plstm2d``)
    hierarchical  a 2-D grid's blocks built by log-depth pairwise merges, then the blocks' wavefront (``plstm2d``)
    reference  the specification loop

Earlier spellings stay accepted (:data:`ALIASES`: ``"parallel"`` and ``"chunked"`` were linear_scan's and
selective_scan's names for ``"chunk"``) and are returned as the canonical form.
"""
from __future__ import annotations

from typing import Callable, Mapping

__all__ = ["FORMS", "ALIASES", "check_form", "choose"]

FORMS = ("auto", "kernel", "chunk", "recurrent", "fft", "scan", "wavefront", "hierarchical", "reference")
ALIASES = {"parallel": "chunk", "chunked": "chunk"}


def check_form(form: str, valid: tuple[str, ...], who: str) -> str:
    """``form`` (or an alias of it) -> its canonical name, if ``who`` has it; ValueError listing ``valid`` otherwise."""
    canonical = ALIASES.get(form, form) if isinstance(form, str) else form
    if canonical not in valid:
        raise ValueError(f"{who}: backend must be one of {valid}, got {form!r}")
    return canonical


def choose(form: str, forms: Mapping[str, Callable], who: str) -> Callable:
    """The callable of ``forms`` (form -> op) that ``form`` names, validated by :func:`check_form`."""
    return forms[check_form(form, tuple(forms), who)]
