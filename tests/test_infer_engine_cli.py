"""`nanochat generate` and `nanochat bench infer` end to end on tiny exported models."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_gguf
from infer_helpers import one_thread  # noqa: F401 (fixture)
from nanochat_ternary.cli import main
from nanochat_ternary.infer.bench import bench_infer
from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.infer.speculative import greedy_generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("cli"), mhc_n_streams=2, use_mtp=True, mtp_n_tokens=2)


def _stats(err: str) -> dict:
    return json.loads(err.strip().splitlines()[-1])


def test_generate_greedy_and_speculative(mtp_model, capsys):
    gguf, mhc, _ = mtp_model
    engine = Engine.load(gguf, mhc)
    tok = engine.tokenizer
    prompt = [tok.bos_id] + tok.encode("fn main() {")
    want = greedy_generate(engine, prompt, 20, stop_tokens={tok.eos_id, tok.im_end_id})
    text = tok.decode([t for t in want if t not in (tok.eos_id, tok.im_end_id)])
    for extra in (["--temperature", "0"], ["--speculative"]):
        assert main(["generate", "--model", str(gguf), "--mhc", str(mhc), "--prompt", "fn main() {", "-n", "20", *extra]) == 0
        out, err = capsys.readouterr()
        assert out == "fn main() {" + text + "\n"
        stats = _stats(err)
        assert stats["tokens"] == len(want)
    assert 0.0 <= stats["acceptance_rate"] <= 1.0 and stats["steps"] >= 1


def test_generate_sampling_is_seeded(mtp_model, capsys):
    gguf, mhc, _ = mtp_model
    args = ["generate", "--model", str(gguf), "--prompt", "let x", "-n", "12", "--temperature", "1.0", "--top-k", "40", "--top-p", "0.9"]
    outs = []
    for seed in ("1", "1", "2"):
        assert main(args + ["--seed", seed]) == 0  # the .mhc is found next to the GGUF
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert outs[0].startswith("let x")


def test_generate_rejects_bad_options(mtp_model, capsys):
    gguf, mhc, _ = mtp_model
    assert main(["generate", "--model", str(gguf), "--prompt", "x", "--speculative", "--temperature", "0.7"]) == 2
    assert "--speculative" in capsys.readouterr().err
    assert main(["generate", "--model", str(gguf), "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_bench_infer_reports_engine_and_baseline(tmp_path):
    gguf, _, _ = make_tiny_gguf(tmp_path)
    r = bench_infer(model=str(gguf), threads=1, prompt_tokens=16, decode_tokens=8, batch=3, rounds=1)
    for key in ("prefill_tokens_per_s", "decode_b1_tokens_per_s", "decode_b3_tokens_per_s"):
        assert r["engine"][key] > 0 and r["fp32_torch"][key] > 0
    assert r["bits_per_projection_weight"] == pytest.approx(2.0625)
    assert r["file_bytes"] == gguf.stat().st_size and 0 < r["peak_rss_mb_engine"] <= r["peak_rss_mb_total"]
    assert set(r["speedup_vs_fp32"]) == {"prefill", "b1", "bB"}
    assert "llama_cpp" in r  # a measurement, or the reason it was skipped
    assert abs(r["decode_b3_vs_b1"] - r["engine"]["decode_b3_tokens_per_s"] / r["engine"]["decode_b1_tokens_per_s"]) < 0.02


def test_bench_cli_needs_model_or_shape(capsys):
    assert main(["bench", "infer"]) == 2
    assert "--shape" in capsys.readouterr().err
