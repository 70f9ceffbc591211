"""The .mtp sidecar of a `bitnet` GGUF with MTP heads: the engine finds the heads, refuses wrong ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers import make_tiny_model
from nanochat_ternary.errors import FormatError
from nanochat_ternary.export.gguf_export import export_model
from nanochat_ternary.infer.gguf_model import read_gguf_model
from nanochat_ternary.model.bitlinear import ternarize


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtp")
    model, tok = make_tiny_model(use_mtp=True, mtp_n_tokens=2)
    export_model(model, tok, d / "a.gguf", None)
    other, tok2 = make_tiny_model(seed=5, use_mtp=True, mtp_n_tokens=2)
    export_model(other, tok2, d / "b.gguf", None)
    return d, model


def test_engine_reads_the_heads_from_the_sidecar(exported):
    d, model = exported
    gm = read_gguf_model(d / "a.gguf")
    assert gm.hp.arch == "bitnet" and gm.hp.n_mtp == 2
    p = gm.projections["mtp.1.proj.weight"]
    t, _ = ternarize(model.mtp[1].proj.weight.detach(), model.mtp[1].proj.group_size)
    assert torch.equal(p.t.to(torch.int8), t.to(torch.int8))
    assert torch.equal(gm.norms["mtp.0.norm_in.weight"], model.mtp[0].norm_in.weight.detach())


def test_missing_wrong_and_corrupted_sidecars(exported, tmp_path):
    d, _ = exported
    shutil.copy(d / "a.gguf", tmp_path / "a.gguf")
    with pytest.warns(UserWarning, match="MTP heads are kept in .*a.mtp, which is missing"):
        assert read_gguf_model(tmp_path / "a.gguf").hp.n_mtp == 0  # runs, without speculative decoding
    with pytest.raises(FormatError, match="MTP sidecar not found"):
        read_gguf_model(tmp_path / "a.gguf", mtp_path=tmp_path / "nope.mtp")
    shutil.copy(d / "b.mtp", tmp_path / "a.mtp")  # another model's heads
    with pytest.raises(FormatError, match="a.mtp: checksum does not match"):
        read_gguf_model(tmp_path / "a.gguf")
    data = bytearray((d / "a.mtp").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "a.mtp").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum does not match"):
        read_gguf_model(tmp_path / "a.gguf")
