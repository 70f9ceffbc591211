"""Tests for the .mhc sidecar file (nanochat_ternary.export.mhc_file)."""

import hashlib
import struct

import numpy as np
import pytest
from helpers import make_tiny_model

from nanochat_ternary.errors import FormatError
from nanochat_ternary.export.mhc_file import MhcParams, mhc_params_from_state_dict, read_mhc, write_mhc


def _params(n: int, layers: int = 3, seed: int = 0) -> MhcParams:
    rng = np.random.default_rng(seed)
    n_res = 1 if n == 2 else 24
    return MhcParams(
        n_streams=n,
        res_logits=rng.standard_normal((layers, n_res)).astype(np.float32),
        pre_logits=rng.standard_normal((layers, n)).astype(np.float32),
        post_logits=rng.standard_normal((layers, n)).astype(np.float32),
    )


@pytest.mark.parametrize("n", [2, 4])
def test_round_trip(tmp_path, n):
    p = _params(n)
    path = tmp_path / "m.mhc"
    checksum = write_mhc(path, p)
    data = path.read_bytes()
    assert data[:4] == b"MHC1"
    assert struct.unpack_from("<IIII", data, 4) == (1, n, 3, 1 if n == 2 else 24)
    assert checksum == hashlib.sha256(data[:-32]).hexdigest() == data[-32:].hex()
    got, got_sum = read_mhc(path)
    assert got_sum == checksum
    assert got.n_streams == n and got.n_layers == 3
    for name in ("res_logits", "pre_logits", "post_logits"):
        assert getattr(got, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(got, name), getattr(p, name))
    # different parameters give a different checksum
    assert write_mhc(tmp_path / "other.mhc", _params(n, seed=1)) != checksum


def _rewrite_with_valid_checksum(path, mutate):
    """Apply `mutate` to the payload and recompute the trailing sha256 (to reach later checks)."""
    payload = bytearray(path.read_bytes()[:-32])
    mutate(payload)
    path.write_bytes(bytes(payload) + hashlib.sha256(payload).digest())


def test_corrupt_files_are_format_errors(tmp_path):
    path = tmp_path / "m.mhc"
    write_mhc(path, _params(4))
    good = path.read_bytes()

    path.write_bytes(good[:-10])
    with pytest.raises(FormatError, match=r"m\.mhc.*truncated"):
        read_mhc(path)
    path.write_bytes(good[:10])
    with pytest.raises(FormatError, match="truncated"):
        read_mhc(path)

    path.write_bytes(b"GGUF" + good[4:])
    with pytest.raises(FormatError, match=r"m\.mhc.*magic"):
        read_mhc(path)

    flipped = bytearray(good)
    flipped[40] ^= 0x01  # one bit of a logit
    path.write_bytes(bytes(flipped))
    with pytest.raises(FormatError, match=r"m\.mhc.*checksum"):
        read_mhc(path)

    path.write_bytes(good)
    _rewrite_with_valid_checksum(path, lambda b: struct.pack_into("<I", b, 4, 2))
    with pytest.raises(FormatError, match=r"m\.mhc.*version 2"):
        read_mhc(path)

    path.write_bytes(good)
    _rewrite_with_valid_checksum(path, lambda b: struct.pack_into("<I", b, 8, 3))
    with pytest.raises(FormatError, match="n_streams"):
        read_mhc(path)

    path.write_bytes(good)
    _rewrite_with_valid_checksum(path, lambda b: struct.pack_into("<I", b, 16, 1))
    with pytest.raises(FormatError, match="n_res"):
        read_mhc(path)

    path.write_bytes(good + b"\0")
    with pytest.raises(FormatError, match="trailing"):
        read_mhc(path)

    with pytest.raises(FormatError, match="not found"):
        read_mhc(tmp_path / "missing.mhc")


def test_write_refuses_bad_shapes(tmp_path):
    p = _params(2)
    p.pre_logits = p.pre_logits[:, :1]
    with pytest.raises(FormatError, match="pre_logits"):
        write_mhc(tmp_path / "x.mhc", p)
    assert not (tmp_path / "x.mhc").exists()
    q = _params(4)
    q.res_logits[0, 0] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        write_mhc(tmp_path / "x.mhc", q)


@pytest.mark.parametrize("n", [2, 4])
def test_from_state_dict(n):
    model, _ = make_tiny_model(mhc_n_streams=n)
    p = mhc_params_from_state_dict(model.state_dict(), 2, n)
    assert p.n_layers == 2 and p.n_streams == n
    for i, block in enumerate(model.blocks):
        np.testing.assert_array_equal(p.res_logits[i], block.mhc.res_logits.detach().numpy())
        np.testing.assert_array_equal(p.pre_logits[i], block.mhc.pre_logits.detach().numpy())
        np.testing.assert_array_equal(p.post_logits[i], block.mhc.post_logits.detach().numpy())
    with pytest.raises(FormatError, match=r"blocks\.0\.mhc\.res_logits"):
        mhc_params_from_state_dict({}, 2, n)
