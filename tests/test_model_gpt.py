"""The transformer: causality, GQA/RoPE shapes, tied head, MTP heads, dense ablation, counts."""

import pytest
import torch

from nanochat_ternary.config import ModelConfig, load_config
from nanochat_ternary.model.bitlinear import BitLinear
from nanochat_ternary.model.gpt import GPT, count_params
from nanochat_ternary.train.loss import compute_loss


def _cfg(**kw):
    base = dict(vocab_size=300, hidden_dim=256, num_layers=2, num_heads=4, num_kv_heads=2, ffn_mult=1.0, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_causal(n):
    torch.manual_seed(0)
    model = GPT(_cfg(mhc_n_streams=n, use_mtp=True, mtp_n_tokens=2))
    model.init_weights(0)
    model.eval()
    idx = torch.randint(0, 300, (1, 20))
    base, base_mtp = model.forward_with_mtp(idx)
    changed = idx.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 300
    out, out_mtp = model.forward_with_mtp(changed)
    assert torch.equal(out[0, :12], base[0, :12])
    assert not torch.allclose(out[0, 12:], base[0, 12:])
    for a, b in zip(base_mtp, out_mtp):
        assert torch.equal(a[0, :12], b[0, :12])


def test_tied_embedding_and_bitlinear_everywhere():
    model = GPT(_cfg(use_mtp=True, mtp_n_tokens=1))
    names = [n for n, _ in model.named_parameters()]
    assert "embed.weight" in names and not any("lm_head" in n for n in names)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, BitLinear) for m in linears)
    dense = GPT(_cfg(use_bitlinear=False))
    assert not any(isinstance(m, BitLinear) for m in dense.modules())
    assert count_params(dense)["total"] == count_params(GPT(_cfg()))["total"]


def test_loss_terms():
    torch.manual_seed(0)
    model = GPT(_cfg(use_mtp=True, mtp_n_tokens=2))
    model.init_weights(0)
    tokens = torch.randint(0, 300, (2, 17))
    loss, parts = compute_loss(model, tokens, entropy_weight=0.01, mtp_weight=0.2)
    expected = parts["ce"] - 0.01 * parts["entropy"] + 0.2 * parts["mtp"]
    assert torch.allclose(loss.detach(), expected)
    assert abs(float(parts["ce"]) - torch.log(torch.tensor(300.0))) < 1.0  # near uniform at init
    assert 0 < float(parts["entropy"]) <= torch.log(torch.tensor(300.0)) + 1e-4
    loss.backward()
    assert model.mtp[1].proj.weight.grad.abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    from nanochat_ternary.config import TrainingConfig
    from nanochat_ternary.train.optim import build_optimizers

    torch.manual_seed(0)
    model = GPT(_cfg(mhc_n_streams=2))
    model.init_weights(0)
    opts = build_optimizers(model, TrainingConfig(learning_rate=0.02, lion_lr_mult=0.1))
    tokens = torch.arange(33).repeat(4, 1) % 17  # a repeating pattern is learnable fast
    first = None
    for _ in range(15):
        loss, _ = compute_loss(model, tokens)
        first = first if first is not None else float(loss)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    assert float(loss) < 0.5 * first


def test_nano_config_counts_within_10_percent():
    cfg = load_config("configs/models/nano_125m.toml")
    with torch.device("meta"):
        model = GPT(cfg.model)
    counts = count_params(model)
    assert abs(counts["total"] - 125e6) / 125e6 < 0.10
    assert counts["mtp"] == 4 * 768 * 768 + 4 * 2 * 768
