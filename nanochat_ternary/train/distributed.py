"""Data-parallel training under torchrun: the process group, gradient averaging, rank-0 duties.

Why this module exists: `torchrun --nproc_per_node N -m nanochat_ternary.cli train ...` starts N
copies of the trainer with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in their environment.
This file turns that environment into a process group (gloo on CPU, NCCL on CUDA) and gives the
trainer the few collective operations it needs; without torchrun's environment every function
here is a no-op, so one code path serves 1 and N processes.

How the ranks share a step (ARCHITECTURE.md, "Training on several devices"):
- `training.batch_size` is the global batch of one optimizer step. Batch k is the same windows
  whatever the number of ranks (data/loader.py draws them from (seed, k) and hands rank r its
  slice), and each rank splits its slice into micro-batches of `training.micro_batch_size`
  (gradient accumulation). So batch_size = ranks x micro_batch_size x accumulation steps.
- After the last micro-batch the gradients are summed over the ranks in flat buckets and divided
  by the rank count (gloo has no AVG reduction). Every rank then holds the gradient of the whole
  global batch, clips it to the same norm and takes the same optimizer step: Muon orthogonalises
  the averaged gradient, and the weights stay identical on every rank without broadcasting them.
  This is what DDP does, without its wrapper (the loss calls the model's `forward_with_mtp`,
  which DDP's hooks would not see) and without its overlap of communication and backward.
- Rank 0 alone writes TensorBoard, metrics.jsonl, config.json and checkpoints; the others wait
  at a barrier, so every rank can resume from what rank 0 wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError

BUCKET_ELEMENTS = 1 << 25  # 32M fp32 values (128 MB) per all-reduce: bounds the extra memory


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sharded: bool = False  # FSDP2 (train/fsdp.py): backward already averages the gradient shards

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> DistInfo | None:
    """The ranks torchrun (or any launcher setting its variables) asked for; None without them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError(f"torchrun environment is malformed: RANK={os.environ['RANK']!r} "
                          f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}") from None
    if not 0 <= info.rank < info.world_size:
        raise ConfigError(f"torchrun environment: RANK {info.rank} is not in [0, WORLD_SIZE {info.world_size})")
    return info


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes; return this rank and the device it computes on.

    CUDA ranks each take GPU LOCAL_RANK and talk over NCCL; CPU ranks use gloo. One process (no
    torchrun, or WORLD_SIZE=1) starts no process group at all.
    """
    info = torchrun_env()
    if info is None or info.world_size == 1:
        return DistInfo(), device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(info.local_rank)
        device, backend = torch.device("cuda", info.local_rank), "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"data-parallel training runs on cpu (gloo) or cuda (NCCL), not {device.type}")
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, **kwargs)
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) with ranks x micro x steps = batch_size.

    micro_batch_size 0 means each rank's whole slice in one micro-batch, and so does one larger than the slice.
    """
    if batch_size % world_size:
        raise ConfigError(f"training.batch_size ({batch_size}) must be divisible by the number of ranks "
                          f"({world_size}): it is the global batch of one optimizer step")
    per_rank = batch_size // world_size
    # a rank whose share is smaller than the micro-batch runs its whole share at once (a config's
    # single-GPU micro-batch stays valid on more ranks)
    micro = min(micro_batch_size, per_rank) if micro_batch_size else per_rank
    if per_rank % micro:
        raise ConfigError(f"training.batch_size ({batch_size}) must be divisible by ranks ({world_size}) x "
                          f"training.micro_batch_size ({micro}); each rank's {per_rank} rows split into whole micro-batches")
    return micro, per_rank // micro


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Replace every gradient by its mean over the ranks (sum, then divide: gloo has no AVG)."""
    if not info.enabled or info.sharded:
        return
    for p in params:  # every rank must send the same tensors, in the same order
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= BUCKET_ELEMENTS:
            _reduce_bucket(bucket, info.world_size)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, info.world_size)


def _reduce_bucket(grads: list[torch.Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise mean of a small tensor over the ranks (a copy; the input is kept)."""
    out = values.detach().clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out.div_(info.world_size)
    return out


def max_over_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """The largest `value` over the ranks, so that every rank takes the same decision."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
