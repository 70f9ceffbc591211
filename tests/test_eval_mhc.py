"""mHC routing analysis (eval/mhc_analysis.py): drift from init and whether the streams differ."""

import torch

from nanochat_ternary.config import config_from_dict
from nanochat_ternary.eval.mhc_analysis import analyse, routing_drift, stream_cosines
from nanochat_ternary.model.gpt import GPT

MODEL = {"hidden_dim": 256, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "ffn_mult": 2.0,
         "max_seq_len": 64, "vocab_size": 128, "use_mtp": False}


def _model(n: int, **kw) -> GPT:
    cfg = config_from_dict({"model": {**MODEL, "mhc_n_streams": n, **kw}, "training": {"seq_length": 32}}, source="test")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    model.init_weights(seed=0)
    return model.eval()


def _tokens():
    return torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))


def test_fresh_model_has_not_moved_and_its_streams_already_differ():
    model = _model(2)
    rows = routing_drift(model)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["d_res"] == r["d_pre"] == r["d_post"] == 0.0 and r["post_logit_moved"] == 0.0
        assert abs(r["h_res"][0] - 0.9) < 1e-6 and abs(sum(r["h_post"]) - 2.0) < 1e-5
    # block l writes mostly into stream (l + 1) mod n: the streams differ after every block
    assert all(c < 0.9999 for c in stream_cosines(model, _tokens()))
    # a symmetric write (H_post = 1 everywhere) keeps the n streams one stream in n copies
    with torch.no_grad():
        for b in model.blocks:
            b.mhc.post_logits.zero_()
    assert all(abs(c - 1.0) < 1e-5 for c in stream_cosines(model, _tokens()))


def test_a_symmetric_init_run_is_measured_against_its_own_init():
    rows = routing_drift(_model(2, mhc_post_main=1.0))
    assert all(r["d_post"] == 0.0 and r["post_logit_moved"] == 0.0 for r in rows)


def test_moved_logits_are_measured():
    model = _model(2)
    before = model.blocks[1].mhc.h_post().detach()
    with torch.no_grad():
        model.blocks[1].mhc.post_logits.add_(torch.tensor([1.0, -1.0]))
        model.blocks[2].mhc.res_logits.sub_(0.5)
    rows = routing_drift(model)
    assert rows[0]["d_post"] == 0.0 and abs(rows[1]["post_logit_moved"] - 1.0) < 1e-6
    assert abs(rows[1]["d_post"] - float((model.blocks[1].mhc.h_post().detach() - before).abs().max())) < 1e-5
    assert rows[1]["d_post"] > 0.1
    assert rows[2]["d_res"] > 0.01 and rows[2]["d_post"] == 0.0


def test_n1_model_has_nothing_to_analyse():
    r = analyse(_model(1), _tokens())
    assert r["n_streams"] == 1 and r["layers"] == [] and "tokens" not in r and r["composite_gain"] == 1.0
