"""Real `nanochat train` subprocesses stopped by SIGTERM (a scheduler) and SIGINT (Ctrl-C).

The first signal finishes the step, writes a checkpoint, prints how to resume and exits 0
(SIGTERM) or 130 (SIGINT); the run then resumes from that checkpoint. A second signal during the
shutdown exits at once with 128 + the signal number (143, 130), and `latest` still loads.
"""

import signal
import subprocess
import threading

from nanochat_ternary.train.checkpoint import load_checkpoint
from train_helpers import latest_step, start_train, train_cmd, wait_for

STEPS = 40
SLOW = ["model.num_layers=2", "training.seq_length=64", "training.batch_size=8"]  # steps long enough to signal inside one


def _collect(stream, into: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    t.start()
    return t


def _stop(data, run_dir, sig, twice: bool = False, sets=None):
    """Run until a checkpoint of step >= 2 exists, send `sig` (and a second one as soon as the run
    says it received the first); return (exit code, stdout, stderr)."""
    proc = start_train(data, run_dir, STEPS, sets=sets)
    out, err = [], []
    readers = [_collect(proc.stdout, out), _collect(proc.stderr, err)]
    try:
        wait_for(lambda: latest_step(run_dir / "checkpoints") >= 2 or proc.poll() is not None, what="a checkpoint")
        assert proc.poll() is None, "".join(err)
        proc.send_signal(sig)
        if twice:
            wait_for(lambda: any("received" in line for line in err) or proc.poll() is not None, what="the first signal's message")
            proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for r in readers:
        r.join(timeout=5)
    return rc, "".join(out), "".join(err)


def test_sigterm_checkpoints_says_how_to_resume_and_resumes(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    rc, out, err = _stop(tiny_dataset, run, signal.SIGTERM)
    assert rc == 0, err
    assert "SIGTERM received" in err and "Resume with: nanochat train" in out and "--resume" in out, out + err
    stopped = load_checkpoint(run)
    assert 2 <= stopped.step < STEPS and f"stopped at step {stopped.step}" in out  # the step it was in, saved
    done = subprocess.run(train_cmd(tiny_dataset, run, stopped.step + 2, resume=True), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"resuming at step {stopped.step}" in done.stdout
    assert load_checkpoint(run).step == stopped.step + 2


def test_ctrl_c_checkpoints_and_exits_130(tmp_path, tiny_dataset):
    rc, out, err = _stop(tiny_dataset, tmp_path / "run", signal.SIGINT)
    assert rc == 130, err
    assert "SIGINT received" in err and "Resume with:" in out and "Traceback" not in err
    step = load_checkpoint(tmp_path / "run").step
    assert f"stopped at step {step}" in out


def test_second_signal_exits_at_once_and_latest_still_loads(tmp_path, tiny_dataset):
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        run = tmp_path / sig.name
        rc, out, err = _stop(tiny_dataset, run, sig, twice=True, sets=SLOW)
        assert rc == code, (rc, err)
        assert f"{sig.name} again: exiting now" in err and "Traceback" not in err
        assert load_checkpoint(run).step >= 2  # latest names a complete checkpoint
