"""`nanochat params --json` memory fields (train/memory_estimate.py): cheap, nothing trains.

Each test pins one property the report promises: the peak covers the resident terms, 8-bit
states are the user's 86% cut, checkpointing shrinks activations, accumulation and micro-batches
move the peak the right way, the budget verdict flips with the config, and the shipped configs
fit their budgets.
"""

import json
import subprocess
import sys

import pytest

from nanochat_ternary.config import load_config
from nanochat_ternary.model import native_ops
from nanochat_ternary.train.memory_estimate import estimate_memory


def _params(config: str, *sets: str) -> dict:
    cmd = [sys.executable, "-m", "nanochat_ternary.cli", "params", "--config", config, "--json"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["memory"]


@pytest.fixture(scope="module")
def nano():
    return _params("configs/models/nano_125m.toml")


def test_json_has_the_memory_fields(nano):
    for key in ("weights", "gradients", "optimizer_states", "activations", "loss", "backward", "optimizer_step", "peak"):
        assert nano["bytes"][key] > 0, key
    assert set(nano["phases"]) == {"loss", "blocks", "optimizer"} and nano["peak_phase"] in nano["phases"]
    assert nano["bytes"]["peak"] == max(nano["phases"].values())
    for key in ("activations_without_checkpointing", "activations_with_checkpointing", "optimizer_states_fp32",
                "optimizer_states_8bit", "optimizer_states_adamw_fp32"):
        assert nano["alternatives"][key] > 0, key
    assert nano["budget_gb"] == 4 and nano["dtype"] == "bfloat16"
    assert nano["micro_batch_size"] == 4 and nano["batch_size"] == 8 and nano["seq_length"] == 2048


def test_peak_covers_weights_gradients_and_states(nano):
    b = nano["bytes"]
    assert b["weights"] == b["gradients"] == 4 * nano["params"]
    assert b["peak"] >= b["weights"] + b["gradients"] + b["optimizer_states"]
    # accumulating: the earlier micro-batches' gradients are held through the backward as well
    assert nano["accumulating"] and b["peak"] >= b["weights"] + b["gradients"] + b["optimizer_states"] + b["activations"]


def test_8bit_states_are_at_most_014_of_fp32_adamw(nano):
    alt = nano["alternatives"]
    assert alt["optimizer_states_8bit"] <= 0.14 * alt["optimizer_states_adamw_fp32"]
    assert alt["optimizer_states_fp32"] == 4 * nano["params"]  # one float32 momentum (Muon or Lion)
    on = _params("configs/models/nano_125m.toml", "training.use_8bit_optim=true")
    assert on["bytes"]["optimizer_states"] == alt["optimizer_states_8bit"] < nano["bytes"]["optimizer_states"]
    assert on["bytes"]["peak"] < nano["bytes"]["peak"]


def test_checkpointing_cuts_activations_and_peak(nano):
    off = _params("configs/models/nano_125m.toml", "training.gradient_checkpointing=false")
    assert nano["gradient_checkpointing"] and not off["gradient_checkpointing"]
    assert nano["bytes"]["activations"] == nano["alternatives"]["activations_with_checkpointing"]
    assert off["bytes"]["activations"] == off["alternatives"]["activations_without_checkpointing"]
    assert nano["bytes"]["activations"] * 4 < off["bytes"]["activations"]
    assert nano["bytes"]["peak"] < off["bytes"]["peak"]


def test_budget_verdict_flips_with_the_config(nano):
    assert nano["fits_budget"] and nano["bytes"]["peak"] <= 4e9
    big = _params("configs/models/nano_125m.toml", "training.micro_batch_size=8", "training.gradient_checkpointing=false")
    assert not big["fits_budget"] and big["bytes"]["peak"] > 4e9


def test_micro_batch_and_sequence_scale_the_activations():
    cfg = load_config("configs/models/tiny.toml")
    one = estimate_memory(cfg, batch=1, seq=128, dtype="float32")
    four = estimate_memory(cfg, batch=4, seq=128, dtype="float32")
    long = estimate_memory(cfg, batch=1, seq=512, dtype="float32")
    assert four["bytes"]["activations"] > 2.5 * one["bytes"]["activations"]  # (at 1 row some copies are views)
    # the same tokens as rows or as length: the same bytes (flash SDPA keeps no T x T matrix)
    assert long["bytes"]["activations"] == pytest.approx(four["bytes"]["activations"], rel=0.02)
    assert one["bytes"]["weights"] == four["bytes"]["weights"]
    bf16 = estimate_memory(cfg, batch=4, seq=128, dtype="bfloat16")
    assert bf16["bytes"]["activations"] < four["bytes"]["activations"]


def test_full_logits_cost_more_than_chunks():
    cfg = load_config("configs/models/nano_125m.toml")
    chunked = estimate_memory(cfg, batch=1, seq=2048, dtype="float32")
    full = estimate_memory(cfg, batch=1, seq=2048, dtype="float32", full_logits=True)
    # five heads over 2048 x 32000 float32 logits, against one 262-token chunk
    assert full["bytes"]["loss"] > 5 * chunked["bytes"]["loss"]
    assert full["bytes"]["peak"] > chunked["bytes"]["peak"]


@pytest.mark.parametrize("config,budget", [("nano_125m", 4), ("small_560m", 16), ("medium_3b", 48)])
def test_shipped_configs_fit_their_budget_with_the_cuda_context(config, budget):
    est = estimate_memory(load_config(f"configs/models/{config}.toml"))
    assert est["budget_gb"] == budget and est["fits_budget"]
    assert est["bytes"]["peak"] + 0.5e9 <= 0.9 * budget * 1e9  # README "Out of memory?": the margin rule


def test_text_report_prints_the_phases_and_the_verdict():
    proc = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "params", "--config", "configs/models/nano_125m.toml"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for text in ("loss phase", "blocks phase", "optimizer phase", "<- peak", "user's budget 4 GB: fits", "accumulating 2 micro-batches"):
        assert text in proc.stdout, text


@pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")
@pytest.mark.parametrize("streams", [1, 2])
def test_native_trace_counts_what_a_cpu_forward_saves(streams):
    """activation_trace.py with `native` counts the tensors a real float32 CPU forward saves (the
    native ops' autograd Functions, the CPU flash kernel reading k / v unexpanded) within 5% (here
    28.1 vs 29.1 MB); the PyTorch graph it counts otherwise keeps over 10% more."""
    import torch

    from nanochat_ternary.model.gpt import GPT
    from nanochat_ternary.train.activation_trace import trace_activations

    cfg = load_config("configs/models/tiny.toml")
    cfg.model.mhc_n_streams = streams
    model = GPT(cfg.model)
    model.init_weights(0)
    model.train()
    skip = {p.untyped_storage()._cdata for p in model.parameters()}
    skip |= {t.untyped_storage()._cdata for t in (model.rope_cos, model.rope_sin)}
    sizes = {}

    def pack(t):
        s = t.untyped_storage()
        if s._cdata not in skip and t.dtype.is_floating_point:  # token ids are not activations
            sizes[s._cdata] = max(sizes.get(s._cdata, 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_with_mtp(torch.randint(0, cfg.model.vocab_size, (4, 128)))
    with torch.device("meta"):
        meta = GPT(cfg.model)
    meta.train()
    traced = {native: trace_activations(meta, 4, 128, torch.float32, native) for native in (True, False)}
    total = {k: sum(b.total for b in v["blocks"]) + v["heads"].total for k, v in traced.items()}
    real = sum(sizes.values())
    assert abs(total[True] - real) < 0.05 * real
    assert total[False] > 1.1 * real
