"""Does generated Rust compile? A real `rustc` in a throwaway folder, with time and memory limits.

`rustc --edition 2021 --crate-type lib --emit=metadata` runs the whole front end (parsing, name
resolution, type and borrow checking) without code generation, the same check `cargo check`
does, at a fraction of the cost. The source is written to a fresh temporary folder that is
removed afterwards; the compiler gets a CPU-time and address-space limit and a wall-clock timeout.

rustc strips `#[cfg(test)]` items before type checking, so a broken `mod tests` would pass; a
source with tests is therefore checked with `--test` (test items included, still no codegen).
`run_limited` is the same sandbox for running built programs (eval/humaneval.py): limits, no
stdin, and no network where `unshare -n` works (Linux with user namespaces or root).
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


def has_tests(source: str) -> bool:
    return "#[test]" in source or "cfg(test)" in source


def _no_network_prefix() -> list[str]:
    """["unshare", "-n", "--"] where that works here (checked once), else []."""
    global _UNSHARE
    if _UNSHARE is None:
        unshare = shutil.which("unshare")
        try:
            ok = unshare is not None and subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _UNSHARE = [unshare, "-n", "--"] if ok else []
    return _UNSHARE


_UNSHARE: list[str] | None = None


def run_limited(cmd: list[str], cwd: str, timeout: float, no_network: bool = True) -> tuple[int | None, str]:
    """Run with the CPU/memory limits (and no network when possible): (exit code or None on timeout, output)."""
    prefix = _no_network_prefix() if no_network else []
    try:
        proc = subprocess.run(prefix + cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limits, stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    return proc.returncode, proc.stdout + proc.stderr


def compile_rust(source: str, timeout: float = 30.0, edition: str = "2021", check_tests: bool = True) -> CompileResult:
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
        if check_tests and has_tests(source):
            cmd.insert(1, "--test")  # type-check the #[cfg(test)] items too (see the docstring)
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
