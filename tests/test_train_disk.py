"""A real `nanochat train` whose checkpoint folder fills up or turns read-only mid-run.

The checkpoints folder is its own small tmpfs (we run as root, so chmod would not stop a write):
filled to the last byte, or remounted read-only, after the run has written two checkpoints. The
next save must fail with one clear line naming the problem (no traceback), leave the previous
checkpoint intact and `latest` pointing at it, loadable. Skips where mounting is not permitted.
"""

import re
import subprocess

import pytest

from nanochat_ternary.train.checkpoint import load_checkpoint
from train_helpers import latest, latest_step, start_train, wait_for

STEPS = 5000  # never reached: the run ends at the first checkpoint after the fault


@pytest.fixture
def checkpoint_mount(tmp_path):
    """A run folder whose checkpoints/ is a fresh 32 MiB tmpfs; unmounted afterwards."""
    run = tmp_path / "run"
    mnt = run / "checkpoints"
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}); this test needs root or CAP_SYS_ADMIN")
    try:
        yield run
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder):
    """Write one file until the file system has no byte left."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def _remount_ro(folder):
    """Remount read-only; busy while a save has a file open, so retry until it goes through."""
    def attempt():
        return subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode == 0
    wait_for(attempt, timeout=30, what="a read-only remount")


def _run_into(run, data, fault):
    proc = start_train(data, run, STEPS, sets=["training.eval_interval=0"])
    try:
        wait_for(lambda: latest_step(run / "checkpoints") >= 2 or proc.poll() is not None, what="two checkpoints")
        fault(run / "checkpoints")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _check_previous_intact(run, err, problem):
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    m = re.match(r"error: cannot write checkpoint (step_\d+) in .*: (.*); the previous checkpoint '(step_\d+)' is intact", line)
    assert m, err
    failed, said, kept = m.groups()
    assert problem in said and "--resume" in line, line
    assert latest(run / "checkpoints") == kept and int(kept[5:]) >= 2 and failed != kept
    assert load_checkpoint(run).path.name == kept  # checksums verified: intact
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the partial folder was removed
    return said


def test_full_disk_at_checkpoint_time(checkpoint_mount, tiny_dataset):
    rc, out, err = _run_into(checkpoint_mount, tiny_dataset, _fill)
    assert rc == 2, err
    said = _check_previous_intact(checkpoint_mount, err, "No space left on device")
    assert re.search(r"\(\d[\d,]* bytes free\)", said), said


def test_read_only_run_folder_at_checkpoint_time(checkpoint_mount, tiny_dataset):
    rc, out, err = _run_into(checkpoint_mount, tiny_dataset, _remount_ro)
    assert rc == 2, err
    _check_previous_intact(checkpoint_mount, err, "Read-only file system")
