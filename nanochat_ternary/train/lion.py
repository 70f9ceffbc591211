"""Lion: sign-of-momentum optimizer for the parameters Muon does not take.

Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675)
keeps one momentum buffer (half of Adam's state) and moves every entry by exactly +-lr:

    c = beta1 * m + (1 - beta1) * g        the interpolation that sets the direction
    p = p * (1 - lr * wd) - lr * sign(c)   decoupled weight decay, then the sign step
    m = beta2 * m + (1 - beta2) * g        the momentum tracks with a longer horizon

Because every update has magnitude lr, Lion wants a learning rate ~3-10x smaller than AdamW's
(hence `lion_lr_mult` in the config) and a larger weight decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from . import state8bit


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay; any parameter shape."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eight_bit: bool = False,  # momentum kept as 8-bit codes (state8bit.py)
    ) -> None:
        if lr < 0:
            raise ValueError(f"Lion: learning rate must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be two numbers in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"Lion: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eight_bit=eight_bit))
        state8bit.keep_codes_on_load(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                g = p.grad
                state, eight_bit = self.state[p], group.get("eight_bit", False)
                m = state8bit.load(state, "exp_avg", p, eight_bit)
                direction = m.lerp(g, 1 - beta1).sign_()  # sign(beta1 * m + (1 - beta1) * g)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
                m.lerp_(g, 1 - beta2)  # m = beta2 * m + (1 - beta2) * g
                state8bit.store(state, "exp_avg", p, m, eight_bit)
        return loss
