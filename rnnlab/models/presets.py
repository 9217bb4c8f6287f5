"""Model presets as functions (torchtune's llama3_8b()): hybrids written as data, from registered mixers.

    titans_mal(...)   Titans' memory as a layer (MAL, Behrouz et al. 2024, §4.3): each pair of layers is the neural
                      memory (`titans`) followed by sliding-window attention (`sliding_attention`)
    titans_mag(...)   Titans' memory as a gate (MAG, §4.2): every layer the `titans_mag` mixer
"""
from __future__ import annotations

from rnnlab.models.config import ModelConfig

__all__ = ["titans_mal", "titans_mag"]


def titans_mal(d_model: int = 256, n_layers: int = 4, vocab_size: int | None = 256, window: int = 64, num_heads: int = 4,
               memory_depth: int = 2, chunk_size: int = 16, **config) -> ModelConfig:
    """MAL: ``n_layers`` (even) layers alternating the neural memory and sliding-window attention (window ``window``).
    The paper's persistent-memory tokens before the memory layer are not included. ``config``: other ModelConfig fields."""
    if n_layers < 2 or n_layers % 2:
        raise ValueError(f"titans_mal needs an even n_layers >= 2 (memory, then attention), got {n_layers}")
    memory = {"num_heads": num_heads, "memory_depth": memory_depth, "chunk_size": chunk_size}
    attention = {"num_heads": num_heads, "window": window}
    return ModelConfig(mixer=["titans", "sliding_attention"] * (n_layers // 2), mixer_kwargs=[memory, attention] * (n_layers // 2),
                       d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, **config)


def titans_mag(d_model: int = 256, n_layers: int = 4, vocab_size: int | None = 256, window: int = 64, num_heads: int = 4,
               memory_depth: int = 2, chunk_size: int = 16, **config) -> ModelConfig:
    """MAG: ``n_layers`` layers of the `titans_mag` mixer (sliding-window attention gated by the neural memory)."""
    kw = {"num_heads": num_heads, "window": window, "memory_depth": memory_depth, "chunk_size": chunk_size}
    return ModelConfig(mixer="titans_mag", mixer_kwargs=kw, d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, **config)
