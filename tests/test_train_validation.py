"""Validation during training (val/loss, val/bpb every eval_interval steps) and the `best` alias."""

import json
import math

import torch

from nanochat_ternary.data.shards import ShardReader
from nanochat_ternary.data.token_bytes import token_byte_lengths
from nanochat_ternary.data.tokenizer import Tokenizer
from nanochat_ternary.train.checkpoint import load_checkpoint, resolve_checkpoint
from nanochat_ternary.train.trainer import train
from nanochat_ternary.train.validation import fixed_windows, score_windows


def test_token_bytes_count_text_and_not_specials(tiny_dataset):
    tok = Tokenizer.load(tiny_dataset / "tokenizer.json")
    lengths = token_byte_lengths(tok)
    text = "fn main() { let café = \"naïve\"; }"
    ids = tok.encode(text + "<|endoftext|>")
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[tok.eos_id] == lengths[tok.im_start_id] == lengths[tok.im_end_id] == 0


def test_score_windows_matches_a_direct_computation(tiny_dataset, tiny_config):
    from nanochat_ternary.model.gpt import GPT

    tok = Tokenizer.load(tiny_dataset / "tokenizer.json")
    windows = fixed_windows(ShardReader(tiny_dataset / "val"), 32, 5)
    assert windows.shape == (5, 33)
    assert (fixed_windows(ShardReader(tiny_dataset / "val"), 32, 5) == windows).all()  # fixed, not random
    model = GPT(tiny_config.model)
    model.init_weights(0)
    r = score_windows(model, windows, token_byte_lengths(tok), batch_size=2, device=torch.device("cpu"))
    x = torch.from_numpy(windows)
    with torch.no_grad():
        logp = torch.log_softmax(model(x[:, :-1]).float(), -1)
    nats = -logp.gather(-1, x[:, 1:, None]).sum().item()
    n_bytes = len(tok.decode_bytes([t for t in x[:, 1:].flatten().tolist() if t > 2]))
    assert math.isclose(r["loss"], nats / x[:, 1:].numel(), rel_tol=1e-4)
    assert r["bytes"] == n_bytes and math.isclose(r["bpb"], nats / math.log(2) / n_bytes, rel_tol=1e-4)
    assert model.training  # put back in the mode it was in


def test_validation_logs_and_keeps_best(tmp_path, tiny_dataset, tiny_config, capsys):
    t = tiny_config.training
    t.total_steps, t.eval_interval, t.eval_windows, t.checkpoint_interval = 8, 2, 4, 100
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=False, keep_checkpoints=1)
    out = capsys.readouterr().out
    assert out.count("val ") == 4 and "bpb" in out
    vals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = {x["step"]: x for x in vals if "val/loss" in x}
    assert sorted(vals) == [2, 4, 6, 8] and all(v["val/bpb"] > 0 for v in vals.values())
    best_step = min(vals, key=lambda s: vals[s]["val/loss"])
    info = json.loads((tmp_path / "checkpoints/best/best.json").read_text())
    assert info["step"] == best_step and math.isclose(info["val_loss"], vals[best_step]["val/loss"], rel_tol=1e-6)
    best = load_checkpoint(tmp_path / "checkpoints/best")
    assert best.step == best_step and resolve_checkpoint(tmp_path / "checkpoints/best").name == "best"
    assert result.checkpoint.name == "step_8"  # latest is still the last step


def test_resume_keeps_the_best_figure(tmp_path, tiny_dataset, tiny_config):
    from nanochat_ternary.train.validation import Validator

    t = tiny_config.training
    t.total_steps, t.eval_interval, t.eval_windows = 4, 2, 4
    train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    before = json.loads((tmp_path / "checkpoints/best/best.json").read_text())
    v = Validator.create(tiny_config, tiny_dataset, tmp_path, torch.device("cpu"), quiet=True)
    assert v.best_loss == before["val_loss"]
    t.eval_interval = 0
    assert Validator.create(tiny_config, tiny_dataset, tmp_path, torch.device("cpu")) is None
