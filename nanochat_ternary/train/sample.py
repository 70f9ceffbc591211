"""Sampling straight from a training checkpoint (no GGUF needed): a quick look at a run.

Plain incremental decoding with the training model (no KV cache: fine for short samples from
small models; the GGUF engine in infer/ is the fast path).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import config_from_dict
from ..data.tokenizer import Tokenizer
from ..errors import FormatError
from ..infer.sampling import Sampler, SamplingParams
from ..model.gpt import GPT
from .checkpoint import load_checkpoint


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[GPT, Tokenizer, Path]:
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.meta["config"], source=f"{ckpt.path}/meta.json")
    model = GPT(cfg.model)
    model.load_state_dict(ckpt.model_state)
    model.to(device).eval()
    for candidate in (ckpt.path / "tokenizer.json", ckpt.path.parent.parent / "tokenizer.json"):
        if candidate.exists():
            return model, Tokenizer.load(candidate), ckpt.path
    raise FormatError(f"{ckpt.path}: no tokenizer.json next to the checkpoint or in its run folder")


@torch.no_grad()
def sample(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 256,
           params: SamplingParams | None = None) -> str:
    """Generate a continuation of `prompt` until <|endoftext|> or `max_new_tokens`."""
    sampler = Sampler(params or SamplingParams(temperature=0.8, top_k=50))
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    device = next(model.parameters()).device
    out: list[int] = []
    for _ in range(max_new_tokens):
        ctx = torch.tensor([ids[-model.cfg.max_seq_len:]], device=device)
        logits = model(ctx)[0, -1].float().cpu()
        tok = sampler(logits, ids)
        if tok in (tokenizer.eos_id, tokenizer.im_end_id):
            break
        ids.append(tok)
        out.append(tok)
    return prompt + tokenizer.decode(out)
