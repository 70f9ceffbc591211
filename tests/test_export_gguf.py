"""Tests for the GGUF exporter: exact ternary packing, metadata, architecture rule, file safety."""

import os
import stat

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from helpers import make_tiny_gguf, make_tiny_model

from nanochat_ternary.data.tokenizer import CHAT_TEMPLATE, Tokenizer
from nanochat_ternary.errors import ConfigError, FormatError
from nanochat_ternary.export.gguf_export import export_model
from nanochat_ternary.export.mhc_file import read_mhc
from nanochat_ternary.export.mtp_file import file_checksum
from nanochat_ternary.model.bitlinear import ternarize

PROJ = {"attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj", "attn_output": "attn.o_proj",
        "ffn_gate": "ffn.gate_proj", "ffn_up": "ffn.up_proj", "ffn_down": "ffn.down_proj"}
NORMS = {"attn_norm": "attn_norm", "attn_sub_norm": "attn.sub_norm", "ffn_norm": "ffn_norm",
         "ffn_sub_norm": "ffn.sub_norm"}


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def tensors(reader: GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


def read_weight(t) -> np.ndarray:
    """Dequantized [out, in] float32 array of a GGUF tensor."""
    return dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))


@pytest.mark.parametrize("quant,qtype,group", [("tq2_0", "TQ2_0", 0), ("tq1_0", "TQ1_0", 0), ("tq2_0", "TQ2_0", 256),
                                               ("tq1_0", "TQ1_0", 256)])
def test_ternary_round_trip_is_exact(tmp_path, quant, qtype, group):
    path, mhc, model = make_tiny_gguf(tmp_path, quant=quant, group_size=group)
    assert mhc is None
    reader = GGUFReader(path)
    ts = tensors(reader)
    state = model.state_dict()
    for i in range(model.cfg.num_layers):
        for ours, theirs in PROJ.items():
            t = ts[f"blk.{i}.{ours}.weight"]
            assert t.tensor_type.name == qtype
            w = state[f"blocks.{i}.{theirs}.weight"]
            tern, scale = ternarize(w, group)
            expected = (tern.reshape(w.shape[0], -1, group or w.shape[1]) * scale.half().float()).reshape(w.shape)
            np.testing.assert_array_equal(read_weight(t), expected.numpy(), err_msg=f"blk.{i}.{ours}")
        for ours, theirs in NORMS.items():
            t = ts[f"blk.{i}.{ours}.weight"]
            assert t.tensor_type == GGMLQuantizationType.F32
            np.testing.assert_array_equal(t.data, state[f"blocks.{i}.{theirs}.weight"].numpy())
    emb = ts["token_embd.weight"]
    assert emb.tensor_type == GGMLQuantizationType.F16
    np.testing.assert_array_equal(read_weight(emb), state["embed.weight"].half().float().numpy())
    np.testing.assert_array_equal(ts["output_norm.weight"].data, state["norm.weight"].numpy())
    assert "output.weight" not in ts  # tied head
    assert len(ts) == 1 + 1 + 11 * model.cfg.num_layers
    assert field(reader, "general.file_type") == {"tq2_0": 37, "tq1_0": 36}[quant]
    assert field(reader, "nanochat.weight_group_size") == group


