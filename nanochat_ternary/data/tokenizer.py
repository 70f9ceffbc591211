"""Byte-level BPE tokenizer (HF `tokenizers`), shaped so llama.cpp can load it from a GGUF.

Why this module exists: every stage (data prep, training, GGUF export, inference, the server)
needs the same tokenizer, and llama.cpp only tokenizes correctly when our pre-tokenizer is one
it implements under a known `tokenizer.ggml.pre` name. We use exactly llama3's split regex
(`llama-bpe`), byte-level mapping with the full 256-byte alphabet (so every string encodes,
nothing is ever <unk>), no normalizer, and three special tokens at ids 0, 1, 2:

- `<|endoftext|>`: the document separator, used as both BOS and EOS;
- `<|im_start|>`, `<|im_end|>`: ChatML turn markers (see CHAT_TEMPLATE).

The vocabulary produced by `train_tokenizer` may be smaller than requested when the corpus runs
out of pairs to merge; always use `Tokenizer.vocab_size` rather than the requested size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import DataError
from ..fsutil import atomic_write_text

# llama3's pre-tokenizer split; llama.cpp implements it as `llama-bpe`
# (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_NAME = "llama-bpe"  # GGUF `tokenizer.ggml.pre`

EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN]  # ids 0, 1, 2 in this order
EOS_ID = 0  # also what opens every document in the shards (prepare.py)

# 256 byte tokens + the specials + a few merges: anything smaller cannot be a useful BPE vocab.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 5

# ChatML (https://github.com/openai/openai-python/blob/release-v0.28.0/chatml.md), as a jinja2
# template in the form HF / llama.cpp expect under `tokenizer.chat_template`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table used by the ByteLevel pre-tokenizer.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards.
    (https://github.com/openai/gpt-2/blob/master/src/encoder.py)
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _build_pipeline(tok: HFTokenizer) -> None:
    """Install the llama-bpe pre-tokenizer and byte-level decoder on a bare HF tokenizer."""
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()


def is_rust_panic(e: BaseException) -> bool:
    """A panic inside the `tokenizers` Rust code: pyo3 raises it as `pyo3_runtime.PanicException`,
    a BaseException (not an Exception), so `except Exception` lets it through and it would end
    the process with a traceback. It cannot be imported by name, so it is recognised by its type."""
    return type(e).__name__ == "PanicException"


_PROBE = "fn main() {\n\tlet s = \"é ✓\";  // 0x1F\r\n}"


class Tokenizer:
    """A trained byte-level BPE tokenizer with the project's special tokens at ids 0..2."""

    def __init__(self, hf: HFTokenizer, source: str = "<memory>"):
        self._hf = hf
        self._source = source
        vocab = hf.get_vocab(with_added_tokens=True)
        for want_id, name in enumerate(SPECIAL_TOKENS):
            if vocab.get(name) != want_id:
                raise DataError(f"{source}: special token {name!r} must have id {want_id}, found {vocab.get(name)}")
        n = hf.get_vocab_size(with_added_tokens=True)
        by_id: list[str | None] = [None] * n
        for token, i in vocab.items():
            if not 0 <= i < n or by_id[i] is not None:
                raise DataError(f"{source}: token ids are not a contiguous range 0..{n - 1}")
            by_id[i] = token
        if any(t is None for t in by_id):
            raise DataError(f"{source}: token ids are not a contiguous range 0..{n - 1}")
        self._tokens: list[str] = by_id  # type: ignore[assignment]
        specials = set(SPECIAL_TOKENS)
        # raw bytes of each token, for decode_bytes (specials decode to their literal text)
        self._token_bytes: list[bytes] = []
        for t in self._tokens:
            if t in specials:
                self._token_bytes.append(t.encode("utf-8"))
                continue
            try:
                self._token_bytes.append(bytes(_UNICODE_TO_BYTE[c] for c in t))
            except KeyError as e:
                raise DataError(f"{source}: token {t!r} is not a byte-level token") from e

    # ---- construction / persistence -------------------------------------------------------
    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "Tokenizer":
        try:
            return cls._from_json(text, source)
        except BaseException as e:  # noqa: BLE001 - only Rust panics are caught, see is_rust_panic
            if not is_rust_panic(e):
                raise
            raise DataError(f"{source}: not a valid tokenizer.json (the tokenizers library failed on it: {e})") from None

    @classmethod
    def _from_json(cls, text: str, source: str) -> "Tokenizer":
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{source}: not a valid tokenizer.json ({e})") from e
        doc = json.loads(text)
        for key in ("truncation", "padding"):  # never written by train_tokenizer: they would silently cut or pad text
            if doc.get(key) is not None:
                raise DataError(f"{source}: '{key}' must be null (this project encodes whole texts; found {json.dumps(doc[key])[:80]})")
        model = doc.get("model", {})
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise DataError(f"{source}: tokenizer model must be BPE, found {model.get('type') if isinstance(model, dict) else model!r}")
        tok = cls(hf, source)
        # a byte-level BPE is lossless; one whose pre-tokenizer/decoder was altered is not
        if tok.decode(tok.encode(_PROBE)) != _PROBE:
            raise DataError(f"{source}: tokenizer does not round-trip text (its pre-tokenizer or decoder is not byte-level)")
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise DataError(f"{path}: tokenizer file not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read tokenizer file ({e})") from e
        return cls.from_json(text, source=str(path))

    def to_json(self) -> str:
        return self._hf.to_str(pretty=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (temp file in the same folder, then rename)."""
        atomic_write_text(path, self.to_json())

    # ---- encoding / decoding --------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in the text become their ids."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts, parallelised inside `tokenizers` (Rust threads)."""
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of the tokens concatenated; may end inside a UTF-8 character.

        Streaming detokenisers append these bytes to a buffer and emit only complete characters.
        """
        table = self._token_bytes
        try:
            return b"".join(table[i] for i in ids)
        except IndexError as e:
            raise DataError(f"token id out of range for a vocabulary of {len(table)}") from e

    # ---- vocabulary -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return 0

    @property
    def im_start_id(self) -> int:
        return 1

    @property
    def im_end_id(self) -> int:
        return 2

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def tokens(self) -> list[str]:
        """Token strings by id, exactly as stored in tokenizer.json (byte-level encoded)."""
        return list(self._tokens)

    def merges(self) -> list[str]:
        """BPE merges as "a b" strings in rank order (GGUF `tokenizer.ggml.merges`)."""
        raw = json.loads(self._hf.to_str())["model"]["merges"]
        # tokenizers >= 0.20 stores pairs as [a, b]; older versions as "a b" strings
        return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in raw]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts`; `vocab_size` includes the 3 special tokens."""
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + specials + merges), got {vocab_size!r}")
    if vocab_size > 2**32 - 1:
        raise DataError(f"vocab_size {vocab_size} is too large")
    hf = HFTokenizer(models.BPE())
    _build_pipeline(hf)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # added first, so they get ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, source="<trained>")
