"""Instruction pairs: items cut right, every synthetic answer compiles, held-out stays held out."""

import re

import pytest

from nanochat_ternary.data.instruct import (HELDOUT_PHRASINGS, TRAIN_PHRASINGS, extract_rust, heldout_pairs,
                                            rust_dir_pairs, synthetic_pairs)
from nanochat_ternary.data.corpus import iter_rust_files
from nanochat_ternary.data.prepare import split_documents
from nanochat_ternary.data.rust_items import parse_items

SOURCE = '''use std::fmt;

/// Adds one to `x`.
#[inline]
pub fn bump(x: i32) -> i32 {
    x + 1
}

pub fn long_one(
    first: i32,
    second: i32,
) -> i32 {
    first + second
}

/// A point.
#[derive(Debug)]
pub struct Point {
    x: i32,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.x)
    }
}

pub const LIMIT: u32 = 3;
'''


def test_parse_items_cuts_docs_attributes_and_multiline_signatures():
    items = parse_items(SOURCE)
    assert [(i.kind, i.name) for i in items] == [("fn", "bump"), ("fn", "long_one"), ("struct", "Point"),
                                                  ("impl", "Point"), ("const", "LIMIT")]
    bump = items[0]
    assert bump.doc == "Adds one to `x`." and bump.signature == "pub fn bump(x: i32) -> i32"
    assert bump.text.startswith("/// Adds one") and "#[inline]" in bump.text and bump.text.endswith("}\n")
    assert items[1].signature == "pub fn long_one(first: i32, second: i32) -> i32"
    assert items[2].doc == "A point." and items[2].text.count("\n") == 5


def test_synthetic_answers_compile_and_requests_name_the_item():
    from nanochat_ternary.eval.compile import compile_many, rustc_path

    if rustc_path() is None:
        pytest.skip("rustc not installed")
    pairs = synthetic_pairs(12, seed=3, flavour="synthetic") + synthetic_pairs(8, seed=3, flavour="synthetic-small")
    pairs += heldout_pairs(6)  # the full word lists
    assert len(pairs) == 26
    for p in pairs:
        assert p.assistant.startswith("```rust\n") and p.assistant.endswith("\n```")
        assert re.search(rf"\b{p.name}\b", p.user), p.user
    results = compile_many([extract_rust(p.assistant) for p in pairs])
    bad = [(p.assistant, r.stderr) for p, r in zip(pairs, results) if not r.ok]
    assert not bad, bad[:1]
    assert synthetic_pairs(5, seed=3) == synthetic_pairs(5, seed=3)  # deterministic


def test_heldout_pairs_use_unseen_names_and_phrasings():
    train = synthetic_pairs(4000, 0, "synthetic-small")
    held = heldout_pairs(32)
    assert len(held) == 32 and not {p.name for p in held} & {p.name for p in train}
    assert not set(TRAIN_PHRASINGS) & set(HELDOUT_PHRASINGS)
    lead = lambda ph: ph.split("{")[0]  # the phrasing's fixed opening words
    assert all(any(p.user.startswith(lead(ph)) for ph in HELDOUT_PHRASINGS) for p in held)
    assert not any(p.user.startswith(lead(ph)) for p in train for ph in HELDOUT_PHRASINGS)


def test_rust_dir_pairs_come_from_documented_items_of_the_training_split(tmp_path):
    for i in range(20):
        text = f"/// Returns {i}.\npub fn answer_{i}() -> u32 {{\n    {i}\n}}\n\npub fn undocumented_{i}() {{}}\n"
        (tmp_path / f"f{i}.rs").write_text(text)
    train, val = split_documents([t for _, t in iter_rust_files(tmp_path)], 0.05, 0)  # as prepare.py splits
    pairs = rust_dir_pairs(tmp_path, seed=0)
    names = {p.name for p in pairs}
    assert names == {parse_items(d)[0].name for d in train}
    assert not names & {parse_items(d)[0].name for d in val} and val
    p = pairs[0]
    assert p.assistant.startswith("```rust\n/// Returns") and "undocumented" not in p.assistant
    assert "Returns" in p.user and p.name in p.user


def test_extract_rust():
    assert extract_rust("Here:\n```rust\nfn a() {}\n```\nmore") == "fn a() {}\n"
    assert extract_rust("```\nfn b() {}") == "fn b() {}"  # unclosed (cut by max_tokens)
    assert extract_rust("no code") is None
