"""What makes MQAR recall bimodal at one seed and one learning rate (the reproduction issue, item 2)?

One training loop (AdamW, batch 64, the same data stream) trains two models on rnnlab's MQAR task (T = 64,
8 pairs, vocabulary 256, 1500 steps — the independent check's setting):
  rnnlab   SequenceModel(attention, d_model 64, 2 layers, 4 heads): RMSNorm, RoPE, SwiGLU
  torch    a standard GPT from plain torch modules: learned absolute positions, nn.TransformerEncoderLayer
           (pre-LayerNorm, ReLU MLP 4x, 4 heads), causal mask, final LayerNorm, linear head
and flips, one at a time from rnnlab's own setting toward the check's, what differed between the two loops:
the schedule (warmup + cosine vs one-cycle), weight decay on every parameter (embeddings and norms too),
filler tokens (random vs 0) and where the queries sit (Zoology's power law vs uniform later slots); and on
rnnlab's side the embedding scale (unit vs GPT-2's 0.02). Per setting and model: final accuracy on 512 held-out
sequences for each seed. Run: ``python benchmarks/mqar_sensitivity.py [--seeds 3] [--steps 1500]``; results go
to docs/reproductions.md ("MQAR: what the bimodality depends on")."""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab import ModelConfig, SequenceModel
from rnnlab.runtime import set_threads
from rnnlab.tasks import create_task
from rnnlab.tasks.base import rng_for


class TorchGPT(nn.Module):
    """A standard small GPT from torch modules (the check's baseline)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, max_len: int = 512):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="relu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, x):
        T = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def lr_at(step, total, lr, schedule):
    if schedule == "onecycle":  # torch's OneCycleLR defaults: 30 % up from lr/25, cosine down to lr/25e4
        up = int(0.3 * total)
        if step < up:
            return lr / 25 + (lr - lr / 25) * (1 - math.cos(math.pi * step / up)) / 2
        p = (step - up) / max(1, total - up)
        return lr / 25e4 + (lr - lr / 25e4) * (1 + math.cos(math.pi * p)) / 2
    warm = 50  # rnnlab's default: linear warmup, cosine to 0.1 lr
    if step < warm:
        return lr * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def build(kind, embedding_init):
    torch.manual_seed(SEED[0])
    if kind == "torch":
        return TorchGPT(256, 64, 2, 4)
    return SequenceModel(ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer="attention",
                                     mixer_kwargs={"num_heads": 4}, embedding_init=embedding_init))


SEED = [0]


def accuracy(model, batch) -> float:
    """Accuracy at the batch's answer positions (the model left in training mode)."""
    model.eval()
    with torch.no_grad():
        out = model(batch.inputs)
        logits = out[0] if isinstance(out, tuple) else out
        keep = batch.targets != -100
        acc = float((logits.argmax(-1)[keep] == batch.targets[keep]).float().mean())
    model.train()
    return acc


def run(kind, setting, seed, steps, every=None):
    """Final accuracy on 512 held-out sequences; with ``every``, the list of it after every ``every`` steps."""
    SEED[0] = seed
    task = create_task("mqar", seq_len=64, num_kv_pairs=8, vocab_size=256, test_lengths=[64],
                       random_non_queries=setting["filler"] == "random", power_a=setting["power_a"])
    model = build(kind, setting["embedding_init"])
    if setting["decay"] == "all":
        groups = [{"params": list(model.parameters()), "weight_decay": setting["wd"]}]
    else:  # rnnlab's rule: no decay on 1-D parameters (norms, biases) and embeddings' own tags
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": setting["wd"]}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=setting["lr"], betas=(0.9, 0.98))
    test = task.sample(512, 64, rng_for(seed, "test", 64), "test")
    accs = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, setting["lr"], setting["schedule"])
        b = task.sample(64, None, rng_for(seed, "train", step), "train")
        out = model(b.inputs)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if every and (step + 1) % every == 0:
            accs.append(round(accuracy(model, test), 3))
    return accs if every else accuracy(model, test)


RNNLAB = {"schedule": "cosine", "decay": "matrices", "wd": 0.1, "filler": "random", "power_a": 0.01, "lr": 3e-3,
          "embedding_init": "unit"}
STEPS_TOWARD_CHECK = [  # one change at a time, cumulative, from rnnlab's loop and data to the check's
    ("rnnlab loop and data", {}),
    ("+ one-cycle schedule", {"schedule": "onecycle"}),
    ("+ weight decay 0.01 on every parameter", {"decay": "all", "wd": 0.01}),
    ("+ filler tokens 0", {"filler": "zero"}),
    ("+ queries at uniform later slots (= the check)", {"power_a": 1.0}),  # p(g) ∝ a g^(a-1): a = 1 is uniform
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--settings", help="comma-separated indices of the steps toward the check to run (default: all)")
    args = ap.parse_args()
    set_threads(args.threads)
    results = []
    cumulative, setting = [], dict(RNNLAB)
    for name, change in STEPS_TOWARD_CHECK:
        setting = {**setting, **change}
        cumulative.append((name, setting))
    chosen = range(len(cumulative)) if not args.settings else [int(i) for i in args.settings.split(",")]
    for name, setting in (cumulative[i] for i in chosen):
        variants = [("rnnlab", "unit"), ("rnnlab", "gpt2"), ("torch", "unit")]
        for kind, emb in variants:
            s = {**setting, "embedding_init": emb}
            t0 = time.time()
            accs = [run(kind, s, seed, args.steps) for seed in range(args.seeds)]
            label = kind if kind == "torch" else f"rnnlab ({emb} embeddings)"
            results.append({"setting": name, "model": label, "acc": accs, "s": time.time() - t0})
            print(f"{name:48s} {label:26s} " + " ".join(f"{a:.3f}" for a in accs), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
