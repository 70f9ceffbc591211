"""The `nanochat` command line.

Each stage registers its own subcommands (`register(subparsers)` in its `commands.py`), so this
file stays a dispatcher. Errors of the project's own types print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NanochatError

# modules that define `register(subparsers)`; each adds its subcommands with set_defaults(func=...)
COMMAND_MODULES = [
    "nanochat_ternary.train.commands",  # params, train, sample, bench train
    "nanochat_ternary.train.sft_commands",  # sft
    "nanochat_ternary.export.commands",  # export
    "nanochat_ternary.infer.commands",  # generate, bench infer
    "nanochat_ternary.serve.commands",  # serve, bench serve, bench load
    "nanochat_ternary.fuzz.commands",  # bench fuzz
    "nanochat_ternary.data.commands",  # data fetch-debian, data build
    "nanochat_ternary.eval.commands",  # eval bpb, eval compile, eval humaneval-rs
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanochat", description="Ternary language models for Rust code.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks that print JSON").add_subparsers(dest="bench", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NanochatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
