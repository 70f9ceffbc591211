"""`nanochat bench train`: training-step cost of BitLinear vs dense and of mHC n = 1, 2, 4
(with `--moe`: of an 8x2 MoE vs the dense model with the same active parameters, bench_moe.py).

All variants are built up front and timed in interleaved rounds (A B C D, A B C D, ...), and the
median step time of each is reported, so a noisy shared machine affects them alike; ratios are
the figures to read, not the absolute times. A step is forward + backward + optimizer step on
random tokens (the data loader is not part of what is compared).

Each variant also reports its model FLOPs utilisation: `mfu` = (6 x matmul parameters + attention,
model/gpt.py flops_per_token) x tokens / step time / this machine's float32 matmul peak, measured
in the same run (`matmul_peak_gflops`: the best of several 2048 x 2048 products, before and
after the timed rounds); `optimizer_share`, the optimizers' part of the step; and Newton-Schulz's
own FLOPs (`ns_gflop_per_step`), which the MFU leaves out (they are the optimizer's, not the
model's).

Peak memory is what the variant's training adds to the process, beside memory_estimate.py's
estimate of it ("estimated_peak_mb", and "estimate_ratio" = estimated / measured), which models
the same run: the variant's batch x sequence in one micro-batch, float32 (bf16 where the step
runs under bf16 autocast), checkpointing and 8-bit states as configured. Neither side holds the
process's baseline: the estimate counts tensor bytes only, and the measurement subtracts what the
process held before the model was built.

- CUDA: the allocator's peak (`max_memory_allocated`) over the variant's warm-up steps, minus
  what the other variants' tensors hold (all are built up front).
- CPU: each variant runs two steps in a fresh process (the allocator of a process that already
  ran other variants would hide their memory), after one step of a copy of it has loaded the
  libraries and thread pools and filled their caches (the baseline RSS, ~300 MB for torch); the
  figure is that process's peak RSS (reset after the warm-up) minus its RSS before the model was
  built. glibc's malloc would keep freed tensors' pages once its mmap threshold has risen (it
  grows to 32 MB as large blocks are freed), which made RSS 1.8x the live bytes on the tiny
  config; the child fixes the threshold at 64 KiB (mallopt), so every tensor is its own mapping,
  unmapped when freed, and RSS follows the live tensor bytes, as the CUDA figure does.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from ..config import Config
from ..cpu_malloc import M_MMAP_THRESHOLD, mallopt
from ..device import autocast, compile_trunk, resolve_device, setup_device
from ..model import native_ops
from ..model.gpt import GPT, count_params, flops_per_token
from .bench_moe import moe_pair, moe_ratios
from .loss import compute_loss
from .memory_estimate import estimate_memory
from .optim import build_optimizers, split_params

VARIANTS = {
    "bitlinear_n1": {"use_bitlinear": True, "mhc_n_streams": 1},
    "dense_n1": {"use_bitlinear": False, "mhc_n_streams": 1},
    "bitlinear_n2": {"use_bitlinear": True, "mhc_n_streams": 2},
    "bitlinear_n4": {"use_bitlinear": True, "mhc_n_streams": 4},
}


def _rss_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs resets the peak RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _warm_up(model_cfg, tcfg, B: int, T: int, use_bf16: bool) -> None:
    """One step of a copy of the variant at its own shapes: loads the kernels' libraries and thread
    pools and fills their per-shape caches and work buffers (MKL's packing buffers, oneDNN's
    kernels for a bf16 Newton-Schulz), which belong to the process and not to the variant, and
    which would otherwise count in its growth as much or as little as the CPU's library path
    keeps (one CPU kind grew 8 MB more than another for the same tensors)."""
    model = GPT(model_cfg)
    model.gradient_checkpointing = tcfg.gradient_checkpointing
    _step(model, build_optimizers(model, tcfg), torch.randint(0, model_cfg.vocab_size, (B, T + 1)), tcfg,
          _cpu_dtype(use_bf16))


def _unmap_freed_tensors() -> None:
    """glibc: serve every allocation over 64 KiB by its own mmap, returned to the OS when freed
    (the opposite of cpu_malloc.keep_freed_memory, so that RSS follows the live bytes). Without
    glibc RSS may hold freed pages and read higher than the live bytes."""
    mallopt(M_MMAP_THRESHOLD, 64 * 1024)  # fixed, no longer dynamic


def _cpu_dtype(use_bf16: bool) -> str:
    return "bfloat16" if use_bf16 else "float32"


def _step(model, opts, tokens, tcfg, dtype: str, dev: torch.device = torch.device("cpu")) -> float:
    """One training step as the trainer runs it: loss, backward, every optimizer, then zero grads.
    Returns the seconds the optimizers took."""
    with autocast(dev, dtype):
        loss, _ = compute_loss(model, tokens, tcfg.entropy_weight, tcfg.mtp_weight if model.cfg.use_mtp else 0.0)
    loss.backward()
    _sync(dev)
    t0 = time.perf_counter()
    for opt in opts:
        opt.step()
    _sync(dev)
    t_opt = time.perf_counter() - t0
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    return t_opt


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(dev: torch.device, n: int = 2048, reps: int = 5) -> float:
    """This machine's float32 matmul rate now: the best of `reps` n x n products (GFLOP/s)."""
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def newton_schulz_flops(model, ns_steps: int) -> float:
    """FLOPs of one Muon step's Newton-Schulz: per matrix m x n (m <= n) and iteration, X X^T
    (2 m^2 n), G^2 (2 m^3) and (b G + c G^2) X (2 m^2 n)."""
    total = 0.0
    for p in split_params(model)[0]:
        m, n = sorted(p.shape)
        total += ns_steps * (4 * m * m * n + 2 * m**3)
    return total


