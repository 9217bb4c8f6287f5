"""ModelConfig: the frozen, documented description of a SequenceModel."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelConfig", "pattern_rules"]

HEADS = ("lm", "classify", "regress")
NORMS = ("rms", "layer")
EMBEDDING_INITS = ("unit", "gpt2")
READOUTS = ("gradient", "ridge")
MLPS = ("swiglu", "geglu", None)
"""The MLP slot's built-in choices; any other name is a registered mixer."""


def pattern_rules(pattern: list[str]) -> tuple[str, dict[str, list[int]]]:
    """A repeating layer pattern -> (mixer, mixer_every): ["hawk", "hawk", "sliding_attention"] ->
    ("hawk", {"sliding_attention": [3, 2]}); the pattern's most frequent name is the base."""
    if not pattern or not all(isinstance(p, str) for p in pattern):
        raise ValueError(f"a layer pattern is a non-empty list of mixer names, got {pattern!r}")
    base = max(pattern, key=pattern.count)
    rules = {}
    for i, name in enumerate(pattern):
        if name != base:
            rules.setdefault(name, [len(pattern)]).append(i)
    return base, rules


def _apply_rules(base, rules: dict, n_layers: int, field_name: str) -> list:
    """``base`` (one value or one per layer) with {name: [period, offset, ...]} rules applied: layer i takes ``name``
    where i % period is one of the offsets."""
    layers = list(base) if isinstance(base, (list, tuple)) else [base] * n_layers
    if not isinstance(rules, dict):
        raise ValueError(f"{field_name} must be a dict {{name: [period, offset, ...]}}, got {rules!r}")
    owner = {}
    for name, rule in rules.items():
        ok = (isinstance(rule, (list, tuple)) and len(rule) >= 2 and all(isinstance(r, int) and not isinstance(r, bool) for r in rule)
              and rule[0] >= 1 and all(0 <= o < rule[0] for o in rule[1:]))
        if not ok:
            raise ValueError(f"{field_name}[{name!r}] must be [period, offset, ...] with period >= 1 and 0 <= offset < period, "
                             f"got {rule!r}")
        for i in range(n_layers):
            if i % rule[0] in rule[1:]:
                if i in owner:
                    raise ValueError(f"{field_name}: rules {owner[i]!r} and {name!r} both claim layer {i}")
                owner[i], layers[i] = name, name
    return layers


