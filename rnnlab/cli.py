"""`rnnlab ...` entry point. Sub-commands live beside what they drive:
list (here), train/sweep/report/suite (rnnlab.train.cli), bench (rnnlab.bench.cli)."""
from __future__ import annotations

import argparse
import importlib
import sys

from rnnlab.options import csv_list, positive_int

COMMAND_MODULES = ["rnnlab.train.cli", "rnnlab.bench.cli"]


def _fmt_floats(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def cmd_list(args) -> int:
    """Table of registered mixers: family, parameters at d_model, state floats per sequence at two lengths."""
    from rnnlab.layers.registry import available_mixers, create_mixer, mixer_info

    lengths = args.seq_lens
    header = ["mixer", "family", f"params@d={args.d_model}"] + [f"state@T={t}" for t in lengths]
    rows = []
    for name in available_mixers():
        info = mixer_info(name)
        try:
            m = create_mixer(name, args.d_model)
            rows.append([name, info.family, _fmt_floats(sum(p.numel() for p in m.parameters()))] + [_fmt_floats(m.state_size(t)) for t in lengths])
        except Exception as e:  # a mixer that cannot be built at this width says why instead of hiding
            rows.append([name, info.family, f"error: {e}"] + [""] * len(lengths))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print(f"\n{len(rows)} mixers; state = floats held per sequence (attention: KV cache grows with T).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description="Recurrent sequence models: train, compare, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered mixers with parameter counts and state sizes")
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--seq-lens", type=lambda s: csv_list(s, positive_int, "comma-separated lengths"), default=[1024, 8192],
                   help="comma-separated lengths (default 1024,8192)")
    p.set_defaults(func=cmd_list)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``rnnlab`` command: an entry point, so it sets the process-wide allocator (rnnlab.runtime);
    thread counts are the sub-commands' (train.threads, sweep threads_per_worker, bench --threads)."""
    from rnnlab.runtime import tune_allocator

    args = build_parser().parse_args(argv)
    tune_allocator()  # large tensors reuse freed heap memory instead of fresh page-faulted mappings (runtime.py)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
