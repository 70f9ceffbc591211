"""`nanochat eval bpb`: bits per byte of a model (checkpoint or GGUF) on held-out Rust.

bpb = summed nats over the scored targets / (ln 2 x UTF-8 bytes of those targets), with special
tokens counting 0 bytes (data/token_bytes.py). Each document is scored as in training, as
[eos] + tokens, in consecutive windows of the model's context (each window's first token is the
previous window's last target, so every token after the first is a target exactly once). The
documents are re-tokenised with the model's own tokenizer, so any folder of .rs files works.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..data.token_bytes import bits_per_byte, token_byte_lengths
from .documents import validation_documents
from .model_access import EvalModel


def eval_bpb(model: EvalModel, data: str, max_tokens: int = 200_000, window: int | None = None,
             progress: bool = True) -> dict:
    from tqdm import tqdm

    tok = model.tokenizer
    byte_len = token_byte_lengths(tok)
    ctx = min(window or model.n_ctx, model.n_ctx)
    docs = validation_documents(data)
    nats, n_targets, n_bytes, n_docs = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=max_tokens, desc="bpb", unit="tok", disable=not progress)
    for ids in tok.encode_batch(docs):
        seq = [tok.eos_id] + ids
        n_docs += 1
        for a in range(0, len(seq) - 1, ctx):
            chunk = seq[a:a + ctx + 1]
            logits = model.logits(chunk[:-1])
            targets = torch.tensor(chunk[1:])
            nats += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            n_targets += len(targets)
            n_bytes += int(byte_len[targets].sum())
            bar.update(len(targets))
            if n_targets >= max_tokens:
                break
        if n_targets >= max_tokens:
            break
    bar.close()
    return {"model": str(model.path), "kind": "gguf" if model.is_gguf else "checkpoint", "data": str(data),
            "documents": n_docs, "tokens": n_targets, "bytes": n_bytes, "loss": nats / max(1, n_targets),
            "bpb": bits_per_byte(nats, n_bytes), "bytes_per_token": n_bytes / max(1, n_targets),
            "seconds": round(time.perf_counter() - t0, 2)}
