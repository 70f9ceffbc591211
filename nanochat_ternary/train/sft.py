"""Supervised fine-tuning: continue a pretrained checkpoint on (request, Rust answer) chats.

Why this module exists: a model pretrained on raw code answers a chat request with whatever
code-shaped text follows `<|im_start|>assistant`, because it has never seen a conversation.
As in nanochat's SFT stage, this continues from the pretrained weights on conversations in the
exported chat format (train/sft_data.py), with the loss on the assistant's tokens only, its own
short schedule (linear warmup, then linear decay to zero, as nanochat's chat_sft does), fresh
optimizers at a fraction of the pretraining learning rate, and a share of every batch taken
from the pretraining data so that plain completion quality does not collapse.

The output is an ordinary run folder (`checkpoints/step_N`, `tokenizer.json`, TensorBoard under
`tensorboard/` with `sft/*` tags, `metrics.jsonl`), so `nanochat export --checkpoint` takes it
as it is. SFT runs are short and are not resumed: a rerun starts again from the base checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import config_from_dict, require_supported
from ..data.instruct import Pair
from ..data.loader import TokenLoader
from ..data.tokenizer import EOS_ID, Tokenizer
from ..device import autocast, compile_trunk, resolve_device, setup_device
from ..errors import DataError
from ..model.gpt import GPT
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import build_optimizers, set_lr
from .sft_data import IGNORE, ChatRows, chat_batch, pretrain_batch
from .tb_logger import TrainLogger


@dataclass
class SFTOptions:
    steps: int = 200
    batch_size: int = 4  # rows per step, pretraining rows included
    seq_length: int = 256  # tokens per row (conversations are packed whole)
    lr_scale: float = 0.5  # times the pretraining learning rate of every optimizer group
    warmup_steps: int = 10
    pretrain_mix: float = 0.25  # share of rows from the pretraining data
    log_interval: int = 25
    seed: int = 0


@dataclass
class SFTResult:
    run_dir: Path
    checkpoint: Path
    losses: dict[int, float] = field(default_factory=dict)
    wall_time: float = 0.0
    pairs: int = 0
    dropped: int = 0


def sft_lr_multiplier(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


def masked_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, mtp_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-token CE [B, T] with 0 at ignored targets): CE + mtp_weight * MTP CE, both
    averaged over the trained (not IGNORE) targets only."""
    logits, mtp_logits = model.forward_with_mtp(x)
    V = logits.shape[-1]
    per_tok = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1), ignore_index=IGNORE, reduction="none").view(y.shape)
    n = (y != IGNORE).sum().clamp(min=1)
    loss = per_tok.sum() / n
    T = x.shape[1]
    mtp = [F.cross_entropy(lk[:, : T - k].float().reshape(-1, V), y[:, k:].reshape(-1), ignore_index=IGNORE)
           for k, lk in enumerate(mtp_logits, start=1) if T - k > 0 and bool((y[:, k:] != IGNORE).any())]
    if mtp and mtp_weight:
        loss = loss + mtp_weight * torch.stack(mtp).mean()
    return loss, per_tok.detach()


