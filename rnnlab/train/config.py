"""Run configuration: one plain dict with three sections, resolved and validated before training.

    {"task":  {"name": "mqar", <task options>},
     "model": {<ModelConfig fields; vocab_size/input_dim/head/num_classes/out_dim come from the task>},
     "train": {<TrainConfig fields>},
     "run_dir": "runs/<name>"}

Sources, later wins: defaults < a TOML/YAML/JSON file < command-line flags < dotted overrides
(``train.lr=3e-3 task.num_kv_pairs=8 model.mixer_kwargs.num_heads=2``); ``model.preset=griffin`` (with
``model.preset_options.size=tiny``) starts the model from rnnlab.models.presets. ``resolve`` builds
the task and the ModelConfig once, so an unknown task, mixer or option, or a test length the
task cannot generate, raises ValueError (naming the valid choices) before any training.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlab.options import check_option

__all__ = ["RUNTIME_KEYS", "PARALLEL", "TrainConfig", "load_file", "apply_overrides", "parse_value", "resolve", "default_run_dir", "config_hash"]

SECTIONS = ("task", "model", "train", "run_dir")
# train options that say how a run is executed, not what it computes (up to float summation order): left out of
# the run's identity (config_hash) and free to change on --resume (another device, process count or engine)
RUNTIME_KEYS = ("progress", "threads", "device", "parallel", "grad_accum")
EVAL_PROMPTS = ("plain", "jrt_prompt")  # train.eval_prompt: how test sequences are shown (Task.jrt_prompt)
PARALLEL = ("ddp", "fsdp")  # train.parallel: the data-parallel engines (rnnlab.train.distributed)
_MIN_INT = {"warmup": 0, "seed": 0}  # TrainConfig ints that may be 0; the others are counts >= 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping; every field is a plain JSON value."""

    steps: int = 1000
    batch_size: int = 32
    """Global batch (split evenly across data-parallel processes)."""
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    warmup: int = 50
    """Linear warmup steps, then cosine decay to min_lr_ratio * lr at ``steps``."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Max global gradient norm (0 = no clipping)."""
    bf16: bool = False
    """bfloat16 autocast for the forward pass (weights, optimizer and mixer states stay float32)."""
    eval_every: int = 200
    eval_examples: int = 256
    """Test sequences per test length (fixed set, drawn independently of training data)."""
    eval_batch_size: int = 64
    eval_prompt: str = "plain"
    """How test sequences are shown: "plain", or "jrt_prompt" (Arora et al. 2024: the task's context given twice
    before its questions, ``Task.jrt_prompt``; lm tasks that declare a context: mqar, set_disjointness)."""
    log_every: int = 10
    ckpt_every: int = 200
    seed: int = 0
    target: float | None = None
    """Stop early once the primary metric, averaged over test lengths, reaches this value."""
    on_nonfinite: str = "stop"
    """A NaN/inf loss or gradient norm: "stop" the run with NonFiniteError, or "skip" that step's update."""
    pack: bool = False
    """Pack variable-length examples back to back into a token budget, no padding (rnnlab.train.packing)."""
    pack_tokens: int | None = None
    """Token budget of a packed step (default batch_size * the task's seq_len)."""
    aux_loss_coef: float = 0.01
    """Weight of the models' auxiliary loss (the MoE layers' load-balancing loss, SequenceModel.aux_loss(); Switch
    Transformer's α = 0.01) added to the task loss; logged unweighted as "aux_loss". No effect on a model without MoE."""
    ridge: float = 1e-6
    """Regularization λ of the closed-form readout fit (model readout="ridge": no gradient steps; each step adds a
    training batch to the ridge sums, the head is solved at every evaluation and at the end)."""
    grad_accum: int = 1
    """Micro-batches per step and process: each process runs batch_size / (processes * grad_accum) rows at a time
    and updates once per step, so the global batch does not depend on the number of devices."""
    parallel: str = "ddp"
    """The data-parallel engine under torchrun (ignored on one process): "ddp" (DistributedDataParallel) or
    "fsdp" (FSDP2 fully_shard per block, then the root). rnnlab.train.distributed; docs/scale.md."""
    init_state: str = "zeros"
    """The initial state of every training sequence (rnnlab.train.init_state): "zeros"; "gaussian" (every recurrent
    state tensor N(0, init_state_scale²)); "other_sequence" (the final state of another sequence: the previous step's);
    "passed" (state passing: consecutive steps train on consecutive windows of the same streams); "learned" (a
    learned initial state, model.learned_init_state). Evaluation starts from the model's own initial state."""
    init_state_scale: float = 1.0
    """Standard deviation of the "gaussian" initial state, per entry."""
    passed_windows: int = 4
    """init_state="passed": windows per stream (a stream is one training sequence passed_windows * seq_len long)."""
    objective: str = "next_token"
    """"next_token": the task's own batches. "birdie": Birdie's mixture of objectives (copying, deshuffling, infilling,
    selective copying, next-token) with its reward-driven controller (rnnlab.train.birdie; token "lm" tasks)."""
    birdie_weights: dict | None = None
    """objective="birdie": the mixture's starting (and exploration) weights by objective name; None = uniform."""
    birdie_every: int = 50
    """objective="birdie": steps between the controller's updates (each measures every objective's held-out loss)."""
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # types from the annotations, ints >= 1 except the counts that may be 0
            check_option("train.", f.name, hints[f.name], getattr(self, f.name), min_int=_MIN_INT.get(f.name, 1))
        for f, lo, hi in (("beta1", 0, 1), ("beta2", 0, 1), ("min_lr_ratio", 0, 1.0001)):
            if not lo <= getattr(self, f) < hi:
                raise ValueError(f"train.{f} must lie in [{lo}, {min(hi, 1)}{')' if hi == 1 else ']'}, got {getattr(self, f)!r}")
        for f in ("weight_decay", "grad_clip", "ridge", "aux_loss_coef"):
            if getattr(self, f) < 0:
                raise ValueError(f"train.{f} must be >= 0, got {getattr(self, f)!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"train.parallel must be one of {', '.join(PARALLEL)}; got {self.parallel!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}")
        if self.eval_prompt not in EVAL_PROMPTS:
            raise ValueError(f"train.eval_prompt must be one of {', '.join(EVAL_PROMPTS)}; got {self.eval_prompt!r}")
        from rnnlab.train.init_state import INIT_STATES

        if self.init_state not in INIT_STATES:
            raise ValueError(f"train.init_state must be one of {', '.join(INIT_STATES)}; got {self.init_state!r}")
        if self.objective not in ("next_token", "birdie"):
            raise ValueError(f"train.objective must be one of next_token, birdie; got {self.objective!r}")
        if self.objective == "birdie" and self.init_state in ("other_sequence", "passed"):
            raise ValueError(f'train.objective="birdie" cannot be combined with train.init_state={self.init_state!r}')
        if self.init_state_scale < 0:
            raise ValueError(f"train.init_state_scale must be >= 0, got {self.init_state_scale!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be one of stop, skip; got {self.on_nonfinite!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be a finite number > 0, got {self.lr!r}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"train.device must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1', "
                                 f"got {self.device!r}") from None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; valid options: {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_file(path: str | Path) -> dict:
    """A TOML (.toml), YAML (.yaml/.yml) or JSON file holding a mapping -> dict; any other content is a
    ValueError naming the file and the parser's complaint."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {str(p)!r}: suffix must be .toml, .yaml, .yml or .json")
    try:
        text = p.read_text()
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
            data = {} if data is None else data
    except Exception as e:  # UnicodeDecodeError, TOMLDecodeError, YAMLError, JSONDecodeError: all say "not a config"
        reason = " ".join(str(e).split())
        raise ValueError(f"config file {str(p)!r} is not valid {p.suffix[1:].upper()}: {reason[:300]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Command-line value -> int / float / bool / None / list / dict / str (YAML flow syntax)."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``["train.lr=3e-3", "task.num_kv_pairs=8"]`` -> a new config with those keys set."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (sections: {', '.join(SECTIONS)})")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise ValueError(f"override {item!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}")
        node = config
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return config


def merge(base: dict, top: dict) -> dict:
    """Recursive dict merge (top wins)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _defaults(section: str, config: dict) -> dict:
    """A section's default values: the dataclass fields of ModelConfig / TrainConfig, the task's options."""
    if section == "task":
        from rnnlab.tasks import task_options

        try:
            return task_options(config.get("task", {}).get("name"))
        except (ValueError, KeyError):  # an unknown task: nothing is dropped
            return {}
    from rnnlab.models import ModelConfig

    cls = ModelConfig if section == "model" else TrainConfig
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)}