def test_metadata(tmp_path):
    path, _, model = make_tiny_gguf(tmp_path)
    r = GGUFReader(path)
    cfg = model.cfg
    assert field(r, "general.architecture") == "bitnet"
    assert field(r, "general.name") == "nanochat"
    expected = {
        "context_length": cfg.max_seq_len, "embedding_length": 256, "block_count": 2, "feed_forward_length": 512,
        "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 64, "vocab_size": 512,
    }
    for key, value in expected.items():
        assert field(r, f"bitnet.{key}") == value, key
    assert field(r, "bitnet.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert field(r, "bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert field(r, "nanochat.use_bitlinear") is True
    assert field(r, "nanochat.activation_bits") == 8
    assert field(r, "nanochat.mhc.n_streams") == 1
    assert field(r, "nanochat.mhc.checksum") == ""
    assert field(r, "nanochat.mtp.n_tokens") == 0
    assert field(r, "nanochat.format_version") == 1


def test_tokenizer_metadata(tmp_path):
    path, _, _ = make_tiny_gguf(tmp_path)
    _, tok = make_tiny_model()
    r = GGUFReader(path)
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "llama-bpe"
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 512
    assert tokens[: tok.vocab_size] == tok.tokens()
    assert types[:3] == [3, 3, 3] and set(types[3: tok.vocab_size]) == {1}  # CONTROL, NORMAL
    assert all(t == 5 for t in types[tok.vocab_size:])  # UNUSED padding (if any)
    assert field(r, "tokenizer.ggml.merges") == tok.merges()
    assert field(r, "tokenizer.ggml.bos_token_id") == 0
    assert field(r, "tokenizer.ggml.eos_token_id") == 0
    assert field(r, "tokenizer.ggml.eot_token_id") == 2
    assert field(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    rebuilt = Tokenizer.from_json(field(r, "tokenizer.huggingface.json"))
    code = "fn main() {\n    let x: Vec<u32> = vec![1, 2];\n}\n"
    assert rebuilt.encode(code) == tok.encode(code) and rebuilt.tokens() == tok.tokens()


def test_padded_vocab(tmp_path):
    model, tok = make_tiny_model(vocab_size=640)  # embedding larger than the tokenizer
    export_model(model, tok, tmp_path / "p.gguf", None)
    r = GGUFReader(tmp_path / "p.gguf")
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 640 and tokens[-1] == "[PAD639]"
    assert field(r, "tokenizer.ggml.token_type")[-1] == 5


@pytest.mark.parametrize("n", [2, 4])
def test_mhc_model(tmp_path, n):
    path, mhc, model = make_tiny_gguf(tmp_path, mhc_n_streams=n)
    r = GGUFReader(path)
    assert field(r, "general.architecture") == "nanochat"
    assert field(r, "nanochat.block_count") == 2 and field(r, "nanochat.embedding_length") == 256
    assert field(r, "nanochat.mhc.n_streams") == n
    params, checksum = read_mhc(mhc)
    assert field(r, "nanochat.mhc.checksum") == checksum and len(checksum) == 64
    np.testing.assert_array_equal(params.pre_logits[1], model.blocks[1].mhc.pre_logits.detach().numpy())
    assert not any("mhc" in t.name for t in r.tensors)
    with pytest.raises(ConfigError, match=".mhc output path is required"):
        export_model(model, make_tiny_model()[1], tmp_path / "x.gguf", None)
    assert not (tmp_path / "x.gguf").exists()


def test_mtp_heads_and_drop(tmp_path):
    """n = 1 with MTP heads: a plain `bitnet` GGUF, the heads in the .mtp sidecar beside it; with
    mHC (n = 2) the heads stay inside the `nanochat` GGUF."""
    model, tok = make_tiny_model(use_mtp=True, mtp_n_tokens=2)
    s = export_model(model, tok, tmp_path / "mtp.gguf", None)
    r = GGUFReader(tmp_path / "mtp.gguf")
    assert s["arch"] == field(r, "general.architecture") == "bitnet"
    assert field(r, "nanochat.mtp.n_tokens") == 2
    assert not any(t.name.startswith("mtp.") for t in r.tensors)
    assert s["mtp"] == str(tmp_path / "mtp.mtp")
    assert field(r, "nanochat.mtp.checksum") == file_checksum(tmp_path / "mtp.mtp")
    ts = tensors(GGUFReader(tmp_path / "mtp.mtp"))
    for k in range(2):
        assert ts[f"mtp.{k}.proj.weight"].tensor_type.name == "TQ2_0"
        assert ts[f"mtp.{k}.norm_in.weight"].tensor_type == GGMLQuantizationType.F32
        np.testing.assert_array_equal(ts[f"mtp.{k}.norm_out.weight"].data, model.mtp[k].norm_out.weight.detach().numpy())
    s = export_model(model, tok, tmp_path / "nomtp.gguf", None, drop_mtp=True)
    r = GGUFReader(tmp_path / "nomtp.gguf")
    assert s["arch"] == field(r, "general.architecture") == "bitnet" and s["mtp"] is None
    assert field(r, "nanochat.mtp.n_tokens") == 0 and not (tmp_path / "nomtp.mtp").exists()
    assert not any(t.name.startswith("mtp.") for t in r.tensors)
    model2, tok2 = make_tiny_model(use_mtp=True, mtp_n_tokens=1, mhc_n_streams=2)
    s = export_model(model2, tok2, tmp_path / "n2.gguf", tmp_path / "n2.mhc")
    assert s["arch"] == "nanochat" and s["mtp"] is None and "mtp.0.proj.weight" in tensors(GGUFReader(tmp_path / "n2.gguf"))


def test_refuses_unpackable_group_size(tmp_path):
    model, tok = make_tiny_model()
    model.cfg.group_size = 128  # a config that bypassed validation
    with pytest.raises(ConfigError, match="group_size.*128.*multiple of 256"):
        export_model(model, tok, tmp_path / "g.gguf", None)
    with pytest.raises(ConfigError, match="unknown quant"):
        export_model(make_tiny_model()[0], tok, tmp_path / "g.gguf", None, quant="q4_0")
    assert not list(tmp_path.iterdir())


def test_failed_export_keeps_previous_files(tmp_path):
    path, mhc, _ = make_tiny_gguf(tmp_path, mhc_n_streams=2)
    before, mhc_before = path.read_bytes(), mhc.read_bytes()
    model, _ = make_tiny_model(vocab_size=300, mhc_n_streams=2, seed=5)  # fails late: temp files exist by then
    tok = make_tiny_model()[1]
    with pytest.raises(FormatError, match="tokenizer has 512 tokens but the model's vocab_size is 300"):
        export_model(model, tok, path, mhc)
    assert path.read_bytes() == before and mhc.read_bytes() == mhc_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "tiny.mhc"]  # no temp file left behind


def test_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path, mhc, _ = make_tiny_gguf(tmp_path, mhc_n_streams=2)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(mhc.stat().st_mode) == 0o644


def test_dense_and_f16(tmp_path):
    model, tok = make_tiny_model(use_bitlinear=False)
    s = export_model(model, tok, tmp_path / "dense.gguf", None)
    r = GGUFReader(tmp_path / "dense.gguf")
    assert s["file_type"] == "F16" and field(r, "nanochat.use_bitlinear") is False
    w = tensors(r)["blk.1.ffn_down.weight"]
    assert w.tensor_type == GGMLQuantizationType.F16
    np.testing.assert_array_equal(read_weight(w), model.blocks[1].ffn.down_proj.weight.detach().half().float().numpy())
    # a ternary model exported as f16 stores its effective weights t * scale
    model, tok = make_tiny_model()
    export_model(model, tok, tmp_path / "f16.gguf", None, quant="f16")
    w = tensors(GGUFReader(tmp_path / "f16.gguf"))["blk.0.attn_q.weight"]
    t, scale = ternarize(model.blocks[0].attn.q_proj.weight.detach(), 0)
    np.testing.assert_array_equal(read_weight(w), (t * scale).half().float().numpy())


def test_ternary_file_is_small(tmp_path):
    torch.manual_seed(0)
    model, tok = make_tiny_model(hidden_dim=512, num_heads=8, num_kv_heads=4)
    tq2 = export_model(model, tok, tmp_path / "a.gguf", None, quant="tq2_0")
    tq1 = export_model(model, tok, tmp_path / "b.gguf", None, quant="tq1_0")
    f16 = export_model(model, tok, tmp_path / "c.gguf", None, quant="f16")
    assert tq2["bits_per_weight"] == pytest.approx(66 * 8 / 256)
    assert tq1["bits_per_weight"] == pytest.approx(54 * 8 / 256)
    assert f16["bits_per_weight"] == pytest.approx(16)
    ratio = tq2["bytes"] / f16["bytes"]
    assert ratio <= 0.35, ratio
    assert tq1["bytes"] < tq2["bytes"]
