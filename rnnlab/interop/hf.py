"""rnnlab models as transformers models: config, cache, causal LM, Auto registration.

    from rnnlab.interop import RnnlabForCausalLM, register
    hf = RnnlabForCausalLM.from_rnnlab(model)        # wraps a SequenceModel (shares its weights)
    hf.save_pretrained(path)                         # config.json + model.safetensors
    register()                                       # AutoConfig / AutoModelForCausalLM know "rnnlab"
    hf = AutoModelForCausalLM.from_pretrained(path)  # no code execution: the classes are this module's
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=20)

``RnnlabConfig`` holds the ``ModelConfig`` as a dict (``rnnlab_config``); ``RnnlabForCausalLM`` holds the
``SequenceModel`` as ``self.model``, so its parameter names are the rnnlab checkpoint's with a ``model.`` prefix.
``RnnlabCache`` holds the model's state dict (every layer's recurrent state, conv tails and KV cache under
``"<layer>.mixer.<key>"``, batch in dim 0) and how many input columns it has consumed.

Across transformers versions: 4.x passes the cache as ``past_key_values`` and reads it back from the
output's ``past_key_values``; 5.x calls both ``cache``. The forward accepts either name and the output carries
both. ``prepare_inputs_for_generation`` is this class's own (it cuts ``input_ids`` to the columns the cache has
not seen, from the cache's own count), so nothing depends on how a version slices inputs, builds position ids
or 4-D masks. Left padding is rnnlab's: ``SequenceModel.forward(..., attention_mask=)`` runs each row's real
tokens only, so a padded row gives what it gives alone. A recurrent state cannot be rolled back: ``crop``
(assisted / speculative decoding) raises.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from rnnlab.layers.registry import create_mixer
from rnnlab.models.config import ModelConfig
from rnnlab.models.model import SequenceModel

__all__ = ["RnnlabConfig", "RnnlabCache", "RnnlabForCausalLM", "RnnlabCausalLMOutput", "register", "TRANSFORMERS_MAJOR"]

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


class RnnlabConfig(PretrainedConfig):
    """transformers config wrapping a ``ModelConfig`` (``rnnlab_config``, its ``to_dict()``).

    ``vocab_size``, ``hidden_size`` and ``num_hidden_layers`` mirror it for tools that read them;
    ``tie_word_embeddings`` is the ModelConfig's ``tie_embeddings``."""

    model_type = "rnnlab"

    def __init__(self, rnnlab_config: dict | None = None, use_cache: bool = True, **kwargs):
        if rnnlab_config is not None:
            if isinstance(rnnlab_config, ModelConfig):
                rnnlab_config = rnnlab_config.to_dict()
            mc = ModelConfig.from_dict(dict(rnnlab_config))  # validated here: a bad config.json fails on load
            if mc.head != "lm" or mc.vocab_size is None:
                raise ValueError(f'RnnlabConfig needs a ModelConfig with head="lm" and token inputs, got head={mc.head!r}')
            rnnlab_config = mc.to_dict()
            kwargs.setdefault("vocab_size", mc.vocab_size)
            kwargs.setdefault("hidden_size", mc.d_model)
            kwargs.setdefault("num_hidden_layers", mc.n_layers)
            kwargs["tie_word_embeddings"] = mc.tie_embeddings
        self.rnnlab_config = rnnlab_config
        self.use_cache = use_cache
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        if self.rnnlab_config is None:
            raise ValueError("RnnlabConfig has no rnnlab_config (a ModelConfig dict): build it with RnnlabConfig(model_config)")
        return ModelConfig.from_dict(dict(self.rnnlab_config))


class RnnlabCache(Cache):
    """transformers cache holding an rnnlab model state (dict, batch in dim 0) and the input columns consumed.

    The state is replaced, not mutated, by each forward. Beam search reorders it (``reorder_cache``);
    contrastive search and num_return_sequences select or repeat rows. ``crop`` raises: a recurrent state
    has no per-token history to roll back to."""

    is_compileable = False

    def __init__(self, state: dict[str, Tensor] | None = None, seen_tokens: int = 0):
        # Cache.__init__'s signature changed between majors (4.54+ and 5.x take layers=...); nothing of it is used
        try:
            super().__init__(layers=[])
        except TypeError:
            super().__init__()
        self.state: dict[str, Tensor] = dict(state or {})
        self.seen_tokens = int(seen_tokens)

    # --- what generate reads -------------------------------------------------
    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Input columns consumed so far (padding included, as HF counts them)."""
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1  # no maximum (5.x's convention)

    def get_max_cache_shape(self, layer_idx: int = 0):
        return None  # no maximum (4.x's convention)

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return bool(self.state)

    @property
    def batch_size(self) -> int:
        return next(iter(self.state.values())).shape[0] if self.state else -1

    @property
    def is_sliding(self) -> list[bool]:
        return []

    @property
    def is_linear(self) -> list[bool]:
        return []

    def __len__(self) -> int:
        return len({k.split(".", 1)[0] for k in self.state})

    def __repr__(self) -> str:
        return f"RnnlabCache(seen_tokens={self.seen_tokens}, batch={self.batch_size}, tensors={len(self.state)})"

    # --- row operations ------------------------------------------------------
    def _rows(self, fn) -> None:
        self.state = {k: fn(v) for k, v in self.state.items()}

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self._rows(lambda v: v.index_select(0, beam_idx.to(v.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._rows(lambda v: v[indices.to(v.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(lambda v: v.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        self.state, self.seen_tokens = {}, 0

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            "RnnlabCache.crop: an rnnlab state is recurrent (a fixed-size summary of every token seen), so it cannot "
            "be cropped back to an earlier length; assisted / speculative decoding and other rollbacks are not supported")

    def activate_past_recording(self, **kwargs) -> None:
        raise NotImplementedError("RnnlabCache keeps no past states to roll back to (needed by assisted decoding)")

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        return 0


@dataclass
class RnnlabCausalLMOutput(ModelOutput):
    """loss (labels given), logits (B, T, V), the cache under both names transformers versions read."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: RnnlabCache | None = None
    past_key_values: RnnlabCache | None = None


