"""Atomic checkpoints and exact resume (nanochat_ternary/train/checkpoint.py)."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from nanochat_ternary.config import TrainingConfig
from nanochat_ternary.errors import FormatError
from nanochat_ternary.train.rng import rng_state, set_rng_state
from nanochat_ternary.train.checkpoint import (
    load_checkpoint, prune_checkpoints, resolve_checkpoint, save_checkpoint,
)
from nanochat_ternary.train.optim import build_optimizers

torch.set_flush_denormal(True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.up = nn.Linear(8, 16, bias=False)
        self.down = nn.Linear(16, 8, bias=False)
        self.norm = nn.RMSNorm(8)

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        h = h + self.down(torch.relu(self.up(h)))
        return h @ self.embed.weight.T


def train_steps(model, opts, n):
    for _ in range(n):
        tokens = torch.randint(0, 20, (4, 6))  # drawn from the global RNG: resume must restore it
        loss = nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()


def fresh(seed=0):
    torch.manual_seed(seed)
    model = Net()
    return model, build_optimizers(model, TrainingConfig(learning_rate=0.01))


def test_resume_gives_bit_identical_steps(tmp_path):
    model, opts = fresh()
    train_steps(model, opts, 3)
    save_checkpoint(tmp_path, 3, model, opts, {"rng": rng_state(), "loader": {"pos": 17}})
    train_steps(model, opts, 3)

    model2, opts2 = fresh(seed=99)  # different init: everything must come from the checkpoint
    ck = load_checkpoint(tmp_path)
    model2.load_state_dict(ck.model_state)
    for o, s in zip(opts2, ck.optim_states):
        o.load_state_dict(s)
    set_rng_state(ck.meta["rng"])
    assert ck.step == 3 and ck.meta["loader"] == {"pos": 17} and ck.meta["format_version"] == 1
    assert [g["initial_lr"] for o in opts2 for g in o.param_groups] == [0.01, 0.01 * 0.05, 0.01 * 0.05]  # Muon; Lion decayed, not decayed
    train_steps(model2, opts2, 3)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name


def test_latest_and_resolve(tmp_path):
    model, opts = fresh()
    p1 = save_checkpoint(tmp_path, 1, model, opts, {})
    p2 = save_checkpoint(tmp_path, 2, model, None, {})
    ckdir = tmp_path / "checkpoints"
    assert (ckdir / "latest").read_text().strip() == "step_2" and p2 == ckdir / "step_2"
    for path in (tmp_path, ckdir, p2, p2 / "model.safetensors"):
        assert resolve_checkpoint(path) == p2
    assert resolve_checkpoint(p1) == p1
    assert load_checkpoint(p1).optim_states is not None and load_checkpoint(p2).optim_states is None
    assert sorted(os.listdir(ckdir)) == ["latest", "step_1", "step_2"]  # no temporaries left


def test_leftover_tmp_folder_is_ignored_then_cleaned(tmp_path):
    model, opts = fresh()
    save_checkpoint(tmp_path, 5, model, opts, {"tag": "good"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / "checkpoints" / f".tmp_step_10_{dead.pid}"  # a save killed half way
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 5 and ck.meta["tag"] == "good"
    save_checkpoint(tmp_path, 6, model, opts, {})
    assert not leftover.exists()


def test_resaving_a_step_replaces_it(tmp_path):
    model, opts = fresh()
    save_checkpoint(tmp_path, 4, model, opts, {"v": 1})
    with torch.no_grad():
        model.up.weight.add_(1.0)
    save_checkpoint(tmp_path, 4, model, opts, {"v": 2})
    ck = load_checkpoint(tmp_path)
    assert ck.meta["v"] == 2 and torch.equal(ck.model_state["up.weight"], model.up.weight)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_4"]


def test_tied_weights_round_trip(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    save_checkpoint(tmp_path, 0, model, None, {})
    state = load_checkpoint(tmp_path).model_state
    assert set(state) == {"0.weight", "1.weight"} and state["0.weight"] is state["1.weight"]
    model2 = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model2.load_state_dict(state)
    assert torch.equal(model2[1].weight, model[0].weight)


@pytest.mark.parametrize("value", [[1, 2], "model.safetensors", 7, {"model.safetensors": "big"}, {"../x": 1}, {"optimizer.pt": -1}])
def test_bad_checkpoint_files_field_is_format_error(tmp_path, value):
    """Found by `nanochat bench fuzz --format checkpoint`: a non-mapping `checkpoint_files`
    surfaced as AttributeError."""
    from nanochat_ternary.export.checkpoint_source import load_for_export

    model, opts = fresh()
    step = save_checkpoint(tmp_path, 1, model, opts, {"config": {}})
    meta = json.loads((step / "meta.json").read_text())
    meta["checkpoint_files"] = value
    (step / "meta.json").write_text(json.dumps(meta))
    for load in (load_checkpoint, load_for_export):  # resume and export read it
        with pytest.raises(FormatError, match="meta.json: 'checkpoint_files' must map file names to sizes"):
            load(tmp_path)


def test_corrupt_files_give_format_error(tmp_path):
    model, opts = fresh()
    train_steps(model, opts, 1)
    step = save_checkpoint(tmp_path, 1, model, opts, {})
    mfile, ofile, meta = step / "model.safetensors", step / "optimizer.pt", step / "meta.json"
    good_model, good_optim, good_meta = mfile.read_bytes(), ofile.read_bytes(), meta.read_text()

    mfile.write_bytes(good_model[: len(good_model) // 2])  # truncated: caught by the size record
    with pytest.raises(FormatError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    unchecked = json.loads(good_meta)
    del unchecked["checkpoint_files"]
    meta.write_text(json.dumps(unchecked))  # no size record: safetensors itself must refuse it
    with pytest.raises(FormatError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    mfile.write_bytes(good_model)

    ofile.write_bytes(good_optim[:100])
    with pytest.raises(FormatError, match="optimizer.pt"):
        load_checkpoint(step)
    torch.save([{"evil": Net()}], ofile)  # an arbitrary object must not be unpickled
    with pytest.raises(FormatError, match="optimizer.pt"):
        load_checkpoint(step)
    ofile.write_bytes(good_optim)

    meta.write_text("{not json")
    with pytest.raises(FormatError, match="meta.json"):
        load_checkpoint(step)
    meta.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(FormatError, match="format_version"):
        load_checkpoint(step)
    meta.unlink()
    with pytest.raises(FormatError, match="incomplete"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step_7\n")
    with pytest.raises(FormatError, match="step_7"):
        load_checkpoint(tmp_path)
    with pytest.raises(FormatError, match="no such"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FormatError, match="not a checkpoint"):
        resolve_checkpoint(ofile)


def test_rng_state_round_trip():
    state = json.loads(json.dumps(rng_state()))  # must survive meta.json
    first = (torch.rand(3), random.random(), np.random.rand(2), torch.randn(2))
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand(2), torch.randn(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert np.array_equal(first[2], again[2]) and torch.equal(first[3], again[3])
    with pytest.raises(FormatError, match="RNG"):
        set_rng_state({"python": [1, 2]})


def test_prune_keeps_newest_and_latest(tmp_path):
    model, _ = fresh()
    for s in (1, 2, 3, 10, 20):
        save_checkpoint(tmp_path, s, model, None, {})
    ckdir = tmp_path / "checkpoints"
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_1", "step_2", "step_3"]
    assert sorted(os.listdir(ckdir)) == ["latest", "step_10", "step_20"]
    (ckdir / "latest").write_text("step_10\n")  # e.g. resumed from an older checkpoint
    prune_checkpoints(tmp_path, keep=0)
    assert sorted(os.listdir(ckdir)) == ["latest", "step_10"]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep=-1)


SAVER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from nanochat_ternary.train.checkpoint import save_checkpoint
    model = nn.Linear(64, 64)
    i = 0
    while True:  # steps 0,0,1,1,2,2,0,...: new folders, replacements of others and of the latest
        with torch.no_grad():
            model.weight.fill_(float(i))
        save_checkpoint(sys.argv[1], (i // 2) % 3, model, None, {"i": i})
        if i == 0:
            print("ready", flush=True)
        i += 1
""")


def test_kill_during_saves_leaves_a_loadable_latest(tmp_path):
    for delay in (0.05, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(tmp_path)
        i = ck.meta["i"]
        assert ck.step == (i // 2) % 3 and torch.all(ck.model_state["weight"] == float(i))
