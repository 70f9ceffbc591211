"""Real `nanochat train` subprocesses stopped by SIGTERM (a scheduler) and SIGINT (Ctrl-C).

The first signal finishes the step, writes a checkpoint, prints how to resume and exits 0
(SIGTERM) or 130 (SIGINT); the run then resumes from that checkpoint. A second signal during the
shutdown exits at once with 128 + the signal number (143, 130), and `latest` still loads.
"""

import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

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


def _both(*calls):
    """Run the `_stop` calls side by side (each child pays torch's import: in parallel, once)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(_stop, *c) for c in calls]]


def test_sigterm_and_ctrl_c_checkpoint_say_how_to_resume_and_resume(tmp_path, tiny_dataset):
    term, ctrl_c = tmp_path / "term", tmp_path / "ctrl_c"
    (rc, out, err), (rc_c, out_c, err_c) = _both((tiny_dataset, term, signal.SIGTERM), (tiny_dataset, ctrl_c, signal.SIGINT))
    assert rc == 0, err
    assert rc_c == 130, err_c
    for run, out, err, name in ((term, out, err, "SIGTERM"), (ctrl_c, out_c, err_c, "SIGINT")):
        assert f"{name} received" in err and "Traceback" not in err, err
        assert "Resume with: nanochat train" in out and "--resume" in out, out
        stopped = load_checkpoint(run)
        assert 2 <= stopped.step < STEPS and f"stopped at step {stopped.step}" in out  # the step it was in, saved
    stopped = load_checkpoint(term).step
    done = subprocess.run(train_cmd(tiny_dataset, term, stopped + 2, resume=True), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"resuming at step {stopped}" in done.stdout
    assert load_checkpoint(term).step == stopped + 2


def test_second_signal_exits_at_once_and_latest_still_loads(tmp_path, tiny_dataset):
    sigs = ((signal.SIGTERM, 143), (signal.SIGINT, 130))
    results = _both(*[(tiny_dataset, tmp_path / sig.name, sig, True, SLOW) for sig, _ in sigs])
    for (sig, code), (rc, out, err) in zip(sigs, results):
        assert rc == code, (rc, err)
        assert f"{sig.name} again: exiting now" in err and "Traceback" not in err
        assert load_checkpoint(tmp_path / sig.name).step >= 2  # latest names a complete checkpoint
