"""Bad model files: a FormatError naming the file and the problem, never a traceback or a hang."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from helpers import make_tiny_gguf
from nanochat_ternary.errors import FormatError
from nanochat_ternary.infer.engine import Engine


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {
        "n1": make_tiny_gguf(root / "n1")[:2],
        "n2": make_tiny_gguf(root / "n2", mhc_n_streams=2)[:2],
        "n2_other": make_tiny_gguf(root / "n2_other", mhc_n_streams=2, num_layers=3)[:2],
        "n4": make_tiny_gguf(root / "n4", mhc_n_streams=4)[:2],
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _load_error(path, mhc=None) -> str:
    with pytest.raises(FormatError) as e:
        Engine.load(path, mhc)
    return str(e.value)


def _rewrite(src: Path, dst: Path, drop: set[str] = frozenset(), nan_tensor: str | None = None,
             fields: dict | None = None, tensors: dict | None = None) -> Path:
    """Copy a GGUF with the gguf package, leaving out metadata keys, replacing some values or
    tensors (`fields`, `tensors`: name -> new value), or poisoning one tensor with a NaN."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in drop or name == "general.architecture":
            continue
        sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(name, (fields or {}).get(name, f.contents()), f.types[0], sub_type=sub)
    for t in r.tensors:
        data = (tensors or {}).get(t.name, np.array(t.data))
        if t.name == nan_tensor:
            data[0] = np.nan
        if t.tensor_type.name in ("F32", "F16"):
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_missing_file(tmp_path):
    msg = _load_error(tmp_path / "nope.gguf")
    assert "nope.gguf" in msg and "not found" in msg


def test_wrong_magic(files, tmp_path):
    bad = _copy(files["n1"][0], tmp_path / "magic.gguf")
    data = bytearray(bad.read_bytes())
    data[:4] = b"GGML"
    bad.write_bytes(bytes(data))
    msg = _load_error(bad)
    assert "magic.gguf" in msg and "not a valid GGUF" in msg and "magic" in msg


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated(files, tmp_path, keep):
    src = files["n1"][0]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
    msg = _load_error(bad)
    assert "cut.gguf" in msg


def test_corrupted_header_bytes(files, tmp_path):
    bad = _copy(files["n1"][0], tmp_path / "garbled.gguf")
    data = bytearray(bad.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(24, 4000, size=200):  # scribble over the key/value section
        data[i] = int(rng.integers(0, 256))
    bad.write_bytes(bytes(data))
    msg = _load_error(bad)
    assert "garbled.gguf" in msg


def test_corrupted_ternary_data(files, tmp_path):
    src = files["n1"][0]
    r = GGUFReader(src)
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_up.weight")
    bad = _copy(src, tmp_path / "bits.gguf")
    data = bytearray(bad.read_bytes())
    data[t.data_offset : t.data_offset + 64] = b"\xff" * 64  # code 3 is not a ternary value
    bad.write_bytes(bytes(data))
    msg = _load_error(bad)
    assert "bits.gguf" in msg and "blk.1.ffn_up.weight" in msg and "invalid TQ2_0" in msg


def test_nan_in_norm(files, tmp_path):
    bad = _rewrite(files["n1"][0], tmp_path / "nan.gguf", nan_tensor="blk.0.ffn_norm.weight")
    msg = _load_error(bad)
    assert "nan.gguf" in msg and "blk.0.ffn_norm.weight" in msg and "NaN" in msg


@pytest.mark.parametrize("key", ["tokenizer.huggingface.json", "tokenizer.ggml.tokens", "tokenizer.chat_template",
                                 "nanochat.mhc.n_streams", "bitnet.block_count"])
def test_missing_metadata(files, tmp_path, key):
    bad = _rewrite(files["n1"][0], tmp_path / "meta.gguf", drop={key})
    msg = _load_error(bad)
    assert "meta.gguf" in msg and key in msg and "missing" in msg


def test_missing_tensor(files, tmp_path):
    src = files["n1"][0]
    r = GGUFReader(src)
    w = GGUFWriter(tmp_path / "lack.gguf", "bitnet")
    for name, f in r.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[1] if f.types[0] == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name != "blk.1.attn_v.weight":
            w.add_tensor(t.name, np.array(t.data), raw_dtype=None if t.tensor_type.name in ("F32", "F16") else t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = _load_error(tmp_path / "lack.gguf")
    assert "lack.gguf" in msg and "blk.1.attn_v.weight" in msg


def test_mhc_missing(files, tmp_path):
    gguf = _copy(files["n2"][0], tmp_path / "alone.gguf")  # no .mhc next to it
    msg = _load_error(gguf)
    assert "alone.gguf" in msg and ".mhc" in msg and "2 mHC streams" in msg


def test_mhc_wrong_model(files):
    gguf, _ = files["n2"]
    msg = _load_error(gguf, files["n4"][1])  # n = 4 parameters for an n = 2 model
    assert "tiny.mhc" in msg and str(gguf) in msg and str(files["n4"][1]) in msg
    msg = _load_error(gguf, files["n2_other"][1])  # same n, other model (3 layers)
    assert str(gguf) in msg and str(files["n2_other"][1]) in msg


def test_mhc_checksum_mismatch(files, tmp_path):
    """An .mhc of the right shape but not the one exported with this GGUF."""
    from nanochat_ternary.export.mhc_file import read_mhc, write_mhc

    params, _ = read_mhc(files["n2"][1])
    params.res_logits = params.res_logits + 0.5
    other = tmp_path / "other.mhc"
    write_mhc(other, params)
    msg = _load_error(files["n2"][0], other)
    assert "other.mhc" in msg and "checksum" in msg and str(files["n2"][0]) in msg


def test_mhc_corrupted_and_unneeded(files, tmp_path):
    bad = _copy(files["n2"][1], tmp_path / "broken.mhc")
    data = bytearray(bad.read_bytes())
    data[30] ^= 0xFF
    bad.write_bytes(bytes(data))
    msg = _load_error(files["n2"][0], bad)
    assert "broken.mhc" in msg and "checksum" in msg
    msg = _load_error(files["n1"][0], files["n2"][1])  # n = 1 models take no .mhc
    assert "tiny.mhc" in msg and "single-stream" in msg


def test_cli_prints_one_line_error(files, tmp_path):
    bad = tmp_path / "empty.gguf"
    bad.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "nanochat_ternary.cli", "generate", "--model", str(bad), "--prompt", "fn"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "empty.gguf" in proc.stderr
