"""`nanochat data fetch-debian`: Debian's packaged crate sources, without installing anything.

Why this module exists: Debian packages about 1,500 crates as `librust-<crate>-dev`, each
shipping the crate's full source under `/usr/share/cargo/registry/<crate>-<version>/`: a large,
license-vetted Rust corpus one command away. `apt-get download` fetches the .deb files into the
current folder as an ordinary user action, and `dpkg -x` unpacks one into a folder of our
choice, so the system is never changed. Package names with a `+` are feature packages that
carry no files and are skipped.

Layout of `--out DIR`: `debs/` (downloads, deleted once unpacked), `crates/<crate>-<version>/`
(the sources: give this folder to `nanochat data build --source`), `done/<package>` (one marker
per unpacked package, so a second run skips it: restartable), `failed.json` (what could not be
fetched, and why).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from ..fsutil import atomic_write_text

PACKAGE = re.compile(r"^librust-[a-z0-9][a-z0-9.\-]*-dev$")  # no '+': feature packages are empty
BATCH = 25  # packages per apt-get download call (one failure retries that batch one by one)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DataError(f"{name} not found: `nanochat data fetch-debian` needs a Debian or Ubuntu system with apt "
                        f"(elsewhere, pass folders of crate sources, e.g. ~/.cargo/registry/src, to `nanochat data build`)")
    return path


def list_packages() -> list[str]:
    """The librust-*-dev source packages apt knows about, sorted (run `apt-get update` first)."""
    proc = subprocess.run([_tool("apt-cache"), "pkgnames", "librust-"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"apt-cache pkgnames failed: {proc.stderr.strip()}")
    names = sorted({n.strip() for n in proc.stdout.split() if PACKAGE.match(n.strip())})
    if not names:
        raise DataError("apt knows no librust-*-dev package: run `sudo apt-get update` (Debian bookworm or newer, or Ubuntu)")
    return names


def _download(apt: str, names: list[str], dest: Path) -> dict[str, str]:
    """apt-get download into dest; returns {package: error} for those that failed.

    A package whose .deb is already in dest (a download finished before a kill) is not fetched again."""
    names = [n for n in names if not any(dest.glob(f"{n}_*.deb"))]
    if not names:
        return {}
    proc = subprocess.run([apt, "download", *names], cwd=dest, capture_output=True, text=True)
    if proc.returncode == 0:
        return {}
    if len(names) == 1:
        return {names[0]: proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    failed = {}
    for n in names:  # one bad name fails the whole call: retry one by one
        failed.update(_download(apt, [n], dest))
    return failed


def _unpack(dpkg: str, deb: Path, crates_dir: Path) -> list[str]:
    """dpkg -x into a temp folder; move each registry/<crate>-<version> into crates_dir."""
    with tempfile.TemporaryDirectory(dir=crates_dir.parent, prefix=".unpack-") as tmp:
        proc = subprocess.run([dpkg, "-x", str(deb), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"{deb}: dpkg -x failed: {proc.stderr.strip()}")
        registry = Path(tmp) / "usr" / "share" / "cargo" / "registry"
        moved = []
        for crate in sorted(registry.iterdir()) if registry.is_dir() else []:
            target = crates_dir / crate.name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(crate), target)
            moved.append(crate.name)
        return moved


def fetch_debian(out_dir: str | Path, limit: int | None = None, packages: list[str] | None = None,
                 progress: bool = True) -> dict:
    """Download and unpack (or skip, when done before) the packages; returns a summary."""
    apt, dpkg = _tool("apt-get"), _tool("dpkg")
    names = packages if packages is not None else list_packages()
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be >= 1, got {limit}")
        names = names[:limit]
    out = Path(out_dir)
    debs, crates, done = out / "debs", out / "crates", out / "done"
    for d in (debs, crates, done):
        d.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not (done / n).exists()]
    failed: dict[str, str] = {}
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="fetch-debian", unit="pkg", disable=not progress)
    for i in range(0, len(todo), BATCH):
        batch = todo[i:i + BATCH]
        failed.update(_download(apt, batch, debs))
        for name in batch:
            if name in failed:
                bar.update(1)
                continue
            found = sorted(debs.glob(f"{name}_*.deb"))
            if not found:
                failed[name] = "apt-get download wrote no .deb"
            else:
                try:
                    moved = _unpack(dpkg, found[-1], crates)
                    atomic_write_text(done / name, "\n".join(moved) + "\n")
                except DataError as e:
                    failed[name] = str(e)
                for deb in found:
                    deb.unlink(missing_ok=True)
            bar.update(1)
    bar.close()
    atomic_write_text(out / "failed.json", json.dumps(failed, indent=1))
    summary = {"packages": len(names), "fetched_now": len(todo) - len(failed), "skipped_done": len(names) - len(todo),
               "failed": len(failed), "crates_dir": str(crates), "crates": len(list(crates.iterdir()))}
    return summary
