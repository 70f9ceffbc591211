"""Instruction pairs for supervised fine-tuning: a request in words, the Rust code as the answer.

Why this module exists: a model pretrained on raw code has never seen a conversation, so the
chat template puts it somewhere it has never been. SFT (train/sft.py) needs (user, assistant)
pairs; these are made here, offline, from code whose meaning is written next to it:

- synthetic: every generated program (data/synthetic.py, so every answer compiles) becomes a
  request built from its main item's doc comment, signature and methods, in one of several
  phrasings;
- real Rust: documented top-level items of a folder of .rs files, from the training split of
  the same seeded split data/prepare.py uses (so validation files never become pairs).

The answer is the code in a ```rust fence, as chat models write it. Held-out requests for
evaluation (eval/api_check.py) use phrasings and names that no training pair uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .corpus import iter_rust_files
from .rust_items import RustItem, parse_items
from .synthetic import FLAVOURS, Flavour, generate_program

# {what}: "function `fn f(x: i32) -> i32`", "struct `Point`", ...; {doc}: the item's doc sentence
TRAIN_PHRASINGS = [
    "Write a Rust {what}.{doc}",
    "Implement a {what} in Rust.{doc}",
    "Can you write a {what}?{doc}",
    "Give me Rust code for a {what}.{doc}",
    "{doc_first}Write it as a Rust {what}.",
    "Rust: a {what}.{doc}",
]
# never used for training pairs: the chat check asks with these
HELDOUT_PHRASINGS = [
    "Please write the Rust {what} for me.{doc}",
    "I need a {what} written in Rust.{doc}",
    "Show me a Rust {what}.{doc}",
    "Could you implement a Rust {what}?{doc}",
]
SYNTHETIC_SEED_OFFSET = 7919  # pair programs are drawn from another stream than pretraining's


@dataclass(frozen=True)
class Pair:
    user: str
    assistant: str
    name: str  # the main item's name (to check held-out names)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]


def fence(code: str) -> str:
    return "```rust\n" + code.rstrip("\n") + "\n```"


def _methods(items: list[RustItem], name: str) -> list[str]:
    out = []
    for it in items:
        if it.kind == "impl" and it.name == name:
            for line in it.text.split("\n"):
                s = line.strip()
                if line.startswith("    ") and not line.startswith("     ") and (s.startswith("fn ") or s.startswith("pub fn ")):
                    out.append(s.split("fn ", 1)[1].split("(", 1)[0])
    return out


def request(items: list[RustItem], phrasing: str) -> tuple[str, str] | None:
    """(request text, main item name) for a program's items, or None if it has no main item."""
    main = next((it for it in items if it.kind in ("fn", "struct", "enum", "trait")), None)
    if main is None:
        return None
    what = f"function `{main.signature}`" if main.kind == "fn" else f"{main.kind} `{main.name}`"
    methods = _methods(items, main.name)
    extra = f" It has the methods {', '.join(f'`{m}`' for m in methods)}." if methods else ""
    if "{doc_first}" in phrasing:  # the description leads, the methods follow the request
        text = phrasing.format(what=what, doc_first=main.doc + " " if main.doc else "") + extra
    else:
        text = phrasing.format(what=what, doc=(" " + main.doc if main.doc else "") + extra)
    return text, main.name


def pair_for_program(source: str, rng: random.Random, phrasings: list[str] = TRAIN_PHRASINGS) -> Pair | None:
    items = parse_items(source)
    req = request(items, rng.choice(phrasings))
    return None if req is None else Pair(req[0], fence(source), req[1])


def synthetic_pairs(n: int, seed: int = 0, flavour: str | Flavour = "synthetic",
                    phrasings: list[str] = TRAIN_PHRASINGS, exclude_names: set[str] | None = None) -> list[Pair]:
    """`n` pairs from generated programs (deterministic for a seed); every answer compiles."""
    fl = FLAVOURS[flavour] if isinstance(flavour, str) else flavour
    rng = random.Random(seed + SYNTHETIC_SEED_OFFSET)
    out: list[Pair] = []
    for _ in range(50 * n + 100):
        if len(out) == n:
            break
        p = pair_for_program(generate_program(rng, fl), rng, phrasings)
        if p is not None and not (exclude_names and p.name in exclude_names):
            out.append(p)
    return out


def heldout_pairs(n: int, seed: int = 1, flavour: str = "synthetic-small", train_pairs: int = 4000) -> list[Pair]:
    """Pairs for evaluation: held-out phrasings, and names that `train_pairs` training pairs of
    `flavour` (seed 0) never use, drawn from the flavour's templates with the full word lists."""
    seen = {p.name for p in synthetic_pairs(train_pairs, 0, flavour)}
    base = FLAVOURS[flavour]
    wide = Flavour(templates=base.templates, vocab=None, max_lines=base.max_lines,
                   test_probability=base.test_probability, max_items=base.max_items)
    return synthetic_pairs(n, seed + 1_000_003, wide, HELDOUT_PHRASINGS, exclude_names=seen)


def rust_dir_pairs(root: Path, seed: int = 0, val_fraction: float = 0.05, max_pairs: int | None = None) -> list[Pair]:
    """Pairs from the documented fn/struct/enum/trait items of the training split of `root`."""
    from .prepare import _dedup, split_documents  # the split pretraining used

    docs = _dedup([text for _, text in iter_rust_files(Path(root))])
    train, _ = split_documents(docs, val_fraction, seed) if len(docs) >= 2 else (docs, [])
    rng = random.Random(seed + SYNTHETIC_SEED_OFFSET)
    out: list[Pair] = []
    for text in train:
        for item in parse_items(text):
            if item.doc and item.kind in ("fn", "struct", "enum", "trait"):
                req = request([item], rng.choice(TRAIN_PHRASINGS))
                if req is not None:
                    out.append(Pair(req[0], fence(item.text), req[1]))
                    if max_pairs is not None and len(out) >= max_pairs:
                        return out
    return out


def extract_rust(answer: str) -> str | None:
    """The code of the first fenced block of an answer (```rust or a bare ```), None if none."""
    start = answer.find("```")
    if start < 0:
        return None
    body = answer[start + 3:]
    newline = body.find("\n")
    if newline < 0:
        return None
    body = body[newline + 1:]
    end = body.find("```")
    return body if end < 0 else body[:end]
