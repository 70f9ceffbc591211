"""Test helpers for the inference engine: tiny models whose GGUF export is lossless.

Why this module exists: the exporter stores each ternary scale as F16 (the TQ2_0 block scale)
and the embedding as F16, so an engine reading the file computes with weights that differ from
the training model's by F16 rounding (~5e-4 relative). To test the engine's maths and not that
rounding, `snap` rounds the training model's scales and embedding to F16-representable values
first; then engine and training model hold the same numbers, and their logits differ only by
float32 summation order and what that does to int8 activation rounding (see the parity test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_tiny_model
from nanochat_ternary.export.gguf_export import export_model
from nanochat_ternary.model.bitlinear import BitLinear, weight_scale
from nanochat_ternary.model.gpt import GPT


@torch.no_grad()
def snap(model: GPT) -> GPT:
    """Make every value the GGUF stores in F16 exactly representable in F16 (in place)."""
    model.embed.weight.copy_(model.embed.weight.half().float())
    for m in model.modules():
        if isinstance(m, BitLinear):
            w, gs = m.weight, m.group_size
            s = weight_scale(w, gs)
            c = s.half().float() / s  # rescaling W rescales its absmean scale, t is unchanged
            if gs:
                w.copy_((w.reshape(w.shape[0], -1, gs) * c).reshape(w.shape))
            else:
                w.mul_(c)
        elif isinstance(m, torch.nn.Linear):  # dense model: projections are stored as F16
            m.weight.copy_(m.weight.half().float())
    return model


def export_snapped(out_dir: Path, seed: int = 0, quant: str = "tq2_0", **cfg) -> tuple[Path, Path | None, GPT, object]:
    """A snapped tiny model (make_tiny_model(seed, **cfg)) exported to out_dir: (gguf, mhc, model, tokenizer)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = make_tiny_model(seed=seed, **cfg)
    snap(model)
    gguf_path = out_dir / "model.gguf"
    mhc_path = out_dir / "model.mhc" if model.cfg.mhc_n_streams > 1 else None
    export_model(model, tok, gguf_path, mhc_path, quant=quant)
    return gguf_path, mhc_path, model, tok


@torch.no_grad()
def training_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with the training model's forward over the growing sequence."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.fixture
def one_thread():
    """Run a test on one thread: these tests are about results, and on a shared 2-core machine a
    2-thread OpenMP region waits whenever the other core is busy elsewhere (10-20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
