"""Does generated Rust compile? A real `rustc` in a throwaway folder, with time and memory limits.

`rustc --edition 2021 --crate-type lib --emit=metadata` runs the whole front end (parsing, name
resolution, type and borrow checking) without code generation, the same check `cargo check`
does, at a fraction of the cost. The source is written to a fresh temporary folder that is
removed afterwards; the compiler gets a CPU-time and address-space limit and a wall-clock timeout.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import NanochatError

MEMORY_LIMIT_BYTES = 2 << 30


@dataclass
class CompileResult:
    ok: bool
    stderr: str
    seconds: float


def rustc_path() -> str | None:
    """rustc on PATH, or rustup's default location."""
    return shutil.which("rustc") or shutil.which("rustc", path=os.path.expanduser("~/.cargo/bin"))


def _limits() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def compile_rust(source: str, timeout: float = 30.0, edition: str = "2021") -> CompileResult:
    rustc = rustc_path()
    if rustc is None:
        raise NanochatError("rustc not found: install Rust (https://rustup.rs) or Debian's rustc package")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nanochat_rustc_") as tmp:
        src = os.path.join(tmp, "lib.rs")
        with open(src, "w") as f:
            f.write(source)
        cmd = [rustc, "--edition", edition, "--crate-type", "lib", "--emit=metadata", "--crate-name", "sample",
               "--cap-lints", "allow", "-o", os.path.join(tmp, "libsample.rmeta"), src]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=_limits, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return CompileResult(False, f"rustc timed out after {timeout:.0f}s", time.perf_counter() - start)
    return CompileResult(proc.returncode == 0, proc.stderr, time.perf_counter() - start)


def compile_many(sources: list[str], workers: int = 2, timeout: float = 30.0) -> list[CompileResult]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda s: compile_rust(s, timeout), sources))


def first_error(stderr: str) -> str:
    """The first `error...` line of rustc's output, for compact reports."""
    for line in stderr.splitlines():
        if line.startswith("error"):
            return line
    return stderr.strip().splitlines()[0] if stderr.strip() else ""
