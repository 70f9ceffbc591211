"""`nanochat bench train`: runs every variant side by side and reports ratios (not a speed test)."""

import json
import subprocess
import sys


def test_bench_train_json(tmp_path):
    out_file = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "nanochat_ternary.cli", "bench", "train", "--config", "configs/models/tiny.toml",
           "--steps", "1", "--rounds", "1", "--batch-size", "1", "--seq-length", "16", "--device", "cpu",
           "--set", "model.num_layers=1", "--output", str(out_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_file.read_text())
    assert json.loads(proc.stdout) == result
    assert set(result["variants"]) == {"bitlinear_n1", "dense_n1", "bitlinear_n2", "bitlinear_n4"}
    for v in result["variants"].values():
        assert v["step_time_s"] > 0 and v["tokens_per_sec"] > 0 and v["peak_memory_mb"] >= 0
    # n = 4 adds 24 + 4 + 4 routing logits per block over n = 2's 1 + 2 + 2
    assert result["variants"]["bitlinear_n4"]["params"] - result["variants"]["bitlinear_n2"]["params"] == 27
    assert set(result["ratios"]) == {"bitlinear_vs_dense", "mhc_n2_vs_n1", "mhc_n4_vs_n1"}