def sft(base_checkpoint: str | Path, pairs: list[Pair], run_dir: str | Path, opts: SFTOptions = SFTOptions(),
        device: str | None = None, quiet: bool = False) -> SFTResult:
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(base_checkpoint)
    cfg = config_from_dict(ckpt.meta["config"], source=f"{ckpt.path}/meta.json")
    require_supported(cfg)
    if opts.seq_length > cfg.model.max_seq_len:
        raise DataError(f"--seq-length {opts.seq_length} exceeds the model's max_seq_len {cfg.model.max_seq_len}")
    tok_file = next((p for p in (ckpt.path / "tokenizer.json", ckpt.path.parent.parent / "tokenizer.json") if p.is_file()), None)
    if tok_file is None:
        raise DataError(f"{ckpt.path}: no tokenizer.json next to the checkpoint or in its run folder")
    tok = Tokenizer.load(tok_file)
    dev = resolve_device(device or cfg.hardware.device)
    setup_device(dev, cfg.hardware.num_threads)
    torch.manual_seed(opts.seed)

    chat = ChatRows(tok, pairs, opts.seq_length, seed=opts.seed)
    mix_rows = round(opts.batch_size * opts.pretrain_mix)
    chat_rows = opts.batch_size - mix_rows
    loader = None
    if mix_rows:
        data_dir = Path(ckpt.meta.get("data_dir", ""))
        if not (data_dir / "train").is_dir():
            raise DataError(f"pretraining data {data_dir} (from {ckpt.path}/meta.json) is gone: re-prepare it or pass --pretrain-mix 0")
        loader = TokenLoader(data_dir / "train", mix_rows, opts.seq_length, seed=opts.seed + 1,
                             align_token=EOS_ID if cfg.training.align_windows else None)
    model = GPT(cfg.model)
    model.load_state_dict(ckpt.model_state)
    model.to(dev)
    if cfg.hardware.compile:
        compile_trunk(model)
    t = replace(cfg.training, learning_rate=cfg.training.learning_rate * opts.lr_scale)
    optimizers = build_optimizers(model, t)
    params = [p for p in model.parameters() if p.requires_grad]

    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tok_file, run_dir / "tokenizer.json")
    sft_meta = {"base_checkpoint": str(ckpt.path.resolve()), "pairs": len(pairs), "dropped_pairs": chat.dropped,
                "answer_tokens": chat.answer_tokens, **opts.__dict__}
    (run_dir / "sft.json").write_text(json.dumps(sft_meta, indent=2))
    if not quiet:
        print(f"sft: {len(chat.convs)} conversations ({chat.dropped} longer than {opts.seq_length} tokens dropped), "
              f"{chat_rows} chat + {mix_rows} pretraining rows per step, {opts.steps} steps, from {ckpt.path}", flush=True)
    logger = TrainLogger(run_dir)
    result = SFTResult(run_dir=run_dir, checkpoint=run_dir, pairs=len(pairs), dropped=chat.dropped)
    rows = chat.rows()
    t0 = time.perf_counter()
    try:
        model.train()
        for step in range(opts.steps):
            set_lr(optimizers, sft_lr_multiplier(step, opts.steps, opts.warmup_steps))
            x, y = chat_batch(rows, chat_rows)
            if loader is not None:
                px, py = pretrain_batch(loader.next_batch())
                x, y = torch.cat([x, px]), torch.cat([y, py])
            x, y = x.to(dev), y.to(dev)
            with autocast(dev, cfg.hardware.dtype):
                loss, per_tok = masked_loss(model, x, y, t.mtp_weight if cfg.model.use_mtp else 0.0)
            grad_norm = float("nan")
            if torch.isfinite(loss):
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
                if math.isfinite(grad_norm):
                    for opt in optimizers:
                        opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            result.losses[step] = float(loss.detach())
            done = step + 1
            if done % opts.log_interval == 0 or done == opts.steps:
                trained = (y != IGNORE)
                ce_chat = float(per_tok[:chat_rows].sum() / trained[:chat_rows].sum().clamp(min=1))
                scalars = {"sft/loss": result.losses[step], "sft/ce_answer": ce_chat, "sft/grad_norm": grad_norm,
                           "sft/lr": optimizers[0].param_groups[0]["lr"]}
                if mix_rows:
                    scalars["sft/ce_pretrain"] = float(per_tok[chat_rows:].mean())
                logger.log(done, scalars)
                if not quiet:
                    print(f"sft step {done:>5}/{opts.steps} | loss {result.losses[step]:.4f} | answer ce {ce_chat:.4f}"
                          + (f" | pretrain ce {scalars['sft/ce_pretrain']:.4f}" if mix_rows else "")
                          + f" | gnorm {grad_norm:.3f}", flush=True)
        meta = {"config": cfg.to_dict(), "stage": "sft", "sft": sft_meta, "data_dir": ckpt.meta.get("data_dir"),
                "tokens_seen": opts.steps * opts.batch_size * opts.seq_length}
        result.checkpoint = save_checkpoint(run_dir, opts.steps, model, None, meta)
    finally:
        if loader is not None:
            loader.close()
        logger.close()
    result.wall_time = time.perf_counter() - t0
    if not quiet:
        print(f"sft done: {opts.steps} steps in {result.wall_time:.1f}s; checkpoint {result.checkpoint}", flush=True)
    return result
