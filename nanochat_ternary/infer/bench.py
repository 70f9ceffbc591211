"""`nanochat bench infer`: engine speed vs a plain fp32 PyTorch forward (and llama.cpp), as JSON.

Why this module exists: the engine's reason to be is speed at equal outputs, so the benchmark
measures it side by side, in one process and in interleaved rounds (engine, baseline, engine,
baseline, ...; medians reported), so a busy machine slows both alike:

- engine: prefill tokens/s, decode tokens/s at batch 1 and batch B, file size, bits per
  projection weight, peak RSS;
- baseline "fp32 PyTorch, KV cache": the same network with dense float32 weights (t * scale,
  dequantized from the GGUF), a float32 tied head, torch.matmul (MKL) and no activation
  quantization, decoding one token at a time with a float32 KV cache;
- llama.cpp (`llama_cpp` module, when importable and the file is a `bitnet` GGUF): decode
  tokens/s on the same file with the same thread count.

`--shape nano` builds a random nano-shaped model (d768, 12 layers, 12 heads, 4 kv heads,
vocab 32000, n = 1, no MTP) and exports it to a temporary GGUF first.
"""

from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .engine import Engine
from .gguf_model import GGUFModel, Projection, read_gguf_model

SHAPES = {
    "nano": {"vocab_size": 32000, "hidden_dim": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 4, "ffn_mult": 3.5, "max_seq_len": 2048},
    "tiny": {"vocab_size": 512, "hidden_dim": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_mult": 2.0, "max_seq_len": 512},
}


def export_random_model(shape: str, out_dir: Path, progress: bool = False, overrides: dict | None = None, tag: str = "") -> Path:
    """A seeded random model of `shape` (+ model-config `overrides`) with a small synthetic-Rust
    tokenizer, exported to GGUF (`out_dir/{shape}{tag}.gguf`)."""
    from ..config import config_from_dict
    from ..data.synthetic import generate_programs
    from ..data.tokenizer import train_tokenizer
    from ..export.gguf_export import export_model
    from ..model.gpt import GPT

    cfg = config_from_dict({"model": {**SHAPES[shape], **(overrides or {})}, "training": {"seq_length": 256}}, source=f"--shape {shape}")
    model = GPT(cfg.model)
    model.init_weights(seed=0)
    tokenizer = train_tokenizer(generate_programs(200, seed=0), 512)  # padded to vocab_size by the exporter
    path = out_dir / f"{shape}{tag}.gguf"
    export_model(model.eval(), tokenizer, path, None, name=f"random-{shape}", progress=progress)
    return path


def fp32_baseline(gm: GGUFModel) -> Engine:
    """The same network with dense float32 weights on plain PyTorch ops (see the module docstring)."""
    dense = copy.copy(gm)
    dense.hp = copy.copy(gm.hp)
    dense.hp.use_bitlinear = False
    dense.embed = gm.embed.float()
    dense.projections = {}
    for name, p in gm.projections.items():
        if p.t is not None:
            w = (p.t.float().reshape(p.n_out, p.scales.shape[1], -1) * p.scales[..., None]).reshape(p.n_out, p.n_in)
        else:
            w = p.dense.float()
        dense.projections[name] = Projection(p.n_out, p.n_in, dense=w)
    return Engine(dense, backend="torch", exact_head=True)


def _prefill_rate(engine: Engine, n: int) -> float:
    state = engine.new_state()
    tokens = [(7 * i + 3) % engine.vocab_size for i in range(n)]
    t = time.perf_counter()
    engine.prefill(state, tokens)
    return n / (time.perf_counter() - t)


def _decode_rate(engine: Engine, batch: int, steps: int) -> float:
    states = [engine.new_state() for _ in range(batch)]
    for j, s in enumerate(states):  # different lengths, as in a server
        engine.prefill(s, [(11 * i + j) % engine.vocab_size for i in range(8 + 4 * j)])
    engine.decode(states, [1] * batch)  # warm-up
    t = time.perf_counter()
    for i in range(steps):
        engine.decode(states, [(5 * i + 2) % engine.vocab_size] * batch)
    return batch * steps / (time.perf_counter() - t)


def _llama_cpp_rate(path: Path, threads: int, prompt: int, steps: int) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama_cpp is not importable"}
    try:
        llm = Llama(model_path=str(path), n_ctx=max(512, prompt + steps + 8), n_threads=threads, n_threads_batch=threads, verbose=False)
        n_vocab = llm.n_vocab()
        tokens = [(7 * i + 3) % n_vocab for i in range(prompt)]
        t = time.perf_counter()
        llm.eval(tokens)
        prefill = prompt / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(steps):
            llm.eval([(5 * i + 2) % n_vocab])
        return {"prefill_tokens_per_s": round(prefill, 1), "decode_b1_tokens_per_s": round(steps / (time.perf_counter() - t), 1)}
    except Exception as e:  # llama.cpp refuses the file, or another failure: report, don't crash
        return {"error": f"{type(e).__name__}: {e}"}


def _cpu_isas() -> list[str]:
    """The kernel instruction sets this CPU runs (best first), for reading the figures."""
    from ..native.build import supported_isas

    try:
        return supported_isas()
    except (RuntimeError, OSError):
        return []


def bench_infer(model: str | None = None, mhc: str | None = None, shape: str | None = None, threads: int = 2, prompt_tokens: int = 128,
                decode_tokens: int = 64, batch: int = 8, rounds: int = 3, baseline: bool = True, progress: bool = False,
                kv_cache: str = "f32") -> dict:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if model else export_random_model(shape, Path(tmp), progress)
        t = time.perf_counter()
        gm = read_gguf_model(path, mhc)
        engine = Engine(gm, kv_cache=kv_cache)
        load_s = time.perf_counter() - t
        prompt_tokens = min(prompt_tokens, engine.n_ctx // 2)
        decode_tokens = min(decode_tokens, engine.n_ctx // 2 - 8 - 4 * batch)
        _decode_rate(engine, 1, 4)  # warm-up; the peak RSS so far is the engine's (load included)
        rss_engine_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base = fp32_baseline(gm) if baseline else None
        runs = {"engine": engine, **({"fp32_torch": base} if base else {})}
        rates: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "b1": [], "bB": []} for name in runs}
        bar = tqdm(total=rounds * len(runs) * 3, desc="bench infer", unit="run", disable=not progress)
        for _ in range(rounds):
            for name, eng in runs.items():
                rates[name]["prefill"].append(_prefill_rate(eng, prompt_tokens))
                bar.update()
                rates[name]["b1"].append(_decode_rate(eng, 1, decode_tokens))
                bar.update()
                rates[name]["bB"].append(_decode_rate(eng, batch, max(decode_tokens // 4, 4)))
                bar.update()
        bar.close()
        med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}
        result = {
            "model": str(model) if model else f"random {shape} (temporary GGUF)",
            "backend": engine.backend, "cpu_kernel_isas": _cpu_isas(), "threads": threads, "load_s": round(load_s, 2), **engine.info(),
            "file_bytes": engine.file_bytes, "bits_per_projection_weight": round(engine.bits_per_weight, 4),
            "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "batch": batch, "rounds": rounds,
            "engine": {"prefill_tokens_per_s": round(med["engine"]["prefill"], 1), "decode_b1_tokens_per_s": round(med["engine"]["b1"], 1),
                       f"decode_b{batch}_tokens_per_s": round(med["engine"]["bB"], 1)},
            "peak_rss_mb_engine": round(rss_engine_mb, 1),  # process peak before the baseline exists
        }
        if base:
            b = med["fp32_torch"]
            result["fp32_torch"] = {"method": "same network, dense float32 weights, torch.matmul, float32 KV-cache decode",
                                    "prefill_tokens_per_s": round(b["prefill"], 1), "decode_b1_tokens_per_s": round(b["b1"], 1),
                                    f"decode_b{batch}_tokens_per_s": round(b["bB"], 1)}
            result["speedup_vs_fp32"] = {k: round(med["engine"][k] / b[k], 2) for k in ("prefill", "b1", "bB")}
        if gm.hp.arch == "bitnet":
            result["llama_cpp"] = _llama_cpp_rate(path, threads, prompt_tokens, decode_tokens)
        else:
            result["llama_cpp"] = {"skipped": f"architecture '{gm.hp.arch}' is not loadable by llama.cpp"}
        # issue 18's goals read off one run: b1 >= 1.5x llama.cpp, prefill >= 1.0x, batch B >= 4x b1
        result[f"decode_b{batch}_vs_b1"] = round(med["engine"]["bB"] / med["engine"]["b1"], 2)
        if "decode_b1_tokens_per_s" in result["llama_cpp"]:
            result["speedup_vs_llama_cpp_b1"] = round(med["engine"]["b1"] / result["llama_cpp"]["decode_b1_tokens_per_s"], 2)
            result["speedup_vs_llama_cpp_prefill"] = round(med["engine"]["prefill"] / result["llama_cpp"]["prefill_tokens_per_s"], 2)
        result["peak_rss_mb_total"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return result
