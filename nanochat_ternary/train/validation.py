"""Validation during training: loss and bits per byte on fixed held-out windows, and a `best` alias.

Why this module exists: the training loss alone cannot show over-fitting or tell two runs with
different tokenizers apart. Every `training.eval_interval` steps the
trainer calls `Validator.run`: the model scores the same `training.eval_windows` windows of the
dataset's `val/` split each time (evenly spaced, so the figure moves only when the model does),
and the result goes to TensorBoard and metrics.jsonl (`val/loss`, `val/bpb`) and to the console.

When validation loss improves, the step is checkpointed and `checkpoints/best/` becomes a
hard-linked copy of that step folder plus `best.json` (step, val_loss, val_bpb); pruning old
steps never touches it, and every command that takes a checkpoint accepts it
(`--model RUN/checkpoints/best`). It is swapped in by rename, so a kill leaves the old or the
new best, whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shards import ShardReader
from ..data.token_bytes import bits_per_byte, token_byte_lengths
from ..data.tokenizer import Tokenizer
from ..device import autocast
from ..errors import DataError
from .checkpoint import link_copy
from .checkpoint_integrity import CheckpointWriteError, describe_write_error

BEST_DIR = "best"
BEST_FILE = "best.json"


def fixed_windows(reader: ShardReader, seq_length: int, n_windows: int) -> np.ndarray:
    """[n, L + 1] int64 windows at evenly spaced starts; L shrinks to fit a small split."""
    total = len(reader)
    length = min(seq_length, total - 1) + 1
    if length < 2:
        raise DataError(f"{reader.dir}: validation split has {total} tokens, too few to score")
    n = max(1, min(n_windows, total // length))
    starts = np.linspace(0, total - length, n).astype(np.int64)
    return np.stack([reader.get(int(s), length).astype(np.int64) for s in starts])


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: np.ndarray, byte_len: torch.Tensor, batch_size: int,
                  device: torch.device, dtype: str = "auto") -> dict:
    """Summed cross-entropy (nats) over all targets, their count and UTF-8 bytes; loss and bpb."""
    was_training = model.training
    model.eval()
    nats, n_targets, n_bytes = 0.0, 0, 0
    try:
        for i in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[i:i + batch_size]).to(device)
            with autocast(device, dtype):
                logits = model(batch[:, :-1])
            targets = batch[:, 1:]
            nats += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            n_targets += targets.numel()
            n_bytes += int(byte_len[targets.cpu()].sum())
    finally:
        model.train(was_training)
    return {"loss": nats / max(n_targets, 1), "bpb": bits_per_byte(nats, n_bytes), "tokens": n_targets, "bytes": n_bytes}


def read_best(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "checkpoints" / BEST_DIR / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def link_best(step_dir: Path, info: dict) -> Path:
    """Make `checkpoints/best/` a hard-linked copy of `step_dir` plus best.json; return it.
    A write that fails (full disk, read-only folder) leaves the previous `best/` as it was and
    raises CheckpointWriteError saying so."""
    ckdir = step_dir.parent
    tmp = ckdir / f".tmp_{BEST_DIR}_{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        link_copy(step_dir, tmp)
        (tmp / BEST_FILE).write_text(json.dumps(info, indent=1))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"cannot update {ckdir / BEST_DIR} to {step_dir.name}: {describe_write_error(e, ckdir)}; "
                                   f"{step_dir.name} itself is complete and the previous best is unchanged. "
                                   "Free disk space or make the folder writable, then resume with --resume.") from e
    final = ckdir / BEST_DIR
    if final.exists():
        trash = ckdir / f".trash_{BEST_DIR}_{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


class Validator:
    def __init__(self, data_dir: Path, run_dir: Path, seq_length: int, n_windows: int, batch_size: int,
                 interval: int, device: torch.device, dtype: str = "auto", quiet: bool = False, writes: bool = True):
        self.windows = fixed_windows(ShardReader(Path(data_dir) / "val"), seq_length, n_windows)
        self.byte_len = token_byte_lengths(Tokenizer.load(Path(data_dir) / "tokenizer.json"))
        self.run_dir, self.batch_size, self.interval = Path(run_dir), batch_size, interval
        self.device, self.dtype, self.quiet = device, dtype, quiet
        self.writes = writes  # False on every torchrun rank but 0: they score (and checkpoint) in step, rank 0 links
        best = read_best(self.run_dir)
        self.best_loss = float(best["val_loss"]) if best else float("inf")
        self.pending: dict | None = None  # an improvement at the final step, linked after its checkpoint

    @classmethod
    def create(cls, cfg, data_dir: Path, run_dir: Path, device: torch.device, quiet: bool = False,
               writes: bool = True) -> "Validator | None":
        """None when validation is off (eval_interval 0) or the dataset has no val/ split."""
        t = cfg.training
        if t.eval_interval <= 0 or not (Path(data_dir) / "val" / "index.json").exists():
            return None
        if len(ShardReader(Path(data_dir) / "val")) < 2:
            return None
        return cls(data_dir, run_dir, t.seq_length, t.eval_windows, t.batch_size, t.eval_interval, device,
                   cfg.hardware.dtype, quiet, writes)

    def due(self, done: int, total: int) -> bool:
        return done % self.interval == 0

    def run(self, model, step: int, total: int, logger, save: Callable[[int], Path] | None, last: Path | None) -> Path | None:
        """Score, log, and on improvement checkpoint + link best (at the final step: after the
        trainer's own last checkpoint, see `finish`). Returns the newest checkpoint path."""
        r = score_windows(model, self.windows, self.byte_len, self.batch_size, self.device, self.dtype)
        improved = r["loss"] < self.best_loss
        logger.log(step, {"val/loss": r["loss"], "val/bpb": r["bpb"]})
        if not self.quiet:
            print(f"val    {step:>6}/{total} | loss {r['loss']:.4f} | bpb {r['bpb']:.4f} | "
                  f"{'best' if improved else f'best {self.best_loss:.4f}'}", flush=True)
        if not improved or save is None:
            return last
        self.best_loss = r["loss"]
        info = {"step": step, "val_loss": r["loss"], "val_bpb": r["bpb"], "val_tokens": r["tokens"]}
        if step == total:
            self.pending = info
            return last
        path = last if last is not None and last.name == f"step_{step}" else save(step)
        if self.writes:
            link_best(path, info)
        return path

    def finish(self, last: Path | None) -> None:
        if self.writes and self.pending is not None and last is not None and last.name == f"step_{self.pending['step']}":
            link_best(last, self.pending)
        self.pending = None
