"""Build the native kernels (C files in csrc/) for each instruction set, and pick one at run time.

One library holds every C kernel of the project: the inference engine's (infer/kernels.py) and
the training step's row-wise ones (model/native_ops.py). It lives outside both stages so that
neither imports the other.

Why this module exists: one binary cannot use AVX-512 on the machines that have it and still run
on the ones that do not, and `-march=native` builds only the first kind it meets. So the same
sources are compiled once per instruction set with explicit target flags (ISA_FLAGS), each into
a per-user cache keyed by sources + flags + compiler version, and the engine loads the best one
the CPU reports (`nc_cpu_features`, via the portable build, which runs everywhere). The C code
picks its paths from the compiler's target macros (csrc/nc_common.h). NANOCHAT_KERNEL_ISA=name
forces one (an unsupported one is an error); NANOCHAT_KERNELS=torch disables the native kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

SRC_DIR = Path(__file__).parent / "csrc"
SOURCES = ("nc_cpu.c", "nc_ternary.c", "nc_amx.c", "nc_dense.c", "nc_attention.c", "nc_trunk.c", "nc_train.c", "nc_muon.c")
HEADERS = ("nc_common.h",)
# -ffp-contract=off: no FMA contraction, so every build rounds alike (the same bits on every ISA);
# -fno-trapping-math: nothing here reads floating-point exception flags, and without it GCC 12
# will not if-convert a clamp ahead of nearbyintf, so exp / SiLU loops stayed scalar for AVX2
# (it changes no value: no reassociation, no contraction)
CFLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-ffp-contract=off", "-fno-trapping-math", "-Wall", "-Wextra"]
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
# best first; each needs the nc_cpu_features bits in ISA_NEEDS
# -mprefer-vector-width=512: -mtune=native on Intel vectorises loops 256 bits wide; the row
# preparation (SwiGLU, RMSNorm, the int8 rounding) ran 1.2x faster 512 wide, the same bits
_AVX512VNNI = ["-march=x86-64-v4", "-mavx512vnni", "-mtune=native", "-mprefer-vector-width=512"]
ISA_FLAGS = {
    "amx": _AVX512VNNI + ["-mamx-tile", "-mamx-int8"],  # the AVX-512 VNNI build plus tiles (csrc/nc_amx.c)
    "avx512vnni": _AVX512VNNI,
    "avxvnni": ["-march=x86-64-v3", "-mavxvnni", "-mtune=native"],
    "avx2": ["-march=x86-64-v3", "-mtune=native"],
    "portable": [],
} if _X86 else {"portable": []}
ISA_NEEDS = {"amx": 12, "avx512vnni": 4, "avxvnni": 2, "avx2": 1, "portable": 0}


def _cache_dir() -> Path:
    root = os.environ.get("NANOCHAT_KERNEL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nanochat_ternary")
    return Path(root) / "kernels"


def compile_kernels(extra_flags: tuple[str, ...] = (), cache_dir: Path | None = None, isa: str = "portable") -> Path:
    """Compile the C sources for `isa` (cached by sources + flags + compiler); returns the library path.

    Raises RuntimeError with the compiler's message when compilation fails.
    """
    if isa not in ISA_FLAGS:
        raise ValueError(f"unknown kernel instruction set {isa!r} (this machine's compiler targets: {', '.join(ISA_FLAGS)})")
    cc = os.environ.get("CC", "cc")
    flags = CFLAGS + ISA_FLAGS[isa] + list(extra_flags)
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"no C compiler ({cc}): {e}") from e
    texts = [(SRC_DIR / f).read_text() for f in HEADERS + SOURCES]
    key = hashlib.sha256("\0".join([*texts, " ".join(flags), version]).encode()).hexdigest()[:16]
    out_dir = cache_dir or _cache_dir()
    lib = out_dir / f"nc_kernels_{isa}_{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / lib.name
        cmd = [cc, *flags, f"-I{SRC_DIR}", *[str(SRC_DIR / f) for f in SOURCES], "-o", str(tmp_lib), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the native kernels ({isa}) failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp_lib, lib)  # atomic: concurrent processes never see half a library
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """Load a compiled kernel library and declare its C signatures."""
    lib = ctypes.CDLL(str(path))
    i, p = ctypes.c_int, ctypes.c_void_p
    f = ctypes.c_float
    lib.nc_ternary_gemm.argtypes = [i, i, i, p, p, f, i, p, p, i, i, p, p, p, p, p]
    lib.nc_ternary_gemm.restype = None
    lib.nc_attention.argtypes = [i, i, i, i, i, p, p, p, p, p, p, p, i, p]
    lib.nc_attention.restype = None
    lib.nc_trunk.argtypes = [i, i, i, p, p, i, i, i, i, p, p, p, p, f, i, i, p, p]
    lib.nc_trunk.restype = None
    lib.nc_trunk_scratch_bytes.argtypes = [i, i, i, p]
    lib.nc_trunk_scratch_bytes.restype = ctypes.c_int64
    lib.nc_f16_gemm.argtypes = [i, i, i, p, p, p]
    lib.nc_f16_gemm.restype = None
    lib.nc_f16_gather_dot.argtypes = [i, i, i, p, p, p, p]
    lib.nc_f16_gather_dot.restype = None
    lib.nc_int8_gemm.argtypes = [i, i, i, p, p, p, p, p, p, p]
    lib.nc_int8_gemm.restype = None
    lib.nc_topk.argtypes = [i, i, i, p, p]
    lib.nc_topk.restype = None
    lib.nc_rmsnorm_bwd.argtypes = [i, i, i, p, p, p, p, p, p, p]
    lib.nc_rmsnorm_bwd.restype = None
    lib.nc_act_quant.argtypes = [i, i, p, f, f, p]
    lib.nc_act_quant.restype = None
    lib.nc_ternary_fake.argtypes = [i, i, i, p, p, i, p]
    lib.nc_ternary_fake.restype = None
    lib.nc_swiglu_bwd.argtypes = [i, i, p, p, p]
    lib.nc_swiglu_bwd.restype = None
    lib.nc_rope.argtypes = [i, i, i, i, p, ctypes.c_int64, p, p, f, p]
    lib.nc_rope.restype = None
    lib.nc_muon_pre.argtypes = [i, i, p, p, f, f, i, i, i, p]
    lib.nc_muon_pre.restype = None
    lib.nc_muon_post.argtypes = [i, i, p, p, i, i, f, f]
    lib.nc_muon_post.restype = None
    lib.nc_ce_fwd.argtypes = [i, i, p, p, p, p, p, p]
    lib.nc_ce_fwd.restype = None
    lib.nc_ce_bwd.argtypes = [i, i, p, p, p, p, p, f, f, p]
    lib.nc_ce_bwd.restype = None
    lib.nc_isa.restype = ctypes.c_char_p
    lib.nc_cpu_features.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=None)
def isa_library(isa: str) -> ctypes.CDLL:
    """The kernels built for `isa` (compiled on first use); RuntimeError/OSError when that fails."""
    return load_library(compile_kernels(isa=isa))


def supported_isas() -> list[str]:
    """The instruction sets this CPU runs, best first ("portable" always last)."""
    features = isa_library("portable").nc_cpu_features()
    return [isa for isa in ISA_FLAGS if features & ISA_NEEDS[isa] == ISA_NEEDS[isa]]


@functools.lru_cache(maxsize=1)
def native_library() -> ctypes.CDLL | None:
    """The best kernels for this CPU (or NANOCHAT_KERNEL_ISA's), or None: NANOCHAT_KERNELS=torch,
    or no working compiler."""
    if os.environ.get("NANOCHAT_KERNELS", "native") == "torch":
        return None
    try:
        supported = supported_isas()
    except (RuntimeError, OSError):
        return None
    want = os.environ.get("NANOCHAT_KERNEL_ISA")
    if want:
        if want not in supported:
            raise RuntimeError(f"NANOCHAT_KERNEL_ISA={want}: this CPU runs {', '.join(supported)}")
        return isa_library(want)
    for isa in supported:  # a build that fails (an old compiler without the flags) falls back
        try:
            return isa_library(isa)
        except (RuntimeError, OSError):
            continue
    return None


def backend_name(lib: ctypes.CDLL | None) -> str:
    """"torch", or "native-" + the kernels' instruction set (e.g. native-avx2)."""
    return "torch" if lib is None else "native-" + lib.nc_isa().decode()
