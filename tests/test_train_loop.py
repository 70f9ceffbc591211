"""The training loop: exact resume, TensorBoard tags, the NaN guard, the CLI."""

import shutil
import subprocess
import sys

import pytest
import torch

from nanochat_ternary.train import trainer
from nanochat_ternary.train.checkpoint import load_checkpoint
from nanochat_ternary.train.trainer import TrainingDiverged, train

TAGS = {"loss/total", "loss/ce", "loss/entropy", "loss/mtp", "lr", "grad_norm", "throughput/tokens_per_sec", "mhc/composite_gain"}


def test_resume_continues_the_exact_run(tmp_path, tiny_dataset, tiny_config):
    full = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "a", quiet=True)
    assert sorted(full.losses) == list(range(6))
    # a second run dir holding only the step-3 checkpoint, as if the first run had been killed there
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a/checkpoints/step_3", b / "checkpoints/step_3")
    (b / "checkpoints/latest").write_text("step_3")
    shutil.copy(tmp_path / "a/tokenizer.json", b / "tokenizer.json")
    resumed = train(tiny_config, run_dir=b, resume=True, quiet=True)
    assert sorted(resumed.losses) == [3, 4, 5]
    for step in (3, 4, 5):
        assert abs(resumed.losses[step] - full.losses[step]) < 1e-5, step
    sa = load_checkpoint(tmp_path / "a").model_state
    sb = load_checkpoint(b).model_state
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_tensorboard_tags_and_loss_falls(tmp_path, tiny_dataset, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config.training.total_steps = 30
    tiny_config.training.log_interval = 5
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    assert result.losses[29] < result.losses[0] - 0.5
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert TAGS <= tags, TAGS - tags
    gains = [e.value for e in acc.Scalars("mhc/composite_gain")]
    assert all(g <= 1 + 1e-6 for g in gains)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 6


def test_nan_guard_skips_then_stops_keeping_the_good_checkpoint(tmp_path, tiny_dataset, tiny_config, monkeypatch):
    real = trainer.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # fault injection: the loss turns non-finite from the 5th step on
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] >= 5 else (loss, parts)

    monkeypatch.setattr(trainer, "compute_loss", poisoned)
    tiny_config.training.total_steps = 20
    tiny_config.training.max_bad_steps = 3
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.meta["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def test_single_bad_step_is_skipped_and_counted(tmp_path, tiny_dataset, tiny_config, monkeypatch):
    real = trainer.compute_loss
    calls = {"n": 0}

    def one_bad(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("inf"), parts) if calls["n"] == 2 else (loss, parts)

    monkeypatch.setattr(trainer, "compute_loss", one_bad)
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    assert result.skipped_steps == 1 and result.steps == 6
    assert load_checkpoint(tmp_path).meta["skipped_steps"] == 1


def test_cli_train_and_sample(tmp_path, tiny_dataset):
    cmd = [sys.executable, "-m", "nanochat_ternary.cli", "train", "--config", "configs/models/tiny.toml",
           "--data", str(tiny_dataset), "--run-dir", str(tmp_path), "--steps", "4", "--device", "cpu",
           "--set", "model.vocab_size=512", "--set", "training.log_interval=2", "--set", "training.seq_length=32"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "step      4/4" in out.stdout and "ETA" in out.stdout and "tensorboard --logdir" in out.stdout
    out = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "sample", "--checkpoint", str(tmp_path),
                          "--prompt", "fn", "-n", "8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--- sample 0 ---\nfn" in out.stdout


def test_hardware_compile_trains_the_same_model(tmp_path, tiny_dataset, tiny_config):
    """`[hardware] compile = true` runs the trunk through torch.compile (a GPU option, real here
    on the CPU through Inductor): the same losses as eager to float rounding, and checkpoints
    under the plain model's names (no `_orig_mod.` prefix), so resume and export are unchanged."""
    tiny_config.training.total_steps = 3
    tiny_config.training.checkpoint_interval = 3
    eager = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "eager", quiet=True)
    from torch._dynamo.utils import counters

    counters.clear()
    tiny_config.hardware.compile = True
    compiled = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "compiled", quiet=True)
    assert counters["stats"]["unique_graphs"] > 0  # the compiler did run
    assert abs(compiled.losses[0] - eager.losses[0]) < 1e-5
    for step in (1, 2):  # after an update, float rounding may move an activation's rounding
        assert abs(compiled.losses[step] - eager.losses[step]) < 1e-3 * eager.losses[step], step
    se, sc = load_checkpoint(tmp_path / "eager").model_state, load_checkpoint(tmp_path / "compiled").model_state
    assert sorted(sc) == sorted(se) and all(sc[k].shape == se[k].shape for k in se)
