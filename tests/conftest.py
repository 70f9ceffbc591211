"""Shared fixtures: a small prepared synthetic dataset, built once per test session."""

import os

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset (tokenizer.json, train/ and val/ shards) of a few hundred synthetic programs."""
    from nanochat_ternary.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic_tiny"
    return prepare_dataset("synthetic", out, vocab_size=512, seed=0, n_programs=400, progress=False)


@pytest.fixture
def tiny_config():
    """The tiny config shrunk further for unit tests (a few hundred thousand parameters)."""
    from nanochat_ternary.config import load_config

    return load_config("configs/models/tiny.toml", [
        "model.vocab_size=512", "model.num_layers=1", "model.max_seq_len=64", "model.mtp_n_tokens=1",
        "training.batch_size=2", "training.seq_length=32", "training.total_steps=6", "training.warmup_steps=2",
        "training.log_interval=1", "training.checkpoint_interval=3", "training.num_workers=1",
        "hardware.device=cpu", f"hardware.num_threads={min(2, os.cpu_count() or 1)}",
    ])
