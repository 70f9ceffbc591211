"""`nanochat bench train`: training-step cost of BitLinear vs dense and of mHC n = 1, 2, 4
(with `--moe`: of an 8x2 MoE vs the dense model with the same active parameters, bench_moe.py).

All variants are built up front and timed in interleaved rounds (A B C D, A B C D, ...), and the
median step time of each is reported, so a noisy shared machine affects them alike; ratios are
the figures to read, not the absolute times. A step is forward + backward + optimizer step on
random tokens (the data loader is not part of what is compared).

Peak memory on CUDA is the allocator's peak. On a CPU each variant runs two steps in a fresh
process (the allocator of a process that already ran other variants would hide their memory),
after one step of a 1-layer copy has loaded the libraries; the figure is that process's peak RSS
(reset after the warm-up) minus its RSS before the model was built.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from ..config import Config
from ..device import autocast, resolve_device, setup_device
from ..model.gpt import GPT, count_params
from .bench_moe import moe_pair, moe_ratios
from .loss import compute_loss
from .optim import build_optimizers

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


def _warm_up(model_cfg, tcfg) -> None:
    """One step of a 1-layer, 8-token copy: loads the kernels' libraries and thread pools, which
    belong to the process and not to the variant measured."""
    import dataclasses

    small = dataclasses.replace(model_cfg, num_layers=1, vocab_size=min(model_cfg.vocab_size, 512))
    model = GPT(small)
    model.gradient_checkpointing = tcfg.gradient_checkpointing
    opts = build_optimizers(model, tcfg)
    loss, _ = compute_loss(model, torch.randint(0, small.vocab_size, (1, 9)), tcfg.entropy_weight, tcfg.mtp_weight)
    loss.backward()
    for opt in opts:
        opt.step()


def _child_peak(model_cfg: dict, training_cfg: dict, B: int, T: int, out) -> None:
    from ..config import ModelConfig, TrainingConfig

    torch.set_flush_denormal(True)
    tcfg = TrainingConfig(**training_cfg)
    _warm_up(ModelConfig(**model_cfg), tcfg)
    _reset_peak_rss()
    before = _rss_kb("VmRSS")
    model = GPT(ModelConfig(**model_cfg))
    model.gradient_checkpointing = tcfg.gradient_checkpointing
    opts = build_optimizers(model, tcfg)
    tokens = torch.randint(0, model.cfg.vocab_size, (B, T + 1))
    for _ in range(2):
        loss, _ = compute_loss(model, tokens, tcfg.entropy_weight, tcfg.mtp_weight if model.cfg.use_mtp else 0.0)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    out.put((_rss_kb("VmHWM") - before) / 1024)


def cpu_peak_memory_mb(model_cfg, training_cfg, B: int, T: int) -> float:
    """Peak RSS growth (MB) of two training steps of this model, measured in a fresh process."""
    import dataclasses
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(dataclasses.asdict(model_cfg), dataclasses.asdict(training_cfg), B, T, out))
    proc.start()
    value = out.get(timeout=3600)
    proc.join()
    return float(value)


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
        model.to(dev).train()
        opts = build_optimizers(model, cfg.training)
        tokens = torch.randint(0, mcfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(0)).to(dev)
        counts = count_params(model)
        runs[name] = {"model": model, "opts": opts, "tokens": tokens, "times": [], "params": counts["total"], "active": counts["active"]}

    def step(run) -> None:
        with autocast(dev, cfg.hardware.dtype):
            loss, _ = compute_loss(run["model"], run["tokens"], cfg.training.entropy_weight,
                                   cfg.training.mtp_weight if cfg.model.use_mtp else 0.0)
        loss.backward()
        for opt in run["opts"]:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name, run in runs.items():  # warm up, and measure each variant's peak memory alone
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step(run)
        run["peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                          else cpu_peak_memory_mb(run["model"].cfg, cfg.training, B, T))
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                t0 = time.perf_counter()
                step(run)
                run["times"].append(time.perf_counter() - t0)
    out = {"device": str(dev), "threads": torch.get_num_threads(), "batch_size": B, "seq_length": T,
           "config": cfg.source, "variants": {}}
    for name, run in runs.items():
        st = statistics.median(run["times"])
        out["variants"][name] = {"params": run["params"], "active_params": run["active"], "step_time_s": round(st, 5),
                                 "tokens_per_sec": round(B * T / st, 1), "steps_per_min": round(60 / st, 1),
                                 "peak_memory_mb": round(run["peak_mb"], 1)}
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