# generate's arguments that start assisted / speculative decoding (refused: it crops the cache)
_ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
# keyword arguments some transformers versions or tools send that carry nothing rnnlab needs: positions are part
# of the state (per row, from the attention mask), inputs are token ids; only their absence (None) is accepted
_ABSENT_ONLY = ("position_ids", "cache_position", "inputs_embeds", "head_mask", "token_type_ids")


class RnnlabForCausalLM(PreTrainedModel, GenerationMixin):
    """A ``SequenceModel`` (``self.model``) as a transformers causal LM: input_ids (B, T) -> logits (B, T, V).

    ``attention_mask`` (B, T) of 0/1 selects each row's real tokens (left padding as generate sends it);
    the logits at padding are 0. With ``use_cache`` the output's cache continues the rows."""

    config_class = RnnlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = False
    _supports_cache_class = True  # 4.x flags
    _is_stateful = True  # 4.x: refuses assisted decoding up front
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"} if TRANSFORMERS_MAJOR >= 5 else ["model.head.weight"]

    def __init__(self, config: RnnlabConfig, model: SequenceModel | None = None):
        super().__init__(config)
        if model is None:
            with _real_torch_init():
                model = SequenceModel(config.model_config())
        self.model = model
        self.post_init()

    @classmethod
    def from_rnnlab(cls, model: SequenceModel, **config_kwargs) -> "RnnlabForCausalLM":
        """Wrap a SequenceModel (its parameters are shared, not copied); config_kwargs go to RnnlabConfig
        (e.g. bos_token_id, eos_token_id, pad_token_id)."""
        if not isinstance(model, SequenceModel):
            raise TypeError(f"from_rnnlab expects an rnnlab SequenceModel, got {type(model).__name__}")
        p = next(model.parameters())
        hf = cls(RnnlabConfig(model.config.to_dict(), **config_kwargs), model=model)
        return hf.to(p.device)

    @classmethod
    def from_run(cls, run_dir: str | Path, **config_kwargs) -> "RnnlabForCausalLM":
        """The model of an ``rnnlab train`` run directory (its config.json and newest good checkpoint)."""
        from rnnlab.train.checkpoint import load_latest
        from rnnlab.train.trainer import CKPT, CONFIG

        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).exists():
            raise ValueError(f"{run_dir} is not an rnnlab run directory (no {CONFIG})")
        model = SequenceModel(ModelConfig.from_dict(json.loads((run_dir / CONFIG).read_text())["model"]))
        if load_latest(run_dir / CKPT, model, restore_rng=False) is None:
            raise ValueError(f"{run_dir} holds no checkpoint ({CKPT})")
        return cls.from_rnnlab(model.eval(), **config_kwargs)

    def _init_weights(self, module) -> None:
        """rnnlab modules initialize themselves (their constructors follow their papers), so parameters are left
        alone. Only non-persistent buffers (constants such as RetNet's decays, not in the checkpoint) are rebuilt
        from a fresh copy of their layer: transformers 5 loads into a model built on the meta device."""
        names = getattr(module, "_non_persistent_buffers_set", ())
        model = self._modules.get("model")
        if not names or model is None:
            return
        path = next((n for n, m in model.named_modules() if m is module), None)
        parts = path.split(".") if path else []
        if len(parts) < 3 or parts[0] != "blocks" or parts[2] not in ("mixer", "mlp"):
            raise NotImplementedError(f"non-persistent buffers of {path or type(module).__name__} cannot be rebuilt")
        c, i = model.config, int(parts[1])
        with torch.device("cpu"):
            fresh = (create_mixer(c.layer_mixers()[i], c.d_model, **c.layer_kwargs()[i]) if parts[2] == "mixer"
                     else create_mixer(c.layer_mlps()[i], c.d_model, **c.layer_mlp_kwargs()[i]))
        source = fresh.get_submodule(".".join(parts[3:])) if len(parts) > 3 else fresh
        with torch.no_grad():
            for name in names:
                getattr(module, name).copy_(getattr(source, name))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the forward makes its own RnnlabCache

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.head

    def set_output_embeddings(self, value):
        self.model.head = value

    # --- forward --------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None, labels: Tensor | None = None,
                return_dict: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, **absent) -> RnnlabCausalLMOutput | tuple:
        """input_ids (B, T) -> logits (B, T, V). ``cache`` / ``past_key_values`` (either name): an RnnlabCache to
        continue; ``attention_mask`` (B, T_cache + T): only its last T columns matter (the cache holds the rest).
        ``labels`` (B, T): next-token cross entropy, -100 ignored."""
        for k, v in absent.items():
            if k not in _ABSENT_ONLY:
                raise TypeError(f"RnnlabForCausalLM.forward() got an unexpected keyword argument {k!r}")
            if v is not None:
                raise ValueError(f"RnnlabForCausalLM does not take {k} (positions are rnnlab state, counted per row from the "
                                 "attention mask; inputs are token ids)")
        if output_attentions or output_hidden_states:
            raise NotImplementedError("RnnlabForCausalLM returns logits only (no attentions or hidden states)")
        if input_ids is None:
            raise ValueError("RnnlabForCausalLM needs input_ids (B, T)")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the cache as cache= or past_key_values=, not both")
        cache = _as_rnnlab_cache(cache if cache is not None else past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        T = input_ids.shape[1]
        state = cache.state if cache is not None and cache.state else None
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -T:]
            if bool(mask.bool().all()):
                mask = None
        logits, new_state = self.model(input_ids, state, attention_mask=mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100)
        out_cache = None
        if use_cache:
            out_cache = RnnlabCache(new_state, (cache.seen_tokens if cache is not None else 0) + T)
        out = RnnlabCausalLMOutput(loss=loss, logits=logits, cache=out_cache, past_key_values=out_cache)
        if return_dict is False:
            return out.to_tuple()
        return out

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                                      use_cache: bool | None = None, inputs_embeds: Tensor | None = None, **kwargs) -> dict:
        """The inputs of the next forward: the columns of ``input_ids`` the cache has not consumed, the mask, the
        cache. Version-specific hints (next_sequence_length, cache_position, position_ids, ...) are not needed."""
        if inputs_embeds is not None:
            raise NotImplementedError("RnnlabForCausalLM.generate takes input_ids, not inputs_embeds")
        cache = None
        for name in ("cache", "past_key_values", "cache_params"):
            if kwargs.get(name) is not None:
                cache = kwargs[name]
        cache = _as_rnnlab_cache(cache)
        seen = cache.seen_tokens if cache is not None else 0
        if seen:
            input_ids = input_ids[:, seen:]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        if cache is not None:
            inputs["cache" if TRANSFORMERS_MAJOR >= 5 else "past_key_values"] = cache
        return inputs

    def generate(self, *args, **kwargs):
        """transformers' generate; assisted and speculative decoding are refused up front (they roll the cache back)."""
        gc = kwargs.get("generation_config")
        assisted = [k for k in _ASSISTED if kwargs.get(k) is not None or getattr(gc, k, None) is not None]
        if assisted:
            raise NotImplementedError(f"RnnlabForCausalLM.generate: {', '.join(assisted)} (assisted / speculative decoding) "
                                      "needs a cache that can be cropped back to an earlier token; a recurrent state cannot")
        return super().generate(*args, **kwargs)

    def _reorder_cache(self, cache: RnnlabCache, beam_idx: Tensor) -> RnnlabCache:
        cache.reorder_cache(beam_idx)
        return cache


