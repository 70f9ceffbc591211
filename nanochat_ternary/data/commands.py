"""CLI: `nanochat data fetch-debian` and `nanochat data build`."""

from __future__ import annotations

import json


def cmd_fetch_debian(args) -> int:
    from .debian import fetch_debian

    summary = fetch_debian(args.out, limit=args.limit, progress=not args.quiet)
    print(json.dumps(summary, indent=1))
    if summary["failed"]:
        print(f"{summary['failed']} package(s) failed (see {args.out}/failed.json); run again to retry them")
    return 0


def _table(stats: dict) -> str:
    rows = [f"{'split':<6} {'crates':>7} {'files':>8} {'MB':>9} {'tokens':>12} {'bytes/tok':>9}"]
    for name, c in stats["splits"].items():
        rows.append(f"{name:<6} {c['crates']:>7} {c['docs']:>8} {c['bytes'] / 1e6:>9.2f} {c['tokens']:>12,} "
                    f"{c['bytes_per_token']:>9.3f}")
    rows.append(f"files seen {stats['files_seen']}, kept {stats['files_kept']}; dropped:")
    for reason, d in sorted(stats["dropped"].items()):
        rows.append(f"  {reason:<16} {d['files']:>7} files {d['bytes'] / 1e6:>9.2f} MB")
    return "\n".join(rows)


def cmd_build(args) -> int:
    from .corpus_build import build_corpus

    stats = build_corpus(args.source, args.out, vocab_size=args.vocab_size, seed=args.seed,
                         val_fraction=args.val_fraction, max_bytes=args.max_file_bytes,
                         threshold=args.near_dup_threshold, progress=not args.quiet)
    print(_table(stats))
    reused = [s for s in ("scan", "tokenizer", "shards") if s not in stats["steps_run"]]
    if reused:
        print(f"reused from the previous run: {', '.join(reused)}")
    print(f"wrote {args.out}/stats.json; train with: nanochat train --config CONFIG --data {args.out} "
          f"--set model.vocab_size={stats['vocab_size']}")
    return 0


def register(sub, bench) -> None:
    from .near_dedup import DEFAULT_THRESHOLD
    from .rust_filters import DEFAULT_MAX_BYTES

    data = sub.add_parser("data", help="build a training corpus from real Rust").add_subparsers(dest="data", required=True)
    p = data.add_parser("fetch-debian", help="download and unpack Debian's librust-*-dev crate sources (no install)")
    p.add_argument("--out", required=True, help="folder; the sources land in OUT/crates")
    p.add_argument("--limit", type=int, default=None, help="only the first N packages (sorted by name)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fetch_debian)

    p = data.add_parser("build", help="filter, deduplicate, split by crate, train the BPE, write token shards")
    p.add_argument("--source", action="append", required=True, help="a folder of Rust sources (repeatable)")
    p.add_argument("--out", required=True, help="the dataset folder to write (reused by a second run)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of crates held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_BYTES)
    p.add_argument("--near-dup-threshold", type=float, default=DEFAULT_THRESHOLD, help="estimated Jaccard similarity")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build)
