"""`nanochat bench infer --moe --shape S`: engine speed of an 8x2 MoE vs the active-matched dense model.

Why this module exists: the engine's MoE path (infer/moe.py) routes every token and calls each
chosen expert once per batch; what that costs is measured against the dense model that runs the
same matmul sizes per token (pair built by train/bench_moe.py). Both random models of the shape
are exported to temporary GGUFs, loaded, and timed in interleaved rounds (medians), so a busy
machine slows both alike. The MoE's weights are 4x larger (8 experts, 2 used), so its decode
reads more bytes when a batch's tokens pick different experts: batch 1 and batch B both matter.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from ..config import ModelConfig
from ..train.bench_moe import moe_pair
from .bench import SHAPES, _decode_rate, _prefill_rate, export_random_model
from .engine import Engine


def bench_infer_moe(shape: str, threads: int = 2, prompt_tokens: int = 128, decode_tokens: int = 64, batch: int = 8,
                    rounds: int = 3) -> dict:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    pair = moe_pair(ModelConfig(**SHAPES[shape]))
    with tempfile.TemporaryDirectory() as tmp:
        engines = {name: Engine.load(export_random_model(shape, Path(tmp), overrides=over, tag=f"_{name}")) for name, over in pair.items()}
        first = next(iter(engines.values()))
        prompt_tokens = min(prompt_tokens, first.n_ctx // 2)
        decode_tokens = min(decode_tokens, first.n_ctx // 2 - 8 - 4 * batch)
        rates = {name: {"prefill": [], "b1": [], "bB": []} for name in engines}
        for eng in engines.values():
            _decode_rate(eng, 1, 4)  # warm-up
        for _ in range(rounds):
            for name, eng in engines.items():
                rates[name]["prefill"].append(_prefill_rate(eng, prompt_tokens))
                rates[name]["b1"].append(_decode_rate(eng, 1, decode_tokens))
                rates[name]["bB"].append(_decode_rate(eng, batch, max(decode_tokens // 4, 4)))
        med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}
        out = {"shape": shape, "backend": first.backend, "threads": threads, "prompt_tokens": prompt_tokens,
               "decode_tokens": decode_tokens, "batch": batch, "rounds": rounds, "variants": {}}
        for name, eng in engines.items():
            out["variants"][name] = {"overrides": pair[name], "file_bytes": eng.file_bytes,
                                     "projection_bytes": eng.net.weight_bytes()["projections"],
                                     "prefill_tokens_per_s": round(med[name]["prefill"], 1),
                                     "decode_b1_tokens_per_s": round(med[name]["b1"], 1),
                                     f"decode_b{batch}_tokens_per_s": round(med[name]["bB"], 1)}
        m, d = med["moe_8x2"], med["dense_active_matched"]
        out["moe_vs_dense"] = {k: round(m[k] / d[k], 3) for k in ("prefill", "b1", "bB")}
        return out
