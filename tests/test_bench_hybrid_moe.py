"""The DeltaNet and MoE benchmark flags (`bench train/infer --deltanet/--moe`) at tiny sizes, and
`nanochat generate` on a Gated DeltaNet hybrid GGUF through the CLI (not speed tests: they check
the JSON's keys and that its values are sane)."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_gguf
from infer_helpers import one_thread  # noqa: F401 (fixture)
from nanochat_ternary.cli import main
from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.infer.speculative import greedy_generate

pytestmark = pytest.mark.usefixtures("one_thread")


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_bench_train_deltanet_block_vs_attention(tmp_path, capsys):
    out_file = tmp_path / "dn.json"
    assert main(["bench", "train", "--deltanet", "--config", "configs/models/tiny.toml", "--deltanet-lengths", "16,70",
                 "--steps", "1", "--rounds", "1", "--device", "cpu", "--set", "model.mhc_n_streams=2",
                 "--output", str(out_file)]) == 0
    r = _json(capsys)
    assert r == json.loads(out_file.read_text()) and set(r["seq_lengths"]) == {"16", "70"}
    for row in r["seq_lengths"].values():
        for part in ("block", "mixer"):
            d, a = row[f"deltanet_{part}_step_s"], row[f"attention_{part}_step_s"]
            assert d > 0 and a > 0 and row[f"deltanet_vs_attention_{part}"] == pytest.approx(d / a, rel=0.01)
    p = r["params"]  # the blocks differ only by their mixers
    assert p["deltanet_block"] - p["attention_block"] == p["deltanet_mixer"] - p["attention_mixer"] > 0
    assert main(["bench", "train", "--deltanet", "--moe", "--config", "configs/models/tiny.toml"]) == 2
    assert "--deltanet-lengths" in capsys.readouterr().err


def test_bench_infer_deltanet_state_memory(capsys):
    assert main(["bench", "infer", "--deltanet", "--shape", "tiny", "--context", "300", "--decode-tokens", "8", "--batch", "2"]) == 0
    r = _json(capsys)
    assert r["context"] == 300 and set(r["variants"]) == {"attention", "hybrid"}
    att, hyb = r["variants"]["attention"], r["variants"]["hybrid"]
    assert att["deltanet_layers"] == [] and hyb["deltanet_layers"] == [0]  # tiny: 2 layers, ratio raised to 1/2
    # tiny: kv heads 2, head_dim 64, float32: K + V of one attention layer at 300 tokens
    per_layer = 2 * 2 * 300 * 64 * 4
    assert att["state_per_sequence"] == {"kv_cache_bytes": 2 * per_layer, "recurrent_state_bytes": 0, "total_bytes": 2 * per_layer}
    # hybrid: one attention layer's cache + S [4 heads, 64, 64] and a conv tail [3, 3 * 256] in float32
    rec = (4 * 64 * 64 + 3 * 3 * 256) * 4
    assert hyb["state_per_sequence"] == {"kv_cache_bytes": per_layer, "recurrent_state_bytes": rec, "total_bytes": per_layer + rec}
    for v in (att, hyb):
        assert v["decode_b1_tokens_per_s"] > 0 and v["decode_b2_tokens_per_s"] > 0 and v["prefill_tokens_per_s"] > 0
    assert r["hybrid_vs_attention"]["state_bytes_per_sequence"] == pytest.approx((per_layer + rec) / (2 * per_layer), abs=1e-3)


def test_bench_train_moe_pair_has_equal_active_params(capsys):
    assert main(["bench", "train", "--moe", "--config", "configs/models/tiny.toml", "--steps", "1", "--rounds", "1",
                 "--batch-size", "1", "--seq-length", "16", "--device", "cpu", "--set", "model.num_layers=1"]) == 0
    r = _json(capsys)
    moe, dense = r["variants"]["moe_8x2"], r["variants"]["dense_active_matched"]
    # same matmul sizes per token: active parameters differ only by the router [8, D]
    assert moe["active_params"] - dense["active_params"] == 8 * 256
    assert moe["params"] > 2 * dense["params"]  # 8 experts held, 2 used
    assert r["ratios"]["moe_vs_dense_step_time"] == pytest.approx(moe["step_time_s"] / dense["step_time_s"], rel=0.01)


def test_bench_infer_moe_pair(capsys):
    assert main(["bench", "infer", "--moe", "--shape", "tiny", "--prompt-tokens", "16", "--decode-tokens", "8", "--batch", "2"]) == 0
    r = _json(capsys)
    moe, dense = r["variants"]["moe_8x2"], r["variants"]["dense_active_matched"]
    assert moe["projection_bytes"] > 3 * dense["projection_bytes"] // 2
    for v in (moe, dense):
        assert v["decode_b1_tokens_per_s"] > 0 and v["decode_b2_tokens_per_s"] > 0 and v["prefill_tokens_per_s"] > 0
    assert set(r["moe_vs_dense"]) == {"prefill", "b1", "bB"}
    assert main(["bench", "infer", "--moe", "--model", "x.gguf"]) == 2


def test_generate_cli_on_a_hybrid_gguf(tmp_path, capsys):
    gguf, mhc, _ = make_tiny_gguf(tmp_path, deltanet_ratio=0.5, num_layers=3, mhc_n_streams=2, use_mtp=True, mtp_n_tokens=1)
    engine = Engine.load(gguf, mhc)
    assert engine.deltanet is not None
    tok = engine.tokenizer
    want = greedy_generate(engine, [tok.bos_id] + tok.encode("fn main() {"), 12, stop_tokens={tok.eos_id, tok.im_end_id})
    text = tok.decode([t for t in want if t not in (tok.eos_id, tok.im_end_id)])
    assert main(["generate", "--model", str(gguf), "--mhc", str(mhc), "--prompt", "fn main() {", "-n", "12", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "fn main() {" + text + "\n" and json.loads(err.strip().splitlines()[-1])["tokens"] == len(want)
    assert main(["generate", "--model", str(gguf), "--mhc", str(mhc), "--prompt", "fn", "--speculative"]) != 0
    assert "roll back" in capsys.readouterr().err
