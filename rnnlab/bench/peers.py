"""Peers: the implementations a user would pick instead of rnnlab, timed on the same inputs.

    subjects, notes = build_peers(d_model)    # list[Subject], list[str] (why a peer is absent)

Always available (plain PyTorch): ``torch.nn.LSTM``, ``torch.nn.GRU`` (oneDNN kernels on CPU) and
causal ``F.scaled_dot_product_attention`` with q/k/v/out projections and a preallocated
(static) KV cache for decode. With the optional extra ``rnnlab[peers]`` (HF ``transformers``;
never flash-linear-attention, whose Triton kernels HF would call even for CPU tensors) the
pure-PyTorch paths of HF's recurrent layers, built from small configs with random weights
(nothing is downloaded): MambaMixer, Mamba2Mixer, RWKV(-4) time-mix, RecurrentGemma's
recurrent block (RG-LRU), xLSTM's mLSTM layer, Qwen3-Next's gated DeltaNet (its
``torch_chunk_gated_delta_rule``). Each peer names the rnnlab mixer it is compared with
(``vs``: the first registered of its candidates); the runner turns that into a ratio.
Decode is measured where the peer's recurrent state can be carried without HF's cache
classes (LSTM, GRU, SDPA, RWKV, RG-LRU, mLSTM); other peers' decode rows say so.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.bench.runner import Subject

__all__ = ["build_peers", "PEER_COUNTERPARTS"]

# peer name -> rnnlab mixers it is compared with, in order of preference
PEER_COUNTERPARTS = {
    "torch.nn.LSTM": ["lstm"],
    "torch.nn.GRU": ["gru"],
    "torch.sdpa": ["attention"],
    "hf.Mamba": ["mamba", "mamba1", "s6"],
    "hf.Mamba2": ["mamba2", "ssd"],
    "hf.RWKV4": ["rwkv4", "rwkv6", "rwkv"],
    "hf.RG-LRU": ["hawk", "rglru", "rg_lru", "griffin"],
    "hf.xLSTM-mLSTM": ["mlstm", "xlstm"],
    "hf.Qwen3Next-GatedDeltaNet": ["gated_deltanet", "gated_delta_net"],
}


def _vs(name: str, registered: set[str]) -> str | None:
    return next((c for c in PEER_COUNTERPARTS[name] if c in registered), None)


# --- plain PyTorch peers ------------------------------------------------------

def _rnn_peer(cls, name: str, D: int, vs) -> Subject:
    """torch.nn.LSTM / GRU: train and prefill through the layer (oneDNN); decode through the cell's kernel on the
    same weights (what torch.nn.LSTMCell / GRUCell run: a layer called on one token costs several times more)."""
    rnn = cls(D, D, batch_first=True)
    lstm = cls is nn.LSTM
    cell = torch.lstm_cell if lstm else torch.gru_cell

    def step(x, s):
        h = cell(x[:, 0], s if lstm else s[0], rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        return (h[0] if lstm else h), (h if lstm else (h,))

    def prefill(x):
        hidden = rnn(x)[1]
        return (hidden[0][0], hidden[1][0]) if lstm else (hidden[0],)

    return Subject(
        "peer", name, "nonlinear", rnn,
        fwd=lambda x: rnn(x)[0],
        prefill=prefill,
        step=step,
        state_floats=lambda T: 2 * D if lstm else D,
        vs=vs,
        note=f"decode: torch.nn.{'LSTMCell' if lstm else 'GRUCell'}'s kernel on the layer's weights",
    )


class _SDPAttention(nn.Module):
    """q/k/v/out projections around causal F.scaled_dot_product_attention; static KV cache for decode."""

    def __init__(self, D: int, num_heads: int):
        super().__init__()
        self.h, self.dh = num_heads, D // num_heads
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.out = nn.Linear(D, D, bias=False)

    def _split(self, x):
        B, T, _ = x.shape
        return self.qkv(x).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # (3, B, H, T, dh)

    def forward(self, x):
        q, k, v = self._split(x)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(x.shape))

    def prefill(self, x, extra: int = 256):
        q, k, v = self._split(x)
        B, H, T, dh = k.shape
        kc = k.new_zeros(B, H, T + extra, dh)
        vc = v.new_zeros(B, H, T + extra, dh)
        kc[:, :, :T], vc[:, :, :T] = k, v
        self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.shape))
        return {"k": kc, "v": vc, "pos": T}

    def step(self, x, s):
        q, k, v = self._split(x)
        p = s["pos"]
        if p >= s["k"].shape[2]:  # grow the static cache (amortised)
            s["k"] = torch.cat([s["k"], torch.zeros_like(s["k"])], 2)
            s["v"] = torch.cat([s["v"], torch.zeros_like(s["v"])], 2)
        s["k"][:, :, p : p + 1], s["v"][:, :, p : p + 1] = k, v
        o = F.scaled_dot_product_attention(q, s["k"][:, :, : p + 1], s["v"][:, :, : p + 1])
        s["pos"] = p + 1
        return self.out(o.transpose(1, 2).reshape(x.shape)), s


def _sdpa_peer(D: int, vs) -> Subject:
    heads = 4
    if vs is not None:
        try:
            from rnnlab.layers.registry import create_mixer

            heads = getattr(create_mixer(vs, D), "num_heads", heads)
        except Exception:
            pass
    while D % heads:
        heads -= 1
    m = _SDPAttention(D, heads)
    return Subject("peer", "torch.sdpa", "attention", m, fwd=m, prefill=m.prefill, step=m.step,
                   state_floats=lambda T: 2 * T * D, vs=vs, note=f"{heads} heads, static KV cache")


# --- HF transformers peers (pure-PyTorch paths) -------------------------------

def _hf_mamba(D, vs):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(hidden_size=D, state_size=16, expand=2, conv_kernel=4, num_hidden_layers=1, use_mambapy=False)
    m = MambaMixer(cfg, layer_idx=0)
    return Subject("peer", "hf.Mamba", "diagonal", m, fwd=m, state_floats=lambda T: 2 * D * (16 + 3), vs=vs,
                   note="HF MambaMixer torch path (d_state 16, expand 2); decode needs HF cache, not measured")


def _hf_mamba2(D, vs):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    head_dim = 64 if (2 * D) % 64 == 0 else 2 * D // 4
    cfg = Mamba2Config(hidden_size=D, expand=2, head_dim=head_dim, num_heads=2 * D // head_dim, n_groups=1,
                       state_size=64, chunk_size=64, num_hidden_layers=1, conv_kernel=4)
    m = Mamba2Mixer(cfg, layer_idx=0)
    return Subject("peer", "hf.Mamba2", "matrix", m, fwd=m, vs=vs,
                   note=f"HF Mamba2Mixer torch_forward (d_state 64, head_dim {head_dim}, chunk 64); decode not measured")


def _hf_rwkv(D, vs):
    from transformers import RwkvConfig
    from transformers.models.rwkv.modeling_rwkv import RwkvSelfAttention

    cfg = RwkvConfig(hidden_size=D, attention_hidden_size=D, intermediate_size=4 * D, num_hidden_layers=1, context_length=1 << 16)
    m = RwkvSelfAttention(cfg, layer_id=0)
    with torch.no_grad():
        for p in m.parameters():  # HF leaves these empty until the model's _init_weights; give them sane values
            if p.dim() >= 2:
                nn.init.normal_(p, std=D**-0.5)
        m.time_decay.copy_(torch.linspace(-5, 1, D))
        m.time_first.fill_(math.log(0.3))
        for p in (m.time_mix_key, m.time_mix_value, m.time_mix_receptance):
            p.uniform_(0, 1)

    def extract_key_value(hidden, state=None):  # HF's, with the single-token shift read as (B, 1, D)
        if hidden.size(1) == 1 and state is not None:
            shifted = state[1][:, :, 0].unsqueeze(1)
        else:
            shifted = m.time_shift(hidden)
            if state is not None:
                shifted[:, 0] = state[1][:, :, 0]
        key = m.key(hidden * m.time_mix_key + shifted * (1 - m.time_mix_key))
        value = m.value(hidden * m.time_mix_value + shifted * (1 - m.time_mix_value))
        receptance = torch.sigmoid(m.receptance(hidden * m.time_mix_receptance + shifted * (1 - m.time_mix_receptance)))
        if state is not None:
            state[1][:, :, 0] = hidden[:, -1]
        return receptance, key, value, state

    # HF's own single-token path broadcasts the (B, D) shift state against x (B, 1, D) into (B, B, D) for B > 1
    m.extract_key_value = extract_key_value

    def init_state(x):
        B = x.shape[0]
        z = torch.zeros(B, D, 1, dtype=torch.float32, device=x.device)
        return [z.clone().to(x.dtype), z.clone().to(x.dtype), z.clone(), z.clone(), z.clone() - 1e38]

    return Subject("peer", "hf.RWKV4", "matrix", m, fwd=lambda x: m(x)[0], prefill=lambda x: m(x, state=init_state(x), use_cache=True)[1],
                   step=lambda x, s: m(x, state=s, use_cache=True),
                   state_floats=lambda T: 5 * D, vs=vs, note="HF RwkvSelfAttention (RWKV-4 time-mix, CPU loop; single-token shift read patched for B > 1)")


def _hf_rglru(D, vs):
    from transformers import RecurrentGemmaConfig
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

    heads = 4 if D % 4 == 0 else 1
    cfg = RecurrentGemmaConfig(hidden_size=D, lru_width=D, num_attention_heads=heads, num_key_value_heads=heads,
                               conv1d_width=4, num_hidden_layers=1, head_dim=D // heads)
    m = RecurrentGemmaRecurrentBlock(cfg, layer_idx=0)
    with torch.no_grad():
        for p in m.parameters():
            if torch.isnan(p).any() or p.abs().max() > 1e6 or p.abs().max() == 0:
                nn.init.normal_(p, std=D**-0.5)
        m.rg_lru.recurrent_param.uniform_(-4, -1)

    def fwd(x):
        pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        return m(x, pos, None, use_cache=False)[0]

    def prefill(x):
        pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        m(x, pos, None, use_cache=True)
        return {"pos": x.shape[1]}

    def step(x, s):
        pos = torch.full((x.shape[0], 1), s["pos"], device=x.device)
        y = m(x, pos, None, use_cache=True)[0]
        return y, {"pos": s["pos"] + 1}

    return Subject("peer", "hf.RG-LRU", "diagonal", m, fwd=fwd, prefill=prefill, step=step,
                   state_floats=lambda T: D + 3 * D, vs=vs,
                   note="HF RecurrentGemmaRecurrentBlock (conv + RG-LRU; state held inside the module)")


def _hf_mlstm(D, vs):
    from transformers import xLSTMConfig
    from transformers.models.xlstm.modeling_xlstm import xLSTMLayer

    heads = 4 if D % 4 == 0 else 1
    cfg = xLSTMConfig(hidden_size=D, num_heads=heads, qk_dim_factor=0.5, v_dim_factor=1.0, chunk_size=64,
                      num_hidden_layers=1, mode="train", return_last_states=True,
                      chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                      step_kernel="native")
    m = xLSTMLayer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if not torch.isfinite(p).all():
                nn.init.normal_(p, std=D**-0.5)

    def fwd(x):  # training: HF's chunkwise kernel (T a multiple of 64); eval: HF's inference wrapper
        cfg.mode = "train" if m.training else "inference"
        return m(x)[0]

    def prefill(x):
        cfg.mode = "inference"
        return m(x)[1]

    qk, v = D // 2 // heads, D // heads
    return Subject("peer", "hf.xLSTM-mLSTM", "matrix", m, fwd=fwd, prefill=prefill, step=lambda x, s: m(x, s),
                   state_floats=lambda T: heads * (qk * v + qk + 1), vs=vs,
                   note=f"HF xLSTMLayer native torch kernels ({heads} heads, qk 0.5 D, chunk 64)")


def _hf_qwen3next(D, vs):
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

    heads = 4 if D % 4 == 0 else 1
    dh = D // heads
    cfg = Qwen3NextConfig(hidden_size=D, linear_num_value_heads=heads, linear_num_key_heads=heads,
                          linear_key_head_dim=dh, linear_value_head_dim=dh, linear_conv_kernel_dim=4,
                          num_hidden_layers=1, layer_types=["linear_attention"], num_attention_heads=heads,
                          num_key_value_heads=heads, head_dim=dh)
    m = Qwen3NextGatedDeltaNet(cfg, layer_idx=0)
    with torch.no_grad():
        for p in m.parameters():
            if not torch.isfinite(p).all():
                nn.init.normal_(p, std=D**-0.5)
    return Subject("peer", "hf.Qwen3Next-GatedDeltaNet", "delta", m, fwd=m, state_floats=lambda T: heads * dh * dh, vs=vs,
                   note=f"HF Qwen3NextGatedDeltaNet torch_chunk_gated_delta_rule ({heads} heads of {dh}); decode not measured")


_HF_BUILDERS = {
    "hf.Mamba": _hf_mamba,
    "hf.Mamba2": _hf_mamba2,
    "hf.RWKV4": _hf_rwkv,
    "hf.RG-LRU": _hf_rglru,
    "hf.xLSTM-mLSTM": _hf_mlstm,
    "hf.Qwen3Next-GatedDeltaNet": _hf_qwen3next,
}


def build_peers(d_model: int, only_vs: set[str] | None = None, seed: int = 0) -> tuple[list[Subject], list[str]]:
    """Every peer buildable here -> (subjects, notes). ``only_vs``: keep peers compared with these mixers."""
    from rnnlab.layers.registry import available_mixers

    registered = set(available_mixers())
    subjects: list[Subject] = []
    notes: list[str] = []

    def want(name):
        return only_vs is None or _vs(name, registered) in only_vs

    def add(name, build):
        if not want(name):
            return
        torch.manual_seed(seed)
        try:
            subjects.append(build())
        except Exception as e:
            notes.append(f"{name}: could not be built ({type(e).__name__}: {str(e).splitlines()[0][:200]})")

    add("torch.nn.LSTM", lambda: _rnn_peer(nn.LSTM, "torch.nn.LSTM", d_model, _vs("torch.nn.LSTM", registered)))
    add("torch.nn.GRU", lambda: _rnn_peer(nn.GRU, "torch.nn.GRU", d_model, _vs("torch.nn.GRU", registered)))
    add("torch.sdpa", lambda: _sdpa_peer(d_model, _vs("torch.sdpa", registered)))
    if importlib.util.find_spec("fla") is not None:
        notes.append("flash-linear-attention is importable: HF peers would call its Triton kernels on CPU tensors; HF peers skipped")
    elif importlib.util.find_spec("transformers") is None:
        notes.append("HF transformers not installed: HF peers skipped (pip install 'rnnlab[peers]')")
    else:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # silence "falling back to the reference PyTorch implementation" notices
        for name, build in _HF_BUILDERS.items():
            add(name, lambda b=build, n=name: b(d_model, _vs(n, registered)))
    return subjects, notes
