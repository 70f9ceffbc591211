"""CLI: `nanochat params`, `nanochat train`, `nanochat sample`, `nanochat bench train` (`--moe`, `--deltanet`)."""

from __future__ import annotations

import json

from ..config import load_config


def _config_args(p) -> None:
    p.add_argument("--config", required=True, help="TOML config (configs/models/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")


def cmd_params(args) -> int:
    from ..config import require_supported
    from ..model.gpt import GPT, count_params, flops_per_token

    import torch  # here: the CLI starts without loading PyTorch

    cfg = load_config(args.config, args.set)
    require_supported(cfg)
    with torch.device("meta"):  # no memory: shapes only
        model = GPT(cfg.model)
    counts = count_params(model)
    counts["flops_per_token"] = flops_per_token(cfg.model, cfg.training.seq_length)
    counts["config"] = args.config
    from .memory_estimate import estimate_memory
    from .memory_report import memory_lines

    counts["memory"] = estimate_memory(cfg)  # expected training memory on one GPU (memory_estimate.py)
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"{args.config}")
        for key in ("total", "active", "non_embedding", "embedding", "mtp", "linear_weights"):
            print(f"  {key:<16} {counts[key]:>15,}  ({counts[key] / 1e6:,.1f}M)")
        print(f"  {'train FLOPs/token':<16} {counts['flops_per_token']:>15,.0f}")
        print("\n".join(memory_lines(counts["memory"])))
    return 0


def cmd_train(args) -> int:
    from .trainer import train

    cfg = load_config(args.config, args.set)
    result = train(cfg, data=args.data, run_dir=args.run_dir, steps=args.steps, resume=args.resume,
                   device=None if args.device == "auto" else args.device, keep_checkpoints=args.keep_checkpoints)
    if result.stopped_by:  # SIGTERM: 0, Ctrl-C: 130 (train/signals.py)
        return {"SIGINT": 130}.get(result.stopped_by, 0) if result.checkpoint else 1
    return 0 if result.checkpoint else 1


def cmd_sample(args) -> int:
    from ..eval.compile import compile_many, first_error
    from ..infer.sampling import SamplingParams
    from .sample import load_model, sample

    model, tok, path = load_model(args.checkpoint)
    outs = []
    for i in range(args.num_samples):
        params = SamplingParams(temperature=args.temperature, top_k=args.top_k, seed=args.seed + i)
        text = sample(model, tok, args.prompt, args.max_tokens, params)
        outs.append(text)
        if not args.check_compile or i < 3:
            print(f"--- sample {i} ---\n{text}")
    if args.check_compile:
        results = compile_many(outs)
        ok = sum(r.ok for r in results)
        print(f"compiled: {ok}/{len(outs)} ({100 * ok / len(outs):.0f}%) with rustc --edition 2021 --crate-type lib")
        for r in [r for r in results if not r.ok][:3]:
            print(f"  {first_error(r.stderr)}")
    return 0


def cmd_bench_train(args) -> int:
    from .bench import bench_train

    cfg = load_config(args.config, args.set)
    if args.deltanet:
        from .bench_deltanet import bench_train_deltanet

        from ..errors import ConfigError

        try:
            lengths = [int(t) for t in args.deltanet_lengths.split(",")]
        except ValueError:
            lengths = []
        if args.moe or not lengths or min(lengths) < 1:
            raise ConfigError("bench train --deltanet: give --deltanet-lengths as positive integers like 512,2048, without --moe")
        out = bench_train_deltanet(cfg, lengths, batch_size=args.batch_size or 1, steps=args.steps, rounds=args.rounds,
                                   device=None if args.device == "auto" else args.device)
    else:
        out = bench_train(cfg, steps=args.steps, rounds=args.rounds, device=None if args.device == "auto" else args.device,
                          batch_size=args.batch_size, seq_length=args.seq_length, moe=args.moe)
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


def register(sub, bench) -> None:
    p = sub.add_parser("params", help="count a config's parameters and estimate its training memory (built on the meta device)")
    _config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a model")
    _config_args(p)
    p.add_argument("--data", default="synthetic", help="'synthetic' (default), 'synthetic-small' (narrowed, for the 2-minute e2e run), a folder of .rs files, or a prepared dataset")
    p.add_argument("--run-dir", default="runs/default")
    p.add_argument("--steps", type=int, default=None, help="override training.total_steps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample text from a training checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompt", default="fn", help="text to continue (avoid a trailing space: BPE merges it into the next word)")
    p.add_argument("-n", "--max-tokens", type=int, default=256)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-compile", action="store_true", help="compile each sample with rustc and report the rate")
    p.set_defaults(func=cmd_sample)

    p = bench.add_parser("train", help="step time of BitLinear vs dense and mHC n=1,2,4 (JSON)")
    _config_args(p)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--moe", action="store_true", help="compare an 8x2 MoE with the dense model of the same active parameters instead")
    p.add_argument("--deltanet", action="store_true", help="compare one Gated DeltaNet block with one attention block instead (fwd+bwd)")
    p.add_argument("--deltanet-lengths", default="512,2048", help="with --deltanet: comma-separated sequence lengths")
    p.set_defaults(func=cmd_bench_train)
