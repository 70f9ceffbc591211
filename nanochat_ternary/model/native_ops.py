"""The training step's row-wise ops as single native calls: RMSNorm's backward, SwiGLU's backward,
RoPE, and the BitLinear activation and weight fake quantisers (C in native/csrc/nc_train.c).

Why: at the tiny config's widths a CPU training step is ~3,500 PyTorch ops and the ones that are
not matmuls cost mostly their per-op overhead. nn.RMSNorm's CPU path is a pow/mean/add/rsqrt/mul
chain whose autograd backward adds a dozen more ops per norm (PowBackward alone was ~3 ms of a
~30 ms backward); each quantiser is 4-7 elementwise ops. Here each is one pass over the rows.

What the C path computes:
  - the quantisers: bit for bit what bitlinear.py's PyTorch ops compute (tests check equality);
  - RMSNorm: the forward is PyTorch's (torch._fused_rms_norm: F.rms_norm's bits, and r per row),
    so the forward pass, and every activation rounding in it, is unchanged; the backward is the
    analytic one in one call,
      gx = r * (g * w) - x * r^3 * sum(g * w * x) / D,   gw = sum over rows of g * x * r,
    with r = 1 / sqrt(mean(x^2) + eps), saving only x and r (nn.RMSNorm's graph keeps more); its
    gradients differ from autograd's by float summation order only (tests: 1e-6 relative);
  - SwiGLU (ffn.py): the forward is PyTorch's silu(gate) * up; the backward reads the fused
    gate/up output once and writes both gradients (autograd ran silu_backward and two products,
    and PyTorch's CPU exp leaves its vector path for large |gate|);
  - RoPE (attention.py): q and k rotated together, read in place from the qkv projection's output;
    forward and backward are bit for bit apply_rope and its autograd gradient (tests).

It runs only where it computes what PyTorch would: float32 tensors on the CPU, outside autocast,
plain tensors (not DTensor shards or fakes), with the library built, and not while torch.compile
traces the model. Elsewhere (CUDA, MPS, bf16, no C compiler, NANOCHAT_KERNELS=torch) the callers
use their PyTorch ops.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

_PLAIN = (torch.Tensor, nn.Parameter)


@functools.lru_cache(maxsize=1)
def library():
    """The native kernels (native/build.py's choice for this CPU), or None."""
    from ..native.build import native_library

    return native_library()


# Set by meta_trace(): meta tensors take the C path's graph (what it saves), without its calls.
_META_TRACE = False


@contextlib.contextmanager
def meta_trace():
    """Meta float32 tensors count as usable, and the C calls are skipped (their outputs stay
    empty): train/activation_trace.py counts what a CPU step saves, which with these autograd
    Functions is less than the PyTorch ops' graph (the tiny config: 24 vs 32 MB)."""
    global _META_TRACE
    _META_TRACE = True
    try:
        yield
    finally:
        _META_TRACE = False


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the C path applies to these tensors (None entries are ignored)."""
    devices = ("cpu", "meta") if _META_TRACE else ("cpu",)
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or t.device.type not in devices or t.dtype != torch.float32):
            return False
    # under torch.compile the PyTorch ops are traced (and fused by the compiler) instead
    return not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and library() is not None


def _rows(x: torch.Tensor) -> tuple[int, int]:
    d = x.shape[-1]
    return x.numel() // d if d else 0, d


def _calls(x: torch.Tensor) -> bool:
    """Whether to run the C call on x: it has elements and data (not a meta_trace tensor)."""
    return x.numel() > 0 and not x.is_meta


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        # PyTorch's own forward (the same bits as F.rms_norm), which also returns r per row
        y, rstd = torch._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        ctx.save_for_backward(x.contiguous(), weight, rstd)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        g, rstd = g.contiguous(), rstd.contiguous()
        n, d = _rows(x)
        gx = torch.empty_like(x)
        gw = torch.empty(d, dtype=torch.float32) if weight is not None and ctx.needs_input_grad[1] else None
        threads = torch.get_num_threads()
        scratch = torch.empty(threads * d if gw is not None else 1, dtype=torch.float32)
        if n:
            library().nc_rmsnorm_bwd(n, d, threads, x.data_ptr(), _ptr(weight), rstd.data_ptr(), g.data_ptr(),
                                     gx.data_ptr(), _ptr(gw), scratch.data_ptr())
        elif gw is not None:
            gw.zero_()
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, with gradients for x and weight."""
    return _RMSNorm.apply(x, weight, eps)


def quantize_activation(x: torch.Tensor, bits: int, eps: float) -> torch.Tensor:
    """bitlinear.quantize_activation's values (no gradient: the STE wraps it)."""
    x = x.detach().contiguous()
    n, d = _rows(x)
    out = torch.empty_like(x)
    if _calls(x):
        library().nc_act_quant(n, d, x.data_ptr(), float(2 ** (bits - 1) - 1), eps, out.data_ptr())
    return out


def ternary_fake(w: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """clamp(round(w / scale), -1, 1) * scale for w [out, in] and bitlinear.weight_scale's scale
    (a scalar, or one per row and group of `group_size` columns)."""
    w = w.detach().contiguous()
    out_f, in_f = w.shape
    scale = scale.detach().contiguous()
    out = torch.empty_like(w)
    if _calls(w):
        library().nc_ternary_fake(out_f, in_f, group_size or in_f, w.data_ptr(), scale.data_ptr(),
                                  int(not group_size), out.data_ptr())
    return out


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu: torch.Tensor) -> torch.Tensor:
        gate, up = gu.chunk(2, dim=-1)
        ctx.save_for_backward(gu)
        return F.silu(gate) * up  # PyTorch's own ops: the forward's bits are unchanged

    @staticmethod
    def backward(ctx, gh: torch.Tensor):
        (gu,) = ctx.saved_tensors
        gu, gh = gu.contiguous(), gh.contiguous()
        n, d2 = _rows(gu)
        dgu = torch.empty_like(gu)
        if n:
            library().nc_swiglu_bwd(n, d2 // 2, gu.data_ptr(), gh.data_ptr(), dgu.data_ptr())
        return dgu


def swiglu(gu: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gu = [gate | up] along the last dimension (the fused gate/up output):
    PyTorch's forward, the backward in one native pass."""
    return _SwiGLU.apply(gu)


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.head_dim = head_dim
        return _rope(x, cos, sin, head_dim, 1.0)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rope(g, cos, sin, ctx.head_dim, -1.0), None, None, None


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, sign: float) -> torch.Tensor:
    # rows may be strided (a column slice of the qkv projection), but not the values in a row
    if x.stride(-1) != 1 or x.stride(0) != x.shape[1] * x.stride(1):
        x = x.contiguous()
    B, T, W = x.shape
    out = x.new_empty(B, T, W)
    if _calls(x):
        library().nc_rope(B * T, T, W, head_dim, x.data_ptr(), x.stride(1), cos.data_ptr(), sin.data_ptr(), sign,
                          out.data_ptr())
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """rope.apply_rope on x [B, T, heads * head_dim] (heads side by side, as the projections give
    them; x may be a column slice of a wider tensor) with cos, sin [T, head_dim]: a new [B, T, W]."""
    return _RoPE.apply(x, cos.contiguous(), sin.contiguous(), head_dim)
