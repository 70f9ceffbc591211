"""Muon: momentum SGD whose update is orthogonalised by a Newton–Schulz iteration.

Muon (Keller Jordan, 2024, https://kellerjordan.github.io/posts/muon/) trains the hidden weight
matrices. Each step keeps an exponential momentum buffer, takes the Nesterov look-ahead of it,
and replaces that update G by (approximately) U V^T from its SVD G = U S V^T: every singular
value is pushed towards 1, so all directions of the matrix move at the same rate. The
orthogonalisation is a quintic Newton–Schulz iteration whose coefficients were tuned to push
small singular values up fast; it does not converge to exactly 1 but leaves them roughly in
[0.7, 1.2], which is all the method needs.

Only 2-D parameters are accepted; embeddings, norms, biases and gates go to Lion (see optim.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import functools

import torch
from torch import Tensor

from ..model import native_ops
from . import state8bit
from .fsdp import DTensor, orthogonalise

# Quintic coefficients from the Muon reference implementation: they maximise the slope at 0
# (so tiny singular values grow fast) while keeping the iteration bounded near 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


@functools.cache
def _cpu_bf16_native() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 where it is native and fast, else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and _cpu_bf16_native()):
        return torch.bfloat16
    return torch.float32


def newton_schulz(g: Tensor, steps: int = 5) -> Tensor:
    """Approximately orthogonalise a matrix [m, n], or each of a stack of them [k, m, n] (the
    zeroth power U V^T of its SVD).

    Runs in bf16 where the hardware multiplies bf16 natively (CUDA; CPUs with AVX512-BF16/AMX,
    where it halves the optimizer's cost) and fp32 elsewhere; the iteration tolerates bf16. Each
    matrix is normalised by its Frobenius norm first so that every singular value is <= 1, and a
    tall one is transposed so that X @ X^T is the smaller Gram matrix. Per iteration, with
    G = X X^T: X <- a X + (b G + c G^2) X, two fused multiply-adds (addmm / baddbmm).
    """
    if g.ndim not in (2, 3):
        raise ValueError(f"newton_schulz expects a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFS
    tall = g.size(-2) > g.size(-1)
    # a tall matrix is copied into the wide layout: matmul libraries round a transposed view's
    # products differently on some CPUs (MKL on AMD Zen 3), and this keeps one matrix's bits equal
    # to its slot in a stack (newton_schulz_stacked, nc_muon.c)
    x = (g.mT if tall else g).contiguous().to(ns_dtype(g.device))
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)
    fma = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        poly = fma(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = fma(x, poly, x, beta=a)  # a X + poly X
    return x.mT if tall else x


# Muon orthogonalises same-shape matrices together, as one batched Newton-Schulz (as
# karpathy/nanochat's Muon does): at small widths the per-matrix matmuls are too small to keep the
# cores busy, and one call per stack replaces steps x 3 calls per matrix. A stack holds at most
# STACK_ELEMS elements (or one matrix, if that is larger), which bounds its extra memory
# (memory_estimate.py counts it).
STACK_ELEMS = 1 << 20


def oriented(shape: tuple[int, ...]) -> tuple[int, int]:
    """The shape Newton-Schulz works on: wide (a tall matrix is transposed)."""
    m, n = shape
    return (n, m) if m > n else (m, n)


def stack_plan(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Indices of `shapes` grouped into stacks: same oriented shape, at most STACK_ELEMS a stack."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(shapes):
        by_shape.setdefault(oriented(tuple(s)), []).append(i)
    plan = []
    for (m, n), idx in by_shape.items():
        per = max(1, STACK_ELEMS // (m * n))
        plan += [idx[j:j + per] for j in range(0, len(idx), per)]
    return plan


def newton_schulz_stacked(updates: list[Tensor], steps: int) -> list[Tensor]:
    """newton_schulz of each of same-oriented-shape updates (one stack of stack_plan), in one call."""
    if len(updates) == 1:
        return [newton_schulz(updates[0], steps)]
    tall = [u.size(0) > u.size(1) for u in updates]
    # the stack is made in Newton-Schulz's dtype: one pass per update (torch.stack and then a bf16
    # copy were two passes over the whole stack)
    x = torch.empty((len(updates), *oriented(tuple(updates[0].shape))), dtype=ns_dtype(updates[0].device), device=updates[0].device)
    for xi, u, t in zip(x, updates, tall):
        xi.copy_(u.mT if t else u)
    ortho = newton_schulz(x, steps)
    return [o.mT if t else o for o, t in zip(ortho.unbind(0), tall)]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: Nesterov momentum, Newton–Schulz orthogonalised update.

    The step is `p -= lr * max(1, rows/cols)**0.5 * NS(g + momentum look-ahead)`, with decoupled
    weight decay `p *= 1 - lr * weight_decay` applied first. The shape factor keeps the RMS of
    the update comparable for tall matrices (whose orthogonalised update has smaller entries).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        eight_bit: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"Muon: learning rate must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        if weight_decay < 0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        eight_bit=eight_bit)  # eight_bit: momentum kept as 8-bit codes (state8bit.py)
        super().__init__(params, defaults)
        state8bit.keep_codes_on_load(self)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim != 2:
                raise ValueError(
                    f"Muon only optimises 2-D parameters, got one of shape {tuple(p.shape)}; "
                    "give embeddings, norms, biases and other tensors to Lion"
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, steps = group["lr"], group["weight_decay"], group["ns_steps"]
            params = [p for p in group["params"] if p.grad is not None]
            for idx in stack_plan([tuple(p.shape) for p in params]):  # a stack's updates at a time
                stack = [params[i] for i in idx]
                if self._native_ok(stack, group):
                    self._native_stack_step(stack, group)
                    continue
                updates = [self._update(p, group) for p in stack]
                if isinstance(updates[0], DTensor):  # FSDP: each on its full matrix
                    orthos = [orthogonalise(u, newton_schulz, steps) for u in updates]
                else:
                    orthos = newton_schulz_stacked(updates, steps)
                for p, ortho in zip(stack, orthos):
                    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                    if wd:
                        p.mul_(1 - lr * wd)
                    # a bf16 update is added in p's dtype as it is read (no float copy of it)
                    p.add_(ortho.to(p.dtype) if isinstance(ortho, DTensor) else ortho, alpha=-lr * scale)
        return loss

    def _native_ok(self, stack: list[Tensor], group: dict) -> bool:
        """Whether the native passes apply: plain contiguous float32 CPU parameters, gradients and
        momentum buffers (not 8-bit ones)."""
        def fits(p: Tensor) -> bool:
            buf = self.state[p].get("momentum_buffer")
            return (p.is_contiguous() and p.grad.is_contiguous() and not p.grad.is_sparse and native_ops.usable(p, p.grad)
                    and (buf is None or (buf.dtype == torch.float32 and buf.is_contiguous() and native_ops.usable(buf))))
        return not group.get("eight_bit", False) and all(fits(p) for p in stack)

    def _native_stack_step(self, stack: list[Tensor], group: dict) -> None:
        """The step of one stack with the native passes around Newton-Schulz (native/csrc/nc_muon.c):
        momentum, Nesterov look-ahead and the copy into the stack in one pass per parameter, then
        decay and update in one. The same arithmetic as the PyTorch path below, so the same bits
        (tests); the tiny config's Muon step went 9.1 -> 7.8 ms."""
        lib, beta, lr, wd = native_ops.library(), group["momentum"], group["lr"], group["weight_decay"]
        x = torch.empty((len(stack), *oriented(tuple(stack[0].shape))), dtype=ns_dtype(stack[0].device))
        bf16 = int(x.dtype == torch.bfloat16)
        for xi, p in zip(x, stack):
            buf = state8bit.load(self.state[p], "momentum_buffer", p, False)
            rows, cols = p.shape
            lib.nc_muon_pre(rows, cols, p.grad.data_ptr(), buf.data_ptr(), 1 - beta, beta, int(group["nesterov"]),
                            int(rows > cols), bf16, xi.data_ptr())
        ortho = newton_schulz(x, group["ns_steps"]).contiguous()
        for oi, p in zip(ortho, stack):
            rows, cols = p.shape
            scale = max(1.0, rows / cols) ** 0.5
            lib.nc_muon_post(rows, cols, p.data_ptr(), oi.data_ptr(), int(rows > cols), bf16, 1 - lr * wd if wd else 1.0,
                             -lr * scale)

    def _update(self, p: Tensor, group: dict) -> Tensor:
        """Advance p's momentum by its gradient; the (Nesterov) update to orthogonalise."""
        if p.grad.is_sparse:
            raise RuntimeError("Muon does not support sparse gradients")
        g, beta = p.grad, group["momentum"]
        state, eight_bit = self.state[p], group.get("eight_bit", False)
        buf = state8bit.load(state, "momentum_buffer", p, eight_bit)
        buf.lerp_(g, 1 - beta)  # buf = beta * buf + (1 - beta) * g
        state8bit.store(state, "momentum_buffer", p, buf, eight_bit)
        # Nesterov: look one step ahead along the momentum, without touching p.grad.
        return g.lerp(buf, beta) if group["nesterov"] else buf
