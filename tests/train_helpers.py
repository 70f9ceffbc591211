"""Real `nanochat train` subprocesses for the fault tests (kill -9, signals, full disk).

Why this module exists: those tests must exercise the process a user runs, not the `train`
function inside pytest, so each starts `python -m nanochat_ternary.cli train` on the tiny config
shrunk to milliseconds a step, with a checkpoint after every step, and then reads what the run
left on disk. The command line, the metrics reader and the polling helpers live here once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# the tiny config shrunk further: one layer, 32-token windows, one thread, a checkpoint every step
FAST_SETS = ["model.vocab_size=512", "model.num_layers=1", "model.max_seq_len=64", "model.mtp_n_tokens=1",
             "training.batch_size=2", "training.seq_length=32", "training.warmup_steps=2", "training.log_interval=1",
             "training.checkpoint_interval=1", "training.use_async_loader=false", "hardware.device=cpu",
             "hardware.num_threads=1"]


def train_cmd(data, run_dir, steps: int, resume: bool = False, sets: list[str] | None = None, keep: int = 2) -> list[str]:
    """The `nanochat train` command line for a fault test (`sets` are extra --set overrides)."""
    cmd = [sys.executable, "-m", "nanochat_ternary.cli", "train", "--config", "configs/models/tiny.toml", "--data", str(data),
           "--run-dir", str(run_dir), "--steps", str(steps), "--device", "cpu", "--keep-checkpoints", str(keep)]
    for s in [*FAST_SETS, *(sets or [])]:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def start_train(data, run_dir, steps: int, resume: bool = False, sets: list[str] | None = None, keep: int = 2) -> subprocess.Popen:
    """The run as a child process; its stdout and stderr are pipes (text)."""
    return subprocess.Popen(train_cmd(data, run_dir, steps, resume, sets, keep), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> total loss from metrics.jsonl (a re-run step after a resume overwrites the earlier one)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by kill -9
            continue
        out[rec["step"]] = rec["loss/total"]
    return out


def wait_for(pred, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.002)


def latest(ckdir: Path) -> str | None:
    """The folder name `checkpoints/latest` holds, or None when there is none yet."""
    try:
        return (Path(ckdir) / "latest").read_text().strip()
    except OSError:
        return None


def latest_step(ckdir: Path) -> int:
    """The step of the checkpoint `latest` names (-1 when there is none yet)."""
    name = latest(ckdir)
    return int(name.removeprefix("step_")) if name and name.startswith("step_") else -1
