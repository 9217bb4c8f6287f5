"""SequenceModel: embedding -> N pre-norm blocks (any mixer per layer) -> final norm -> head.

Block: x + Mixer(RMSNorm(x)), then x + MLP(RMSNorm(x)); the MLP is SwiGLU or GeGLU
(Shazeer 2020), None, or any registered mixer (RWKV's channel-mix, the mixture of experts ``moe``), chosen per layer. The model
state is {"<layer>.mixer.<key>": tensor, "<layer>.mlp.<key>": ...}: a flat
dict with batch in dim 0, so it moves, indexes and saves like a mixer state.

Variable-length batches come packed (``cu_seqlens``, the mixer contract's convention: inputs
(1, T_total) holding N sequences, states with N rows) or padded (``attention_mask`` (B, T), 1 on
real tokens, left padding as HF's generate sends), which is converted to the packed form here.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.moe import MoE
from rnnlab.layers.parts import RMSNorm
from rnnlab.layers.grid import GRID_MODULES, create_grid_mixer
from rnnlab.layers.registry import create_mixer
from rnnlab.models.bidirectional import check_prefix_len, reverse_prefix
from rnnlab.models.config import ModelConfig
from rnnlab.models.readout import PadFeatures, ReservoirBlock, RidgeReadout
from rnnlab.ops import decode
from rnnlab.ops.varlen import Packing, cu_seqlens_from_lengths

__all__ = ["SequenceModel", "Block", "SwiGLU"]


class SwiGLU(nn.Module):
    """y = W2 (silu(W1 x) * W3 x); hidden = 2/3 * ratio * d rounded up to a multiple of 8. With
    ``activation="gelu"`` it is GeGLU, GeLU in its tanh approximation (Shazeer 2020; Griffin's gated MLP block,
    De et al. 2024 Sec. 2.2, and recurrentgemma's ``gelu_pytorch_tanh``). ``bias``: biases on the three projections
    (recurrentgemma's MLPs)."""

    def __init__(self, d_model: int, ratio: float = 4.0, activation: str = "silu", bias: bool = False):
        super().__init__()
        if activation not in ("silu", "gelu"):
            raise ValueError(f'activation must be "silu" or "gelu", got {activation!r}')
        self.act = F.silu if activation == "silu" else partial(F.gelu, approximate="tanh")
        hidden = self.hidden_size(d_model, ratio)
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.w2 = nn.Linear(hidden, d_model, bias=bias)

    @staticmethod
    def hidden_size(d_model: int, ratio: float) -> int:
        return 8 * math.ceil(2 * ratio * d_model / 3 / 8)

    def forward(self, x: Tensor) -> Tensor:
        a, b = decode.linear(self.w13, x).chunk(2, -1)  # the modules, but a decode token by rnnlab.ops.decode
        return decode.linear(self.w2, self.act(a) * b)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """ModelConfig.norm: "rms" -> RMSNorm (weight), "layer" -> LayerNorm (weight and bias)."""
    return RMSNorm(d_model, eps) if kind == "rms" else nn.LayerNorm(d_model, eps=eps)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)). ``rev``: a second mixer reading the prompt
    prefix right to left, added to the mixer's output (Birdie's bidirectional prefix, rnnlab.models.bidirectional)."""

    def __init__(self, mixer: Mixer, mlp: nn.Module | None, d_model: int, eps: float = 1e-6, dropout: float = 0.0,
                 norm: str = "rms", rev: Mixer | None = None):
        super().__init__()
        self.norm1, self.mixer, self.rev = make_norm(norm, d_model, eps), mixer, rev
        self.norm2 = make_norm(norm, d_model, eps) if mlp is not None else None
        self.mlp = mlp
        self.drop = nn.Dropout(dropout)

    def init_state(self, batch_size: int, device=None) -> State:
        s = {f"mixer.{k}": v for k, v in self.mixer.init_state(batch_size, device).items()}
        if isinstance(self.mlp, Mixer):
            s.update({f"mlp.{k}": v for k, v in self.mlp.init_state(batch_size, device).items()})
        return s

    def state_size(self, seq_len: int) -> int:
        return self.mixer.state_size(seq_len) + (self.mlp.state_size(seq_len) if isinstance(self.mlp, Mixer) else 0)

    def forward(self, x: Tensor, state: State, packing: Packing | None = None, dt: Tensor | None = None,
                prefix_len: Tensor | None = None) -> tuple[Tensor, State]:
        """``dt`` (B, T): per-token time steps, handed to a mixer that takes them (``takes_dt``), else unused.
        ``prefix_len`` (B,): the prompt tokens ``rev`` reads right to left (None: none; unused without ``rev``)."""
        sub = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        kw = {"dt": dt} if dt is not None and self.mixer.takes_dt else {}
        h = self.norm1(x)
        y, ms = self.mixer(h, sub("mixer."), cu_seqlens=packing, **kw)
        if self.rev is not None:  # no prefix with packing (SequenceModel checks): every token alone, rows do not matter
            y = y + reverse_prefix(self.rev, h, prefix_len)
        x = x + self._drop(y)
        new = {f"mixer.{k}": v for k, v in ms.items()}
        if isinstance(self.mlp, Mixer):
            y, ps = self.mlp(self.norm2(x), sub("mlp."), cu_seqlens=packing)
            new.update({f"mlp.{k}": v for k, v in ps.items()})
            x = x + self._drop(y)
        elif self.mlp is not None:
            x = x + self._drop(self.mlp(self.norm2(x)))
        return x, new

    def _drop(self, y: Tensor) -> Tensor:
        return self.drop(y) if self.training and self.drop.p > 0 else y  # no module call per token at decode


class SequenceModel(nn.Module):
    """inputs (B, T) int64 tokens or (B, T, input_dim) floats -> (outputs, state).

    outputs: head "lm" (B, T, vocab_size) logits, "classify" (B, num_classes),
    "regress" (B, T, out_dim). ``state`` continues a sequence across calls.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        out = {"lm": c.vocab_size, "classify": c.num_classes, "regress": c.out_dim}[c.head]
        self.embed_scale, self.embed_norm = 1.0, None
        self.init_keys, self.init_params = [], None  # ModelConfig.learned_init_state
        if c.readout == "ridge":  # an untrained reservoir model with a closed-form head (rnnlab.models.readout)
            self.embed = PadFeatures(c.input_dim, c.d_model)
            self.blocks = nn.ModuleList(ReservoirBlock(create_mixer(name, c.d_model, **kw))
                                        for name, kw in zip(c.layer_mixers(), c.layer_kwargs()))
            self.norm = nn.Identity()
            self.head = nn.Linear(c.d_model, out)
            nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)
            self.ridge = RidgeReadout(c.d_model, out)
            return
        self.embed = nn.Embedding(c.vocab_size, c.d_model) if c.vocab_size else nn.Linear(c.input_dim, c.d_model)
        if c.vocab_size:  # ModelConfig.embedding_init says why
            unit = c.embedding_init == "unit"
            nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5 if unit else 0.02)
            self.embed_scale = c.embedding_scale()
        blocks = []
        for i, (name, kw, mlp, mlp_kw) in enumerate(zip(c.layer_mixers(), c.layer_kwargs(), c.layer_mlps(), c.layer_mlp_kwargs())):
            mixer = (create_grid_mixer if name in GRID_MODULES else create_mixer)(name, c.d_model, **kw)
            if mlp in ("swiglu", "geglu"):
                mlp = SwiGLU(c.d_model, c.mlp_ratio, "silu" if mlp == "swiglu" else "gelu", c.mlp_bias)
            elif mlp is not None:
                mlp = create_mixer(mlp, c.d_model, **mlp_kw)
            bidirectional = c.bidirectional_every is not None and i % c.bidirectional_every == 0
            rev = create_mixer(name, c.d_model, **kw) if bidirectional else None  # drawn after the layer's own parameters
            blocks.append(Block(mixer, mlp, c.d_model, c.norm_eps, c.dropout, c.norm, rev))
        self.blocks = nn.ModuleList(blocks)
        if c.embed_norm:
            self.embed_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.head = nn.Linear(c.d_model, out, bias=c.head != "lm")
        if c.tie_embeddings:
            self.head.weight = self.embed.weight
        if c.learned_init_state:  # LongSSM's learned initial state, zeros at first (ModelConfig.learned_init_state)
            zero = self.init_state(1, "meta")
            self.init_keys = self.recurrent_state_keys()
            if not self.init_keys:
                raise ValueError(f"learned_init_state: mixer(s) {c.layer_mixers()} hold no recurrent state to learn")
            self.init_params = nn.ParameterList(
                torch.zeros(zero[k].shape[1:] + ((2,) if zero[k].is_complex() else ())) for k in self.init_keys)
            no_weight_decay(*self.init_params)

    # --- state ---------------------------------------------------------------
    def init_state(self, batch_size: int, device=None) -> State:
        """The state before any token: the layers' init_state, or with ``learned_init_state`` the learned one."""
        state = {f"{i}.{k}": v for i, b in enumerate(self.blocks) for k, v in b.init_state(batch_size, device).items()}
        for k, p in zip(self.init_keys, self.init_params or ()):
            v = torch.view_as_complex(p) if state[k].is_complex() else p
            state[k] = v.to(state[k].device).unsqueeze(0).repeat(batch_size, *[1] * v.dim())
        return state

    def recurrent_state_keys(self) -> list[str]:
        """The keys of the model state that hold a fixed-size floating-point recurrence: every real or complex tensor
        whose shape does not grow with the tokens (SSM / matrix states, RNN hidden and cell states, conv tails,
        token-shift states). Not: integer tensors (positions, ``pos``) and tensors with a dimension that grows with the
        tokens seen (attention's KV cache ``k`` / ``v``: size 0 in ``init_state``). What ``train.init_state``
        perturbs (gaussian), takes from another sequence (other_sequence) and learns (learned)."""
        zero = {f"{i}.{k}": v for i, b in enumerate(self.blocks) for k, v in b.init_state(1, "meta").items()}
        return [k for k, t in zero.items() if (t.is_floating_point() or t.is_complex()) and 0 not in t.shape]

    def state_size(self, seq_len: int) -> int:
        """Floats held per sequence after seq_len tokens, summed over layers."""
        return sum(b.state_size(seq_len) for b in self.blocks)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_active_parameters(self) -> int:
        """Parameters that touch one token: the total less the experts each MoE layer leaves unused (all but top_k)."""
        idle = sum((m.num_experts - m.top_k) * (m.w13[0].numel() + m.w2[0].numel()) for m in self.modules() if isinstance(m, MoE))
        return self.num_parameters() - idle

    def aux_loss(self) -> Tensor | None:
        """The mean over the MoE layers (rnnlab.layers.moe) of their load-balancing losses in the last forward call;
        None when the model has none. The trainer adds it times train.aux_loss_coef."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        return torch.stack(losses).mean() if losses else None

    # --- forward ---------------------------------------------------------------
    def _check_inputs(self, inputs: Tensor) -> None:
        c = self.config
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if c.vocab_size:
            if inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"expected token ids of shape (B, T) and dtype int64, got {tuple(inputs.shape)} {inputs.dtype}")
            # checked where it costs no device sync (on CPU; an accelerator's embedding asserts on its own)
            if inputs.device.type == "cpu" and inputs.numel() and bool(((inputs < 0) | (inputs >= c.vocab_size)).any()):
                raise ValueError(f"token ids must be in [0, vocab_size = {c.vocab_size}), got values in "
                                 f"[{int(inputs.min())}, {int(inputs.max())}]")
        elif inputs.dim() != 3 or inputs.shape[-1] != c.input_dim or not inputs.is_floating_point():
            raise ValueError(f"expected float features of shape (B, T, {c.input_dim}), got {tuple(inputs.shape)} {inputs.dtype}")

    def forward(self, inputs: Tensor, state: State | None = None, *, cu_seqlens: Tensor | None = None,
                attention_mask: Tensor | None = None, prefix_len: Tensor | int | None = None) -> tuple[Tensor, State]:
        """inputs (B, T) or (B, T, input_dim) -> (outputs, state).

        cu_seqlens (N + 1,) int64: inputs are (1, T_total) holding N sequences; the state has N rows;
        outputs are (1, T_total, ...) ("lm", "regress") or (N, num_classes) ("classify").
        attention_mask (B, T) of 0/1: row b's sequence is its tokens where the mask is 1, in order (left
        padding, as HF's generate sends, or right padding); outputs keep the (B, T) layout, zeros at
        the padding; the state has B rows, each after its own last real token.
        prefix_len (B,) or int: each row's first tokens of this call form the prompt that the bidirectional layers
        (``ModelConfig.bidirectional_every``) also read right to left (rnnlab.models.bidirectional); ignored by a
        model without them; not with cu_seqlens or attention_mask."""
        if attention_mask is not None:
            self._check_inputs(inputs)
            if cu_seqlens is not None or prefix_len is not None:
                raise ValueError("pass cu_seqlens (packed) or attention_mask (padded), not both; prefix_len takes neither")
            return self._forward_padded(inputs, state, attention_mask)
        x, new = self.features(inputs, state, cu_seqlens=cu_seqlens, prefix_len=prefix_len)
        out, cap = decode.linear(self.head, x), self.config.logit_soft_cap
        return (out if cap is None else cap * torch.tanh(out / cap)), new

    def features(self, inputs: Tensor, state: State | None = None, *, cu_seqlens: Tensor | None = None,
                 prefix_len: Tensor | int | None = None) -> tuple[Tensor, State]:
        """What the head reads: inputs -> (features (B, T, D), or (B, D) / (N, D) pooled for "classify"; state)."""
        self._check_inputs(inputs)
        if prefix_len is not None:
            if cu_seqlens is not None:
                raise ValueError("prefix_len is not supported with packed inputs (cu_seqlens): give padded rows")
            prefix_len = check_prefix_len(prefix_len, inputs.shape[0], inputs.shape[1], inputs.device)
        packing = None
        if cu_seqlens is not None:
            if inputs.shape[0] != 1:
                raise ValueError(f"with cu_seqlens the inputs must be (1, T_total) (sequences packed back to back), got {tuple(inputs.shape)}")
            packing = cu_seqlens if isinstance(cu_seqlens, Packing) else Packing.build(cu_seqlens, inputs.shape[1])
        batch = inputs.shape[0] if packing is None else len(packing.lengths)
        dt = inputs[..., -1] if self.config.time_input else None  # (B, T): the last feature is Δt
        x = self.embed(inputs)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        if state is None:
            state = self.init_state(batch, inputs.device)
        else:
            self._check_state_keys(state)
        new: State = {}
        for i, block in enumerate(self.blocks):
            prefix = f"{i}."
            kw = {} if prefix_len is None else {"prefix_len": prefix_len}  # a reservoir block takes none
            x, s = block(x, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, packing, dt, **kw)
            new.update({prefix + k: v for k, v in s.items()})
        x = self.norm(x)
        if self.config.head == "classify":
            x = self._pool(x, packing)
        return x, new

    def _check_state_keys(self, state: State) -> None:
        """Every key of a model state belongs to a layer's mixer or MLP (each mixer checks its own keys)."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict of tensors (from init_state or a previous call), got {type(state).__name__}")
        n = len(self.blocks)
        bad = [k for k in state if not (k.split(".", 1)[0].isdigit() and int(k.split(".", 1)[0]) < n
                                        and k.split(".", 2)[1:2] in (["mixer"], ["mlp"]))]
        if bad:
            raise ValueError(f"state has key(s) {sorted(bad)[:5]} that belong to no layer; expected '<layer>.mixer.<key>' "
                             f"or '<layer>.mlp.<key>' with layer < {n}")

    def _pool(self, x: Tensor, packing: Packing | None) -> Tensor:
        """(B, T, D) -> (B, D), or packed (1, T, D) -> (N, D): each sequence's last token or its mean."""
        if packing is None:
            return x[:, -1] if self.config.pool == "last" else x.mean(1)
        lengths = torch.tensor(packing.lengths, device=x.device)
        if self.config.pool == "last":
            return x[0, lengths.cumsum(0) - 1]
        seq = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths)
        return x.new_zeros(len(lengths), x.shape[-1]).index_add_(0, seq, x[0]) / lengths[:, None].to(x.dtype)

    def _forward_padded(self, inputs: Tensor, state: State | None, mask: Tensor) -> tuple[Tensor, State]:
        if not isinstance(mask, Tensor) or mask.shape != inputs.shape[:2] or not bool(torch.all((mask == 0) | (mask == 1))):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"attention_mask must be a (B, T) = {tuple(inputs.shape[:2])} tensor of 0/1 (1 on real tokens), got {got}")
        keep = mask.bool()
        lengths = keep.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("attention_mask: every row needs at least one real token (a 1)")
        cu = cu_seqlens_from_lengths(lengths.cpu())
        out, new = self(inputs[keep].unsqueeze(0), state, cu_seqlens=cu)
        if self.config.head == "classify":
            return out, new
        full = out.new_zeros(*inputs.shape[:2], out.shape[-1])
        full[keep] = out[0]
        return full, new

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One recurrent step: token (B,) ids or (B, input_dim) -> (output for that step, state)."""
        out, state = self(token.unsqueeze(1), state)
        return (out[:, 0] if out.dim() == 3 else out), state

    # --- closed-form readout (readout="ridge") ---------------------------------
    @torch.no_grad()
    def accumulate(self, inputs: Tensor, targets: Tensor) -> int:
        """Add a batch to the ridge sums: the features of every scored position (regress: all its targets scored) or of
        every pooled sequence with its one-hot class (classify). -> rows added."""
        X, _ = self.features(inputs)
        if self.config.head == "classify":
            Y = torch.nn.functional.one_hot(targets.long(), self.config.num_classes)
        else:
            keep = ~torch.isnan(targets).any(-1)
            X, Y = X[keep], targets[keep]
        self.ridge.add(X.reshape(-1, X.shape[-1]), Y.reshape(X.shape[0], -1))
        return X.shape[0]

    @torch.no_grad()
    def fit_readout(self, ridge: float, gram: Tensor | None = None, moment: Tensor | None = None) -> None:
        """Set the head to the ridge solution of the accumulated sums (rnnlab.models.readout.RidgeReadout.solve)."""
        W, b = self.ridge.solve(ridge, gram, moment)
        self.head.weight.copy_(W.to(self.head.weight.dtype))
        self.head.bias.copy_(b.to(self.head.bias.dtype))

    # --- optimisation helpers -------------------------------------------------
    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices; none on norms, biases, 1-D params and params
        tagged ``_no_weight_decay``. Every parameter lands in exactly one group."""
        decay, no_decay, seen = [], [], set()
        for p in self.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            skip = p.dim() < 2 or getattr(p, "_no_weight_decay", False)  # norms and biases are 1-D
            (no_decay if skip else decay).append(p)
        assert len(decay) + len(no_decay) == len(seen)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # --- generation -----------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: Tensor | list[Tensor], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, attention_mask: Tensor | None = None) -> Tensor | list[Tensor]:
        """Prefill with the parallel form, then one recurrent step per token for all rows together.
        temperature == 0 is greedy decoding.

        prompt (B, T0) int64 -> (B, T0 + max_new_tokens); with ``attention_mask`` (B, T0) the prompts are
        the masked rows (left padding: the new tokens follow each row's last real token); a list of 1-D
        prompts of any lengths -> the list of prompt + new tokens. Prompts of different lengths are
        prefilled packed and decoded together at their own positions: each gets what it gets alone."""
        if self.config.head != "lm":
            raise ValueError('generate() needs head="lm"')
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if isinstance(prompt, (list, tuple)):
            if not prompt or any(not isinstance(p, Tensor) or p.dim() != 1 or p.numel() == 0 for p in prompt):
                raise ValueError("generate(): a list of prompts must hold non-empty 1-D token tensors")
            cu = cu_seqlens_from_lengths([p.numel() for p in prompt])
            logits, state = self(torch.cat(list(prompt)).unsqueeze(0), cu_seqlens=cu)
            last = logits[0, cu[1:] - 1]
        elif attention_mask is not None:
            logits, state = self(prompt, attention_mask=attention_mask)
            last = logits[:, -1]  # the real last token of a left-padded row
            if not bool(attention_mask[:, -1].bool().all()):
                raise ValueError("generate(): attention_mask must be left-padded (every row's last token real)")
        else:
            logits, state = self(prompt)
            last = logits[:, -1]
        new = []
        for _ in range(max_new_tokens):
            nxt = _sample(last, temperature, top_k, generator)
            new.append(nxt[:, None])
            logits, state = self(nxt[:, None], state)
            last = logits[:, -1]
        new = torch.cat(new, 1) if new else last.new_zeros(last.shape[0], 0, dtype=torch.int64)
        if isinstance(prompt, (list, tuple)):
            return [torch.cat([p, n.to(p.dtype)]) for p, n in zip(prompt, new)]
        return torch.cat([prompt, new.to(prompt.dtype)], 1)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    """logits (B, V) -> token ids (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
