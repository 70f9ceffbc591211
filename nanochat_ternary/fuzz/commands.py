"""CLI: `nanochat bench fuzz --format gguf|mhc|tokenizer|checkpoint|config --cases N` (JSON out).

Builds a valid seed file of the format with the project's own writers, runs N seeded mutants
through the real loader (runner.py) and prints the counts; exit status 1 when any case crashed,
hung or was wrongly accepted.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

FORMATS = ("gguf", "mhc", "tokenizer", "checkpoint", "config")


def build_target(fmt: str, folder: Path):
    from . import seeds

    if fmt == "gguf":
        from .target_gguf import gguf_target

        return gguf_target(seeds.gguf_seed(folder, seeds.tiny_tokenizer()))
    if fmt == "mhc":
        from .target_files import mhc_target

        return mhc_target(seeds.mhc_seed(folder))
    if fmt == "tokenizer":
        from .target_files import tokenizer_target

        path = folder / "seed_tokenizer.json"
        seeds.tiny_tokenizer().save(path)
        return tokenizer_target(path)
    if fmt == "config":
        from .target_files import config_target

        return config_target(seeds.CONFIG_FILE)
    if fmt == "checkpoint":
        from .target_checkpoint import checkpoint_target

        return checkpoint_target(seeds.checkpoint_seed(folder))
    raise ValueError(f"unknown format {fmt!r}")


def fuzz(fmt: str, cases: int, seed: int = 0, only: list[int] | None = None) -> dict:
    import torch

    from .runner import run_cases

    torch.set_num_threads(1)  # a fuzz run is single-threaded: repeatable timings, no oversubscription
    with tempfile.TemporaryDirectory(prefix=f"nanochat-fuzz-{fmt}-") as tmp:
        t0 = time.perf_counter()
        target = build_target(fmt, Path(tmp))
        out = run_cases(target, Path(tmp) / "cases", cases, seed, only)
        out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def cmd_bench_fuzz(args) -> int:
    only = [int(x) for x in args.only.split(",")] if args.only else None
    results = [fuzz(fmt, args.cases, args.seed, only) for fmt in (FORMATS if args.format == "all" else [args.format])]
    out = results[0] if len(results) == 1 else {"formats": results, "ok": all(r["ok"] for r in results)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if out["ok"] else 1


def register(sub, bench) -> None:
    p = bench.add_parser("fuzz", help="mutate valid model/tokenizer/checkpoint/config files and check the loaders (JSON)")
    p.add_argument("--format", required=True, choices=[*FORMATS, "all"])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated case numbers to replay")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_bench_fuzz)
