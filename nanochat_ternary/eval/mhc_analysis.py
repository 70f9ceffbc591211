"""`nanochat eval mhc`: did the mHC routing learn anything, and do the streams differ?

Why this module exists: mHC (model/mhc.py) costs n times the residual memory, and it only earns
that if the streams carry different things. With a symmetric init (H_post = 1 on every stream,
every stream a copy of the embedding) the streams stay *identical* until the post/res logits
move apart, and an mHC model whose routing never moved is an n = 1 model: stop 21 measured a
stream cosine of 0.9999 after 150 steps. The init now writes each block mostly into one stream,
so the streams differ from the start; whether training then uses H_res is what to look at.
This module measures, for a trained checkpoint:
  - per layer, how far H_res, H_pre and H_post moved from their init (max absolute entry
    change) and how far the raw logits moved (Lion's sign update moves a logit by at most lr per
    step, so `logit_moved` is to be read against lr x steps);
  - per layer, the cosine between stream 0 and every other stream after the block, averaged over
    validation tokens (1.0 = the streams are one stream in n copies).
The init is rebuilt with MHC itself, so the comparison follows its constants.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.gpt import GPT
from ..model.mhc import MHC


@torch.no_grad()
def routing_drift(model: GPT) -> list[dict]:
    """One row per mHC block: the routing matrices now, at init, and how far they moved."""
    rows = []
    for i, block in enumerate(model.blocks):
        m = block.mhc
        if m is None:
            continue
        init = MHC(m.n, m.layer_idx, m.post_main).to(m.res_logits.device)
        row = {"layer": i}
        for name in ("res", "pre", "post"):
            now, then = getattr(m, f"h_{name}")().float(), getattr(init, f"h_{name}")().float()
            row[f"h_{name}"] = [round(x, 4) for x in now.flatten().tolist()]
            row[f"d_{name}"] = float((now - then).abs().max())
            logits, logits0 = getattr(m, f"{name}_logits"), getattr(init, f"{name}_logits")
            row[f"{name}_logit_moved"] = float((logits.float() - logits0.float()).abs().max())
        rows.append(row)
    return rows


@torch.no_grad()
def stream_cosines(model: GPT, tokens: torch.Tensor) -> list[float]:
    """Per block, the mean over positions of cos(stream 0, stream j) (j > 0, averaged) after the
    block, for token windows `tokens` [B, T]. Empty for an n = 1 model."""
    if model.cfg.mhc_n_streams < 2:
        return []
    sums: dict[int, float] = {}

    def hook(idx):
        def fn(_module, _inputs, out):  # out: streams [n, B, T, D]
            cos = torch.nn.functional.cosine_similarity(out[:1].float(), out[1:].float(), dim=-1)
            sums[idx] = sums.get(idx, 0.0) + float(cos.mean())
        return fn

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(model.blocks)]
    try:
        for row in tokens:  # one window at a time keeps the memory small
            model.trunk(row.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return [sums[i] / len(tokens) for i in sorted(sums)]


def validation_windows(data: str | Path, tokenizer, window: int, max_tokens: int) -> torch.Tensor:
    """Windows [B, window] of validation text (`data`: a prepared dataset or a folder of .rs)."""
    from .documents import validation_documents

    ids: list[int] = []
    for doc in validation_documents(data):
        ids += [tokenizer.eos_id] + tokenizer.encode(doc)
        if len(ids) >= max_tokens:
            break
    n = max(1, min(len(ids), max_tokens) // window)
    if len(ids) < window:
        raise ValueError(f"{data}: under {window} tokens of validation text")
    return torch.tensor(ids[: n * window]).view(n, window)


def analyse(model: GPT, tokens: torch.Tensor | None) -> dict:
    """The report `nanochat eval mhc` prints and writes."""
    n = model.cfg.mhc_n_streams
    out = {"n_streams": n, "layers": routing_drift(model), "composite_gain": model.mhc_composite_gain()}
    if tokens is not None and n > 1:
        cos = stream_cosines(model, tokens)
        for row, c in zip(out["layers"], cos):
            row["stream_cosine"] = c
        out["tokens"] = int(tokens.numel())
    return out
