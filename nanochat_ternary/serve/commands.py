"""CLI: `nanochat serve` (the HTTP server), `nanochat bench serve` (its benchmark) and
`nanochat bench load` (its overload test, loadtest.py).

Why this module exists: the dispatcher in cli.py imports each stage's `register`; this one
parses and checks the serving options and loads the Engine from a GGUF (+ .mhc) file. The
benchmarks serve the model in a child process (server.ServerProcess) or drive `--url`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..cli_args import kv_cache_arg, positive_int
from ..errors import ConfigError
from .server import default_threads

API_KEY_ENV = "NANOCHAT_API_KEY"
SPECULATIVE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}  # bench serve --speculative


def parse_clients(text: str) -> list[int]:
    """"1,4,8" -> [1, 4, 8]; ConfigError naming --clients on anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--clients must be a comma-separated list of integers, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"--clients needs at least one level and every level >= 1, got {text!r}")
    return sorted(set(levels))


def _check_files(args: argparse.Namespace) -> None:
    for flag, path in (("--model", args.model), ("--mhc", args.mhc)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {path}")


def _load_engine(args: argparse.Namespace) -> Any:
    import torch

    from ..infer.engine import Engine  # imported here: PyTorch takes a second to load

    torch.set_flush_denormal(True)
    _check_files(args)
    return Engine.load(args.model, args.mhc, num_threads=args.threads or default_threads(), kv_cache=args.kv_cache)


def _api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else the API_KEY_ENV variable, else none."""
    return args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .server import make_server

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be >= 0, got {args.max_queue}")
    api_key = _api_key(args)
    scheduler = None
    if args.engine_process:
        from .engine_process import EngineProcess

        _check_files(args)
        scheduler = EngineProcess(dict(gguf_path=args.model, mhc_path=args.mhc, num_threads=args.threads or default_threads(),
                                       kv_cache=args.kv_cache), max_batch=args.max_batch, max_queue=args.max_queue,
                                  speculative=args.speculative)
        engine = scheduler.info
    else:
        engine = _load_engine(args)
    app = create_app(engine, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     max_body_bytes=args.max_body_bytes, model_name=args.model_name, speculative=args.speculative,
                     scheduler=scheduler)
    if args.speculative and not app.state.scheduler.can_speculate:
        print(f"warning: --speculative ignored: {engine.name} has no MTP heads or has Gated DeltaNet layers; decoding plainly")
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
    api_key = _api_key(args)
    kwargs = dict(max_tokens=args.max_tokens, requests_per_client=args.requests_per_client, time_limit_s=args.time_limit,
                  rounds=args.rounds, api_key=api_key, speculative=SPECULATIVE_MODES[args.speculative])
    if args.url is not None:  # a server that is already running
        report = bench_serve(args.url.rstrip("/"), _running_model(args.url, api_key), clients, **kwargs)
    else:
        with _bench_server(args, api_key, max_batch=max(clients), max_queue=max(clients)) as srv:
            report = bench_serve(srv.url, "bench", clients, **kwargs)
        report["server_threads"] = args.threads or default_threads()
        report["engine_process"] = args.engine_process
    print(json.dumps(report, indent=2))
    return 0


def _bench_server(args: argparse.Namespace, api_key: str | None, max_batch: int, max_queue: int, extra: list[str] = ()):
    """`nanochat serve --model ...` as a child process on a free loopback port, serving the
    model as "bench" (server.ServerProcess; use it with `with`)."""
    from .server import ServerProcess

    if args.model is None:
        raise ConfigError(f"bench {args.bench} needs --model (a GGUF to serve) or --url (a running server)")
    _check_files(args)
    serve_args = ["--model", str(args.model), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
                  "--model-name", "bench", "--threads", str(args.threads or default_threads()), "--kv-cache", args.kv_cache,
                  "--engine-process" if args.engine_process else "--no-engine-process", *extra]
    if args.mhc is not None:
        serve_args += ["--mhc", str(args.mhc)]
    # the key goes by environment, not argv (which other users can read in `ps`)
    return ServerProcess(serve_args, env={**os.environ, API_KEY_ENV: api_key or ""})


def _running_model(url: str, api_key: str | None) -> str:
    """The model id a running server (`--url`) serves."""
    from ..eval.api_check import fetch_json

    try:
        return fetch_json(url, "/v1/models", api_key=api_key, timeout=30)["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ConfigError(f"--url: no OpenAI-compatible server answered at {url}/v1/models ({e})") from None


def cmd_bench_load(args: argparse.Namespace) -> int:
    from .loadtest import load_test, report_table

    api_key = _api_key(args)
    if not 0 <= args.malformed <= 1 or not 0 <= args.drop <= 1 or args.malformed + args.drop > 1:
        raise ConfigError(f"--malformed and --drop are fractions in 0..1 with a sum <= 1, got {args.malformed} and {args.drop}")
    kwargs = dict(requests=args.requests, clients=args.clients, time_limit_s=args.time_limit, max_tokens=args.max_tokens,
                  malformed=args.malformed, drop=args.drop, max_body_bytes=args.max_body_bytes, retry_wait_s=args.retry_wait, seed=args.seed, api_key=api_key)
    if args.url is not None:  # a running server: its queue and body limit are its own; no RSS
        url = args.url.rstrip("/")
        report = load_test(url, _running_model(url, api_key), **kwargs)
    else:  # capacity = batch slots + queue places; the clients are `--overload` times that
        capacity = max(2, round(args.clients / args.overload))
        max_batch = min(args.max_batch, capacity - 1)
        extra = ["--max-body-bytes", str(args.max_body_bytes)]
        with _bench_server(args, api_key, max_batch=max_batch, max_queue=capacity - max_batch, extra=extra) as srv:
            report = load_test(srv.url, "bench", pid=srv.proc.pid, capacity=capacity, **kwargs)
        report["server"] = {"max_batch": max_batch, "max_queue": capacity - max_batch, "max_body_bytes": args.max_body_bytes,
                            "threads": args.threads or default_threads(), "engine_process": args.engine_process}
    text = json.dumps(report, indent=2)
    Path(args.output).write_text(text + "\n")
    print(report_table(report))
    print(f"JSON: {args.output}")
    return 0 if report["ok"] else 1


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, type=Path, help="the model's GGUF file")
    p.add_argument("--mhc", type=Path, default=None, help="the model's .mhc file (mHC models)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None,
                   help=f"engine compute threads (default: the usable cores but one, left to the HTTP event loop: {default_threads()} here)")
    kv_cache_arg(p)
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=os.name == "posix",
                   help="the server runs the engine and its scheduler in a child process (the default on POSIX systems), "
                        "so that the HTTP side and the engine do not share one interpreter lock; --no-engine-process: in a "
                        "thread of the server's process")


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
    p.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=False,
                   help="draft with the model's MTP heads for requests that do not set \"speculative\", at the batch "
                        "sizes where drafting measures faster (default off; see README)")
    p.set_defaults(func=cmd_serve)

    b = bench.add_parser("serve", help="throughput/latency of the HTTP server at several concurrency levels")
    _model_args(b, required=False)
    b.add_argument("--url", default=None, help="bench this running server (http://HOST:PORT) instead of serving --model")
    b.add_argument("--api-key", default=None, help=f"the server's API key (default: ${API_KEY_ENV})")
    b.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated")
    b.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=64)
    b.add_argument("--requests-per-client", type=positive_int("--requests-per-client"), default=4)
    b.add_argument("--rounds", type=positive_int("--rounds"), default=3, help="interleaved repetitions; each level reports its best")
    b.add_argument("--speculative", choices=sorted(SPECULATIVE_MODES), default="both",
                   help="requests with speculation off, on, or both (each level measured both ways, interleaved)")
    b.add_argument("--time-limit", type=float, default=60.0, help="seconds per level after which no new request starts")
    b.set_defaults(func=cmd_bench_serve)

    b = bench.add_parser("load", help="the server past its queue: 429s, malformed requests, dropped streams, memory (JSON + table)")
    _model_args(b, required=False)
    b.add_argument("--url", default=None, help="load this running server (http://HOST:PORT) instead of serving --model")
    b.add_argument("--api-key", default=None, help=f"the server's API key (default: ${API_KEY_ENV})")
    b.add_argument("--requests", type=positive_int("--requests"), default=1000, help="requests in all")
    b.add_argument("--clients", type=positive_int("--clients"), default=32, help="concurrent clients")
    b.add_argument("--overload", type=float, default=2.0, help="clients per place in the server (batch slots + queue)")
    b.add_argument("--max-batch", type=positive_int("--max-batch"), default=8, help="the server's batch slots (at most capacity - 1)")
    b.add_argument("--max-body-bytes", type=positive_int("--max-body-bytes"), default=65536,
                   help="the server's body limit; oversize requests send more than this")
    b.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=16)
    b.add_argument("--malformed", type=float, default=0.05, help="fraction of malformed requests")
    b.add_argument("--drop", type=float, default=0.05, help="fraction of streams the client drops after the first chunk")
    b.add_argument("--time-limit", type=float, default=300.0, help="seconds after which no new request starts")
    b.add_argument("--retry-wait", type=float, default=1.0, help="most seconds a client waits after a 429 (it waits "
                   "Retry-After up to this, times 0.5..1)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--output", default="bench-load.json", help="where the JSON report goes")
    b.set_defaults(func=cmd_bench_load)
