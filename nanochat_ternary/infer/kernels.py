"""The fast matmuls of the inference engine: ternary x int8 and F16 x F32, native or PyTorch.

Why this module exists: decode speed on a CPU is bound by how many bytes of weights each token
reads. A ternary weight needs 2 bits (TQ2_0) where PyTorch's int8 paths read 8 and float paths
16 or 32. The native kernels (C files in native/csrc/, built per instruction set by native/build.py)
are compiled once with the system C compiler into a per-user cache and called through ctypes;
when no compiler is available (or NANOCHAT_KERNELS=torch) the same maths runs on PyTorch ops:

- ternary: the per-token int8 activations times the ternary weights as an exact int8 x int8 ->
  int32 product (`torch._int_mm`), then the group scales, so both back-ends compute the same
  integers and agree to the last float bit for per-tensor scales;
- F16: a float32 copy of the weights and a float32 matmul.

Activation quantization follows bitlinear.quantize_activation exactly (scale = Q / absmax,
round half to even, clamp), so the engine sees the numbers the training model saw.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import torch

from ..native.build import ISA_FLAGS, backend_name, compile_kernels, isa_library, load_library, native_library, supported_isas  # noqa: F401 (API)

QK = 256  # columns per ternary block (GGUF's QK_K)


_local = threading.local()


def scratch_buffer(nbytes: int) -> torch.Tensor:
    """A per-thread byte buffer for kernel scratch space (reused: no allocation per call; the
    caller must be done with it before the next call on this thread hands it out again)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _local.buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.uint8)
    return buf


# ---------------------------------------------------------------------------------------------
# ternary weights