_TORCH_INIT = {n: f for n, f in vars(torch.nn.init).items() if n.endswith("_") and not n.startswith("_") and callable(f)}


@contextmanager
def _real_torch_init():
    """rnnlab's constructors compute constants with torch.nn.init (S5's and S4's initial matrices use its return
    values); transformers 4.x's from_pretrained swaps those functions for no-ops returning None while it builds the
    model it will load into. Put the real ones back for the construction (on the meta device, as transformers 5
    builds, they do nothing)."""
    current = {n: getattr(torch.nn.init, n) for n in _TORCH_INIT}
    try:
        for n, f in _TORCH_INIT.items():
            setattr(torch.nn.init, n, f)
        yield
    finally:
        for n, f in current.items():
            setattr(torch.nn.init, n, f)


def _as_rnnlab_cache(cache) -> RnnlabCache | None:
    """An RnnlabCache, None, or an empty cache of another kind (one a transformers version made for us: dropped)."""
    if cache is None or isinstance(cache, RnnlabCache):
        return cache
    if isinstance(cache, Cache) and cache.get_seq_length() == 0:
        return None
    raise ValueError(f"RnnlabForCausalLM takes an RnnlabCache (from a previous output), got {type(cache).__name__}")


def register() -> None:
    """Register "rnnlab" with AutoConfig and AutoModelForCausalLM (idempotent; importing rnnlab.interop does it)."""
    try:
        AutoConfig.register("rnnlab", RnnlabConfig)
    except ValueError:  # already registered (this process)
        pass
    try:
        AutoModelForCausalLM.register(RnnlabConfig, RnnlabForCausalLM)
    except ValueError:
        pass
