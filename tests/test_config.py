"""Config loading: every shipped config loads; bad keys, types and shapes name the key and file."""

import subprocess
import sys
from pathlib import Path

import pytest

from nanochat_ternary.config import load_config, require_supported
from nanochat_ternary.errors import ConfigError, NotSupportedError

CONFIGS = sorted(Path("configs/models").glob("*.toml"))


def test_all_configs_load():
    assert {p.name for p in CONFIGS} >= {"nano_125m.toml", "small_560m.toml", "medium_3b.toml", "tiny.toml"}
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.model.hidden_dim % 256 == 0


def test_seed_shapes_are_kept():
    nano, small, medium = (load_config(f"configs/models/{n}.toml").model for n in ("nano_125m", "small_560m", "medium_3b"))
    assert (nano.hidden_dim, nano.num_layers, nano.num_heads, nano.num_kv_heads, nano.max_seq_len) == (768, 12, 12, 4, 2048)
    assert (small.hidden_dim, small.num_layers, small.num_heads, small.num_kv_heads, small.max_seq_len) == (1024, 20, 16, 4, 4096)
    assert (medium.hidden_dim, medium.num_layers, medium.num_heads, medium.num_kv_heads, medium.max_seq_len) == (2048, 28, 32, 8, 8192)
    assert medium.use_moe and medium.num_experts == 8 and medium.num_active_experts == 2 and medium.mhc_n_streams == 4


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, needle", [
    ("[model]\nhidden_size = 3\n", "model.hidden_size"),
    ("[model]\nhidden_dim = 'big'\n", "model.hidden_dim"),
    ("[training]\nbatch_size = 2.5\n", "training.batch_size"),
    ("[model]\nuse_bitlinear = 1\n", "model.use_bitlinear"),
    ("[model]\nhidden_dim = 768\nnum_heads = 10\n", "model.hidden_dim"),
    ("[model]\nnum_heads = 12\nnum_kv_heads = 5\n", "model.num_heads"),
    ("[model]\nhidden_dim = 384\nnum_heads = 6\nnum_kv_heads = 2\n", "multiple of 256"),
    ("[model]\nmhc_n_streams = 3\n", "model.mhc_n_streams"),
    ("[model]\nmhc_post_main = 2.0\n", "model.mhc_post_main"),
    ("[optimizer]\nlr = 1\n", "[optimizer]"),
    ("[model\n", "not valid TOML"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, body, needle):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_overrides():
    cfg = load_config("configs/models/tiny.toml", ["training.batch_size=3", "model.use_bitlinear=false", "hardware.device=cpu"])
    assert cfg.training.batch_size == 3 and cfg.model.use_bitlinear is False and cfg.hardware.device == "cpu"
    with pytest.raises(ConfigError, match="training.batch_sz"):
        load_config("configs/models/tiny.toml", ["training.batch_sz=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("configs/models/tiny.toml", ["batch_size=3"])


def test_unbuilt_features_refuse_clearly():
    # every configurable feature is built: the shipped configs pass the check
    for name in ("small_560m", "medium_3b"):
        require_supported(load_config(f"configs/models/{name}.toml"))
    assert load_config("configs/models/medium_3b.toml").model.use_moe


def test_cli_params_json_and_error_exit():
    out = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "params", "--config", "configs/models/nano_125m.toml", "--json"],
                         capture_output=True, text=True, check=True)
    import json
    counts = json.loads(out.stdout)
    assert abs(counts["total"] - 125e6) / 125e6 < 0.10 and counts["mtp"] > 0 and counts["non_embedding"] < counts["total"]
    bad = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "params", "--config", "configs/models/tiny.toml", "--set", "model.hiden_dim=512"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "model.hiden_dim" in bad.stderr and "Traceback" not in bad.stderr
