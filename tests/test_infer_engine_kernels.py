"""The native kernels against the PyTorch back-end and plain float references."""

from __future__ import annotations

import subprocess
import sys

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
def portable():
    """The plain C loops: the reference every instruction-set path must match."""
    try:
        return K.isa_library("portable")
    except (RuntimeError, OSError) as e:
        pytest.skip(f"cannot compile the portable kernels: {e}")


@pytest.fixture(scope="module", params=list(K.ISA_FLAGS))
def isa_lib(request, portable):
    """Each instruction-set build this CPU runs (the others skip, named in the summary)."""
    if request.param not in K.supported_isas():
        pytest.skip(f"this CPU does not run the {request.param} kernels (it runs {', '.join(K.supported_isas())})")
    lib = K.isa_library(request.param)
    assert K.backend_name(lib) == f"native-{request.param}"
    return lib


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


def _topk_reference(row: list[float], k: int) -> list[int]:
    """Largest first, ties to the lower index, NaN last (the native top-k's contract)."""
    return sorted(range(len(row)), key=lambda j: (row[j] != row[j], -row[j] if row[j] == row[j] else 0.0, j))[:k]


@pytest.mark.parametrize("m,n,k", [(1, 32000, 64), (9, 5000, 64), (3, 100, 100), (2, 70, 1)])
def test_topk_indices(isa_lib, m, n, k):
    """The head's candidate selection: each row's k largest, largest first, ties to the lower
    index, NaNs last (rows with many ties, a NaN-led row, -inf; 9 x 5000 runs on all threads)."""
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, n, generator=g) * 4).round()  # integers: many ties at the boundary
    x[0, :5] = float("nan")
    x[-1, 3] = float("-inf")
    got = K.topk_indices(x, k, isa_lib)
    assert got.dtype == torch.long and got.shape == (m, k)
    for r in range(m):
        assert got[r].tolist() == _topk_reference(x[r].tolist(), k)
    assert torch.equal(K.topk_indices(x[1:2], k, isa_lib), got[1:2])  # a row does not depend on the others
    y = torch.randn(m, n, generator=g)  # no ties: the same set and order as torch.topk
    assert torch.equal(K.topk_indices(y, k, isa_lib), K.topk_indices(y, k, None))


def test_compile_cache_reuses_library(tmp_path):
    a = K.compile_kernels(cache_dir=tmp_path)
    mtime = a.stat().st_mtime_ns
    assert K.compile_kernels(cache_dir=tmp_path) == a and a.stat().st_mtime_ns == mtime
    assert K.compile_kernels(("-DNC_UNUSED_FLAG",), cache_dir=tmp_path) != a  # flags are part of the key


@pytest.mark.parametrize("isa", list(K.ISA_FLAGS))
def test_every_isa_compiles_without_warnings(tmp_path, isa):
    """Each build compiles with -Wall -Wextra -Werror, also where this CPU could not run it."""
    try:
        K.compile_kernels(("-Werror",), cache_dir=tmp_path, isa=isa)
    except RuntimeError as e:
        if "unrecognized" in str(e) or "unknown" in str(e):
            pytest.skip(f"this compiler does not target {isa}")
        raise


@pytest.mark.parametrize("m,n,k,groups", [(1, 37, 512, 2), (2, 24, 256, 1), (3, 20, 1024, 1), (5, 44, 768, 3),
                                          (6, 28, 512, 2), (8, 36, 2048, 1), (11, 8, 256, 1), (128, 12, 256, 1),
                                          (70, 40, 512, 2), (33, 16, 256, 1)])
def test_every_isa_gives_the_portable_integers(isa_lib, portable, m, n, k, groups):
    """Ternary products: each instruction set's result is bitwise the portable one's (and the
    torch back-end's), for tile remainders in rows and tokens, groups, and 8-block runs
    (k = 2048: the AVX2 path's 16-bit sums are flushed every 7 blocks). The largest sums are
    included: weight row 0 all +1 (stored as 2) with token 0 all +1 (quantized to 127). AMX:
    16-row tiles with a partial last one, 16-token tiles with a partial last one, and more than
    64 tokens (a second pass over the weights)."""
    t, scales = _case(n, k, groups, seed=m)
    x = torch.randn(m, k)
    t[0], x[0] = 1, 1.0
    got = K.ternary_matmul(x, K.make_ternary(t, scales, isa_lib), 8, isa_lib)
    assert torch.equal(got, K.ternary_matmul(x, K.make_ternary(t, scales, portable), 8, portable))
    assert torch.equal(got, K.ternary_matmul(x, K.make_ternary(t, scales, None), 8, None))
    xi = torch.randn(m, k)
    w8 = K.make_int8((torch.randn(n, k) * 0.05).half())
    assert torch.equal(K.int8_matmul(xi, w8, isa_lib), K.int8_matmul(xi, w8, portable))


