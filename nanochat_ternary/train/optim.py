"""Split a model's parameters between Muon and Lion, and drive their learning rates.

Muon's orthogonalised update only makes sense for the hidden weight matrices (the projections
of attention and FFN, BitLinear's latent weights). Everything else, the embedding (tied with the
LM head), the norms, the mHC logits, biases and gates (the MoE router too), goes to Lion at
`lion_lr_mult` times the learning rate (ARCHITECTURE.md). Lion's groups (`_lion_groups`): the
embedding decays; vectors (norm gains, biases, gates) and parameters marked `_no_weight_decay` do
not; the mHC routing logits do not and get `mhc_lr_mult` times Lion's lr (see `_lion_groups` for why).
Every param group records its base learning rate as `initial_lr`, so the training loop scales
all groups with one schedule multiplier (`set_lr`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainingConfig
from .lion import Lion
from .muon import Muon

# A 2-D parameter whose name contains one of these is an input/output matrix, not a hidden one:
# Muon's reference setup leaves the embedding and the LM head to an element-wise optimizer.
# The MoE router [E, D] (model/moe.py) is a gate, not a hidden matrix: Muon would orthogonalise
# its E rows (pushing the experts' directions apart and giving every row the same update size
# whatever its gradient), so it goes to Lion with the other gates.
NON_MUON_NAME_KEYS = ("embed", "lm_head", "ffn.router")


def is_muon_param(name: str, param: torch.Tensor, embedding_params: set[int] | None = None) -> bool:
    """True for a hidden weight matrix: 2-D, not an embedding / LM head (by name or module)."""
    if param.ndim != 2:
        return False
    if any(key in name for key in NON_MUON_NAME_KEYS):
        return False
    return embedding_params is None or id(param) not in embedding_params


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(muon_params, lion_params) over the trainable parameters, each appearing once.

    `named_parameters()` already yields a tied (shared) parameter once. Weights of nn.Embedding
    modules go to Lion whatever they are called.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    muon, lion = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if is_muon_param(name, p, embedding_params) else lion).append(p)
    return muon, lion


def build_optimizers(model: nn.Module, tcfg: TrainingConfig) -> list[torch.optim.Optimizer]:
    """[Muon(hidden matrices), Lion(everything else)]; an empty side is left out of the list."""
    muon_params, lion_params = split_params(model)
    optimizers: list[torch.optim.Optimizer] = []
    if muon_params:
        lr = tcfg.learning_rate
        optimizers.append(
            Muon(
                [{"params": muon_params, "initial_lr": lr}],
                lr=lr,
                momentum=tcfg.muon_momentum,
                ns_steps=tcfg.muon_ns_steps,
                weight_decay=tcfg.weight_decay,
                eight_bit=tcfg.use_8bit_optim,
            )
        )
    if lion_params:
        lr = tcfg.learning_rate * tcfg.lion_lr_mult
        optimizers.append(
            Lion(
                _lion_groups(lion_params, lr, _routing_ids(model), tcfg.mhc_lr_mult),
                lr=lr,
                betas=tuple(tcfg.lion_betas),
                weight_decay=tcfg.lion_weight_decay,
                eight_bit=tcfg.use_8bit_optim,
            )
        )
    return optimizers


def _routing_ids(model: nn.Module) -> set[int]:
    from ..model.mhc import MHC

    return {id(p) for m in model.modules() if isinstance(m, MHC) for p in m.parameters()}


def _lion_groups(params: list[nn.Parameter], lr: float, routing: set[int] = frozenset(),
                 routing_lr_mult: float = 1.0) -> list[dict]:
    """Lion's param groups. Weight decay (decoupled, p -= lr * wd * p) is only for matrices (the
    embedding): pulling a norm gain towards 0 shrinks its branch, pulling mHC logits towards 0
    drags H_res/H_pre towards uniform mixing and H_post towards 1, and Gated DeltaNet's A_log /
    dt_bias (`_no_weight_decay`) are time scales. The mHC logits also get their own lr: Lion's
    update is lr * sign(.), so a logit moves at most lr per step; at Lion's usual lr (~1e-3) a
    run of a few hundred steps cannot move H_res = sigmoid(logit) off its init, measured with
    `nanochat eval mhc` (README "Real Rust")."""
    def no_decay(p):
        return p.ndim < 2 or getattr(p, "_no_weight_decay", False)

    decay = [p for p in params if id(p) not in routing and not no_decay(p)]
    keep = [p for p in params if id(p) not in routing and no_decay(p)]
    route = [p for p in params if id(p) in routing]
    groups = [{"params": decay, "initial_lr": lr}] if decay else []
    groups += [{"params": keep, "initial_lr": lr, "weight_decay": 0.0}] if keep else []
    return groups + ([{"params": route, "initial_lr": lr * routing_lr_mult, "weight_decay": 0.0}] if route else [])


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Set every group's lr to its `initial_lr` times `multiplier` (the schedule's value)."""
    for opt in optimizers:
        for group in opt.param_groups:
            if "initial_lr" not in group:
                raise KeyError("set_lr: a param group has no 'initial_lr'; build optimizers with build_optimizers")
            group["lr"] = group["initial_lr"] * multiplier


def optimizer_state_bytes(optimizers: list[torch.optim.Optimizer]) -> int:
    """Bytes held by all optimizer state tensors (momentum buffers and the like)."""
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    total += value.numel() * value.element_size()
    return total
