"""The native kernels against the PyTorch back-end and plain float references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer_helpers import one_thread  # noqa: F401 (fixture)
from nanochat_ternary.infer import kernels as K
from nanochat_ternary.model.bitlinear import quantize_activation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lib():
    lib = K.native_library()
    if lib is None:
        pytest.skip("no C compiler: the native kernels are not built (the torch back-end is tested elsewhere)")
    return lib


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """The same source compiled without AVX-512: the plain C loops."""
    try:
        return K.load_library(K.compile_kernels(("-mno-avx512f",), cache_dir=tmp_path_factory.mktemp("kernels")))
    except (RuntimeError, OSError) as e:
        pytest.skip(f"cannot compile the portable kernels: {e}")


def _case(n: int, k: int, groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, groups, generator=g) + 0.1
    return t, scales


def test_pack_roundtrip():
    t, _ = _case(24, 512, 1)
    assert torch.equal(K.unpack_ternary(K.pack_ternary(t)), t)


@pytest.mark.parametrize("m,n,k,groups", [(1, 40, 256, 1), (3, 24, 512, 2), (9, 17, 768, 3), (16, 64, 256, 1)])
def test_ternary_matches_torch_and_reference(lib, portable, m, n, k, groups):
    t, scales = _case(n, k, groups)
    x = torch.randn(m, k)
    native = K.ternary_matmul(x, K.make_ternary(t, scales, lib), 8, lib)
    torch_ = K.ternary_matmul(x, K.make_ternary(t, scales, None), 8, None)
    plain = K.ternary_matmul(x, K.make_ternary(t, scales, portable), 8, portable)
    assert torch.equal(native, torch_)  # same integers, same float epilogue: bitwise equal
    assert torch.equal(native, plain)
    w = (t.float().reshape(n, groups, -1) * scales[..., None]).reshape(n, k)
    ref = F.linear(quantize_activation(x, 8), w)  # the training code's BitLinear maths
    assert torch.allclose(native, ref, rtol=1e-5, atol=1e-5)


def test_ternary_fused_norm_and_glu(lib):
    t, scales = _case(32, 256, 1, seed=1)
    x = torch.randn(5, 512)
    nw = torch.rand(256) + 0.5
    w = K.make_ternary(t, scales, lib)
    got = K.ternary_matmul(x, w, 8, lib, norm=nw, eps=1e-5, glu=True)
    h = F.rms_norm(F.silu(x[:, :256]) * x[:, 256:], (256,), nw, 1e-5)
    want = K.ternary_matmul(h, K.make_ternary(t, scales, None), 8, None)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    rows = torch.cat([K.ternary_matmul(x[i : i + 1], w, 8, lib, norm=nw, glu=True) for i in range(5)])
    assert torch.equal(rows, got)  # a row's result does not depend on the other rows


def test_activation_bits(lib):
    t, scales = _case(16, 256, 1, seed=2)
    x = torch.randn(4, 256)
    got = K.ternary_matmul(x, K.make_ternary(t, scales, lib), 4, lib)
    ref = F.linear(quantize_activation(x, 4), t.float() * scales)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 6])
def test_f16_and_int8_head(lib, portable, m):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(300, 256, generator=g) * 0.05).half()
    x = torch.randn(m, 256, generator=g)
    ref = x @ w.float().t()
    for lb in (lib, portable):
        assert torch.allclose(K.dense_matmul(x, K.make_dense(w, lb), lb), ref, rtol=1e-5, atol=1e-5)
    approx = K.int8_matmul(x, K.make_int8(w), lib)
    assert (approx - ref).abs().max() <= 0.02 * ref.abs().max()
    assert torch.equal(K.int8_matmul(x, K.make_int8(w), portable), approx)


def test_gather_dot_rescoring(lib, portable):
    """The head's exact rescoring: out[m, j] = x[m] . w[idx[m, j]], equal to the F16 GEMM's own
    logits, and each row independent of the others (results must not depend on batching)."""
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(300, 256, generator=g) * 0.05).half()
    x = torch.randn(5, 256, generator=g)
    idx = torch.randint(0, 300, (5, 17), generator=g)
    ref = (x @ w.float().t()).gather(1, idx)
    for lb in (lib, portable, None):
        out = K.gather_dot(x, w, idx, lb)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        if lb is not None:  # bitwise the logits the exact F16 head computes, row by row
            full = K.dense_matmul(x, K.make_dense(w, lb), lb)
            assert torch.equal(out, full.gather(1, idx))
            assert torch.equal(K.gather_dot(x[2:3], w, idx[2:3], lb), out[2:3])


def test_compile_cache_reuses_library(tmp_path):
    a = K.compile_kernels(("-mno-avx512f",), cache_dir=tmp_path)
    mtime = a.stat().st_mtime_ns
    assert K.compile_kernels(("-mno-avx512f",), cache_dir=tmp_path) == a and a.stat().st_mtime_ns == mtime
