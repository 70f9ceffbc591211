"""The chunked loss (train/chunked_head.py, train/loss.py) equals the full-logits loss, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from nanochat_ternary.config import ModelConfig
from nanochat_ternary.model.gpt import GPT
from nanochat_ternary.train.chunked_head import default_chunk_tokens
from nanochat_ternary.train.loss import compute_loss


def full_logits_loss(model, tokens, entropy_weight, mtp_weight):
    """The loss as it was before chunking: every head's [B, T, V] logits materialised."""
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    logits, mtp_logits = model.forward_with_mtp(idx)
    V, T = logits.shape[-1], idx.shape[1]
    logp = F.log_softmax(logits.float(), dim=-1)
    ce = F.nll_loss(logp.reshape(-1, V), targets.reshape(-1))
    entropy = -(logp.exp() * logp).sum(-1).mean()
    mtp = torch.stack([F.cross_entropy(lk[:, : T - k].float().reshape(-1, V), targets[:, k:].reshape(-1))
                       for k, lk in enumerate(mtp_logits, start=1)]).mean()
    return ce - entropy_weight * entropy + mtp_weight * mtp, {"ce": ce, "entropy": entropy, "mtp": mtp}


@pytest.mark.parametrize("chunk", [7, 40, None])  # uneven chunks, chunks longer than an MTP head's rows, default
def test_chunked_loss_and_gradients_equal_the_full_logits_ones(chunk):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, hidden_dim=256, num_layers=1, num_heads=4, num_kv_heads=2, ffn_mult=1.0,
                      max_seq_len=64, mhc_n_streams=2, use_mtp=True, mtp_n_tokens=2)
    model = GPT(cfg)
    model.init_weights(0)
    tokens = torch.randint(0, 300, (3, 23))
    ref_loss, ref_parts = full_logits_loss(model, tokens, 0.3, 0.2)  # large entropy weight: its gradient shows
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss, parts = compute_loss(model, tokens, 0.3, 0.2, chunk_tokens=chunk)
    loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for key in ("ce", "entropy", "mtp"):
        assert torch.allclose(parts[key], ref_parts[key], rtol=1e-6, atol=1e-6), key
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name], rtol=1e-5, atol=1e-7), name
    assert ref_grads["embed.weight"].abs().sum() > 0


def test_default_chunk_holds_about_2_23_logits():
    assert default_chunk_tokens(32000) == 262
    assert default_chunk_tokens(1024) * 1024 == 1 << 23
    assert default_chunk_tokens(1 << 30) == 1
