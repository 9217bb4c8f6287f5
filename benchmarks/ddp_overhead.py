"""Issue-24 benchmark: data parallelism on torch's engines against the hand-written all-reduce they replaced.

    flock /tmp/rnnlab-bench.lock python benchmarks/ddp_overhead.py [--mixer gated_deltanet] [--d-model 128]
        [--layers 2] [--batch 32] [--seq-len 256] [--procs 2] [--threads 1] [--rounds 5] [--steps 3] [--warmup 2]
        [--json out.json]

One invocation starts ``--procs`` gloo processes on this machine (torch.multiprocessing, the process group that
torchrun would set up), each with ``--threads`` threads. Every process builds the same model (same seed) once per
method and trains it on its rows of the same global batch (``--batch`` rows of ``--seq-len`` random bytes, a
function of the step), loss scaled as rnnlab's trainers scale it (sum over the process's tokens / global tokens,
times the number of processes where the engine averages), AdamW step included. Methods, one model each:

* ``ddp``: ``DistributedDataParallel`` (bucketed all-reduce overlapped with backward), as ``train.parallel=ddp``;
* ``fsdp``: FSDP2 ``fully_shard`` per block then the root, as ``train.parallel=fsdp``;
* ``flat``: THE OLD METHOD (rnnlab.train.distributed before merge 5e3bddd), reimplemented below: after the whole
  backward, every gradient copied into one flat buffer, one blocking all-reduce, copied back;
* ``local``: no communication at all (each process steps on its own gradients): the compute-only ceiling.

A timed step runs between two barriers (all processes start together; the slowest one ends it); tokens/s =
batch x seq_len / seconds per step. The methods run in turns: each round runs ``--steps`` timed steps of every
method, in an order rotated every round, after ``--warmup`` untimed steps of each, so a change of a shared
machine's load hits them alike. Reported: the median over rounds of each method's tokens/s, its min-max, and the
median over rounds of the per-round ratio to ``flat``; and the time of one all-reduce of the flat gradient alone.
At the end the three synchronised models (they trained on the same batches) are compared: their weights agree up
to float summation order (measured: bit for bit), so they did the same work.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

METHODS = ("ddp", "fsdp", "flat", "local")


# ---- THE OLD METHOD (removed at merge 5e3bddd): one flat all-reduce of every gradient after backward -------------
def flat_all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients over processes in one flat buffer: no bucketing, no overlap with the backward pass."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
# ---------------------------------------------------------------------------------------------------------------------


def build(args, method):
    """(module the step calls, optimizer, parameters) of one method, from the same seed on every process."""
    from rnnlab import ModelConfig, SequenceModel
    from rnnlab.train.distributed import wrap

    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers, mixer=args.mixer))
    net = wrap(model, method) if method in ("ddp", "fsdp") else model
    params = list(model.parameters())
    return net, model, torch.optim.AdamW(params, lr=1e-3), params


def batch(args, step, rank, world):
    """This process's rows of the global batch of ``step`` (inputs, targets)."""
    g = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 256, (args.batch, args.seq_len + 1), generator=g)
    b = args.batch // world
    rows = tokens[rank * b:(rank + 1) * b]
    return rows[:, :-1], rows[:, 1:]


def train_step(net, opt, params, method, inputs, targets, world, global_tokens):
    opt.zero_grad(set_to_none=True)
    y, _ = net(inputs)
    loss = torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), targets.reshape(-1), reduction="sum")
    if method == "flat":  # the old trainer: a plain sum over processes
        (loss / global_tokens).backward()
        flat_all_reduce_grads(params)
    else:  # the trainer's scaling: DDP and FSDP average over processes, so this reduces to the sum
        (loss / global_tokens * world).backward()
    opt.step()


def worker(rank, args, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(args.procs))
    torch.set_num_threads(args.threads)
    # FSDP2 warns that a block returns a view (an in-place op on it would skip a hook); none follows here, and the
    # weights agree with the other methods bit for bit (checked at the end)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    dist.init_process_group("gloo", rank=rank, world_size=args.procs)
    world, global_tokens = args.procs, args.batch * args.seq_len
    runs = {m: build(args, m) for m in METHODS}
    steps = {m: 0 for m in METHODS}

    def run(m, n):
        net, _, opt, params = runs[m]
        for _ in range(n):
            x, t = batch(args, steps[m], rank, world)
            train_step(net, opt, params, m, x, t, world, global_tokens)
            steps[m] += 1

    for m in METHODS:
        run(m, args.warmup)
    times = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
        for m in order:
            dist.barrier()
            t0 = time.perf_counter()
            run(m, args.steps)
            dist.barrier()
            times[m].append((time.perf_counter() - t0) / args.steps)
    # the synchronised methods trained on the same batches: same weights up to summation order
    from rnnlab.testing import rel_err
    from rnnlab.train.distributed import full_tensor

    whole = {m: [full_tensor(p.detach()) for p in runs[m][1].parameters()] for m in ("ddp", "fsdp", "flat")}
    agree = {m: max(rel_err(a, b) for a, b in zip(whole[m], whole["flat"])) for m in ("ddp", "fsdp")}
    # the communication alone: one all-reduce of a buffer the size of the flat gradient
    buf, ar = torch.zeros(sum(p.numel() for p in runs["flat"][3])), []
    for _ in range(10):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        ar.append(time.perf_counter() - t0)
    if rank == 0:
        out.put({"times": times, "agree": agree, "params": runs["flat"][1].num_parameters(), "all_reduce_s": statistics.median(ar)})
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixer", default="gated_deltanet")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="global batch (rows)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.batch % args.procs:
        raise SystemExit(f"--batch {args.batch} must be divisible by --procs {args.procs}")
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    load0 = os.getloadavg()[0]
    t0 = time.time()
    mp.start_processes(worker, args=(args, free_port(), out), nprocs=args.procs, start_method="spawn")
    res = out.get()
    tok = args.batch * args.seq_len
    tps = {m: [tok / s for s in res["times"][m]] for m in METHODS}
    ratio = {m: statistics.median(a / b for a, b in zip(tps[m], tps["flat"])) for m in METHODS}
    print(f"{args.mixer}, d_model {args.d_model}, {args.layers} layers ({res['params']:,} parameters), global batch "
          f"{args.batch} x {args.seq_len}, {args.procs} gloo processes x {args.threads} thread(s), torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.steps} steps; load {load0:.2f} -> {os.getloadavg()[0]:.2f}; {time.time() - t0:.0f} s")
    print(f"{'method':<8} {'tokens/s (median)':>18} {'min-max':>17} {'/ flat (median of rounds)':>26}")
    for m in METHODS:
        print(f"{m:<8} {statistics.median(tps[m]):>18,.0f} {min(tps[m]):>8,.0f}-{max(tps[m]):<8,.0f} {ratio[m]:>26.3f}")
    print(f"one all-reduce of the {res['params'] * 4 / 1e6:.1f} MB flat gradient: {res['all_reduce_s'] * 1e3:.1f} ms (median of 10); "
          f"a step of flat: {statistics.median(res['times']['flat']) * 1e3:.0f} ms")
    print("weights after the run vs flat (rel. error): " + ", ".join(f"{m} {e:.1e}" for m, e in res["agree"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "tokens_per_s": tps, "all_reduce_s": res["all_reduce_s"], "ratio_to_flat": ratio, "agree": res["agree"],
                       "load": [load0, os.getloadavg()[0]], "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
