"""CLI: `nanochat sft --checkpoint RUN --data synthetic-small|DIR` (instruction tuning)."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.synthetic import FLAVOURS
from ..errors import DataError


def load_pairs(data: str, n: int, seed: int) -> list:
    """Instruction pairs for `--data`: a synthetic flavour, a folder of .rs files, or a prepared
    dataset made from one (its source folder is used, with the dataset's own split seed)."""
    from ..data.instruct import rust_dir_pairs, synthetic_pairs

    if data in FLAVOURS:
        return synthetic_pairs(n, seed, data)
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"--data {data!r}: expected one of {', '.join(FLAVOURS)} or a folder of .rs files")
    meta_file = path / "meta.json"
    if meta_file.is_file():  # a prepared dataset: pairs from the .rs folder it was built from
        meta = json.loads(meta_file.read_text())
        source = meta.get("source", "")
        if source in FLAVOURS:
            return synthetic_pairs(n, seed, source)
        path, seed = Path(source), int(meta.get("seed", seed))
        if not path.is_dir():
            raise DataError(f"{meta_file}: its source folder {source!r} is gone")
    pairs = rust_dir_pairs(path, seed=seed, max_pairs=n)
    if not pairs:
        raise DataError(f"{path}: no documented fn/struct/enum/trait item in the training split (pairs need a /// doc comment)")
    return pairs


def cmd_sft(args) -> int:
    from ..train.checkpoint import resolve_checkpoint
    from .sft import SFTOptions, sft

    pairs = load_pairs(args.data, args.pairs, args.seed)
    opts = SFTOptions(steps=args.steps, batch_size=args.batch_size, seq_length=args.seq_length, lr_scale=args.lr_scale,
                      warmup_steps=args.warmup_steps, pretrain_mix=args.pretrain_mix, seed=args.seed)
    run_dir = args.run_dir or resolve_checkpoint(args.checkpoint).parent.parent / "sft"
    result = sft(args.checkpoint, pairs, run_dir, opts, device=None if args.device == "auto" else args.device)
    return 0 if result.checkpoint else 1


def register(sub, bench) -> None:
    p = sub.add_parser("sft", help="instruction-tune a pretrained checkpoint on (request, Rust answer) chats")
    p.add_argument("--checkpoint", required=True, help="pretrained run folder or checkpoint (step_N)")
    p.add_argument("--data", default="synthetic-small",
                   help=f"{' or '.join(FLAVOURS)} (generated pairs), or a folder of .rs files (documented items)")
    p.add_argument("--run-dir", default=None, help="output run folder (default: <pretrained run>/sft)")
    p.add_argument("--pairs", type=int, default=4000, help="how many pairs to make (at most)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4, help="rows per step, pretraining rows included")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--lr-scale", type=float, default=0.5, help="times the pretraining learning rates")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--pretrain-mix", type=float, default=0.25, help="share of rows from the pretraining data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=cmd_sft)
