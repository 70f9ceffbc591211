"""Checkpoints that were damaged after the save, and saves that fail (full disk, file-size limit)."""

import json
import resource
import signal

import pytest

from nanochat_ternary.errors import FormatError
from nanochat_ternary.train.checkpoint import load_checkpoint, save_checkpoint
from nanochat_ternary.train.checkpoint_integrity import CheckpointWriteError
from nanochat_ternary.train.trainer import train


@pytest.fixture
def run(tmp_path, tiny_dataset, tiny_config):
    tiny_config.training.checkpoint_interval = 1
    tiny_config.training.total_steps = 3
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "run", quiet=True, keep_checkpoints=5)
    return tmp_path / "run", tiny_config, result


def _flip_byte(path, where):
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_altered_file_is_detected_and_resume_falls_back(run, capsys, name):
    run_dir, cfg, full = run
    ck = run_dir / "checkpoints"
    _flip_byte(ck / "step_3" / name, -100)
    with pytest.raises(FormatError) as e:
        load_checkpoint(run_dir)
    assert name in str(e.value) and "checksum mismatch" in str(e.value)
    capsys.readouterr()
    resumed = train(cfg, run_dir=run_dir, resume=True, steps=4, quiet=True)
    err = capsys.readouterr().err
    assert "warning: skipping damaged checkpoint step_3" in err and "resuming from step_2" in err
    assert sorted(resumed.losses) == [2, 3] and resumed.losses[2] == full.losses[2]  # the same step 3, redone


def test_truncated_file_and_bad_meta_fall_back(run, capsys):
    run_dir, cfg, _ = run
    ck = run_dir / "checkpoints"
    f = ck / "step_3" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    meta = json.loads((ck / "step_2" / "meta.json").read_text())
    meta["config"]["model"]["hidden_dim"] = 512  # tensors no longer fit the config
    (ck / "step_2" / "meta.json").write_text(json.dumps(meta))
    train(cfg, run_dir=run_dir, resume=True, quiet=True)
    err = capsys.readouterr().err
    assert "step_3" in err and "truncated" in err and "step_2" in err and "do not fit the config" in err
    assert "resuming from step_1" in err


def test_failed_write_keeps_previous_checkpoint(run):
    """A write that fails half way (here: the file-size limit, as a full disk would) leaves
    `latest` on the previous, intact checkpoint and no partial folder."""
    from nanochat_ternary.model.gpt import GPT

    run_dir, cfg, _ = run
    ck = run_dir / "checkpoints"
    model = GPT(cfg.model)
    size = (ck / "step_3" / "model.safetensors").stat().st_size
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        with pytest.raises(CheckpointWriteError) as e:
            save_checkpoint(run_dir, 4, model, None, {"config": cfg.to_dict()})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    msg = str(e.value)
    assert "step_4" in msg and "File too large" in msg and "'step_3' is intact" in msg and "--resume" in msg
    assert (ck / "latest").read_text().strip() == "step_3"
    assert load_checkpoint(run_dir).step == 3
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_1", "step_2", "step_3"]


def test_best_link_that_cannot_be_written_keeps_previous_best(run):
    """`checkpoints/best/` is updated after a save; a failed update (here: the file-size limit
    on best.json, as a full disk would) is a CheckpointWriteError and leaves the old best whole."""
    from nanochat_ternary.train.validation import link_best, read_best

    run_dir, _, _ = run
    ck = run_dir / "checkpoints"
    link_best(ck / "step_2", {"step": 2, "val_loss": 1.0})
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4, hard))
    try:
        with pytest.raises(CheckpointWriteError) as e:
            link_best(ck / "step_3", {"step": 3, "val_loss": 0.5})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "File too large" in str(e.value) and "previous best is unchanged" in str(e.value)
    assert read_best(run_dir)["step"] == 2 and load_checkpoint(ck / "best").step == 2
    assert not list(ck.glob(".tmp_*"))