def _child_peak(model_cfg: dict, training_cfg: dict, B: int, T: int, use_bf16: bool, out) -> None:
    from ..config import ModelConfig, TrainingConfig

    _unmap_freed_tensors()
    torch.set_flush_denormal(True)
    tcfg = TrainingConfig(**training_cfg)
    _warm_up(ModelConfig(**model_cfg), tcfg, B, T, use_bf16)
    _reset_peak_rss()
    before = _rss_kb("VmRSS")
    model = GPT(ModelConfig(**model_cfg))
    model.gradient_checkpointing = tcfg.gradient_checkpointing
    opts = build_optimizers(model, tcfg)
    tokens = torch.randint(0, model.cfg.vocab_size, (B, T + 1))
    for _ in range(2):
        _step(model, opts, tokens, tcfg, _cpu_dtype(use_bf16))
    out.put((_rss_kb("VmHWM") - before) / 1024)


def cpu_peak_memory_mb(model_cfg, training_cfg, B: int, T: int, use_bf16: bool = False) -> float:
    """Peak RSS growth (MB) of two training steps of this model, measured in a fresh process
    (`use_bf16`: under bf16 autocast)."""
    import dataclasses
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(dataclasses.asdict(model_cfg), dataclasses.asdict(training_cfg), B, T, use_bf16, out))
    proc.start()
    value = out.get(timeout=3600)
    proc.join()
    return float(value)


def estimated_peak_mb(cfg: Config, model_cfg, B: int, T: int, dev: torch.device) -> float:
    """memory_estimate.py's peak for the run measured here: this variant's model, B x T in one
    micro-batch (no accumulation), bf16 only where the step runs under bf16 autocast."""
    bf16 = cfg.hardware.dtype == "bfloat16" or (cfg.hardware.dtype == "auto" and dev.type == "cuda")
    variant = copy.deepcopy(cfg)
    variant.model = model_cfg
    native = dev.type == "cpu" and not bf16 and native_ops.library() is not None  # native_ops.py, ce_entropy.py
    est = estimate_memory(variant, batch=B, seq=T, dtype="bfloat16" if bf16 else "float32", accumulating=False,
                          native=native)
    return est["bytes"]["peak"] / 2**20


