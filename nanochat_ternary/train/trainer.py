"""The training loop: WSD schedule, clipping, NaN guard, logging, checkpoints, exact resume.

One function, `train`, in the style of nanochat/torchtitan: everything a step does is visible
here. The data position, model, optimizer states and RNG states are all in the checkpoint, so a
resumed run continues bit for bit (CPU, fixed threads) where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, config_from_dict, require_supported
from ..data.loader import TokenLoader
from ..data.tokenizer import EOS_ID
from ..device import compile_trunk, resolve_device, setup_device
from ..errors import NanochatError
from ..model.gpt import GPT, count_params
from ..model.moe import moe_stats
from .accumulate import forward_backward
from .checkpoint import prune_checkpoints, save_checkpoint
from .data_source import resolve_data
from . import fsdp
from .distributed import accumulation_steps, barrier, init_distributed, max_over_ranks, shutdown_distributed
from .loss import compute_loss
from .optim import build_optimizers, set_lr
from .resume import load_for_resume
from .rng import rng_state, set_rng_state
from .schedule import lr_multiplier
from .signals import GracefulStop, resume_hint
from .tb_logger import TrainLogger
from .time_budget import out_of_time, schedule_step
from .validation import Validator


class TrainingDiverged(NanochatError):
    """Too many consecutive non-finite losses or gradients."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> total loss (steps run here)
    tokens_per_sec: float = 0.0
    wall_time: float = 0.0
    skipped_steps: int = 0
    checkpoint: Path | None = None
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal ended the run early


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def train(
    cfg: Config,
    data: str = "synthetic",
    run_dir: str | Path = "runs/default",
    steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    keep_checkpoints: int = 3,
    quiet: bool = False,
) -> TrainResult:
    run_dir = Path(run_dir)
    ckpt = None
    if resume:
        ckpt = load_for_resume(run_dir)  # skips (with a warning) checkpoints that fail their checksums
        asked_fsdp = cfg.training.fsdp  # how to spread a run over ranks is the resumer's choice too
        cfg = config_from_dict(ckpt.meta["config"], source=f"{ckpt.path}/meta.json")
        cfg.training.fsdp = cfg.training.fsdp or asked_fsdp
    if steps is not None:
        cfg.training.total_steps = steps
    require_supported(cfg)
    dev = resolve_device(device or cfg.hardware.device)
    dist_info, dev = init_distributed(dev)  # torchrun: one rank of a data-parallel run (distributed.py)
    try:
        return _train(cfg, data, run_dir, ckpt, dev, dist_info, keep_checkpoints, quiet or not dist_info.is_main)
    finally:
        shutdown_distributed(dist_info)