def identity(config: dict) -> dict:
    """What makes a run the run it is: its task, model and train settings, without runtime keys and without
    the settings that equal their defaults, so a setting added later (at a default that keeps the old behaviour)
    leaves runs stored before it existed the same runs (their ids, their --resume)."""
    keep = {}
    for section in ("task", "model", "train"):
        if section in config:
            defaults = _defaults(section, config)
            keep[section] = {k: v for k, v in config[section].items()
                             if not (section == "train" and k in RUNTIME_KEYS) and not (k in defaults and defaults[k] == v)}
    return keep


def config_hash(config: dict) -> str:
    """A run's id: the hash of its identity()."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:12]


def default_run_dir(config: dict) -> str:
    m, t, tr = config.get("model", {}), config["task"], config.get("train", {})
    mixer = m.get("mixer", "attention")
    mixer = "+".join(mixer) if isinstance(mixer, list) else mixer
    return (f"runs/{t['name']}-{mixer}-d{m.get('d_model', 64)}-l{m.get('n_layers', 2)}"
            f"-lr{tr.get('lr', TrainConfig.lr):g}-s{tr.get('seed', 0)}-{config_hash(config)[:6]}")


def resolve(config: dict):
    """Validate and complete a config. -> (resolved dict, task, ModelConfig, TrainConfig).

    The resolved dict is what gets saved: every default filled in, the task's description
    (e.g. corpus hash) under ``task_info``.
    """
    from rnnlab.models import ModelConfig
    from rnnlab.tasks import create_task, task_options

    unknown = sorted(set(config) - set(SECTIONS) - {"task_info"})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    for section in ("task", "model", "train"):
        if not isinstance(config.get(section) or {}, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {config[section]!r}")
    if not isinstance(config.get("run_dir") or "", str):
        raise ValueError(f"run_dir must be a string, got {config['run_dir']!r}")
    tcfg = dict(config.get("task") or {})
    if "name" not in tcfg:
        raise ValueError("config needs task.name (see `rnnlab train --help` for the task list)")
    name = tcfg.pop("name")
    task = create_task(name, **tcfg)
    task_full = {"name": name, **task_options(name), **tcfg}
    task_full["test_lengths"] = task.test_lengths
    train_cfg = TrainConfig.from_dict(dict(config.get("train") or {}))
    mdict = dict(config.get("model") or {})
    if train_cfg.init_state == "learned":  # the learned initial state is the model's (rnnlab.train.init_state)
        mdict["learned_init_state"] = True
    preset, preset_options = mdict.pop("preset", None), mdict.pop("preset_options", {})
    io = task.model_io()
    if train_cfg.objective == "birdie":  # Birdie's special tokens follow the task's vocabulary
        from rnnlab.train.birdie import N_SPECIAL, check_birdie

        check_birdie(task)
        io["vocab_size"] += N_SPECIAL
    clash = {k for k in io if k in mdict and mdict[k] is not None and mdict[k] != io[k]}
    if clash:
        raise ValueError(f"model option(s) {sorted(clash)} are fixed by task {name!r} ({ {k: io[k] for k in clash} })")
    mdict.update(io)
    if preset is not None:  # model.preset=griffin (rnnlab.models.presets); the other model keys win over the preset's
        from rnnlab.models.presets import build

        if not isinstance(preset_options, dict):
            raise ValueError(f"model.preset_options must be a mapping of the preset's options, got {preset_options!r}")
        mdict = {**build(preset, **preset_options).to_dict(), **mdict}
    model_cfg = ModelConfig.from_dict(mdict)
    resolved = {"task": task_full, "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    resolved["run_dir"] = config.get("run_dir") or default_run_dir(resolved)
    resolved["task_info"] = {"primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
                             "report_metrics": list(task.report_metrics), "train_len": task.seq_len, **task.describe()}
    return resolved, task, model_cfg, train_cfg
