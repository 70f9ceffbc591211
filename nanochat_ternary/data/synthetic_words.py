"""Word lists and naming helpers for the synthetic Rust generator (see synthetic.py).

Why this module exists: the generated programs must use varied, random identifiers so that a
small model learns Rust syntax rather than memorising a handful of programs, while staying
readable and valid (no keywords, no clashes inside one file). `Names` hands out identifiers
that are unique within one program; `Item` is what every template returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NOUNS = [
    "value", "count", "total", "score", "item", "price", "width", "height", "depth", "speed",
    "level", "weight", "limit", "offset", "amount", "balance", "size", "length", "rate", "delta",
    "factor", "bonus", "cost", "distance", "energy", "health", "points", "radius", "stock",
    "budget", "capacity", "margin", "quota", "reward", "signal", "volume", "age", "step", "base",
    "gain", "load", "fuel", "charge", "tally", "grade", "rank", "tick", "delay", "span", "mass",
]
VERBS = [
    "compute", "calc", "get", "find", "update", "scale", "adjust", "measure", "check", "apply",
    "merge", "sum", "build", "clamp", "eval", "estimate", "process", "combine", "reduce", "score",
    "rate", "track", "blend", "derive", "mix", "shift", "count", "collect", "weigh", "tally",
]
TYPES = [
    "Point", "Counter", "Account", "Player", "Sensor", "Robot", "Matrix", "Buffer", "Order",
    "Ticket", "Engine", "Planet", "Wallet", "Timer", "Tile", "Cell", "Car", "Book", "Task",
    "Packet", "Budget", "Meter", "Gauge", "Ship", "Tower", "Garden", "Library", "Drone", "Battery",
    "Camera", "Invoice", "Recipe", "Sample", "Window", "Village", "Station", "Rocket",
]
PLURALS = [
    "values", "items", "scores", "prices", "weights", "counts", "samples", "readings", "points",
    "levels", "amounts", "costs", "ticks", "grades", "sizes", "lengths", "numbers", "entries",
]
WORDS = [
    "apple", "river", "stone", "cloud", "maple", "tiger", "ember", "frost", "coral", "amber",
    "cedar", "delta", "lotus", "raven", "orbit", "pixel", "quartz", "sable", "tulip", "willow",
]
# enums whose variants belong together, so matches read naturally
ENUMS = {
    "Color": ["Red", "Green", "Blue", "Yellow", "Black", "White"],
    "Direction": ["North", "South", "East", "West"],
    "Status": ["Active", "Idle", "Failed", "Done", "Pending"],
    "Mode": ["Fast", "Slow", "Eco", "Turbo"],
    "Weather": ["Sunny", "Cloudy", "Rainy", "Snowy", "Windy"],
    "Priority": ["Low", "Medium", "High", "Critical"],
    "Phase": ["Start", "Running", "Paused", "Stopped"],
    "Suit": ["Hearts", "Diamonds", "Clubs", "Spades"],
    "Season": ["Spring", "Summer", "Autumn", "Winter"],
    "Level": ["Debug", "Info", "Warn", "Error"],
    "Signal": ["Green", "Amber", "Red"],
    "Terrain": ["Grass", "Sand", "Water", "Rock", "Ice"],
}
INT_TYPES = ["i32", "i64"]


def snake(*parts: str) -> str:
    return "_".join(parts)


@dataclass
class Item:
    """One generated top-level item (or a few that belong together) and its tests."""

    code: str  # rustfmt-formatted Rust, no trailing newline
    tests: list[tuple[str, list[str]]] = field(default_factory=list)  # (test fn name, body lines)
    imports: set[str] = field(default_factory=set)  # e.g. "use std::collections::HashMap;"


class Names:
    """Hands out identifiers unique within one program."""

    def __init__(self, rng: random.Random, vocab: int | None = None):
        self.rng = rng
        self.used: set[str] = set()
        self.vocab = vocab  # draw only from the first `vocab` words of each list (None: all)

    def _pick(self, words: list[str]) -> str:
        return self.rng.choice(words[: self.vocab] if self.vocab else words)

    def take(self, make) -> str:
        for _ in range(20):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        i = 2
        while f"{name}{i}" in self.used:
            i += 1
        self.used.add(f"{name}{i}")
        return f"{name}{i}"

    def var(self) -> str:
        return self.take(lambda: self._pick(NOUNS))

    def plural(self) -> str:
        return self.take(lambda: self._pick(PLURALS))

    def func(self, verb: str | None = None) -> str:
        return self.take(lambda: snake(verb or self._pick(VERBS), self._pick(NOUNS)))

    def type_name(self) -> str:
        return self.take(lambda: self._pick(TYPES))

    def enum(self) -> tuple[str, list[str]]:
        name = self.take(lambda: self._pick(list(ENUMS)))
        base = name.rstrip("0123456789")
        return name, list(ENUMS[base])

    def word(self) -> str:
        return self._pick(WORDS)


def doc(rng: random.Random, text: str, indent: str = "", p: float = 0.5) -> list[str]:
    """A `///` doc comment line with probability p."""
    return [f"{indent}/// {text}"] if rng.random() < p else []


def vis(rng: random.Random, p: float = 0.6) -> str:
    return "pub " if rng.random() < p else ""


def rust_lit(x) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(float(x))
    if isinstance(x, str):
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(x)


def trunc_div(a: int, b: int) -> int:
    """Rust integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def trunc_rem(a: int, b: int) -> int:
    """Rust `%` (sign follows the dividend)."""
    return a - b * trunc_div(a, b)


FN_CALL_WIDTH = 60  # rustfmt's default `fn_call_width`


def split_args(args: str) -> list[str]:
    """Split a Rust argument list at top-level commas (outside brackets and strings)."""
    parts, depth, start, in_str, i = [], 0, 0, False, 0
    while i < len(args):
        c = args[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
        i += 1
    parts.append(args[start:].strip())
    return parts


def macro_lines(line: str, force: bool = False) -> list[str]:
    """rustfmt-style layout of a one-line macro statement such as `assert_eq!(a, b);`.

    Arguments wider than `fn_call_width` go one per line; a single nested macro argument
    (`assert!(matches!(a, b));`) is overflowed the way rustfmt does it.
    """
    if not force and (len(line) <= FN_CALL_WIDTH + 4 or "!(" not in line):
        return [line]  # fast path: `x!(` + `)` leave at most 60 columns of arguments
    indent = line[: len(line) - len(line.lstrip())]
    body = line.strip()
    suffix = ";" if body.endswith(";") else ""
    body = body.rstrip(";")
    head, sep, rest = body.partition("!(")
    if not sep or not rest.endswith(")") or not head.isidentifier():
        return [line]
    args = rest[:-1]
    if len(args) <= FN_CALL_WIDTH and len(line) <= 100 and not force:
        return [line]
    parts = split_args(args)
    if len(parts) == 1:
        inner = macro_lines(indent + parts[0], force=True)
        if len(inner) == 1:
            return [line]
        return [f"{indent}{head}!({inner[0].strip()}", *inner[1:-1], f"{inner[-1]}){suffix}"]
    if head in ("write", "writeln", "format", "println"):  # rustfmt keeps the values on one line
        fmt_at = next((i for i, p in enumerate(parts) if p.startswith('"')), len(parts) - 1)
        parts = parts[: fmt_at + 1] + ([", ".join(parts[fmt_at + 1:])] if parts[fmt_at + 1:] else [])
    return ([f"{indent}{head}!("] + [f"{indent}    {p}," for p in parts[:-1]]
            + [f"{indent}    {parts[-1]}", f"{indent}){suffix}"])
