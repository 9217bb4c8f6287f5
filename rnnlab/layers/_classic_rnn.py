"""Shared body of the classic RNN mixers (elman, lstm, gru): torch.nn.RNN/LSTM/GRU-compatible weights.

Not a mixer itself (the leading underscore keeps the layer loader from importing it as one);
elman.py, lstm.py and gru.py subclass it and register a name.

Parameters are named and laid out exactly as torch's single-layer modules (``weight_ih_l0``
(G*H, D), ``weight_hh_l0`` (G*H, H), ``bias_ih_l0``, ``bias_hh_l0``; gate order LSTM i,f,g,o and
GRU r,z,n) and initialised like them (uniform +-1/sqrt(H)), so weights copy both ways
(``from_torch`` / ``to_torch``). ``num_heads > 1`` makes the recurrence head-wise (FlashRNN,
Poeppel et al. 2024): ``weight_hh_l0`` is (NH, G*Kh, Kh), a block-diagonal recurrent matrix,
initialised +-1/sqrt(Kh). ``hidden_size != d_model`` adds an output projection H -> D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.ops.forms import check_form
from rnnlab.ops.rnn import BACKENDS, CELLS, rnn, torch_rnn
from rnnlab.ops.rnn.reference import NONLINEARITIES, cell_step, recurrent_matmul

_STATE_KEYS = {"elman": ("h",), "lstm": ("h", "c"), "gru": ("h",)}
_TORCH_CLS = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_TORCH_CELL_FN = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, ("elman", "tanh"): torch.rnn_tanh_cell,
                  ("elman", "relu"): torch.rnn_relu_cell}


class ClassicRNN(Mixer):
    """x (B, T, D) -> y (B, T, D) through one torch-compatible RNN layer of hidden size H.

    State: {"h": (B, H)} (+ {"c": (B, H)} for the LSTM), float32."""

    cell: str = ""

    def __init__(self, d_model: int, hidden_size: int | None = None, num_heads: int = 1, backend: str = "auto",
                 nonlinearity: str = "tanh"):
        super().__init__(d_model)
        H = d_model if hidden_size is None else hidden_size
        if not isinstance(H, int) or H <= 0:
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or H % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing hidden_size={H}, got {num_heads!r}")
        backend = check_form(backend, BACKENDS, self.cell)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        G = CELLS[self.cell][0]
        self.hidden_size, self.num_heads, self.backend, self.nonlinearity = H, num_heads, backend, nonlinearity
        Kh = H // num_heads
        self.weight_ih_l0 = nn.Parameter(torch.empty(G * H, d_model))
        shape_hh = (G * H, H) if num_heads == 1 else (num_heads, G * Kh, Kh)
        self.weight_hh_l0 = nn.Parameter(torch.empty(shape_hh))
        self.bias_ih_l0 = nn.Parameter(torch.empty(G * H))
        self.bias_hh_l0 = nn.Parameter(torch.empty(G * H))
        self.out_proj = nn.Linear(H, d_model, bias=False) if H != d_model else None
        k = 1 / math.sqrt(H)  # torch.nn.RNNBase.reset_parameters
        for p in (self.weight_ih_l0, self.bias_ih_l0, self.bias_hh_l0):
            nn.init.uniform_(p, -k, k)
        nn.init.uniform_(self.weight_hh_l0, -1 / math.sqrt(Kh), 1 / math.sqrt(Kh))

    # --- contract -----------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {k: torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype or torch.float32)
                for k in _STATE_KEYS[self.cell]}

    def state_size(self, seq_len: int) -> int:
        return len(_STATE_KEYS[self.cell]) * self.hidden_size

    def _gx(self, x: Tensor) -> Tensor:
        """All input projections in one matmul; the GRU keeps b_hh on the recurrent side (b_hn sits inside r*(.))."""
        b = self.bias_ih_l0 if self.cell == "gru" else self.bias_ih_l0 + self.bias_hh_l0
        return F.linear(x, self.weight_ih_l0, b)

    def _out(self, h: Tensor) -> Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _torch_prefill(self, x: Tensor, state: State) -> bool:
        """Whether ``parallel`` runs torch.nn's own fused layer (oneDNN on CPU, cuDNN on a GPU): with backend "auto",
        a torch.nn-shaped layer (one head), and no gradient wanted (prefill, evaluation), where it is the fastest
        forward there is; training keeps the kernel with its hand-written backward."""
        if self.backend != "auto" or self.num_heads != 1 or torch.is_autocast_enabled(x.device.type):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())
                                        or any(t.requires_grad for t in state.values())):
            return False
        dtypes = {x.dtype, self.weight_ih_l0.dtype, *(t.dtype for t in state.values())}
        return len(dtypes) == 1 and x.dtype in (torch.float32, torch.float64)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys = _STATE_KEYS[self.cell]
        if self._torch_prefill(x, state):
            h, final = torch_rnn(self.cell, x, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0,
                                 tuple(state[k] for k in keys), self.nonlinearity)
            return self._out(h), dict(zip(keys, final))
        h, final = rnn(self.cell, self._gx(x), self.weight_hh_l0, self.bias_hh_l0 if self.cell == "gru" else None,
                       initial_state=tuple(state[k] for k in keys), output_final_state=True, backend=self.backend,
                       nonlinearity=self.nonlinearity)
        return self._out(h), dict(zip(keys, final))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys = _STATE_KEYS[self.cell]
        xt = x[:, 0]
        w_hh = self.weight_hh_l0
        if self.num_heads == 1 and xt.dtype == w_hh.dtype == torch.float32 and all(state[k].dtype == torch.float32 for k in keys):
            # one fused aten op per step (the same kernel torch.nn.LSTMCell/GRUCell/RNNCell call)
            fn = _TORCH_CELL_FN[self.cell if self.cell != "elman" else ("elman", self.nonlinearity)]
            hx = (state["h"], state["c"]) if self.cell == "lstm" else state["h"]
            new = fn(xt, hx, self.weight_ih_l0, w_hh, self.bias_ih_l0, self.bias_hh_l0)
            new = new if isinstance(new, tuple) else (new,)
        else:
            r = recurrent_matmul(state["h"].float(), w_hh.float())
            if self.cell == "gru":
                r = r + self.bias_hh_l0.float()
            new = cell_step(self.cell, self._gx(xt).float(), r, tuple(state[k].float() for k in keys), self.nonlinearity)
        return self._out(new[0].to(x.dtype))[:, None], dict(zip(keys, new))

    # --- torch interchange ----------------------------------------------------
    @classmethod
    def from_torch(cls, module: nn.Module, backend: str = "auto") -> "ClassicRNN":
        """Copy a single-layer, unidirectional torch.nn.{RNN,LSTM,GRU} into a new mixer.

        The mixer is batch-first whatever ``module.batch_first`` says (weights do not depend on it).
        A module without biases gives zero biases."""
        tcls = _TORCH_CLS[cls.cell]
        if type(module) is not tcls:
            raise ValueError(f"{cls.__name__}.from_torch expects a torch.nn.{tcls.__name__}, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError(f"{cls.__name__}.from_torch: bidirectional modules are not supported (the mixer is causal)")
        if module.num_layers != 1:
            raise ValueError(f"{cls.__name__}.from_torch: num_layers must be 1 (stack mixers instead), got {module.num_layers}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{cls.__name__}.from_torch: proj_size > 0 is not supported, got {module.proj_size}")
        kw = {"nonlinearity": module.nonlinearity} if cls.cell == "elman" else {}
        mixer = cls(module.input_size, hidden_size=module.hidden_size, backend=backend, **kw)
        with torch.no_grad():
            mixer.weight_ih_l0.copy_(module.weight_ih_l0)
            mixer.weight_hh_l0.copy_(module.weight_hh_l0)
            for name in ("bias_ih_l0", "bias_hh_l0"):
                src = getattr(module, name, None)
                getattr(mixer, name).copy_(src if src is not None else torch.zeros(()))
        return mixer.to(module.weight_ih_l0.device, module.weight_ih_l0.dtype)

    def to_torch(self, batch_first: bool = True) -> nn.Module:
        """A torch.nn.{RNN,LSTM,GRU} with this mixer's weights (same outputs as the mixer without out_proj)."""
        if self.num_heads != 1:
            raise ValueError(f"{type(self).__name__}.to_torch: num_heads={self.num_heads} (block-diagonal recurrence) has no torch.nn equivalent; needs num_heads=1")
        if self.out_proj is not None:
            raise ValueError(f"{type(self).__name__}.to_torch: hidden_size={self.hidden_size} != d_model={self.d_model} adds an out_proj that torch.nn modules lack")
        kw = {"nonlinearity": self.nonlinearity} if self.cell == "elman" else {}
        w = self.weight_ih_l0
        module = _TORCH_CLS[self.cell](self.d_model, self.hidden_size, batch_first=batch_first, **kw).to(w.device, w.dtype)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(module, name).copy_(getattr(self, name))
        return module

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden_size={self.hidden_size}, num_heads={self.num_heads}, backend={self.backend!r}"
