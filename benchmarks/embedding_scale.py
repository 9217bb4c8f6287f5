"""Why GPT-2's embedding scale starves a classic RNN of its input (docs/reproductions.md, "Initialization").

For a 2-layer LSTM model on streaming parity (d_model 64, batch 64, AdamW at 3e-3), with embedding_init
"gpt2" (N(0, 0.02)) and "unit" (N(0, 1/d) times sqrt(d)): the RMS of the token embedding, of the first
block's mixer output and of its MLP output at initialization (what the residual stream is made of), the
embedding's relative change per Adam step over the first 100 steps, and the loss after them.
Run: ``python benchmarks/embedding_scale.py [--mixer lstm] [--steps 100]``."""
from __future__ import annotations

import argparse

import torch

from rnnlab import ModelConfig, SequenceModel
from rnnlab.runtime import set_threads
from rnnlab.tasks import create_task


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def measure(mixer: str, init: str, steps: int, lr: float = 3e-3) -> dict:
    task = create_task("parity")
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(vocab_size=2, d_model=64, n_layers=2, mixer=mixer, embedding_init=init))
    batch = task.train_batch(64, 0, 0)
    with torch.no_grad():
        x = model.embed(batch.inputs) * model.embed_scale
        block = model.blocks[0]
        y, _ = block.mixer(block.norm1(x))
        mlp = block.mlp(block.norm2(x + y))
    out = {"embedding_rms": rms(x), "mixer_out_rms": rms(y), "mlp_out_rms": rms(mlp)}
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=lr, betas=(0.9, 0.98))
    change = []
    for step in range(steps):
        batch = task.train_batch(64, 0, step)
        logits, _ = model(batch.inputs)
        loss_sum, _ = task.loss_terms(logits, batch.targets)
        loss = loss_sum / task.count_scored(batch.targets).clamp_min(1)
        before = model.embed.weight.detach().clone()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        change.append(float((model.embed.weight.detach() - before).norm() / before.norm()))
    k = min(10, steps)
    out.update(change_first=sum(change[:k]) / k, change_last=sum(change[-k:]) / k, loss=float(loss.detach()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixer", default="lstm")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    set_threads(1)
    for init in ("gpt2", "unit"):
        r = measure(args.mixer, init, args.steps)
        print(f"{init:5s} embedding RMS {r['embedding_rms']:.3f}, block-1 mixer out {r['mixer_out_rms']:.3f}, "
              f"MLP out {r['mlp_out_rms']:.3f}; embedding change per step {100 * r['change_first']:.1f}% "
              f"(first 10) -> {100 * r['change_last']:.1f}% (last 10); loss after {args.steps} steps {r['loss']:.3f}")


if __name__ == "__main__":
    main()
