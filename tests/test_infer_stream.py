"""Tests for nanochat_ternary.infer.stream.TextStream with a real trained BPE tokenizer."""

from __future__ import annotations

import pytest

from nanochat_ternary.data.tokenizer import train_tokenizer
from nanochat_ternary.infer.stream import TextStream


@pytest.fixture(scope="module")
def tok():
    texts = ["fn main() { let x = 1; println!(\"{}\", x); }\n"] * 20 + ["struct Point { x: i32, y: i32 }\n"] * 20
    return train_tokenizer(texts, vocab_size=300)


def _pushes(stream, ids):
    return [stream.push(i) for i in ids]


def test_concatenation_equals_decode_and_never_splits_characters(tok):
    text = "fn main() { let é = \"€😀\"; }  \n\tstruct 世界"
    ids = tok.encode(text)
    s = TextStream(tok)
    chunks = _pushes(s, ids) + [s.flush()]
    assert "".join(chunks) == text == s.text
    assert all("\ufffd" not in c for c in chunks)
    # the emoji is four byte tokens: its first three push nothing, the fourth the whole character
    emoji = tok.encode("😀")
    assert len(emoji) == 4
    s2 = TextStream(tok)
    assert _pushes(s2, emoji) == ["", "", "", "😀"]


def test_stop_string_spanning_tokens(tok):
    ids = tok.encode("let x = 1; STOP here")
    s = TextStream(tok, stop=["STOP"])
    out = "".join(_pushes(s, ids))
    assert s.stopped
    assert out == "let x = 1; " == s.text
    assert s.push(ids[0]) == "" and s.flush() == ""


def test_prefix_of_stop_is_held_until_it_cannot_match(tok):
    s = TextStream(tok, stop=["xyz"])
    assert s.push(tok.encode("a")[0]) == "a"
    assert s.push(tok.encode("x")[0]) == ""  # could start "xyz"
    assert s.push(tok.encode("y")[0]) == ""  # "xy" still could
    assert s.push(tok.encode("q")[0]) == "xyq"  # not a stop after all
    assert s.push(tok.encode("x")[0]) == ""
    assert s.flush() == "x"  # end of generation releases the held text
    assert s.text == "axyqx" and not s.stopped


def test_earliest_of_several_stops_wins(tok):
    ids = tok.encode("one two three")
    s = TextStream(tok, stop=["three", "two", ""])
    assert "".join(_pushes(s, ids)) == "one "
    assert s.stopped


def test_dangling_partial_character_flushes_as_replacement(tok):
    first_byte = tok.encode("😀")[0]
    s = TextStream(tok)
    assert s.push(first_byte) == ""
    assert s.flush() == "\ufffd"
