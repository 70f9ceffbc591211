"""Fuzz targets for the small formats: the .mhc sidecar, tokenizer.json and TOML configs.

- mhc: every byte is covered by the file's sha256 or is structure, so ANY change must be
  rejected (FormatError);
- tokenizer: JSON-aware mutations and byte damage; a truncated file must be rejected, and a
  tokenizer that is accepted must round-trip Rust text exactly with ids inside its vocabulary
  (DataError otherwise);
- config: TOML-aware mutations and byte damage; an accepted config must build its model (on the
  meta device: shapes only) and count its parameters (ConfigError / NotSupportedError otherwise).
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import ConfigError, DataError, FormatError, NotSupportedError
from .mutate import flip_bytes, lie, put_uint, splice, truncate
from .mutate_text import _paths, mutate_json, mutate_toml
from .runner import Case, Target

SAMPLE_RUST = "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{:?} é ✓\", v);\n}\n"


def _bytes_case(rng: random.Random, original: bytes, name: str, header_fields: list[tuple[int, int]]) -> Case:
    kind = rng.choice(["flip", "flip", "truncate", "splice", "lie"])
    if kind == "flip":
        data = flip_bytes(rng, original, 0, len(original))
    elif kind == "truncate":
        data = truncate(rng, original)
    elif kind == "splice":
        data = splice(rng, original)
    else:
        pos, width = rng.choice(header_fields)
        data = put_uint(original, pos, width, lie(rng, int.from_bytes(original[pos:pos + width], "little")))
    return Case({name: data}, kind if data != original else "noop", must_reject=data != original)


def mhc_target(seed_file: Path) -> Target:
    from ..export.mhc_file import read_mhc

    original = seed_file.read_bytes()
    header = [(4, 4), (8, 4), (12, 4), (16, 4)]  # version, n_streams, n_layers, n_res
    return Target("mhc", FormatError, lambda rng: _bytes_case(rng, original, "model.mhc", header),
                  lambda folder: read_mhc(folder / "model.mhc"), lambda result, case: None)


def tokenizer_target(seed_file: Path) -> Target:
    from ..data.tokenizer import Tokenizer

    text = seed_file.read_text(encoding="utf-8")
    original = text.encode("utf-8")
    paths = _paths(__import__("json").loads(text))

    def mutate(rng: random.Random) -> Case:
        if rng.random() < 0.6:
            return Case({"tokenizer.json": mutate_json(rng, text, paths).encode("utf-8")}, "json", must_reject=False)
        kind = rng.choice(["flip", "truncate", "splice"])
        data = {"flip": lambda: flip_bytes(rng, original, 0, len(original)), "truncate": lambda: truncate(rng, original),
                "splice": lambda: splice(rng, original)}[kind]()
        return Case({"tokenizer.json": data}, kind, must_reject=kind == "truncate")

    def accepted_problem(tok, case: Case) -> str | None:
        try:
            ids = tok.encode(SAMPLE_RUST)
            if any(not 0 <= i < tok.vocab_size for i in ids):
                return "encode produced an id outside the vocabulary"
            if tok.decode(ids) != SAMPLE_RUST:
                return "accepted a tokenizer that does not round-trip text"
        except DataError:
            return None
        except Exception as e:  # noqa: BLE001
            return f"accepted a tokenizer that fails on use ({type(e).__name__}: {e})"
        return None

    return Target("tokenizer", DataError, mutate, lambda folder: Tokenizer.load(folder / "tokenizer.json"), accepted_problem)


def config_target(seed_file: Path) -> Target:
    import torch

    from ..config import load_config, require_supported
    from ..model.gpt import GPT, count_params

    text = seed_file.read_text()
    original = text.encode()

    def mutate(rng: random.Random) -> Case:
        if rng.random() < 0.7:
            data = text
            for _ in range(rng.randint(1, 3)):
                data = mutate_toml(rng, data)
            return Case({"config.toml": data.encode()}, "toml", must_reject=False)
        kind = rng.choice(["flip", "splice"])
        data = flip_bytes(rng, original, 0, len(original)) if kind == "flip" else splice(rng, original)
        return Case({"config.toml": data}, kind, must_reject=False)

    def load(folder: Path):
        cfg = load_config(folder / "config.toml")
        require_supported(cfg)
        return cfg

    def accepted_problem(cfg, case: Case) -> str | None:
        try:
            with torch.device("meta"):
                count_params(GPT(cfg.model))
        except Exception as e:  # noqa: BLE001
            return f"accepted a config whose model cannot be built ({type(e).__name__}: {str(e)[:120]})"
        return None

    return Target("config", (ConfigError, NotSupportedError), mutate, load, accepted_problem)
