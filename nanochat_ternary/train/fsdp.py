"""FSDP2 sharding (`training.fsdp = true`): each rank keeps 1/N of the weights, gradients and states.

Why this module exists: data parallelism (train/distributed.py) keeps a whole copy of the model,
its gradients and both optimizers' momenta on every rank; a config that does not fit one GPU
(medium_3b) needs them split. PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) does the
splitting: every parameter becomes a DTensor sharded by rows (Shard(0)) over the ranks, each
transformer block is gathered just before it runs and freed after, and backward reduce-scatters
(averages) the gradients, so every rank ends a step holding the averaged gradient of its own rows.

What the rest of training does with shards:
- Lion is element-wise, so it steps the local rows as they are (its momentum is sharded too).
- Muon needs the whole matrix: Newton–Schulz orthogonalises U S V^T -> U V^T, which no row block
  can do alone. `orthogonalise` (muon.py calls it) all-gathers the momentum update, runs the
  iteration on the full matrix and keeps this rank's rows of the result. Every rank runs the
  iteration on every matrix (the same arithmetic, so the shards stay consistent); sharing the
  matrices out round-robin, as karpathy/nanochat's DistMuon does, would divide that work by N.
- Gradient clipping: `clip_grad_norm_` on DTensor gradients already sums the squares over ranks.
- Checkpoints stay in the one-process format (train/checkpoint.py): `full_states` gathers each
  tensor (`DTensor.full_tensor()`, one at a time, kept on CPU by rank 0 only) into the same
  `model.state_dict()` and id-keyed optimizer state_dicts that a single process writes. This is
  done by hand rather than with torch.distributed.checkpoint's `get_optimizer_state_dict`, whose
  full state dicts key the optimizer state by parameter name, a format a one-process resume's
  `Optimizer.load_state_dict` does not read. `shard_states` does the reverse on resume: every
  rank reads the full checkpoint and keeps its rows (no communication), so a run may resume on
  any number of ranks, sharded or not.
- 8-bit optimizer states are refused: their codes and block scales are not shaped like the
  parameter, so they cannot be sharded by rows with it.

Without a process group (one process) `training.fsdp` does nothing: the model is too big for
one device or it is not, sharding over one rank would only add overhead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from ..config import TrainingConfig
from ..errors import ConfigError
from .distributed import DistInfo

# Methods of GPT that the training loss and validation call instead of forward(): FSDP2 must
# gather the root group's weights (embedding, final norm, MTP heads) around them too.
FORWARD_METHODS = ("hidden_with_mtp", "forward_with_mtp")


def wants_fsdp(tcfg: TrainingConfig, info: DistInfo) -> bool:
    """True when this run shards: `training.fsdp` under torchrun with more than one rank."""
    if not tcfg.fsdp or not info.enabled:
        return False
    if tcfg.use_8bit_optim:
        raise ConfigError("training.fsdp and training.use_8bit_optim cannot be combined: 8-bit optimizer states "
                          "(blockwise codes + scales) are not sharded with the parameters; turn one of them off")
    return True


def shard_model(model: nn.Module, device: torch.device, info: DistInfo) -> None:
    """Shard `model` in place over all ranks: one FSDP group per block, the rest in the root group."""
    mesh = init_device_mesh(device.type, (info.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(model, name)


def orthogonalise(update: torch.Tensor, ns: callable, steps: int) -> torch.Tensor:
    """`ns(update, steps)` on the full matrix; for a sharded update, this rank's rows of it."""
    if not isinstance(update, DTensor):
        return ns(update, steps)
    full = ns(update.full_tensor(), steps)
    # src_data_rank=None: every rank holds the same `full`, so each keeps its rows without sending anything
    return distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)


def mhc_gain(model: nn.Module) -> float:
    """model.mhc_composite_gain(), reading full weights: a sharded model is gathered for the call."""
    groups = [m for m in [model, *model.blocks] if isinstance(m, FSDPModule)]
    for m in groups:  # a collective: every rank logs the same steps
        m.unshard()
    try:
        return model.mhc_composite_gain()
    finally:
        for m in groups:
            m.reshard()


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm (over all ranks' shards) to `max_norm`; return the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _full(value, keep: bool):
    if isinstance(value, DTensor):
        full = value.full_tensor()  # a collective: every rank calls it, in the same order
        return full.cpu() if keep else None
    return value


def full_states(model: nn.Module, optimizers: list[torch.optim.Optimizer], keep: bool) -> tuple[dict, list]:
    """(model state_dict, optimizer state_dicts) with every shard gathered, as one process has them.

    Every rank must call this (it all-gathers); only where `keep` (rank 0) are the tensors kept.
    """
    model_state = {k: _full(v, keep) for k, v in model.state_dict().items()}
    optim_states = []
    for opt in optimizers:
        sd = opt.state_dict()
        state = {pid: {k: _full(v, keep) for k, v in sd["state"][pid].items()} for pid in sorted(sd["state"])}
        optim_states.append({"state": state, "param_groups": sd["param_groups"]})
    return model_state, optim_states


def _local(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(like, DTensor) and torch.is_tensor(full) and full.shape == like.shape:
        full = full.to(like.device_mesh.device_type)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


def shard_states(model: nn.Module, optimizers: list[torch.optim.Optimizer], model_state: dict,
                 optim_states: list | None) -> None:
    """Load a one-process (full) checkpoint into the sharded model and optimizers."""
    current = model.state_dict()
    model.load_state_dict({k: _local(v, current.get(k)) for k, v in model_state.items()})
    for opt, sd in zip(optimizers, optim_states or []):
        params = [p for g in opt.param_groups for p in g["params"]]
        saved_ids = [i for g in sd["param_groups"] for i in g["params"]]
        if len(saved_ids) != len(params):
            opt.load_state_dict(sd)  # let the optimizer name the mismatch
            continue
        like = dict(zip(saved_ids, params))
        state = {pid: {k: _local(v, like[pid]) if pid in like else v for k, v in entry.items()}
                 for pid, entry in sd["state"].items()}
        opt.load_state_dict({**sd, "state": state})
