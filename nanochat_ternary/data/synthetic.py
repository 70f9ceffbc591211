"""The embedded default training data: seeded small Rust programs that all compile.

Why this module exists: the project must train and be evaluated without downloading anything,
so it ships a generator of small, self-contained Rust files (`rustc --edition 2021 --crate-type
lib` accepts every one; warnings such as dead code are allowed). The distribution is meant to
be learnable by a small model in ~1000 steps: a moderate number of templates (synthetic_funcs,
synthetic_iters, synthetic_types, synthetic_traits) in consistent rustfmt style, filled with
random identifiers and literals so that the model has to learn syntax rather than memorise.
A program is one to a few items, optionally followed by a `#[cfg(test)] mod tests` whose
assertions hold (expected values are computed in Python), about 8-40 lines in total.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from .synthetic_funcs import arith_fn, loop_fn
from .synthetic_iters import collection_fn, iter_fn, option_fn, result_fn
from .synthetic_traits import describe_trait, generic_fn, generic_struct, numeric_trait, operator_impl
from .synthetic_types import container_struct, data_enum, numeric_struct, range_match, unit_enum
from .synthetic_words import Item, Names, macro_lines

# (template, weight): functions are the most common, larger type/trait templates rarer
TEMPLATES = [
    (arith_fn, 3), (loop_fn, 4), (iter_fn, 4), (result_fn, 2), (option_fn, 2), (collection_fn, 3),
    (numeric_struct, 3), (container_struct, 2), (unit_enum, 3), (range_match, 2), (data_enum, 2),
    (numeric_trait, 2), (describe_trait, 1), (operator_impl, 2), (generic_fn, 3), (generic_struct, 1),
]
MIN_LINES, MAX_LINES = 8, 40
TEST_PROBABILITY = 0.45


@dataclass(frozen=True)
class Flavour:
    """How hard the generated corpus is: which templates, how many names, how long, tests or not."""

    templates: tuple = tuple(TEMPLATES)
    vocab: int | None = None  # words per name list (None: all)
    max_lines: int = MAX_LINES
    test_probability: float = TEST_PROBABILITY
    max_items: int | None = None  # items per program (None: as many as fit the line target)

    def fingerprint(self) -> str:
        """Identifies the corpus definition (this flavour and the generator's source code), so a
        prepared dataset is rebuilt when either changes."""
        names = ",".join(f"{t.__name__}:{w}" for t, w in self.templates)
        code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("synthetic*.py"))))
        return f"{names}|{self.vocab}|{self.max_lines}|{self.test_probability}|{self.max_items}|{code.hexdigest()[:16]}"


# "synthetic": the full default corpus. "synthetic-small": the same generator narrowed (the
# loop, iterator, enum and struct templates, whose bodies mostly reuse one parameter; 6 names per
# list; no tests; one item per program, so a completion ends after one) so that the ~1.5M
# parameter model of scripts/validate_e2e.sh learns to write whole programs in 1000 CPU steps.
# Tracking many random variable names (the arithmetic template) is what such a small, briefly
# trained model gets wrong most.
FLAVOURS = {
    "synthetic": Flavour(),
    "synthetic-small": Flavour(
        templates=((loop_fn, 2), (iter_fn, 2), (numeric_struct, 2), (unit_enum, 2)),
        vocab=6, max_lines=24, test_probability=0.0, max_items=1),
}


def _tests_block(items: list[Item]) -> list[str]:
    lines = ["#[cfg(test)]", "mod tests {", "    use super::*;"]
    for item in items:
        for name, body in item.tests:
            if body:
                lines += ["", "    #[test]", f"    fn {name}() {{", *[f"        {b}" for b in body], "    }"]
    return lines + ["}"]


def _assemble(items: list[Item], with_tests: bool) -> str:
    imports = sorted({i for item in items for i in item.imports}, key=lambda s: s.rstrip(";"))
    parts = ["\n".join(imports)] if imports else []
    parts += [item.code for item in items]
    if with_tests and any(body for item in items for _, body in item.tests):
        parts.append("\n".join(_tests_block(items)))
    return "\n\n".join(parts) + "\n"


def _format(item: Item) -> Item:
    """Lay out over-wide macro calls (assert_eq!, write!, ...) the way rustfmt does."""
    code = "\n".join(out for line in item.code.split("\n") for out in macro_lines(line))
    tests = [(name, [out for b in body for out in macro_lines("        " + b)]) for name, body in item.tests]
    return Item(code, [(name, [b[8:] for b in body]) for name, body in tests], item.imports)


def _lines(text: str) -> int:
    return text.count("\n")


def generate_program(rng: random.Random, flavour: Flavour = FLAVOURS["synthetic"]) -> str:
    """One random, compilable Rust source file of about 8-40 lines."""
    max_lines = flavour.max_lines
    target = rng.randint(MIN_LINES + 4, max(MIN_LINES + 4, max_lines - 6))
    with_tests = rng.random() < flavour.test_probability
    names = Names(rng, flavour.vocab)
    funcs = [t for t, _ in flavour.templates]
    weights = [w for _, w in flavour.templates]
    items: list[Item] = []
    text = ""
    for _ in range(8):
        item = _format(rng.choices(funcs, weights)[0](rng, names))
        candidate = _assemble(items + [item], with_tests)
        if _lines(candidate) > max_lines and with_tests:
            candidate = _assemble(items + [item], False)  # drop the tests before the item
        if _lines(candidate) > max_lines:
            if _lines(text) >= MIN_LINES:
                break
            continue  # too long to fit: draw another item
        with_tests = with_tests and "#[cfg(test)]" in candidate
        items.append(item)
        text = candidate
        if _lines(text) >= target or len(items) == flavour.max_items:
            break
    if _lines(text) < MIN_LINES and flavour.max_items is None:  # eight over-long draws in a row (practically never)
        text = _assemble(items + [arith_fn(rng, names), arith_fn(rng, names)], False)
    return text


def generate_programs(n: int, seed: int = 0, flavour: str = "synthetic") -> list[str]:
    """`n` programs, deterministic for a given seed; `flavour` is a key of FLAVOURS."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown synthetic flavour {flavour!r} (expected one of {', '.join(FLAVOURS)})")
    rng = random.Random(seed)
    return [generate_program(rng, FLAVOURS[flavour]) for _ in range(n)]
