"""Valid seed files for the fuzz targets, made by the project's own writers.

Why this module exists: a mutation-based fuzzer is only as good as its seed, so each format
starts from what our exporter / trainer / tokenizer really write (a tiny model with MTP heads, an
n = 2 .mhc, a checkpoint with optimizer state), built in a few seconds from the synthetic corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import config_from_dict
from ..data.synthetic import generate_programs
from ..data.tokenizer import Tokenizer, train_tokenizer

TINY = {"hidden_dim": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_mult": 1.0,
        "max_seq_len": 128, "vocab_size": 512}
CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny.toml"


def tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    return train_tokenizer(generate_programs(100, seed=0), vocab_size)


def tiny_config(**model):
    return config_from_dict({"model": {**TINY, **model}, "training": {"seq_length": 32, "batch_size": 2}}, source="fuzz seed")


def tiny_model(seed: int = 0, **model):
    from ..model.gpt import GPT

    cfg = tiny_config(**model)
    torch.manual_seed(seed)
    net = GPT(cfg.model)
    net.init_weights(seed=seed)
    return cfg, net


def gguf_seed(folder: Path, tok: Tokenizer) -> Path:
    from ..export.gguf_export import export_model

    _, net = tiny_model(use_mtp=True, mtp_n_tokens=1)
    path = folder / "seed.gguf"
    export_model(net.eval(), tok, path, None, quant="tq2_0")
    return path


def mhc_seed(folder: Path) -> Path:
    from ..export.mhc_file import MhcParams, write_mhc

    rng = np.random.default_rng(0)
    params = MhcParams(2, rng.normal(size=(3, 1)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32),
                       rng.normal(size=(3, 2)).astype(np.float32))
    path = folder / "seed.mhc"
    write_mhc(path, params)
    return path


def checkpoint_seed(folder: Path) -> Path:
    """A real one-step checkpoint (model + Muon/Lion states + meta) of a tiny model."""
    from ..train.checkpoint import save_checkpoint
    from ..train.optim import build_optimizers

    cfg, net = tiny_model(num_layers=1, vocab_size=256)
    opts = build_optimizers(net, cfg.training)
    from ..train.loss import compute_loss

    loss, _ = compute_loss(net, torch.randint(0, 256, (2, 17)), 0.0, 0.0)
    loss.backward()
    for opt in opts:
        opt.step()
    meta = {"config": cfg.to_dict(), "data": {"epoch": 0, "position": 0}, "rng": {}, "data_dir": str(folder)}
    save_checkpoint(folder / "run", 1, net, opts, meta)
    return folder / "run" / "checkpoints" / "step_1"