@pytest.mark.parametrize("m,k", [(1, 256), (3, 768), (8, 2048)])
def test_every_isa_prepares_the_portable_rows(isa_lib, portable, m, k):
    """The fused SiLU-GLU + RMSNorm + quantisation in front of a projection (vectorised exp, sums in
    16 lanes) gives the portable build's bits in every build, and stays close to PyTorch's maths
    for gates far out on both sides (|g| up to 100: e^-|g| underflows, nothing overflows)."""
    t, scales = _case(24, k, 1, seed=k)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, 2 * k, generator=g) * 3
    x[0, :8] = torch.tensor([100.0, -100.0, 30.0, -30.0, 88.0, -88.0, 0.0, -0.0])
    nw = torch.rand(k, generator=g) + 0.5
    got = K.ternary_matmul(x, K.make_ternary(t, scales, isa_lib), 8, isa_lib, norm=nw, eps=1e-5, glu=True)
    assert torch.equal(got, K.ternary_matmul(x, K.make_ternary(t, scales, portable), 8, portable, norm=nw, eps=1e-5, glu=True))
    h = F.rms_norm(F.silu(x[:, :k]) * x[:, k:], (k,), nw, 1e-5)
    want = K.ternary_matmul(h, K.make_ternary(t, scales, None), 8, None)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("k", [64, 320, 768])  # one token: the row-streaming paths, with and without a tail
def test_one_token_int8_head_gives_the_portable_integers(isa_lib, portable, k):
    w = (torch.randn(19, k, generator=torch.Generator().manual_seed(k)) * 0.05).half()
    w[0] = 0.05  # a row of the largest weights (127) against a token of the largest activations
    w[1] = -0.05
    for x in (torch.randn(1, k), torch.ones(1, k), -torch.ones(1, k)):
        w8 = K.make_int8(w)
        assert torch.equal(K.int8_matmul(x, w8, isa_lib), K.int8_matmul(x, w8, portable))


def test_native_library_honours_the_isa_override(monkeypatch):
    K.native_library.cache_clear()
    try:
        monkeypatch.setenv("NANOCHAT_KERNEL_ISA", "portable")
        assert K.backend_name(K.native_library()) == "native-portable"
        K.native_library.cache_clear()
        monkeypatch.setenv("NANOCHAT_KERNEL_ISA", "no-such-isa")
        with pytest.raises(RuntimeError, match="NANOCHAT_KERNEL_ISA=no-such-isa"):
            K.native_library()
    finally:
        K.native_library.cache_clear()


@pytest.mark.parametrize("m", [8, 70])
def test_every_isa_on_two_threads(isa_lib, portable, m):
    """The threaded path (work above NC_PARALLEL_WORK): token rows prepared per thread, AMX's
    activation tiles built once for all threads, output rows split between them."""
    t, scales = _case(200, 1024, 2, seed=m)
    x = torch.randn(m, 1024)
    want = K.ternary_matmul(x, K.make_ternary(t, scales, portable), 8, portable)
    torch.set_num_threads(2)
    try:
        got = K.ternary_matmul(x, K.make_ternary(t, scales, isa_lib), 8, isa_lib)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(got, want)


def test_cpu_features_match_what_linux_reports():
    """The dispatcher sees AVX-512 VNNI and AMX exactly where /proc/cpuinfo lists them (AMX also
    needs the kernel to grant the tile state, which every Linux since 5.16 does)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    isas = K.supported_isas()
    has = lambda *names: all(n in flags for n in names)  # noqa: E731
    assert ("avx512vnni" in isas) == has("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    assert ("avxvnni" in isas) == has("avx2", "fma", "avx_vnni")
    assert ("amx" in isas) == has("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8")


def test_amx_kernels_ask_for_tile_state_themselves():
    """Linux gives a process AMX tiles only once it asks; a process that loads the AMX build
    without the CPU check (which also asks) must not die of SIGILL on its first tile product."""
    if "amx" not in K.supported_isas():
        pytest.skip(f"this CPU does not run the amx kernels (it runs {', '.join(K.supported_isas())})")
    code = (
        "import torch\n"
        "from nanochat_ternary.native import build\n"
        "from nanochat_ternary.infer import kernels as K\n"
        "lib = build.load_library(build.compile_kernels(isa='amx'))\n"
        "t = torch.randint(-1, 2, (32, 256), dtype=torch.int8)\n"
        "out = K.ternary_matmul(torch.randn(8, 256), K.make_ternary(t, torch.ones(32, 1), lib), 8, lib)\n"
        "print(out.shape[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "8"
