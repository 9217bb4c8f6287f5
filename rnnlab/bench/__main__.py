"""`python -m rnnlab.bench ...` == `rnnlab bench ...` (works without the rest of the CLI)."""
import argparse
import sys

from rnnlab.bench.cli import register


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.bench")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