def _train(cfg, data, run_dir, ckpt, dev, dist_info, keep_checkpoints, quiet) -> TrainResult:
    m, t = cfg.model, cfg.training
    micro_batch, accum = accumulation_steps(t.batch_size, t.micro_batch_size, dist_info.world_size)
    setup_device(dev, cfg.hardware.num_threads)
    torch.manual_seed(t.seed)

    data_dir = Path(ckpt.meta["data_dir"]) if ckpt else None
    for turn in ("main", "others"):  # rank 0 prepares the data first; the others then find it cached
        if data_dir is None and (turn == "main") == dist_info.is_main:
            data_dir = resolve_data(data, m.vocab_size, t.seed, quiet=quiet)
        barrier(dist_info)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "tokenizer.json").exists():
            shutil.copyfile(data_dir / "tokenizer.json", run_dir / "tokenizer.json")

    model = GPT(m)
    model.init_weights(t.seed)
    model.to(dev)
    model.gradient_checkpointing = t.gradient_checkpointing
    if fsdp.wants_fsdp(t, dist_info):  # FSDP2: each rank keeps its rows of every tensor (train/fsdp.py)
        fsdp.shard_model(model, dev, dist_info)
        dist_info = dataclasses.replace(dist_info, sharded=True)
    if cfg.hardware.compile:
        compile_trunk(model)
    optimizers = build_optimizers(model, t)
    loader = TokenLoader(
        data_dir / "train", t.batch_size, t.seq_length, seed=t.seed,
        num_workers=t.num_workers if t.use_async_loader else 0,
        prefetch_batches=t.prefetch_batches if t.use_async_loader else 0,
        align_token=EOS_ID if t.align_windows else None, rank=dist_info.rank, world_size=dist_info.world_size,
    )
    start_step, bad_total, seconds_before = 0, 0, 0.0
    if ckpt and dist_info.sharded:
        fsdp.shard_states(model, optimizers, ckpt.model_state, ckpt.optim_states)
    elif ckpt:
        model.load_state_dict(ckpt.model_state)
        for opt, state in zip(optimizers, ckpt.optim_states or []):
            opt.load_state_dict(state)
    if ckpt:
        loader.load_state_dict(ckpt.meta["data"])
        start_step = int(ckpt.meta["step"])
        bad_total = int(ckpt.meta.get("skipped_steps", 0))
        seconds_before = float(ckpt.meta.get("train_seconds", 0.0))
        set_rng_state(ckpt.meta["rng"])
    if not quiet:
        counts = count_params(model)
        print(f"model: {counts['total'] / 1e6:.2f}M params ({counts['non_embedding'] / 1e6:.2f}M non-embedding), "
              f"device {dev}, run dir {run_dir}" + (f", resuming at step {start_step}" if ckpt else ""), flush=True)
        if dist_info.enabled or accum > 1:
            print(f"batch: {t.batch_size} = {dist_info.world_size} ranks x {micro_batch} rows x {accum} accumulation steps", flush=True)

    if dist_info.is_main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    logger = TrainLogger(run_dir, enabled=dist_info.is_main)
    validator = Validator.create(cfg, data_dir, run_dir, dev, quiet, writes=dist_info.is_main)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = t.batch_size * t.seq_length
    result = TrainResult(run_dir=run_dir, steps=start_step, skipped_steps=bad_total)
    bad_in_a_row = 0
    t0 = time.perf_counter()
    last_log_time, last_log_step = t0, start_step
    budget_s = t.max_hours * 3600.0

    def checkpoint(step: int) -> Path:
        meta = {"config": cfg.to_dict(), "step": step, "data": loader.state_dict(), "rng": rng_state(),
                "data_dir": str(data_dir.resolve()), "skipped_steps": bad_total, "tokens_seen": step * tokens_per_step,
                "train_seconds": seconds_before + time.perf_counter() - t0}
        path = run_dir / "checkpoints" / f"step_{step}"
        states = fsdp.full_states(model, optimizers, dist_info.is_main) if dist_info.sharded else None
        if dist_info.is_main:  # rank 0 writes; the others wait until it is complete
            path = save_checkpoint(run_dir, step, model, optimizers, meta, states)
            prune_checkpoints(run_dir, keep_checkpoints)
        barrier(dist_info)
        return path

    stop = GracefulStop()
    try:
        stop.__enter__()
        model.train()
        for step in range(start_step, t.total_steps):
            elapsed = seconds_before + time.perf_counter() - t0
            if budget_s:  # every rank takes the same decision, on the slowest rank's clock
                elapsed = max_over_ranks(elapsed, dist_info, dev)
                if out_of_time(elapsed, budget_s):
                    if not quiet:
                        print(f"time budget of {t.max_hours:g} h reached at step {step}; stopping", flush=True)
                    break
            sched_step = schedule_step(step, elapsed, budget_s, t.total_steps, t.warmup_steps)
            set_lr(optimizers, lr_multiplier(sched_step, t.total_steps, t.warmup_steps, t.schedule_type, t.stable_ratio, t.min_lr_ratio))
            parts, ok = forward_backward(model, loader.next_batch(), micro_batch, compute_loss,
                                         (t.entropy_weight, t.mtp_weight if m.use_mtp else 0.0),
                                         dev, cfg.hardware.dtype, params, dist_info)
            grad_norm = float("nan")
            if ok:
                grad_norm = fsdp.clip_grad_norm(params, t.grad_clip)
                ok = math.isfinite(grad_norm)
            if ok:
                for opt in optimizers:
                    opt.step()
                bad_in_a_row = 0
            else:  # NaN/Inf guard: skip the update, count it, stop if it persists
                bad_in_a_row += 1
                bad_total += 1
                if bad_in_a_row >= t.max_bad_steps:
                    raise TrainingDiverged(
                        f"{bad_in_a_row} consecutive steps with a non-finite loss or gradient (at step {step}); "
                        f"stopped. The last good checkpoint is kept in {run_dir / 'checkpoints'}. "
                        "Try a lower learning rate, more warmup steps, or a smaller entropy weight.")
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            done = step + 1
            loss_value = float(parts["total"])
            result.losses[step] = loss_value
            result.steps = done

            if done % t.log_interval == 0 or done == t.total_steps:
                now = time.perf_counter()
                tps = (done - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, done
                lr = optimizers[0].param_groups[0]["lr"]
                logger.log(done, {f"loss/{k}": float(v) for k, v in parts.items()} | {
                    "lr": lr, "grad_norm": grad_norm, "throughput/tokens_per_sec": tps,
                    "mhc/composite_gain": fsdp.mhc_gain(model), "train/skipped_steps": bad_total} | moe_stats(model))
                if not quiet:
                    eta = (t.total_steps - done) * (now - t0) / max(done - start_step, 1)
                    if budget_s:
                        eta = min(eta, budget_s - (seconds_before + now - t0))
                    print(f"step {done:>6}/{t.total_steps} | loss {loss_value:.4f} | ce {float(parts['ce']):.4f} | "
                          f"lr {lr:.2e} | gnorm {grad_norm:.3f} | {tps:,.0f} tok/s | ETA {_format_eta(eta)}", flush=True)
            if done % t.checkpoint_interval == 0 and done != t.total_steps and bad_in_a_row == 0:
                result.checkpoint = checkpoint(done)
            if validator is not None and validator.due(done, t.total_steps):  # val loss/bpb, `best` alias
                result.checkpoint = validator.run(model, done, t.total_steps, logger,
                                                  checkpoint if bad_in_a_row == 0 else None, result.checkpoint)
            if stop.requested:
                result.stopped_by = stop.requested
                break
        if (result.checkpoint is None or result.checkpoint.name != f"step_{result.steps}") and (result.steps > start_step or ckpt is None) and bad_in_a_row == 0:
            result.checkpoint = checkpoint(result.steps)
        elif ckpt is not None and result.steps == start_step:  # resumed a finished run: its checkpoint stands
            result.checkpoint = ckpt.path
        if validator is not None:
            validator.finish(result.checkpoint)
        if result.stopped_by and not quiet:
            print(resume_hint(run_dir, result.steps), flush=True)
    finally:
        stop.__exit__()
        loader.close()
        logger.close()
    result.wall_time = time.perf_counter() - t0
    result.skipped_steps = bad_total
    ran = result.steps - start_step
    result.tokens_per_sec = ran * tokens_per_step / max(result.wall_time, 1e-9)
    if not quiet:
        print(f"done: {ran} steps in {result.wall_time:.1f}s ({result.tokens_per_sec:,.0f} tok/s); "
              f"checkpoint {result.checkpoint}; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}", flush=True)
    return result
