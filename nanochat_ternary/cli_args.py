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
