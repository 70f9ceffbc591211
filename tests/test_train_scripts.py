"""The four training scripts (scripts/train_*.sh via scripts/lib_train.sh), run for real on CPU.

Each script trains its config shrunk by `--set` overrides for 2 steps, with TensorBoard really
started: its port must answer while the run lasts and be closed (the process gone) afterwards,
also when the run fails or is interrupted with Ctrl-C.
"""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHRINK = [  # every config at the conftest's tiny size
    "model.vocab_size=512", "model.num_layers=1", "model.hidden_dim=256", "model.num_heads=4", "model.num_kv_heads=2",
    "model.ffn_mult=2", "model.max_seq_len=64", "model.mtp_n_tokens=1", "training.seq_length=32",
    "training.batch_size=2", "training.num_workers=1", "training.log_interval=1", "training.warmup_steps=1",
    "hardware.device=cpu", "hardware.num_threads=1",
]
# three layers, so that the hybrid configs keep a Gated DeltaNet layer (ratio 0.2 -> 1 of 3) and
# medium also its MoE, mHC n = 4 and 8-bit states at the shrunk size
SCRIPTS = {
    "train_nano_125m.sh": [],
    "train_small_560m.sh": ["model.num_layers=3"],
    "train_medium_3b.sh": ["model.num_layers=3"],
    "train_production_8h.sh": ["model.num_layers=3"],
}
TB_LINE = re.compile(r"TensorBoard: http://localhost:(\d+) \(pid (\d+);")


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script, run_dir, dataset, overrides, steps=2, interrupt=False, **env):
    """Run a script; return (exit code, output, TensorBoard port, pid, answered while training)."""
    env = {**os.environ, "VENV": str(Path(sys.executable).parents[1]), "NPROC": "1", "DATA": str(dataset),
           "RUN_DIR": str(run_dir), "TB_PORT": str(_free_port()), **env}
    cmd = ["bash", f"scripts/{script}", "--steps", str(steps)]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal's job is
    out, port, pid, answered, steps_seen = [], None, None, False, 0
    try:
        for line in proc.stdout:
            out.append(line)
            if (m := TB_LINE.search(line)) and port is None:
                port, pid = int(m.group(1)), int(m.group(2))
            if line.startswith("step ") and port is not None:
                answered = answered or _answers(port)  # TensorBoard is up while training runs
                steps_seen += 1
                # on a loaded machine TensorBoard may answer a few steps late: wait for it (bounded)
                if interrupt and (answered or steps_seen >= 40):
                    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
                    interrupt = False
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return rc, "".join(out), port, pid, answered


def _assert_tensorboard_gone(port, pid, out):
    assert port is not None, out[-3000:]
    assert not _alive(pid), f"TensorBoard (pid {pid}) still running"
    assert not _answers(port), f"port {port} still answers"


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_trains_with_tensorboard_and_exports(script, tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    rc, out, port, pid, answered = _run(script, run_dir, tiny_dataset, SHRINK + SCRIPTS[script])
    assert rc == 0, out[-3000:]
    assert answered, "TensorBoard's port did not answer during training"
    _assert_tensorboard_gone(port, pid, out)
    assert (run_dir / "model.gguf").stat().st_size > 0 and (run_dir / "model.mhc").stat().st_size > 0
    log = (run_dir / "train.log").read_text()
    assert "step      2/2" in log and "exporting" in log
    assert (run_dir / "checkpoints/step_2").is_dir() and list((run_dir / "tensorboard").iterdir())
    if script == "train_production_8h.sh":  # the 8-hour budget and intervals reach the trainer
        config = (run_dir / "config.json").read_text()
        assert '"max_hours": 8.0' in config and '"checkpoint_interval": 10000' in config


def test_rerun_on_the_run_dir_resumes(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    rc, out, *_ = _run("train_nano_125m.sh", run_dir, tiny_dataset, SHRINK, steps=1, TENSORBOARD="0")
    assert rc == 0 and "TensorBoard off" in out, out[-3000:]
    rc, out, *_ = _run("train_nano_125m.sh", run_dir, tiny_dataset, SHRINK, steps=2, TENSORBOARD="0")
    assert rc == 0, out[-3000:]
    assert "resuming" in out and "resuming at step 1" in out
    assert (run_dir / "checkpoints/step_2").is_dir()


def test_tensorboard_stops_on_failure_and_on_ctrl_c(tmp_path, tiny_dataset):
    rc, out, port, pid, _ = _run("train_nano_125m.sh", tmp_path / "bad", tiny_dataset, SHRINK + ["training.batch_size=0"])
    assert rc == 2 and "training.batch_size' must be positive" in out, out[-3000:]
    _assert_tensorboard_gone(port, pid, out)

    rc, out, port, pid, answered = _run("train_nano_125m.sh", tmp_path / "int", tiny_dataset, SHRINK, steps=100_000,
                                        interrupt=True)
    assert rc != 0 and answered, out[-3000:]
    assert "interrupted" in out
    _assert_tensorboard_gone(port, pid, out)
