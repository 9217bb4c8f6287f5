"""HuggingFace transformers interoperability (the ``hf`` extra: ``pip install 'rnnlab[hf]'``).

Two paths (docs/interop.md):
- rnnlab models as transformers models: ``RnnlabForCausalLM.from_rnnlab(model)``, ``save_pretrained``,
  ``AutoModelForCausalLM.from_pretrained(path)`` (importing this package registers "rnnlab"), ``generate``.
- HF recurrent checkpoints in rnnlab: ``from_hf(model_or_path) -> SequenceModel`` and back with ``to_hf``.

``import rnnlab`` never imports this package, so transformers stays optional.
"""
from __future__ import annotations

import importlib.util

if importlib.util.find_spec("transformers") is None:  # pragma: no cover - depends on the environment
    raise ImportError("rnnlab.interop needs HF transformers: pip install 'rnnlab[hf]'")

from rnnlab.interop.archs import layer_from_hf  # noqa: E402
from rnnlab.interop.convert import from_hf, hf_architectures, to_hf  # noqa: E402
from rnnlab.interop.hf import RnnlabCache, RnnlabCausalLMOutput, RnnlabConfig, RnnlabForCausalLM, register  # noqa: E402

register()

__all__ = ["from_hf", "to_hf", "hf_architectures", "layer_from_hf", "RnnlabConfig", "RnnlabCache", "RnnlabForCausalLM", "RnnlabCausalLMOutput", "register"]
