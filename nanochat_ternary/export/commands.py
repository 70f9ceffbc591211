"""CLI: `nanochat export` (a training checkpoint -> model.gguf, + model.mhc for mHC models)."""

from __future__ import annotations

import json
from pathlib import Path

from . import QUANT_NAMES


def cmd_export(args) -> int:
    from .gguf_export import export_checkpoint

    summary = export_checkpoint(
        Path(args.checkpoint),
        Path(args.output),
        Path(args.mhc_output) if args.mhc_output else None,
        quant=args.quant,
        drop_mtp=args.drop_mtp,
        progress=not args.json,
        mtp_output=Path(args.mtp_output) if args.mtp_output else None,
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"wrote {summary['gguf']}: {summary['bytes'] / 2**20:,.2f} MiB, arch {summary['arch']}, "
          f"{summary['tensors']} tensors, file type {summary['file_type']}")
    print(f"  projection weights: {summary['ternary_params']:,} params in {summary['ternary_bytes'] / 2**20:,.2f} MiB "
          f"= {summary['bits_per_weight']:.4f} bits per weight")
    if summary.get("mtp"):
        print(f"wrote {summary['mtp']} (the MTP heads, beside the llama.cpp-loadable GGUF)")
    if summary["mhc"]:
        print(f"wrote {summary['mhc']} (sha256 {summary['mhc_checksum'][:16]}...)")
    elif args.mhc_output:
        print(f"note: the model has a single residual stream; {args.mhc_output} was not written")
    return 0


def register(sub, bench) -> None:
    p = sub.add_parser("export", help="export a training checkpoint to GGUF (+ .mhc)")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint: <run>/checkpoints/step_N/, its model.safetensors, or a run folder (latest)")
    p.add_argument("--output", required=True, help="the GGUF file to write")
    p.add_argument("--mhc-output", default=None,
                   help="the .mhc file for mHC models (default: next to the GGUF with suffix .mhc)")
    p.add_argument("--quant", choices=list(QUANT_NAMES), default="tq2_0",
                   help="encoding of the projection weights (default tq2_0)")
    p.add_argument("--mtp-output", default=None,
                   help="single-stream models with MTP heads: the .mtp sidecar for the heads (default: next to the GGUF)")
    p.add_argument("--drop-mtp", action="store_true", help="leave the MTP heads out (no .mtp sidecar, no heads in the GGUF)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)
