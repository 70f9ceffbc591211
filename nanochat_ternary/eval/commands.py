"""CLI: `nanochat eval bpb`, `nanochat eval compile`, `nanochat eval humaneval-rs`, `nanochat eval mhc`.

Each prints a table and writes its full result (per-item details included) as JSON to --output.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fsutil import atomic_write_text


def _write(result: dict, output: str) -> None:
    atomic_write_text(Path(output), json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")


def cmd_bpb(args) -> int:
    from .bpb import eval_bpb
    from .model_access import EvalModel

    model = EvalModel(args.model, threads=args.threads)
    try:
        r = eval_bpb(model, args.data, max_tokens=args.max_tokens, window=args.window, progress=not args.quiet)
    finally:
        model.close()
    print(f"{'model':<40} {'kind':<10} {'docs':>6} {'tokens':>9} {'bytes':>10} {'loss':>7} {'bpb':>7}")
    print(f"{str(args.model)[-40:]:<40} {r['kind']:<10} {r['documents']:>6} {r['tokens']:>9,} {r['bytes']:>10,} "
          f"{r['loss']:>7.4f} {r['bpb']:>7.4f}")
    _write(r, args.output or "eval-bpb.json")
    return 0


def cmd_compile(args) -> int:
    from .compile_eval import eval_compile
    from .model_access import EvalModel

    model = EvalModel(args.model, threads=args.threads)
    try:
        r = eval_compile(model, args.data, n=args.n, max_new_tokens=args.max_tokens, temperature=args.temperature,
                         seed=args.seed, workers=args.workers)
    finally:
        model.close()
    for row in r["results"]:
        print(f"  {'ok  ' if row['ok'] else 'FAIL'} {row['name']:<32} {row['error'][:80]}")
    for title, examples in (("compiles", r["examples_ok"][:1]), ("fails", [e["source"] for e in r["examples_failed"][:1]])):
        for src in examples:
            print(f"--- example that {title} ---\n{src}")
    print(f"compiled: {r['compiled']}/{r['n']} ({100 * r['rate']:.1f}%) of held-out function completions")
    _write(r, args.output or "eval-compile.json")
    return 0


def cmd_humaneval(args) -> int:
    from .humaneval import eval_humaneval
    from .model_access import EvalModel

    ks = tuple(int(k) for k in args.k.split(","))
    model = EvalModel(args.model, threads=args.threads)
    try:
        r = eval_humaneval(model, args.problems, n=args.n, ks=ks, temperature=args.temperature,
                           max_new_tokens=args.max_tokens, seed=args.seed, workers=args.workers)
    finally:
        model.close()
    keys = [k for k in r if k.startswith("pass@")]
    print(f"{'problem':<28} {'passed':>8} " + " ".join(f"{k:>8}" for k in keys))
    for row in r["results"]:
        print(f"{row['name'][:28]:<28} {row['passed']:>4}/{row['n']:<3} " + " ".join(f"{row[k]:>8.3f}" for k in keys))
    print(f"{'mean':<28} {'':>8} " + " ".join(f"{r[k]:>8.3f}" for k in keys))
    _write(r, args.output or "eval-humaneval-rs.json")
    return 0


def cmd_mhc(args) -> int:
    from ..errors import FormatError
    from ..train.sample import load_model
    from .mhc_analysis import analyse, validation_windows

    if Path(args.model).suffix == ".gguf":
        raise FormatError(f"{args.model}: eval mhc reads a training checkpoint (the routing logits), not a GGUF")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tok, step_dir = load_model(args.model)
    data = args.data
    if data is None:
        from ..train.checkpoint import load_checkpoint

        data = load_checkpoint(step_dir).meta.get("data_dir")
    tokens = validation_windows(data, tok, args.window, args.max_tokens) if data and model.cfg.mhc_n_streams > 1 else None
    r = analyse(model, tokens)
    r["model"] = str(step_dir)
    if not r["layers"]:
        print(f"{step_dir}: n = {r['n_streams']} stream, no mHC routing to analyse")
    else:
        print(f"{'layer':>5} {'H_res[0,0]':>10} {'d_res':>7} {'d_pre':>7} {'d_post':>7} {'H_post':>16} "
              f"{'logit moved':>11} {'stream cos':>10}")
        for row in r["layers"]:
            moved = max(row["res_logit_moved"], row["pre_logit_moved"], row["post_logit_moved"])
            post = " ".join(f"{x:.3f}" for x in row["h_post"])
            print(f"{row['layer']:>5} {row['h_res'][0]:>10.4f} {row['d_res']:>7.4f} {row['d_pre']:>7.4f} "
                  f"{row['d_post']:>7.4f} {post:>16} {moved:>11.4f} {row.get('stream_cosine', float('nan')):>10.4f}")
        print(f"composite gain {r['composite_gain']:.4f}" + (f"; stream cosines over {r['tokens']} validation tokens"
                                                           if "tokens" in r else ""))
    _write(r, args.output or "eval-mhc.json")
    return 0


def _common(p) -> None:
    p.add_argument("--model", required=True, help="a checkpoint (run folder, checkpoints/best, step_N) or a .gguf")
    p.add_argument("--output", default=None, help="where to write the JSON (default: ./eval-<command>.json)")
    p.add_argument("--threads", type=int, default=None)


def register(sub, bench) -> None:
    ev = sub.add_parser("eval", help="evaluate a model on held-out Rust").add_subparsers(dest="eval", required=True)
    p = ev.add_parser("bpb", help="bits per byte on a validation split or a folder of .rs files")
    _common(p)
    p.add_argument("--data", required=True, help="a prepared dataset (its val split) or any folder of .rs files")
    p.add_argument("--max-tokens", type=int, default=200_000, help="stop after scoring this many tokens")
    p.add_argument("--window", type=int, default=None, help="scoring window (default: the model's context)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bpb)

    p = ev.add_parser("compile", help="share of held-out function completions that rustc accepts")
    _common(p)
    p.add_argument("--data", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("-n", type=int, default=64, help="number of functions")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="rustc processes at once")
    p.set_defaults(func=cmd_compile)

    p = ev.add_parser("humaneval-rs", help="pass@k on MultiPL-E / HumanEval-Rust problems (JSON lines)")
    _common(p)
    p.add_argument("--problems", required=True, help="the problems file (.jsonl); nothing is downloaded")
    p.add_argument("-n", type=int, default=20, help="samples per problem")
    p.add_argument("-k", default="1,10", help="comma-separated k values (each <= n)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_humaneval)

    p = ev.add_parser("mhc", help="how far the mHC routing moved from init; whether the streams differ")
    _common(p)
    p.add_argument("--data", default=None, help="validation text (default: the dataset the checkpoint was trained on)")
    p.add_argument("--max-tokens", type=int, default=4096, help="validation tokens for the stream cosines")
    p.add_argument("--window", type=int, default=256)
    p.set_defaults(func=cmd_mhc)
