"""`nanochat data fetch-debian`: unpack real .deb files (built here with dpkg-deb), restartably.

The network part (`apt-get download`) cannot run in tests; a stand-in `apt-get` on PATH copies
.deb files built by the real `dpkg-deb` from a local folder, and logs each call so the test can
see that a second run downloads nothing. Unpacking is the real `dpkg -x`.
"""

import os
import shutil
import subprocess
import sys

import pytest

from nanochat_ternary.data.debian import fetch_debian
from nanochat_ternary.errors import DataError

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _deb(pool, package, crate):
    root = pool / f"build-{package}"
    src = root / "usr/share/cargo/registry" / crate / "src"
    src.mkdir(parents=True)
    (src / "lib.rs").write_text(f"pub fn {crate.split('-')[0]}() -> u32 {{ 1 }}\n")
    (root / "usr/share/cargo/registry" / crate / "Cargo.toml").write_text(f'[package]\nname = "{crate.split("-")[0]}"\n')
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: test\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(pool / f"{package}_1.0-1_all.deb")],
                   check=True, capture_output=True)


def _fake_apt(bin_dir, pool, log):
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(f"""#!/bin/sh
# stand-in for `apt-get download NAME...`: copy NAME_*.deb from the pool, fail on unknown names
[ "$1" = download ] || exit 100
shift
for n in "$@"; do
  echo "$n" >> {log}
  ls {pool}/"$n"_*.deb >/dev/null 2>&1 || {{ echo "E: Unable to locate package $n" >&2; exit 100; }}
  cp {pool}/"$n"_*.deb .
done
""")
    script.chmod(0o755)
    os.symlink(shutil.which("dpkg"), bin_dir / "dpkg")


def test_fetch_unpacks_and_is_restartable(tmp_path, monkeypatch):
    pool = tmp_path / "pool"
    pool.mkdir()
    _deb(pool, "librust-alpha-dev", "alpha-0.1.0")
    _deb(pool, "librust-beta-dev", "beta-2.0.1")
    log = tmp_path / "calls.log"
    _fake_apt(tmp_path / "bin", pool, log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    out = tmp_path / "deb"
    names = ["librust-alpha-dev", "librust-beta-dev", "librust-missing-dev"]
    s = fetch_debian(out, packages=names, progress=False)
    assert (s["fetched_now"], s["failed"], s["crates"]) == (2, 1, 2)
    assert (out / "crates/alpha-0.1.0/src/lib.rs").read_text().startswith("pub fn alpha")
    assert (out / "crates/beta-2.0.1/Cargo.toml").exists()
    assert "librust-missing-dev" in (out / "failed.json").read_text()
    assert not list((out / "debs").iterdir())  # downloads removed once unpacked
    calls = log.read_text().split()
    s = fetch_debian(out, packages=names, progress=False)  # restart: only the failed one is tried again
    assert s["skipped_done"] == 2 and log.read_text().split()[len(calls):] == ["librust-missing-dev"]
    s = fetch_debian(out, packages=names, limit=1, progress=False)
    assert s["packages"] == 1 and s["skipped_done"] == 1


def test_missing_apt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="apt-get not found"):
        fetch_debian(tmp_path / "out", packages=["librust-x-dev"], progress=False)
    r = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "data", "fetch-debian", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert r.returncode == 2 and "apt-get not found" in r.stderr
