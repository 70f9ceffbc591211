"""Tests for `nanochat export` and export_checkpoint: from a real training checkpoint to GGUF."""

import json

import numpy as np
import pytest
from gguf import GGUFReader
from helpers import make_tiny_model

from nanochat_ternary.cli import main
from nanochat_ternary.config import Config
from nanochat_ternary.errors import FormatError
from nanochat_ternary.export.gguf_export import export_checkpoint
from nanochat_ternary.export.mhc_file import read_mhc
from nanochat_ternary.model.bitlinear import quantize_weight
from nanochat_ternary.train.checkpoint import save_checkpoint


def make_run(tmp_path, tokenizer_in_run: bool = True, **overrides):
    model, tok = make_tiny_model(**overrides)
    run = tmp_path / "myrun"
    step_dir = save_checkpoint(run, 7, model, None, {"config": Config(model=model.cfg).to_dict()})
    if tokenizer_in_run:
        tok.save(run / "tokenizer.json")
    return run, step_dir, model, tok


def test_cli_export_mhc_model(tmp_path, capsys):
    run, step_dir, model, _ = make_run(tmp_path, mhc_n_streams=2)
    out = tmp_path / "out" / "model.gguf"
    assert main(["export", "--checkpoint", str(step_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bits per weight" in printed and "2.0625" in printed and "model.mhc" in printed
    mhc = tmp_path / "out" / "model.mhc"  # default: next to the GGUF
    params, checksum = read_mhc(mhc)
    r = GGUFReader(out)
    assert r.fields["nanochat.mhc.checksum"].contents() == checksum
    assert r.fields["general.name"].contents() == "myrun"
    np.testing.assert_array_equal(params.res_logits[0], model.blocks[0].mhc.res_logits.detach().numpy())
    # the weights are the checkpoint's, not a fresh init
    q = {t.name: t for t in r.tensors}["blk.1.ffn_up.weight"]
    from gguf.quants import dequantize
    got = dequantize(np.asarray(q.data), q.tensor_type).reshape(512, 256)
    want = quantize_weight(model.blocks[1].ffn.up_proj.weight.detach())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3)


def test_cli_json_and_model_file(tmp_path, capsys):
    _, step_dir, _, _ = make_run(tmp_path)
    out = tmp_path / "m.gguf"
    rc = main(["export", "--checkpoint", str(step_dir / "model.safetensors"), "--output", str(out),
               "--quant", "tq1_0", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "bitnet" and summary["file_type"] == "TQ1_0" and summary["mhc"] is None
    assert summary["bytes"] == out.stat().st_size


def test_tokenizer_next_to_checkpoint(tmp_path):
    _, step_dir, _, tok = make_run(tmp_path, tokenizer_in_run=False)
    with pytest.raises(FormatError, match="no tokenizer.json"):
        export_checkpoint(step_dir, tmp_path / "a.gguf")
    tok.save(step_dir / "tokenizer.json")
    s = export_checkpoint(step_dir, tmp_path / "a.gguf", drop_mtp=True)
    assert s["arch"] == "bitnet"


def test_cli_errors_are_one_line(tmp_path, capsys):
    _, step_dir, _, _ = make_run(tmp_path, tokenizer_in_run=False)
    assert main(["export", "--checkpoint", str(step_dir), "--output", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenizer.json" in err and str(step_dir) in err
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "x.gguf")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_checkpoint_config_mismatch(tmp_path):
    run, step_dir, _, _ = make_run(tmp_path)
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["config"]["model"]["num_layers"] = 3
    (step_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"does not match the config.*missing \['blocks\.2\."):
        export_checkpoint(step_dir, tmp_path / "a.gguf")
    meta["config"]["model"]["num_layers"] = 2
    meta["config"]["model"]["ffn_mult"] = 3.0
    (step_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"'blocks\.0\.ffn\.gate_proj\.weight' has shape \(512, 256\), the config gives \(768, 256\)"):
        export_checkpoint(step_dir, tmp_path / "a.gguf")
    (step_dir / "model.safetensors").write_bytes(b"garbage")
    meta["config"]["model"]["ffn_mult"] = 2.0
    meta.pop("checkpoint_files")
    (step_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="unreadable safetensors"):
        export_checkpoint(step_dir, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
