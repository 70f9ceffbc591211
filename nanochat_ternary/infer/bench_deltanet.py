"""`nanochat bench infer --deltanet --shape S`: decode speed and per-sequence state memory of a
Gated DeltaNet hybrid vs the pure-attention model of the same shape, at a long context.

Why this module exists: a DeltaNet layer replaces a KV cache that grows with the context by a
fixed recurrent state [heads, d_k, d_v] plus a convolution tail (infer/recurrent_state.py), and
a decode step reads that state instead of every past key and value. Both effects show at long
contexts, so both random models of the shape are exported to temporary GGUFs and each of
`batch` sequences is prefilled to `context` tokens before decoding is timed (interleaved
rounds, medians).

State memory per sequence at `context` tokens:
- kv_cache_bytes: attention layers x (K + V) x kv_heads x context x head_dim x element size
  (what the engine's KV pool holds for one sequence at that length, infer/kv_cache.py);
- recurrent_state_bytes: the sequence's RecurrentState (S and conv tails of every DeltaNet layer),
  which does not grow with the context.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from .bench import export_random_model
from .engine import Engine


def _prefilled(engine: Engine, batch: int, context: int) -> list:
    states = [engine.new_state() for _ in range(batch)]
    for j, s in enumerate(states):
        engine.prefill(s, [(7 * i + 3 + j) % engine.vocab_size for i in range(context)])
    return states


def _state_bytes(engine: Engine, state, context: int) -> dict:
    pool = engine.pool
    el = pool.k[0].element_size() if pool.k else 4
    kv = pool.n_layers * 2 * pool.n_kv * context * pool.head_dim * el
    rec = state.recurrent.nbytes() if getattr(state, "recurrent", None) is not None else 0
    return {"kv_cache_bytes": kv, "recurrent_state_bytes": rec, "total_bytes": kv + rec}


def bench_infer_deltanet(shape: str, threads: int = 2, context: int = 2048, decode_tokens: int = 32, batch: int = 4,
                         rounds: int = 3, ratio: float = 0.25) -> dict:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    from .bench import SHAPES

    ratio = max(ratio, 1.0 / SHAPES[shape]["num_layers"])  # at least one DeltaNet layer (tiny has 2 layers)
    pair = {"attention": {"deltanet_ratio": 0.0}, "hybrid": {"deltanet_ratio": ratio}}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {name: Engine.load(export_random_model(shape, Path(tmp), overrides=over, tag=f"_{name}")) for name, over in pair.items()}
        first = next(iter(engines.values()))
        decode_tokens = min(decode_tokens, first.n_ctx // 4)
        context = min(context, first.n_ctx - decode_tokens * (rounds + 1) - 2)
        out = {"shape": shape, "backend": first.backend, "threads": threads, "context": context, "decode_tokens": decode_tokens,
               "batch": batch, "rounds": rounds, "deltanet_ratio": ratio, "variants": {}}
        runs = {}
        for name, eng in engines.items():
            t = time.perf_counter()
            states = _prefilled(eng, batch, context)
            prefill_s = time.perf_counter() - t
            eng.decode(states, [1] * batch)  # warm-up (one token)
            runs[name] = {"engine": eng, "states": states, "b1": [], "bB": [],
                          "prefill_tokens_per_s": batch * context / prefill_s, "memory": _state_bytes(eng, states[0], context)}
        for r in range(rounds):  # each round decodes further: contexts stay within a few % of `context`
            for run in runs.values():
                eng, states = run["engine"], run["states"]
                t = time.perf_counter()
                for i in range(decode_tokens // 2):
                    eng.decode(states[:1], [(5 * i + 2) % eng.vocab_size])
                run["b1"].append((decode_tokens // 2) / (time.perf_counter() - t))
                t = time.perf_counter()
                for i in range(decode_tokens // 2):
                    eng.decode(states, [(5 * i + 2) % eng.vocab_size] * batch)
                run["bB"].append(batch * (decode_tokens // 2) / (time.perf_counter() - t))
        for name, run in runs.items():
            hp = run["engine"].hp
            out["variants"][name] = {"deltanet_layers": list(hp.dn_layers), "layers": hp.n_layers,
                                     "file_bytes": run["engine"].file_bytes,
                                     "prefill_tokens_per_s": round(run["prefill_tokens_per_s"], 1),
                                     "decode_b1_tokens_per_s": round(statistics.median(run["b1"]), 1),
                                     f"decode_b{batch}_tokens_per_s": round(statistics.median(run["bB"]), 1),
                                     "state_per_sequence": run["memory"]}
        h, a = out["variants"]["hybrid"], out["variants"]["attention"]
        out["hybrid_vs_attention"] = {
            "decode_b1": round(h["decode_b1_tokens_per_s"] / a["decode_b1_tokens_per_s"], 3),
            f"decode_b{batch}": round(h[f"decode_b{batch}_tokens_per_s"] / a[f"decode_b{batch}_tokens_per_s"], 3),
            "prefill": round(h["prefill_tokens_per_s"] / a["prefill_tokens_per_s"], 3),
            "state_bytes_per_sequence": round(h["state_per_sequence"]["total_bytes"] / a["state_per_sequence"]["total_bytes"], 3)}
        return out