def bench_train(cfg: Config, steps: int = 5, rounds: int = 3, warmup: int = 2, device: str | None = None,
                batch_size: int | None = None, seq_length: int | None = None, moe: bool = False) -> dict:
    """`moe`: time the 8x2 MoE vs the dense model with the same active parameters (bench_moe.py)."""
    dev = resolve_device(device or cfg.hardware.device)
    setup_device(dev, cfg.hardware.num_threads)
    B = batch_size or cfg.training.batch_size
    T = seq_length or cfg.training.seq_length
    runs = {}
    for name, overrides in (moe_pair(cfg.model) if moe else VARIANTS).items():
        mcfg = copy.deepcopy(cfg.model)
        for k, v in overrides.items():
            setattr(mcfg, k, v)
        model = GPT(mcfg)
        model.init_weights(0)
        model.gradient_checkpointing = cfg.training.gradient_checkpointing
        model.to(dev).train()
        if cfg.hardware.compile:  # the warm-up steps pay the compilation
            compile_trunk(model)
        opts = build_optimizers(model, cfg.training)
        tokens = torch.randint(0, mcfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(0)).to(dev)
        counts = count_params(model)
        runs[name] = {"model": model, "opts": opts, "tokens": tokens, "times": [], "params": counts["total"], "active": counts["active"]}

    def step(run) -> float:
        t_opt = _step(run["model"], run["opts"], run["tokens"], cfg.training, cfg.hardware.dtype, dev)
        _sync(dev)
        return t_opt

    use_bf16 = dev.type == "cpu" and cfg.hardware.dtype == "bfloat16"  # the CPU steps' autocast (device.py)
    for name, run in runs.items():  # warm up, and measure each variant's peak memory alone
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            others = torch.cuda.memory_allocated() - sum(p.numel() * p.element_size() for p in run["model"].parameters())
        for _ in range(warmup):
            step(run)
        run["peak_mb"] = ((torch.cuda.max_memory_allocated() - others) / 2**20 if dev.type == "cuda"
                          else cpu_peak_memory_mb(run["model"].cfg, cfg.training, B, T, use_bf16))
        run["estimated_mb"] = estimated_peak_mb(cfg, run["model"].cfg, B, T, dev)
    peak = matmul_peak_gflops(dev)
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                t0 = time.perf_counter()
                run.setdefault("opt_times", []).append(step(run))
                run["times"].append(time.perf_counter() - t0)
    peak = max(peak, matmul_peak_gflops(dev))
    out = {"device": str(dev), "threads": torch.get_num_threads(), "batch_size": B, "seq_length": T,
           "config": cfg.source, "matmul_peak_gflops": round(peak, 1), "variants": {}}
    for name, run in runs.items():
        st = statistics.median(run["times"])
        model_flops = flops_per_token(run["model"].cfg, T) * B * T
        out["variants"][name] = {"params": run["params"], "active_params": run["active"], "step_time_s": round(st, 5),
                                 "tokens_per_sec": round(B * T / st, 1), "steps_per_min": round(60 / st, 1),
                                 "peak_memory_mb": round(run["peak_mb"], 1), "estimated_peak_mb": round(run["estimated_mb"], 1),
                                 "estimate_ratio": round(run["estimated_mb"] / run["peak_mb"], 3) if run["peak_mb"] > 0 else None,
                                 "model_gflop_per_step": round(model_flops / 1e9, 3),
                                 "ns_gflop_per_step": round(newton_schulz_flops(run["model"], cfg.training.muon_ns_steps) / 1e9, 3),
                                 "mfu": round(model_flops / st / (peak * 1e9), 3),
                                 "optimizer_share": round(statistics.median(run["opt_times"]) / st, 3)}
    v = out["variants"]
    if moe:
        out["ratios"] = moe_ratios(v)
        return out
    base = v["bitlinear_n1"]["step_time_s"]
    out["ratios"] = {
        "bitlinear_vs_dense": round(base / v["dense_n1"]["step_time_s"], 3),
        "mhc_n2_vs_n1": round(v["bitlinear_n2"]["step_time_s"] / base, 3),
        "mhc_n4_vs_n1": round(v["bitlinear_n4"]["step_time_s"] / base, 3),
    }
    out["targets"] = {"bitlinear_vs_dense": 1.3, "mhc_n2_vs_n1": 1.03, "mhc_n4_vs_n1": 1.06}
    return out
