"""`nanochat data build`: real Rust sources -> filtered, deduplicated, crate-split token shards.

Why this module exists: prepare.py turns one folder into shards but splits by file and only
drops exact copies; a real corpus (the Debian crate set, ~/.cargo/registry/src, checkouts) needs
crate-level splits, near-duplicate removal and a record of what was dropped. Steps, each reused
by a second run when its inputs did not change (keys in `build_state.json`):

  1. scan     every .rs file (data/crates.py), classified (data/rust_filters.py), exact and near
              duplicates removed (data/near_dedup.py), crates split train/val by a seeded hash
              of the crate name -> `manifest.json`. Files are read on all cores.
  2. tokenizer BPE trained on (a sample of) the train split -> `tokenizer.json`.
  3. shards   each document as [eos] + tokens, encoded in batches by `tokenizers`' Rust threads
              -> `train/`, `val/` (data/shards.py), then `stats.json` and `meta.json`.

The output is a prepared dataset like prepare.py's (`nanochat train --data DATA`). `meta.json`
is written last, and removed before anything is rebuilt, so a killed run is never mistaken for
a finished one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..fsutil import atomic_write_text
from . import near_dedup, rust_filters
from .crates import RustFile, find_rust_files, keep_order
from .prepare import _encoded
from .shards import dtype_for_vocab, write_shards
from .tokenizer import train_tokenizer

BUILD_VERSION = 1
TOKENIZER_SAMPLE_BYTES = 60_000_000  # the BPE sees at most this much of the train split
EXACT_DUP, NEAR_DUP = "exact_duplicate", "near_duplicate"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _scan_one(job: tuple[str, tuple[str, ...], int]) -> tuple[str | None, int, str, bytes | None]:
    """Worker: (drop reason, size, sha256 of the text, MinHash signature bytes) of one file."""
    path, rel_parts, max_bytes = job
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return "unreadable", 0, "", None
    reason, text = rust_filters.classify(raw, rel_parts, max_bytes)
    if reason:
        return reason, len(raw), "", None
    return None, len(raw), hashlib.sha256(raw).hexdigest(), near_dedup.signature(text).tobytes()


def _val_crates(crates: list[str], val_fraction: float, seed: int) -> set[str]:
    """Crates whose seeded hash falls below val_fraction; at least one on each side (>= 2 crates)."""
    def u(c: str) -> float:
        return int(hashlib.sha256(f"{seed}:{c}".encode()).hexdigest()[:15], 16) / 16**15
    if len(crates) < 2:
        raise DataError(f"found {len(crates)} crate(s); a train/validation split by crate needs at least 2")
    ranked = sorted(crates, key=u)
    val = {c for c in crates if u(c) < val_fraction}
    if not val and val_fraction > 0:
        val = {ranked[0]}
    if len(val) == len(crates):
        val.discard(ranked[-1])
    return val


def scan(sources: list[Path], max_bytes: int, threshold: float, val_fraction: float, seed: int,
         progress: bool) -> dict:
    """Step 1: the manifest (kept files with crate and split, drop counts by reason)."""
    files: list[RustFile] = []
    for s in sources:
        files.extend(find_rust_files(s))
    files.sort(key=keep_order)
    jobs = [(str(f.path), f.rel_parts, max_bytes) for f in files]
    workers = max(1, min(os.cpu_count() or 1, 16))
    with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
        results = list(tqdm(pool.imap(_scan_one, jobs, chunksize=64), total=len(jobs), desc="scan .rs",
                            unit="file", disable=not progress))
    dropped: dict[str, dict[str, int]] = {}
    kept, seen_sha = [], set()
    index = near_dedup.NearDuplicateIndex(threshold)
    for f, (reason, size, sha, sig) in zip(files, results):
        if reason is None and sha in seen_sha:
            reason = EXACT_DUP
        elif reason is None and index.add(np.frombuffer(sig, dtype=np.uint32)) >= 0:
            reason = NEAR_DUP
        if reason:
            d = dropped.setdefault(reason, {"files": 0, "bytes": 0, "examples": []})
            d["files"] += 1
            d["bytes"] += size
            if len(d["examples"]) < 5:
                d["examples"].append(str(f.path))
            continue
        seen_sha.add(sha)
        kept.append({"path": str(f.path), "crate": f.crate, "bytes": size, "sha256": sha})
    val = _val_crates(sorted({k["crate"] for k in kept}), val_fraction, seed)
    for k in kept:
        k["split"] = "val" if k["crate"] in val else "train"
    return {"files": kept, "dropped": dropped, "seen_files": len(files)}


def _fingerprint(sources: list[Path]) -> list:
    """What step 1 depends on: every .rs and Cargo.toml below the sources, with size and mtime."""
    out = []
    for s in sources:
        for dirpath, _, names in os.walk(s, followlinks=False):
            for n in names:
                if n.endswith(".rs") or n == "Cargo.toml":
                    try:
                        st = os.stat(os.path.join(dirpath, n))
                    except OSError:
                        continue
                    out.append((os.path.join(dirpath, n), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _read_docs(entries: list[dict]) -> list[str]:
    docs = []
    for e in entries:
        try:
            docs.append(Path(e["path"]).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{e['path']}: changed or vanished during the build ({err}); run the build again") from err
    return docs


def _sample_bytes(docs: list[str], limit: int) -> list[str]:
    """An evenly spread subset of docs of about `limit` bytes (all of them when smaller)."""
    total = sum(len(d) for d in docs)
    if total <= limit:
        return docs
    step = total / limit
    return [d for i, d in enumerate(docs) if int(i / step) != int((i + 1) / step) or i == 0]


def build_corpus(sources: list[str | Path], out_dir: str | Path, vocab_size: int = 32000, seed: int = 0,
                 val_fraction: float = 0.05, max_bytes: int = rust_filters.DEFAULT_MAX_BYTES,
                 threshold: float = near_dedup.DEFAULT_THRESHOLD, progress: bool = True) -> dict:
    """Build (or reuse) the dataset in `out_dir`; returns the stats (also in stats.json)."""
    from .tokenizer import Tokenizer

    if not sources:
        raise DataError("give at least one --source folder")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    srcs = [Path(s).resolve() for s in sources]
    for s in srcs:
        if not s.is_dir():
            raise DataError(f"--source {s}: not a folder")
    out = Path(out_dir)
    state_file = out / "build_state.json"
    if out.exists() and any(out.iterdir()) and not state_file.exists():
        raise DataError(f"{out}: exists, is not empty and was not made by `nanochat data build`; refusing to write there")
    out.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    t0 = time.perf_counter()
    ran = []  # the steps this call ran (the others were reused)

    keys = {"scan": _digest([BUILD_VERSION, rust_filters.FILTER_VERSION, [str(s) for s in srcs], _fingerprint(srcs), max_bytes, threshold,
                             val_fraction, seed])}
    if state.get("scan") != keys["scan"] or not (out / "manifest.json").exists():
        (out / "meta.json").unlink(missing_ok=True)
        ran.append("scan")
        manifest = scan(srcs, max_bytes, threshold, val_fraction, seed, progress)
        atomic_write_text(out / "manifest.json", json.dumps(manifest))
        state = {"scan": keys["scan"]}
        atomic_write_text(state_file, json.dumps(state))
    manifest = json.loads((out / "manifest.json").read_text())
    split = {s: [f for f in manifest["files"] if f["split"] == s] for s in ("train", "val")}

    keys["tokenizer"] = _digest([keys["scan"], vocab_size, TOKENIZER_SAMPLE_BYTES])
    if state.get("tokenizer") != keys["tokenizer"] or not (out / "tokenizer.json").exists():
        (out / "meta.json").unlink(missing_ok=True)
        ran.append("tokenizer")
        if progress:
            print(f"training a {vocab_size}-token BPE on the train split ...", flush=True)
        tok = train_tokenizer(_sample_bytes(_read_docs(split["train"]), TOKENIZER_SAMPLE_BYTES), vocab_size)
        tok.save(out / "tokenizer.json")
        state = {"scan": keys["scan"], "tokenizer": keys["tokenizer"]}
        atomic_write_text(state_file, json.dumps(state))
    tok = Tokenizer.load(out / "tokenizer.json")

    keys["shards"] = keys["tokenizer"]
    if state.get("shards") != keys["shards"] or not (out / "meta.json").exists():
        (out / "meta.json").unlink(missing_ok=True)
        ran.append("shards")
        dtype = dtype_for_vocab(tok.vocab_size)
        counts = {}
        for name, entries in split.items():
            counts[name] = {"docs": 0, "bytes": 0, "tokens": 0}
            write_shards(_encoded(tok, _read_docs(entries), counts[name], f"encode {name}", progress), out / name,
                         dtype=dtype)
            c = counts[name]
            c["bytes_per_token"] = round(c["bytes"] / max(1, c["tokens"] - c["docs"]), 4)
            c["crates"] = len({e["crate"] for e in entries})
        stats = {"sources": [str(s) for s in srcs], "files_seen": manifest["seen_files"],
                 "files_kept": len(manifest["files"]), "dropped": manifest["dropped"], "splits": counts,
                 "val_crates": sorted({e["crate"] for e in split["val"]}), "vocab_size": tok.vocab_size,
                 "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=1))
        meta = {"params": {"version": BUILD_VERSION, "builder": "nanochat data build", "key": keys["shards"]},
                "source": [str(s) for s in srcs], "vocab_size": vocab_size, "tokenizer_vocab_size": tok.vocab_size,
                "seed": seed, "dtype": dtype, "counts": counts, "bytes_per_token": counts["train"]["bytes_per_token"],
                "seconds": stats["seconds"]}
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
        state["shards"] = keys["shards"]
        atomic_write_text(state_file, json.dumps(state))
    stats = json.loads((out / "stats.json").read_text())
    stats["steps_run"] = ran
    return stats