def _per_layer_kwargs(kw, names: list) -> list[dict]:
    """One dict for all layers, one per layer, or one per name (a dict whose keys are all names in ``names``)."""
    if isinstance(kw, (list, tuple)):
        return [dict(k) for k in kw]
    by_name = bool(kw) and all(k in names and isinstance(v, dict) for k, v in kw.items())
    return [dict(kw.get(n, {})) if by_name else dict(kw) for n in names]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a SequenceModel; JSON-able via to_dict/from_dict."""

    mixer: str | list[str] = "attention"
    """Registered mixer name, or one name per layer (hybrids, e.g. ["lstm", "lstm", "attention"])."""
    mixer_kwargs: dict | list[dict] = field(default_factory=dict)
    """Keyword arguments for the mixer(s): one dict for all layers, one per layer, or one per mixer name
    ({"hawk": {...}, "sliding_attention": {"window": 2048}}: a dict whose keys are all names of this config's mixers)."""
    mixer_every: dict = field(default_factory=dict)
    """Period/offset rules over ``mixer``, the way papers say hybrids: {name: [period, offset, ...]} puts that mixer at
    the layers i with i % period among the offsets. {"attention": [8, 4]} is Jamba's "attention every 8th layer,
    offset 4"; mixer="hawk" with {"sliding_attention": [3, 2]} repeats Griffin's (hawk, hawk, local attention)
    pattern, truncated at n_layers (``pattern_rules`` writes any repeating pattern as rules). Rules may not overlap."""
    d_model: int = 64
    n_layers: int = 2
    vocab_size: int | None = None
    """Token inputs (B, T) int64 with this vocabulary; exclusive with input_dim."""
    input_dim: int | None = None
    """Feature inputs (B, T, input_dim) float, linearly projected; exclusive with vocab_size."""
    head: str = "lm"
    """"lm": (B, T, vocab_size) logits; "classify": (B, num_classes); "regress": (B, T, out_dim)."""
    num_classes: int | None = None
    out_dim: int | None = None
    pool: str = "last"
    """Sequence pooling for head="classify": "last" token (causal) or "mean"."""
    mlp: str | None | list = "swiglu"
    """Second sub-layer of each block: "swiglu", "geglu" (Griffin's gated MLP: GeLU, tanh approximation), None (mixer
    only), or any registered mixer name (e.g. rwkv6_channel_mix, or "moe": a mixture of experts, rnnlab.layers.moe); or one
    of these per layer (a list of n_layers)."""
    mlp_every: dict = field(default_factory=dict)
    """Period/offset rules over ``mlp``, as ``mixer_every`` ({"none": [2, 1]}: no MLP at odd layers)."""
    mlp_kwargs: dict = field(default_factory=dict)
    """Keyword arguments of the MLP slot when it is a registered mixer (e.g. {"expansion": 4} for rwkv4_channel_mix,
    {"num_experts": 16, "top_k": 2, "hidden_size": 14336} for moe),
    or one dict per registered-mixer MLP name, as ``mixer_kwargs``."""
    mlp_ratio: float = 4.0
    """SwiGLU / GeGLU hidden size = 2/3 * mlp_ratio * d_model, rounded up to a multiple of 8 (LLaMA's rule; Griffin's
    expansion M = 3, a hidden size of 3 * d_model, is mlp_ratio=4.5)."""
    tie_embeddings: bool = False
    embedding_init: str = "unit"
    """Token embeddings: "unit" enters the residual stream at unit scale per entry (weights N(0, 1/d_model), the
    lookup multiplied by sqrt(d_model): Gemma / Griffin; a tied head reads the unscaled weights, so logits start
    at unit scale), comparable to every sublayer's output at initialization; "gpt2" is N(0, 0.02) unscaled
    (GPT-2, Mamba's _init_weights), which starts the token's identity ~20x below the sublayers' outputs
    (docs/reproductions.md, "Initialization")."""
    norm_eps: float = 1e-6
    dropout: float = 0.0
    time_input: bool = False
    """Feature inputs whose last feature is the per-token time step Δt (irregular sampling, e.g. lorenz irregular=True):
    it stays an input feature for every layer, and is also passed as ``dt`` to the mixers that take a time step
    (``takes_dt``: ltc, cfc, hippo_rnn), packed like the inputs."""
    readout: str = "gradient"
    """"gradient": the whole model trained by the trainer's AdamW. "ridge": an untrained reservoir model (every layer's
    mixer without parameters, e.g. deep_res_esn, res_rmn): the features zero-padded to d_model run through the layers'
    mixers in turn (no norms, residuals or MLPs: set mlp=None), and the linear head is fitted in closed form by ridge
    regression over the training stream (train.ridge is the regularization; rnnlab.models.readout)."""
    norm: str = "rms"
    """The blocks' and the final norm: "rms" (RMSNorm, a weight) or "layer" (LayerNorm, weight and bias: RWKV-4's)."""
    embed_norm: bool = False
    """A norm of that kind right after the embedding (RWKV-4's ln0 before its first block)."""
    logit_soft_cap: float | None = None
    """head="lm": logits -> cap * tanh(logits / cap) (xLSTM 7B's output soft cap, 30; Gemma 2's); None: none."""
    mlp_bias: bool = False
    """Biases on the SwiGLU / GeGLU projections (RecurrentGemma's MLPs have them)."""
    embed_scale: float | None = None
    """The multiplier of the token embedding lookup; None: the one ``embedding_init`` implies (sqrt(d_model) for
    "unit", 1 for "gpt2"). Checkpoints fix it: HF's RecurrentGemma multiplies by sqrt(d_model) rounded to bfloat16."""
    learned_init_state: bool = False
    """A learned initial state (LongSSM, Wang et al. 2024): one parameter per recurrent state tensor of every layer
    (``SequenceModel.recurrent_state_keys``), zeros at initialization, not weight-decayed; every sequence that starts
    without a given state (training, evaluation, generate) starts from it. ``train.init_state = "learned"`` sets it."""
    bidirectional_every: int | None = None
    """Birdie's bidirectional prefix (Blouir et al. 2024, §3.1): layers i with i % k == 0 get a second mixer of the
    same kind that reads the prompt prefix right to left (``SequenceModel.forward(prefix_len=)``; k = 2 is the
    paper's half of the layers); None: every layer causal. rnnlab.models.bidirectional says what differs from the
    paper."""

    def __post_init__(self):
        from rnnlab.layers.grid import GRID_MODULES, check_grid_options
        from rnnlab.layers.registry import available_mixers, check_mixer_options

        def positive_int(name, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {v!r}")

        for name in ("d_model", "n_layers"):
            positive_int(name)
        for name in ("vocab_size", "input_dim", "num_classes", "out_dim", "bidirectional_every"):
            positive_int(name, allow_none=True)
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

        for name in ("mixer", "mixer_kwargs", "mlp"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple)) and len(v) != self.n_layers:
                raise ValueError(f"{name} list has {len(v)} entries but n_layers={self.n_layers}")
        mixers = self.layer_mixers()
        valid = available_mixers() + list(GRID_MODULES)  # 2-D grid modules (rnnlab.layers.grid) stand in a mixer's slot
        for m in mixers + [m for m in self.layer_mlps() if m not in MLPS]:
            if m not in valid:
                raise ValueError(f"unknown mixer {m!r}; valid choices: {', '.join(valid)}")
        kw = self.mixer_kwargs if isinstance(self.mixer_kwargs, (list, tuple)) else [self.mixer_kwargs]
        if not all(isinstance(k, dict) for k in kw):
            raise ValueError(f"mixer_kwargs must be a dict, a list of one dict per layer or a dict of one dict per mixer "
                             f"name, got {self.mixer_kwargs!r}")
        for m, k in zip(mixers, self.layer_kwargs()):  # bad options fail here, before any model is built
            (check_grid_options if m in GRID_MODULES else check_mixer_options)(m, self.d_model, k)
        if self.bidirectional_every is not None and (self.readout != "gradient" or any(m in GRID_MODULES for m in mixers)):
            raise ValueError("bidirectional_every needs sequence mixers trained by gradient (no grid modules, readout=\"gradient\")")
        mlp_kwargs = self.layer_mlp_kwargs()
        if not isinstance(self.mlp_kwargs, dict) or any(k and m in MLPS for m, k in zip(self.layer_mlps(), mlp_kwargs)):
            raise ValueError(f"mlp_kwargs must be a dict, empty unless mlp is a registered mixer, got {self.mlp_kwargs!r}")
        for m, k in zip(self.layer_mlps(), mlp_kwargs):
            if m not in MLPS:
                check_mixer_options(m, self.d_model, k)
        if (self.vocab_size is None) == (self.input_dim is None):
            raise ValueError("set exactly one of vocab_size (token inputs) or input_dim (feature inputs)")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "lm" and self.vocab_size is None:
            raise ValueError('head="lm" needs vocab_size')
        if self.head == "classify" and not self.num_classes:
            raise ValueError('head="classify" needs num_classes')
        if self.head == "regress" and not self.out_dim:
            raise ValueError('head="regress" needs out_dim')
        if self.embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"embedding_init must be one of {EMBEDDING_INITS}, got {self.embedding_init!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.embed_norm, bool):
            raise ValueError(f"embed_norm must be a bool, got {self.embed_norm!r}")
        if self.logit_soft_cap is not None and not (isinstance(self.logit_soft_cap, (int, float)) and self.logit_soft_cap > 0
                                                    and self.head == "lm"):
            raise ValueError(f'logit_soft_cap must be a number > 0 (head="lm") or None, got {self.logit_soft_cap!r}')
        if not isinstance(self.mlp_bias, bool):
            raise ValueError(f"mlp_bias must be a bool, got {self.mlp_bias!r}")
        if self.embed_scale is not None and not (isinstance(self.embed_scale, (int, float)) and not isinstance(self.embed_scale, bool)
                                                 and self.embed_scale > 0 and self.vocab_size is not None):
            raise ValueError(f"embed_scale must be a number > 0 (token inputs) or None, got {self.embed_scale!r}")
        if self.pool not in ("last", "mean"):
            raise ValueError(f'pool must be "last" or "mean", got {self.pool!r}')
        if self.tie_embeddings and (self.head != "lm" or self.vocab_size is None):
            raise ValueError('tie_embeddings needs head="lm" with token inputs')
        if self.time_input and self.input_dim is None:
            raise ValueError("time_input=True needs feature inputs (input_dim): the last feature is the time step")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout == "ridge":
            if self.input_dim is None or self.input_dim > self.d_model or self.head == "lm":
                raise ValueError(f'readout="ridge" needs feature inputs with input_dim <= d_model (they are zero-padded, not '
                                 f'projected) and a "regress" or "classify" head; got input_dim={self.input_dim}, '
                                 f"d_model={self.d_model}, head={self.head!r}")
            if self.mlp is not None or self.dropout:
                raise ValueError(f'readout="ridge" builds input -> mixers -> linear head: set mlp=None and dropout=0, '
                                 f"got mlp={self.mlp!r}, dropout={self.dropout}")

    def embedding_scale(self) -> float:
        """The multiplier of the token embedding lookup: ``embed_scale``, else sqrt(d_model) for "unit", 1 for "gpt2"."""
        if self.embed_scale is not None:
            return float(self.embed_scale)
        return self.d_model ** 0.5 if self.embedding_init == "unit" else 1.0

    def layer_mixers(self) -> list[str]:
        """The mixer of each layer: ``mixer`` (one name or one per layer) with the ``mixer_every`` rules applied."""
        return _apply_rules(self.mixer, self.mixer_every, self.n_layers, "mixer_every")

    def layer_kwargs(self) -> list[dict]:
        return _per_layer_kwargs(self.mixer_kwargs, self.layer_mixers())

    def layer_mlps(self) -> list[str | None]:
        """The MLP of each layer ("swiglu", "geglu", a registered mixer name, or None), ``mlp_every`` applied."""
        return [None if m == "none" else m for m in _apply_rules(self.mlp, self.mlp_every, self.n_layers, "mlp_every")]

    def layer_mlp_kwargs(self) -> list[dict]:
        return _per_layer_kwargs(self.mlp_kwargs, self.layer_mlps())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {', '.join(names)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
