"""Mixture of experts: routing, capacity and drops, the balance loss, router gradients, training."""

import math

import pytest
import torch

from nanochat_ternary.config import config_from_dict, load_config
from nanochat_ternary.errors import ConfigError
from nanochat_ternary.model.gpt import GPT, count_params
from nanochat_ternary.model.moe import MoE, expert_capacity, load_balance_loss, moe_stats, route
from nanochat_ternary.train.loss import compute_loss
from nanochat_ternary.train.optim import build_optimizers

SMALL = {"vocab_size": 512, "hidden_dim": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_mult": 2.0,
         "max_seq_len": 64, "use_moe": True, "num_experts": 4, "num_active_experts": 2, "expert_ffn_mult": 1.0}


def small_cfg(**over):
    return config_from_dict({"model": {**SMALL, **over}, "training": {"seq_length": 32}}, source="test").model


def test_route_honours_top_k_and_renormalises():
    probs = torch.softmax(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), -1)
    r = route(probs, 2, capacity=None)
    assert int(r.dropped) == 0 and r.token.numel() == 100
    assert torch.equal(torch.bincount(r.token, minlength=50), torch.full((50,), 2))  # each token twice
    per_token = torch.zeros(50).index_add_(0, r.token, r.weight)
    assert torch.allclose(per_token, torch.ones(50))
    # the kept assignments are grouped by expert and are each token's two most probable experts
    experts = torch.repeat_interleave(torch.arange(8), r.counts)
    top2 = probs.topk(2, -1).indices
    for tok, e in zip(r.token.tolist(), experts.tolist()):
        assert e in top2[tok].tolist()


def test_capacity_drops_lowest_probability_first_and_counts_exactly():
    # 4 tokens, 2 experts, top-1; every token prefers expert 0. C = ceil(4 * 1 / 2 * 1.0) = 2
    p0 = torch.tensor([0.9, 0.6, 0.8, 0.7])
    probs = torch.stack([p0, 1 - p0], -1)
    cap = expert_capacity(4, 1, 2, 1.0)
    assert cap == 2
    r = route(probs, 1, cap)
    assert int(r.dropped) == 2 and r.counts.tolist() == [2, 0] and r.routed.tolist() == [4, 0]
    assert sorted(r.token.tolist()) == [0, 2]  # 0.9 and 0.8 kept; 0.6 and 0.7 dropped


def test_dropped_tokens_pass_through_and_decoding_never_drops():
    cfg = small_cfg(num_experts=2, num_active_experts=1, expert_capacity_factor=1.0)
    moe = MoE(cfg)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 1.0  # logit of expert 0 = x[:, 0]: every token with x0 > 0 picks it
    x = torch.randn(1, 8, 256, generator=torch.Generator().manual_seed(1))
    x[..., 0] = torch.tensor([3.0, 1.0, 2.0, 0.5, 2.5, 1.5, 4.0, 0.2])  # all prefer expert 0; C = 4
    moe.train()
    y = moe(x)
    zero_rows = (y[0].abs().sum(-1) == 0).nonzero().flatten().tolist()
    assert zero_rows == [1, 3, 5, 7]  # the four lowest router probabilities: output 0, residual only
    assert float(moe.stats["dropped_fraction"]) == pytest.approx(0.5)
    moe.eval()
    assert (moe(x)[0].abs().sum(-1) > 0).all() and float(moe.stats["dropped_fraction"]) == 0.0


