"""CLI: `nanochat generate` (stream text from a GGUF) and `nanochat bench infer` (speed, JSON).

Why this module exists: the cli.py dispatcher imports each stage's `register(sub, bench)`; this
one parses the options of the inference commands, checks them into project errors, and drives
the Engine, the Sampler and the TextStream (sampling.py, stream.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..cli_args import kv_cache_arg, positive_int
from ..errors import ConfigError


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .engine import Engine
    from .sampling import Sampler, SamplingParams
    from .speculative import speculative_generate
    from .stream import TextStream

    temperature = args.temperature if args.temperature is not None else (0.0 if args.speculative else 0.8)
    if args.speculative and temperature != 0:
        raise ConfigError("--speculative decodes greedily: leave --temperature out or set it to 0")
    params = SamplingParams(temperature=temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed).validate()
    engine = Engine.load(args.model, args.mhc, num_threads=args.threads, kv_cache=args.kv_cache)
    tok = engine.tokenizer
    prompt = ([tok.bos_id] if not args.no_bos else []) + tok.encode(args.prompt)
    if len(prompt) >= engine.n_ctx:
        raise ConfigError(f"--prompt is {len(prompt)} tokens; the model's context is {engine.n_ctx}")
    max_new = min(args.max_tokens, engine.n_ctx - len(prompt))
    stop_ids = {tok.eos_id, tok.im_end_id}
    stream = TextStream(tok)
    out = sys.stdout

    def show(token_id: int) -> None:
        if token_id not in stop_ids:
            out.write(stream.push(token_id))
            out.flush()

    out.write(args.prompt)
    out.flush()
    t0 = time.perf_counter()
    if args.speculative:
        tokens, stats = speculative_generate(engine, prompt, max_new, stop_tokens=stop_ids, on_token=show)
        extra = stats.as_dict()
    else:
        sampler, history = Sampler(params), list(prompt)
        state = engine.new_state()
        logits = engine.prefill(state, prompt)
        tokens = []
        while True:
            t = sampler(logits, history)
            tokens.append(t)
            history.append(t)
            show(t)
            if t in stop_ids or len(tokens) >= max_new:
                break
            logits = engine.decode([state], [t])[0]
        extra = {}
    out.write(stream.flush() + "\n")
    dt = time.perf_counter() - t0
    info = {"tokens": len(tokens), "seconds": round(dt, 3), "tokens_per_s": round(len(tokens) / dt, 1) if dt else 0.0,
            "backend": engine.backend, "threads": torch.get_num_threads(), **extra}
    print(json.dumps(info), file=sys.stderr)
    return 0


def cmd_bench_infer(args: argparse.Namespace) -> int:
    from .bench import bench_infer

    if (args.model is None) == (args.shape is None):
        raise ConfigError("bench infer: give exactly one of --model M.gguf or --shape nano")
    if args.deltanet:
        from .bench_deltanet import bench_infer_deltanet

        if args.shape is None or args.moe:
            raise ConfigError("bench infer --deltanet: needs --shape (it builds the hybrid / attention pair itself), without --moe")
        print(json.dumps(bench_infer_deltanet(args.shape, args.threads, args.context, args.decode_tokens, args.batch), indent=2))
        return 0
    if args.moe:
        from .bench_moe import bench_infer_moe

        if args.shape is None:
            raise ConfigError("bench infer --moe: needs --shape (it builds the MoE / dense pair itself)")
        print(json.dumps(bench_infer_moe(args.shape, args.threads, args.prompt_tokens, args.decode_tokens, args.batch), indent=2))
        return 0
    result = bench_infer(model=args.model, mhc=args.mhc, shape=args.shape, threads=args.threads, prompt_tokens=args.prompt_tokens,
                         decode_tokens=args.decode_tokens, batch=args.batch, baseline=not args.no_baseline, progress=True,
                         kv_cache=args.kv_cache)
    print(json.dumps(result, indent=2))
    return 0


def register(sub, bench) -> None:
    p = sub.add_parser("generate", help="generate text from an exported GGUF model (streams to the terminal)")
    p.add_argument("--model", required=True, help="model.gguf")
    p.add_argument("--mhc", default=None, help="model.mhc (mHC models; default: next to the GGUF)")
    p.add_argument("--prompt", required=True)
    p.add_argument("-n", "--max-tokens", type=positive_int("-n"), default=64)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.8, or 0 with --speculative)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--speculative", action="store_true", help="greedy self-speculative decoding with the MTP heads")
    p.add_argument("--threads", type=positive_int("--threads"), default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-bos", action="store_true", help="do not start the prompt with <|endoftext|>")
    kv_cache_arg(p)
    p.set_defaults(func=cmd_generate)

    p = bench.add_parser("infer", help="inference speed of the engine vs a plain fp32 PyTorch forward (and llama.cpp) (JSON)")
    p.add_argument("--model", default=None, help="model.gguf")
    p.add_argument("--mhc", default=None)
    p.add_argument("--shape", default=None, choices=["nano", "tiny"], help="benchmark a random model of this shape instead")
    p.add_argument("--threads", type=positive_int("--threads"), default=2)
    p.add_argument("--prompt-tokens", type=positive_int("--prompt-tokens"), default=128)
    p.add_argument("--decode-tokens", type=positive_int("--decode-tokens"), default=64)
    p.add_argument("--batch", type=positive_int("--batch"), default=8)
    p.add_argument("--no-baseline", action="store_true", help="skip the fp32 PyTorch comparison")
    p.add_argument("--moe", action="store_true", help="with --shape: an 8x2 MoE vs the dense model of the same active parameters")
    p.add_argument("--deltanet", action="store_true", help="with --shape: a Gated DeltaNet hybrid vs pure attention at --context tokens")
    p.add_argument("--context", type=positive_int("--context"), default=2048, help="with --deltanet: tokens prefilled per sequence")
    kv_cache_arg(p)
    p.set_defaults(func=cmd_bench_infer)
