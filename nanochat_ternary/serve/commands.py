"""CLI: `nanochat serve` (the HTTP server) and `nanochat bench serve` (its benchmark).

Why this module exists: the dispatcher in cli.py imports each stage's `register`; this one
parses and checks the serving options and loads the Engine from a GGUF (+ .mhc) file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..cli_args import positive_int
from ..errors import ConfigError

API_KEY_ENV = "NANOCHAT_API_KEY"


def parse_clients(text: str) -> list[int]:
    """"1,4,8" -> [1, 4, 8]; ConfigError naming --clients on anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--clients must be a comma-separated list of integers, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"--clients needs at least one level and every level >= 1, got {text!r}")
    return sorted(set(levels))


def _load_engine(args: argparse.Namespace) -> Any:
    from ..infer.engine import Engine  # imported here: loading torch models is slow

    torch.set_flush_denormal(True)
    for flag, path in (("--model", args.model), ("--mhc", args.mhc)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {path}")
    return Engine.load(args.model, args.mhc, num_threads=args.threads)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .server import make_server

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be >= 0, got {args.max_queue}")
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    engine = _load_engine(args)
    app = create_app(engine, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     max_body_bytes=args.max_body_bytes, model_name=args.model_name)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without an API key (set --api-key or {API_KEY_ENV})")
    print(f"serving {engine.name} on http://{args.host}:{args.port}  (chat page at /, API at /v1)")
    try:
        make_server(app, args.host, args.port, log_level="info").run()
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C it caught
        pass
    print("server stopped")
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .bench import bench_serve

    clients = parse_clients(args.clients)
    engine = _load_engine(args)
    report = bench_serve(engine, clients, max_tokens=args.max_tokens, requests_per_client=args.requests_per_client,
                         time_limit_s=args.time_limit, rounds=args.rounds)
    print(json.dumps(report, indent=2))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="the model's GGUF file")
    p.add_argument("--mhc", type=Path, default=None, help="the model's .mhc file (mHC models)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None, help="torch CPU threads")


def register(sub: Any, bench: Any) -> None:
    p = sub.add_parser("serve", help="serve a GGUF model over an OpenAI-compatible HTTP API with a chat page")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    p.add_argument("--max-batch", type=positive_int("--max-batch"), default=8, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch before 429")
    p.add_argument("--max-body-bytes", type=positive_int("--max-body-bytes"), default=1_000_000)
    p.add_argument("--model-name", default=None, help="the id clients use (default: the GGUF's general.name)")
    p.set_defaults(func=cmd_serve)

    b = bench.add_parser("serve", help="throughput/latency of the HTTP server at several concurrency levels")
    _model_args(b)
    b.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated")
    b.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=64)
    b.add_argument("--requests-per-client", type=positive_int("--requests-per-client"), default=4)
    b.add_argument("--rounds", type=positive_int("--rounds"), default=3, help="interleaved repetitions; each level reports its best")
    b.add_argument("--time-limit", type=float, default=60.0, help="seconds per level after which no new request starts")
    b.set_defaults(func=cmd_bench_serve)
