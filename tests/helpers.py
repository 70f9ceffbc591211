"""Shared test fixtures: a tiny seeded model with a real tokenizer, and its GGUF export.

Why this module exists: the export, engine and server tests all need a small model that runs in
milliseconds on CPU, a tokenizer trained on the project's own synthetic Rust programs, and a
GGUF (+ .mhc) written by the real exporter. Building them here keeps every test suite on the
same shapes and the same files.

The model is randomly initialised (seeded) and then its norm gains and mHC logits are perturbed
away from their init values (1 and near-identity): with untouched init, a swapped norm or a
wrongly mapped mHC matrix would give identical outputs and tests could not see the bug.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from nanochat_ternary.config import config_from_dict
from nanochat_ternary.data.synthetic import generate_programs
from nanochat_ternary.data.tokenizer import Tokenizer, train_tokenizer
from nanochat_ternary.export.gguf_export import export_model
from nanochat_ternary.model.gpt import GPT

TINY_MODEL = {
    "hidden_dim": 256,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "ffn_mult": 2.0,
    "max_seq_len": 256,
    "vocab_size": 512,
}
N_PROGRAMS = 200


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE trained on ~200 synthetic programs (cached per process)."""
    return train_tokenizer(generate_programs(N_PROGRAMS, seed=0), vocab_size)


def make_tiny_model(seed: int = 0, **cfg_overrides) -> tuple[GPT, Tokenizer]:
    """A seeded random tiny GPT in eval mode and its tokenizer.

    `cfg_overrides` are ModelConfig fields (e.g. mhc_n_streams=2, use_mtp=True, group_size=256).
    The model's vocab_size is the requested one (default 512); the tokenizer is trained for that
    size and may have fewer tokens (the exporter pads the GGUF token list).
    """
    torch.set_flush_denormal(True)
    model_cfg = {**TINY_MODEL, **cfg_overrides}
    seq = min(256, model_cfg["max_seq_len"])
    cfg = config_from_dict({"model": model_cfg, "training": {"seq_length": seq}}, source="tests/helpers.py")
    tokenizer = tiny_tokenizer(min(cfg.model.vocab_size, 512))
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    model.init_weights(seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif ".mhc." in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return model.eval(), tokenizer


def make_tiny_gguf(out_dir: str | Path, quant: str = "tq2_0", **cfg_overrides) -> tuple[Path, Path | None, GPT]:
    """Export a `make_tiny_model(**cfg_overrides)` to `out_dir/tiny.gguf` (+ `tiny.mhc` when n > 1)."""
    out_dir = Path(out_dir)
    model, tokenizer = make_tiny_model(**cfg_overrides)
    gguf_path = out_dir / "tiny.gguf"
    mhc_path = out_dir / "tiny.mhc" if model.cfg.mhc_n_streams > 1 else None
    export_model(model, tokenizer, gguf_path, mhc_path, quant=quant)
    return gguf_path, mhc_path, model
