"""The training step's hand-written parts: the fused cross-entropy + entropy node
(train/ce_entropy.py) and the CPU malloc setting (cpu_malloc.py)."""

import ctypes
import ctypes.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nanochat_ternary.model import native_ops
from nanochat_ternary.train.ce_entropy import cross_entropy_entropy


def reference(z, y, with_entropy):
    logp = F.log_softmax(z.float() if z.dtype != torch.float64 else z, dim=-1)
    nll = F.nll_loss(logp, y, reduction="sum")
    ent = -(logp.exp() * logp).sum() if with_entropy else torch.zeros((), dtype=logp.dtype)
    return nll, ent


@pytest.mark.parametrize("with_entropy", [True, False])
def test_values_and_gradients_equal_autograd_composition(with_entropy):
    torch.manual_seed(0)
    z = (3 * torch.randn(37, 50, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 50, (37,))
    y[:5] = 7  # repeated targets: the one-hot part of the gradient adds up per row, not per class
    nll, ent = cross_entropy_entropy(z, y, with_entropy)
    (0.7 * nll - 0.3 * ent).backward()
    got = z.grad.clone()
    z.grad = None
    rnll, rent = reference(z, y, with_entropy)
    (0.7 * rnll - 0.3 * rent).backward()
    assert torch.allclose(nll, rnll, rtol=1e-12) and torch.allclose(ent, rent, rtol=1e-12)
    assert torch.allclose(got, z.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: cross_entropy_entropy(t, y, with_entropy), (z.detach().requires_grad_(),))


class _Spy:
    """The native library, recording which of its functions were called."""
    def __init__(self, lib):
        self.lib, self.called = lib, set()

    def __getattr__(self, name):
        self.called.add(name)
        return getattr(self.lib, name)


@pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")
@pytest.mark.parametrize("with_entropy", [True, False])
def test_native_path_matches_float64_on_logits_spanning_more_than_exps_range(monkeypatch, with_entropy):
    """float32 on the CPU takes nc_ce_fwd / nc_ce_bwd. Logits spread over ~500 (far beyond the -87
    where e^x leaves float32's normal range), a vocabulary that is not a multiple of 16 lanes,
    enough rows for the threaded path, a row whose target is its max: float64's values."""
    spy = _Spy(native_ops.library())
    monkeypatch.setattr(native_ops, "library", lambda: spy)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(600, 1001, generator=g) * 60
    y = torch.randint(0, 1001, (600,), generator=g)
    y[3] = int(z[3].argmax())
    x = z.clone().requires_grad_()
    nll, ent = cross_entropy_entropy(x, y, with_entropy)
    (0.7 * nll - 0.3 * ent).backward()
    assert {"nc_ce_fwd", "nc_ce_bwd"} <= spy.called
    z64 = z.double().requires_grad_()
    rnll, rent = reference(z64, y, with_entropy)
    (0.7 * rnll - 0.3 * rent).backward()
    assert torch.allclose(nll.double(), rnll, rtol=1e-6) and torch.allclose(ent.double(), rent, rtol=1e-5, atol=1e-3)
    assert torch.allclose(x.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")
def test_native_path_keeps_a_nan_in_the_logits_visible():
    z = torch.randn(4, 40)
    z[2, 5] = float("nan")
    nll, ent = cross_entropy_entropy(z, torch.tensor([0, 1, 2, 3]))
    assert nll.isnan() and ent.isnan()
    z[2, 5] = 0.0
    nll, ent = cross_entropy_entropy(z, torch.tensor([0, 1, 2, 3]))
    assert nll.isfinite() and ent.isfinite()


@pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")
def test_a_target_outside_the_vocabulary_is_an_error_that_names_it():
    """The native path reads the target's logit unchecked in C, so it checks the targets first."""
    for bad in (-1, 40):
        with pytest.raises(IndexError, match=r"\[0, 40\)"):
            cross_entropy_entropy(torch.randn(3, 40), torch.tensor([0, bad, 2]))


def test_low_precision_logits_give_float32_sums_and_a_gradient_of_their_dtype():
    torch.manual_seed(1)
    z = torch.randn(8, 64).bfloat16().requires_grad_()
    y = torch.randint(0, 64, (8,))
    nll, ent = cross_entropy_entropy(z, y)
    assert nll.dtype == ent.dtype == torch.float32
    rnll, rent = reference(z.detach(), y, True)
    assert torch.allclose(nll, rnll) and torch.allclose(ent, rent)
    (nll - ent).backward()
    assert z.grad.dtype == torch.bfloat16 and z.grad.abs().sum() > 0


def test_backward_twice_with_retained_graph_gives_the_same_gradient():
    z = torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])
    nll, ent = cross_entropy_entropy(z, y)
    (nll - 0.1 * ent).backward(retain_graph=True)
    first = z.grad.clone()
    (nll - 0.1 * ent).backward()
    assert torch.allclose(z.grad, 2 * first)


def _glibc_has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


PROBE = r"""
import ctypes, ctypes.util, sys
import torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "on":
    from nanochat_ternary.cpu_malloc import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
t = torch.empty(8 << 20, dtype=torch.uint8)  # an 8 MiB activation-sized tensor
mapped = libc.mallinfo2().hblkhd - before
del t
print(mapped, libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_has_mallinfo2(), reason="glibc malloc only")
def test_keep_freed_memory_serves_tensors_from_the_heap_and_keeps_them_after_free():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        mapped, free_in_heap = map(int, out.stdout.split())
        return mapped, free_in_heap

    mapped, free_in_heap = probe("off")
    assert mapped >= 8 << 20  # glibc's default: a fresh mmap, unmapped again when freed
    mapped, free_in_heap = probe("on")
    assert mapped == 0 and free_in_heap >= 8 << 20  # from the heap, and still there for the next step
