"""`nanochat bench train --deltanet`: training cost of one Gated DeltaNet block vs one attention block.

Why this module exists: a hybrid model is worth its DeltaNet layers if they cost about what an
attention layer costs at training lengths (and less at long ones: attention is O(T^2), the
chunkwise delta rule O(T C) with C = 64). The pair is the two blocks of one 2-layer model of the
config's width at deltanet_ratio 0.5 (block 0 is DeltaNet, block 1 attention: the last layer is
always attention), initialised as in training, so they share everything but the token mixer
(same FFN, norms, mHC streams, BitLinear setting).

For each sequence length T, a step is forward + backward of one block on random activations
[B, T, D] (loss = mean square of the output; the optimizer is not part of what is compared).
The mixer alone (attention vs DeltaNet on the normed input) is timed too: the block time is
diluted by the FFN both share. Variants are timed in interleaved rounds and medians reported.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from ..config import Config
from ..device import resolve_device, setup_device
from ..model.deltanet import GatedDeltaNet
from ..model.gpt import GPT


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pair(cfg: Config, max_len: int) -> tuple[torch.nn.Module, torch.nn.Module, GPT]:
    mcfg = copy.deepcopy(cfg.model)
    mcfg.num_layers, mcfg.deltanet_ratio, mcfg.use_mtp, mcfg.use_moe = 2, 0.5, False, False
    mcfg.max_seq_len = max(mcfg.max_seq_len, max_len)
    mcfg.vocab_size = min(mcfg.vocab_size, 512)  # the embedding is not part of a block
    model = GPT(mcfg)
    model.init_weights(0)
    dn, attn = model.blocks
    assert isinstance(dn.attn, GatedDeltaNet) and not isinstance(attn.attn, GatedDeltaNet)
    return dn, attn, model


def bench_train_deltanet(cfg: Config, seq_lengths: list[int], batch_size: int = 1, steps: int = 3, rounds: int = 3,
                         device: str | None = None) -> dict:
    dev = resolve_device(device or cfg.hardware.device)
    setup_device(dev, cfg.hardware.num_threads)
    dn, attn, model = _pair(cfg, max(seq_lengths))
    model.to(dev).train()
    n, D = model.cfg.mhc_n_streams, model.cfg.hidden_dim

    def make_step(block, mixer_only: bool, T: int):
        # a block takes the n mHC streams; its mixer reads one (mhc.read)
        shape = (n, batch_size, T, D) if n > 1 and not mixer_only else (batch_size, T, D)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(T)).to(dev).requires_grad_(True)
        cos, sin = model.rope_cos[:T], model.rope_sin[:T]

        def step() -> None:
            y = block.attn(block.attn_norm(x), cos, sin) if mixer_only else block(x, cos, sin)
            y.float().square().mean().backward()
            block.zero_grad(set_to_none=True)
            x.grad = None
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return step

    runs = {}
    for T in seq_lengths:
        for part in ("block", "mixer"):
            for kind, block in (("deltanet", dn), ("attention", attn)):
                runs[(T, part, kind)] = {"step": make_step(block, part == "mixer", T), "times": []}
    for run in runs.values():  # warm-up
        run["step"]()
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                t0 = time.perf_counter()
                run["step"]()
                run["times"].append(time.perf_counter() - t0)
    out = {"device": str(dev), "threads": torch.get_num_threads(), "batch_size": batch_size, "config": cfg.source,
           "hidden_dim": D, "heads": model.cfg.num_heads, "mhc_streams": n, "bitlinear": model.cfg.use_bitlinear,
           "step": "forward + backward of one block (or its token mixer) on random activations",
           "params": {"deltanet_block": _count(dn), "attention_block": _count(attn),
                      "deltanet_mixer": _count(dn.attn), "attention_mixer": _count(attn.attn)},
           "seq_lengths": {}}
    for T in seq_lengths:
        row = {}
        for part in ("block", "mixer"):
            d = statistics.median(runs[(T, part, "deltanet")]["times"])
            a = statistics.median(runs[(T, part, "attention")]["times"])
            row[f"deltanet_{part}_step_s"] = round(d, 5)
            row[f"attention_{part}_step_s"] = round(a, 5)
            row[f"deltanet_vs_attention_{part}"] = round(d / a, 3)
        out["seq_lengths"][str(T)] = row
    return out
