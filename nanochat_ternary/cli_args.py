"""Argument types shared by the stages' subcommands."""

from __future__ import annotations

import argparse


def positive_int(name: str):
    """An argparse `type` accepting integers >= 1, with an error that names the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {value}")
        return value

    return parse


KV_CACHE_TYPES = ("f32", "f16")  # infer/kv_cache.py maps them to torch dtypes


def kv_cache_arg(p: argparse.ArgumentParser) -> None:
    """`--kv-cache` for the commands that load an engine (infer/kv_cache.py)."""
    p.add_argument("--kv-cache", choices=KV_CACHE_TYPES, default="f32",
                   help="keys and values cached as f32 (default: the engine's tokens are the training model's) or f16 "
                        "(half the cache memory; 1.10-1.16x decode at 1,536 tokens of context, nano on 2 cores)")
