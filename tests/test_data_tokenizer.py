"""Tests for the byte-level BPE tokenizer (nanochat_ternary.data.tokenizer)."""

import json

import jinja2
import pytest

from nanochat_ternary.data.tokenizer import (
    CHAT_TEMPLATE,
    LLAMA3_PATTERN,
    MIN_VOCAB_SIZE,
    PRE_TOKENIZER_NAME,
    Tokenizer,
    train_tokenizer,
)
from nanochat_ternary.errors import DataError

CORPUS = [
    "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
    "struct Point {\n    x: f64,\n    y: f64,\n}\n\nimpl Point {\n    fn norm(&self) -> f64 {\n        (self.x * self.x + self.y * self.y).sqrt()\n    }\n}\n",
    "/// Doc comment.\npub fn count(v: &[u32]) -> usize {\n    v.iter().filter(|x| **x > 3).count()\n}\n",
    "let s = \"héllo wörld 日本語 🦀\";\n\tlet t = 'c';\n",
] * 20

TRICKY = [
    "fn main() {\n    let x = 42;\n    println!(\"{}\", x);\n}\n",
    "    \n\n\t\t   trailing spaces   \n\r\n  ",
    "Ünïcödé ß 日本語テキスト 한국어 Ελληνικά",
    "emoji 🦀🚀👩‍👩‍👧 and ZWJ, flags 🇫🇷",
    "numbers 1234567 3.14159 0xFF_u8 1e-9",
    "'s 'T 'RE it's don't WE'LL",
    "",
    "\x00\x01\x7f control bytes",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, 320)


def test_constants():
    assert PRE_TOKENIZER_NAME == "llama-bpe"
    assert LLAMA3_PATTERN == (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_exact(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_specials_have_fixed_ids(tok):
    assert (tok.eos_id, tok.bos_id, tok.im_start_id, tok.im_end_id) == (0, 0, 1, 2)
    assert tok.tokens()[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|endoftext|>")
    assert ids[0] == 1 and 2 in ids and ids[-1] == 0
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    assert tok.decode(ids, skip_special=True) == "user\nhi\n"


def test_vocab_tokens_merges(tok):
    assert tok.vocab_size == 320
    toks = tok.tokens()
    assert len(toks) == tok.vocab_size and len(set(toks)) == len(toks)
    merges = tok.merges()
    assert len(merges) == tok.vocab_size - 256 - 3
    for m in merges[:20]:
        a, b = m.split(" ")
        assert a + b in toks
    # common pieces of the corpus got merged: encoding is shorter than raw bytes
    assert len(tok.encode(CORPUS[1])) < len(CORPUS[1].encode()) / 2


def test_pre_tokenizer_splits_like_llama3(tok):
    # the regex isolates letters from a preceding non-letter, digits in groups of <= 3
    pieces = tok._hf.pre_tokenizer.pre_tokenize_str("x1234567 it'LL  fn")
    assert [p for p, _ in pieces] == ["x", "123", "456", "7", "Ġit", "'LL", "Ġ", "Ġfn"]


def test_decode_bytes_streaming_splits_utf8(tok):
    text = "🦀日本"
    ids = tok.encode(text)
    chunks = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(chunks) == text.encode()
    assert len(ids) > 3  # untrained characters fall back to bytes: partial UTF-8 per token


def test_save_load_roundtrip(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files left
    loaded = Tokenizer.load(path)
    assert loaded.tokens() == tok.tokens() and loaded.merges() == tok.merges()
    for text in TRICKY:
        assert loaded.encode(text) == tok.encode(text)
    assert Tokenizer.from_json(tok.to_json()).encode("fn x") == tok.encode("fn x")
    assert loaded.encode_batch(TRICKY[:3]) == [tok.encode(t) for t in TRICKY[:3]]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json.*not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match="bad.json"):
        Tokenizer.load(bad)


@pytest.mark.parametrize("key,value,words", [
    # the tokenizers library panics on both (pyo3's PanicException is a BaseException, so an
    # `except Exception` let it through): found by `nanochat bench fuzz --format tokenizer`
    ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, ["failed on it", "precompiled_charsmap"]),
    ("truncation", {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 5}, ["'truncation' must be null"]),
    ("padding", {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                 "pad_type_id": 0, "pad_token": "<|endoftext|>"}, ["'padding' must be null"]),
])
def test_load_turns_library_panics_and_settings_into_data_error(tok, tmp_path, key, value, words):
    doc = json.loads(tok.to_json())
    doc[key] = value
    bad = tmp_path / "hostile_tokenizer.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        Tokenizer.load(bad)
    for w in ("hostile_tokenizer.json", *words):
        assert w in str(e.value), str(e.value)


def test_load_rejects_wrong_special_ids(tok, tmp_path):
    data = json.loads(tok.to_json())
    data["added_tokens"][0]["content"] = "<|other|>"
    data["model"]["vocab"]["<|other|>"] = data["model"]["vocab"].pop("<|endoftext|>")
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="t.json.*<\\|endoftext\\|>"):
        Tokenizer.load(path)


def test_vocab_size_too_small():
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer(CORPUS, MIN_VOCAB_SIZE - 1)


def test_chat_template_renders_chatml():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fn?"}]
    out = jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nfn?<|im_end|>\n<|im_start|>assistant\n"
    out = jinja2.Template(CHAT_TEMPLATE).render(messages=messages[:1], add_generation_prompt=False)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n"