def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """int8 ternary [N, K] (K a multiple of 256) -> uint8 [N, K / 4] in the kernel layout."""
    n, k = t.shape
    u = (t.to(torch.int16) + 1).to(torch.uint8).reshape(n, k // QK, 4, 64)
    return (u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)).reshape(n, k // 4).contiguous()


def unpack_ternary(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_ternary: uint8 [N, K / 4] -> int8 [N, K]."""
    n, kb = packed.shape
    p = packed.reshape(n, kb // 64, 1, 64)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)
    return ((p >> shifts) & 3).to(torch.int8).sub_(1).reshape(n, kb * 4)


@dataclass
class TernaryWeight:
    """W = t * scales, t in {-1, 0, 1}: scales [N, G] apply to G equal column groups."""

    n_out: int
    n_in: int
    scales: torch.Tensor  # float32 [N, G]
    packed: torch.Tensor | None = None  # uint8 [N, K / 4] (native back-end)
    t_cols: torch.Tensor | None = None  # int8 [K, N] (torch back-end, _int_mm's layout)

    @property
    def groups(self) -> int:
        return self.scales.shape[1]

    def nbytes(self) -> int:
        w = self.packed if self.packed is not None else self.t_cols
        return w.numel() * w.element_size() + self.scales.numel() * 4


def make_ternary(t: torch.Tensor, scales: torch.Tensor, lib: ctypes.CDLL | None) -> TernaryWeight:
    """Build a weight for the chosen back-end from int8 t [N, K] and float scales [N, G]."""
    n, k = t.shape
    scales = scales.to(torch.float32).reshape(n, -1).contiguous()
    if k % QK or k % scales.shape[1] or (k // scales.shape[1]) % QK:
        raise ValueError(f"ternary weight [{n}, {k}] with {scales.shape[1]} scale groups: columns must be groups of multiples of {QK}")
    if lib is not None:
        return TernaryWeight(n, k, scales, packed=pack_ternary(t))
    return TernaryWeight(n, k, scales, t_cols=t.to(torch.int8).t().contiguous())


def quantize_activations(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values [M, K], scale [M, 1]) with x ~ values / scale, as bitlinear.quantize_activation."""
    q = 2 ** (bits - 1) - 1
    scale = q / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-5)
    return (x * scale).round_().clamp_(-q - 1, q).to(torch.int8), scale


def ternary_matmul(x: torch.Tensor, w: TernaryWeight, bits: int, lib: ctypes.CDLL | None,
                   norm: torch.Tensor | None = None, eps: float = 1e-5, glu: bool = False) -> torch.Tensor:
    """float32 [M, N] = quant(prep(x)) @ (t * scales)^T, where prep(x) is x [M, K], or
    silu(gate) * up of x = gate|up [M, 2K] when `glu`, then RMSNorm with gain `norm` if given."""
    x = x.contiguous()
    m, k = x.shape[0], w.n_in
    if lib is not None and w.packed is not None:
        out = torch.empty(m, w.n_out)
        xq_bytes = (m * k + 63) // 64 * 64
        buf = scratch_buffer(4 * m * k + xq_bytes + 4 * m + 4 * m * w.groups).data_ptr()  # xn | xq | xs | xsum
        xq = buf + 4 * m * k
        lib.nc_ternary_gemm(m, w.n_out, k, x.data_ptr(), norm.data_ptr() if norm is not None else None, eps, int(glu),
                            w.packed.data_ptr(), w.scales.data_ptr(), w.groups, 2 ** (bits - 1) - 1, out.data_ptr(),
                            buf, xq, xq + xq_bytes, xq + xq_bytes + 4 * m)
        return out
    if w.t_cols is None:
        raise ValueError("this TernaryWeight was built for the native back-end")
    if glu:
        gate, up = x.split(k, dim=-1)
        x = torch.nn.functional.silu(gate) * up
    if norm is not None:
        x = torch.nn.functional.rms_norm(x, (k,), norm, eps)
    xq, scale = quantize_activations(x, bits)
    g, kg = w.groups, k // w.groups
    if g == 1:
        acc = torch._int_mm(xq, w.t_cols).float() * w.scales[:, 0]
    else:
        acc = torch.zeros(m, w.n_out)
        for j in range(g):  # one exact integer product per scale group
            part = torch._int_mm(xq[:, j * kg:(j + 1) * kg].contiguous(), w.t_cols[j * kg:(j + 1) * kg])
            acc += part.float() * w.scales[:, j]
    return acc / scale


# ---------------------------------------------------------------------------------------------
# dense F16 / F32 weights


@dataclass
class DenseWeight:
    """A dense [N, K] weight: F16 for the native kernel, else float32 for torch.matmul."""

    n_out: int
    n_in: int
    w16: torch.Tensor | None = None  # float16 [N, K]
    w32: torch.Tensor | None = None  # float32 [N, K]

    def nbytes(self) -> int:
        w = self.w16 if self.w16 is not None else self.w32
        return w.numel() * w.element_size()


def make_dense(w: torch.Tensor, lib: ctypes.CDLL | None) -> DenseWeight:
    """F16 weights use the native kernel (K a multiple of 16); anything else runs in float32."""
    n, k = w.shape
    if lib is not None and w.dtype == torch.float16 and k % 16 == 0:
        return DenseWeight(n, k, w16=w.contiguous())
    return DenseWeight(n, k, w32=w.to(torch.float32).contiguous())


def dense_matmul(x: torch.Tensor, w: DenseWeight, lib: ctypes.CDLL | None) -> torch.Tensor:
    """x float32 [M, K] -> float32 [M, N] = x @ W^T, accumulated in float32."""
    if w.w16 is not None and lib is not None:
        x = x.contiguous()
        out = torch.empty(x.shape[0], w.n_out)
        lib.nc_f16_gemm(x.shape[0], w.n_out, w.n_in, x.data_ptr(), w.w16.data_ptr(), out.data_ptr())
        return out
    return x @ w.w32.t()


def gather_dot(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, lib: ctypes.CDLL | None) -> torch.Tensor:
    """out[m, j] = x[m] . w[idx[m, j]] in float32, for x float32 [M, K], w [N, K], idx int64 [M, J]."""
    if lib is not None and w.dtype == torch.float16 and w.shape[1] % 16 == 0:
        x, idx = x.contiguous(), idx.contiguous()
        out = torch.empty(idx.shape, dtype=torch.float32)
        lib.nc_f16_gather_dot(idx.shape[0], idx.shape[1], w.shape[1], idx.data_ptr(), x.data_ptr(), w.data_ptr(), out.data_ptr())
        return out
    # multiply + row sum, not bmm: bmm's result depends on the batch size, this does not
    return (w[idx].float() * x.unsqueeze(1)).sum(-1)


def topk_indices(x: torch.Tensor, k: int, lib: ctypes.CDLL | None) -> torch.Tensor:
    """int64 [M, k]: the indices of each row's k largest values of x float32 [M, N], largest first
    (ties: the lower index first on the native back-end)."""
    k = min(k, x.shape[1])
    if lib is None:
        return x.topk(k, dim=-1).indices
    x = x.contiguous()
    idx = torch.empty(x.shape[0], k, dtype=torch.long)
    lib.nc_topk(x.shape[0], x.shape[1], k, x.data_ptr(), idx.data_ptr())
    return idx


# ---------------------------------------------------------------------------------------------
# int8 copy of a dense matrix (the approximate tied head)


@dataclass
class Int8Weight:
    """W ~ q * scales[:, None] with q int8 [N, K] (per-row absmax); wsum[n] = sum_k q[n, k]."""

    q: torch.Tensor
    wsum: torch.Tensor
    scales: torch.Tensor

    def nbytes(self) -> int:
        return self.q.numel() + 8 * self.scales.numel()


def make_int8(w: torch.Tensor) -> Int8Weight:
    w = w.float()
    scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-30)
    q = (w / scales[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous()
    return Int8Weight(q, q.sum(dim=1, dtype=torch.int32).contiguous(), scales.contiguous())


def int8_matmul(x: torch.Tensor, w: Int8Weight, lib: ctypes.CDLL) -> torch.Tensor:
    """x float32 [M, K] -> approximately x @ W^T [M, N] (activations quantized per token to int8)."""
    x = x.contiguous()
    m, k = x.shape
    n = w.q.shape[0]
    out = torch.empty(m, n)
    buf = scratch_buffer(m * k + 64 + 4 * m).data_ptr()
    xs = buf + (m * k + 63) // 64 * 64
    lib.nc_int8_gemm(m, n, k, x.data_ptr(), w.q.data_ptr(), w.wsum.data_ptr(), w.scales.data_ptr(), out.data_ptr(), buf, xs)
    return out
