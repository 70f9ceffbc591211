"""scripts/validate_e2e.sh end to end, shortened (30 steps, 4 completions, no quality bar).

The real script runs 1000 steps and checks the compile rate; this runs every stage of it
(train, export, a real server on a free loopback port, the API checks, rustc) quickly, so a
broken joint between stages fails the suite.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the script polls /health with curl")
def test_validate_e2e_short(tmp_path):
    env = dict(os.environ, RUN_DIR=str(tmp_path / "run"), VENV=str(Path(os.sys.executable).parents[1]))
    proc = subprocess.run(["bash", "scripts/validate_e2e.sh", "--steps", "30", "--completions", "4", "--min-compile-rate", "0",
                           "--sft-steps", "4", "--chats", "2", "--min-chat-compile-rate", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for stage in ("2. train tiny (30 steps)", "2b. SFT (4 steps)", "3. export GGUF + .mhc", "4. start server", "5. API: models, chat, stream",
                  "6. quality: 4 programs, rustc", "7. stop server", "steps 2-7 total"):
        assert stage in out
    assert "compile rate:" in out and "chat compile rate:" in out and "e2e: all stages passed" in out
    assert (tmp_path / "run/export/model.gguf").exists() and (tmp_path / "run/quality.json").exists()
    assert (tmp_path / "run/tensorboard").is_dir() and (tmp_path / "run/sft/tensorboard").is_dir()
    # the SFT recipe the script chose (README, "The end-to-end check"): half of each step's rows pretraining data
    sft = json.loads((tmp_path / "run/sft/sft.json").read_text())
    assert (sft["batch_size"], sft["pretrain_mix"], sft["steps"]) == (8, 0.5, 4)