def test_balance_loss_equals_weight_when_uniform_and_grows_on_collapse():
    E, N, w = 8, 64, 0.01
    uniform = torch.full((N, E), 1.0 / E)
    routed = torch.full((E,), N * 2 // E)
    assert float(load_balance_loss(uniform, routed, w)) == pytest.approx(w, rel=1e-6)
    collapsed = torch.full((N, E), 1e-3)
    collapsed[:, :2] = (1 - 6e-3) / 2
    r = route(collapsed, 2, None)
    loss = float(load_balance_loss(collapsed, r.routed, w))
    assert loss > 3.9 * w  # E / k = 4 times the weight at full collapse onto 2 experts


def test_gradients_reach_the_router_through_output_and_aux():
    moe = MoE(small_cfg()).train()
    x = torch.randn(2, 16, 256, generator=torch.Generator().manual_seed(2))
    moe(x).square().sum().backward()
    g_out = moe.router.weight.grad.clone()
    assert g_out.abs().sum() > 0  # through the renormalised top-2 weights
    moe.zero_grad()
    moe(x)
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # through P_i of the balance loss
    assert moe.router.weight.dtype == torch.float32 and type(moe.router) is torch.nn.Linear


def test_active_params_and_layer_interval():
    model = GPT(small_cfg(num_layers=4, moe_layer_interval=2))
    kinds = [type(b.ffn).__name__ for b in model.blocks]
    assert kinds == ["SwiGLU", "MoE", "SwiGLU", "MoE"]
    c = count_params(model)
    per_expert = 3 * 256 * 256 + 256
    assert c["total"] - c["active"] == 2 * (4 - 2) * per_expert


def test_medium_config_builds_on_meta_within_10_percent_of_3b():
    cfg = load_config("configs/models/medium_3b.toml", ["model.deltanet_ratio=0.0"])
    with torch.device("meta"):
        model = GPT(cfg.model)
    c = count_params(model)
    assert abs(c["total"] - 3e9) < 0.1 * 3e9, c
    assert 0.2 * c["total"] < c["active"] < 0.45 * c["total"]


def test_bad_moe_config_is_refused():
    with pytest.raises(ConfigError, match="num_active_experts"):
        small_cfg(num_active_experts=5)
    with pytest.raises(ConfigError, match="moe_layer_interval"):
        small_cfg(moe_layer_interval=0)
    with pytest.raises(ConfigError, match="expert_capacity_factor"):
        small_cfg(expert_capacity_factor=0.0)


def _train_steps(cfg, steps: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    model = GPT(cfg)
    model.init_weights(seed)
    model.train()
    tcfg = config_from_dict({"training": {"seq_length": 32, "learning_rate": 0.02}}, source="test").training
    opts = build_optimizers(model, tcfg)
    tokens = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        loss, parts = compute_loss(model, tokens, 0.01, 0.0)
        assert "moe_aux" in parts and math.isfinite(float(parts["moe_aux"]))
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(parts["ce"]))
    stats = moe_stats(model)
    assert set(stats) == {"moe/dropped_fraction", "moe/expert_load_max", "moe/expert_load_min"}
    assert 0 <= stats["moe/expert_load_min"] <= 1 / cfg.num_experts <= stats["moe/expert_load_max"] <= 1
    return losses


def test_tiny_moe_loss_falls(one_thread):
    losses = _train_steps(small_cfg(num_layers=1), 12)
    assert losses[-1] < losses[0] - 1.0, losses


def test_moe_with_mhc_4_streams_trains(one_thread):
    losses = _train_steps(small_cfg(num_layers=2, mhc_n_streams=4), 6)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_medium_mix_trains_at_reduced_size(one_thread):
    """The medium config's whole mix (MoE + DeltaNet + mHC n = 4), shrunk."""
    from nanochat_ternary.config import require_supported

    cfg = load_config("configs/models/medium_3b.toml", [
        "model.vocab_size=512", "model.hidden_dim=256", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
        "model.max_seq_len=64", "model.num_experts=4", "training.seq_length=32"])
    require_supported(cfg)
    assert cfg.model.use_moe and cfg.model.mhc_n_streams == 4
    losses = _train_steps(cfg.model, 4)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


def test_trainer_logs_moe_scalars(tmp_path, tiny_dataset, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nanochat_ternary.train.trainer import train

    for k, v in {"use_moe": True, "num_experts": 4, "num_active_experts": 2, "expert_ffn_mult": 1.0}.items():
        setattr(tiny_config.model, k, v)
    tiny_config.training.checkpoint_interval = 100
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    assert result.checkpoint is not None
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/moe_aux", "moe/dropped_fraction", "moe/expert_load_max", "moe/expert_load_min"} <= tags, tags
    aux = [e.value for e in acc.Scalars("loss/moe_aux")]
    assert all(0 < a < 0.01 * 4 for a in aux)  # between balanced (= weight 0.01) and full collapse (E/k x)


def test_router_goes_to_lion_and_experts_to_muon():
    from nanochat_ternary.train.optim import split_params

    model = GPT(small_cfg(num_layers=1))
    muon, lion = split_params(model)
    router = model.blocks[0].ffn.router.weight
    assert any(p is router for p in lion) and not any(p is router for p in muon)
    assert any(p is model.blocks[0].ffn.experts[0].gate_proj.weight for p in muon)
