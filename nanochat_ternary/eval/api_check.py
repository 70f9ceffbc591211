"""End-to-end checks of a running server: the API answers, and what it writes compiles.

Used by `scripts/validate_e2e.sh` (and usable against any deployment):

    python -m nanochat_ternary.eval.api_check --base-url http://127.0.0.1:8000 \
        --completions 32 --min-compile-rate 0.8 --json out.json

It calls `/v1/models`, a chat completion and a streamed chat completion (checking the SSE
framing, `[DONE]` and the usage chunk), then asks `/v1/completions` for Rust programs from a
set of program openings and compiles every completion with `rustc --edition 2021 --crate-type
lib` (eval/compile.py). Only the standard library is used for HTTP, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .compile import compile_many, first_error

# openings of the kinds of programs in the corpus; each completion must finish the program.
# Each prompt ends where the tokenizer's pre-tokenizer ends a piece: BPE merges a space into the
# next word (" name") and an opening parenthesis into the next word ("(Debug"), so a prompt
# ending in a bare space or "(" asks the model to continue from a token sequence it never saw
# in training (a model that writes 60% compilable code after "pub fn" wrote 0% after "#[derive(").
PROMPTS = ["pub fn", "fn", "///", "#[derive(Debug"]


class CheckFailed(Exception):
    pass


def _request(base: str, path: str, body: dict | None = None, api_key: str | None = None, timeout: float = 120) -> urllib.request.Request:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.Request(base.rstrip("/") + path, data=data, headers=headers, method="POST" if body is not None else "GET")


def fetch_json(base: str, path: str, body: dict | None = None, api_key: str | None = None, timeout: float = 300) -> dict:
    """GET (or POST `body` to) `base + path` and parse the JSON answer; raises OSError/ValueError."""
    with urllib.request.urlopen(_request(base, path, body, api_key), timeout=timeout) as resp:
        return json.loads(resp.read())


def check_api(base: str, api_key: str | None = None) -> dict:
    models = fetch_json(base, "/v1/models", api_key=api_key)
    if models.get("object") != "list" or not models.get("data"):
        raise CheckFailed(f"/v1/models returned {models}")
    model = models["data"][0]["id"]
    messages = [{"role": "user", "content": "Write a Rust function"}]
    chat = fetch_json(base, "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 32, "seed": 1}, api_key)
    choice = chat["choices"][0]
    if choice["message"]["role"] != "assistant" or choice["finish_reason"] not in ("stop", "length"):
        raise CheckFailed(f"chat completion malformed: {chat}")
    if chat["usage"]["completion_tokens"] <= 0:
        raise CheckFailed(f"chat completion produced no tokens: {chat['usage']}")
    body = {"model": model, "messages": messages, "max_tokens": 32, "seed": 1, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks, done, usage, text = 0, False, None, ""
    with urllib.request.urlopen(_request(base, "/v1/chat/completions", body, api_key), timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                done = True
                break
            event = json.loads(payload)
            chunks += 1
            if event.get("usage"):
                usage = event["usage"]
            for c in event.get("choices", []):
                text += c["delta"].get("content") or ""
    if not done or usage is None or chunks < 2:
        raise CheckFailed(f"stream malformed: chunks={chunks} done={done} usage={usage}")
    return {"model": model, "chat_text": choice["message"]["content"], "stream_chunks": chunks, "stream_text": text}


def compile_rate(base: str, n: int, max_tokens: int = 384, temperature: float = 0.0, api_key: str | None = None,
                 concurrency: int = 8) -> dict:
    """Ask for `n` programs (prompts cycled, seeds varied) and compile each one."""
    model = fetch_json(base, "/v1/models", api_key=api_key)["data"][0]["id"]

    def one(i: int) -> tuple[str, str]:
        prompt = PROMPTS[i % len(PROMPTS)]
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                "top_k": 20, "seed": i}
        out = fetch_json(base, "/v1/completions", body, api_key)
        return prompt + out["choices"][0]["text"], out["choices"][0]["finish_reason"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outs = list(pool.map(one, range(n)))
    gen_time = time.perf_counter() - t0
    results = compile_many([src for src, _ in outs])
    ok = sum(r.ok for r in results)
    failures = [{"source": src, "finish_reason": fr, "error": first_error(r.stderr)}
                for (src, fr), r in zip(outs, results) if not r.ok]
    return {"n": n, "compiled": ok, "rate": ok / max(n, 1), "generation_seconds": round(gen_time, 2),
            "truncated": sum(fr == "length" for _, fr in outs), "failures": failures[:5],
            "example": next((src for (src, _), r in zip(outs, results) if r.ok), None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--completions", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--min-compile-rate", type=float, default=0.0)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    try:
        api = check_api(args.base_url, args.api_key)
        print(f"api: /v1/models, chat and streamed chat OK ({api['stream_chunks']} chunks)")
        if args.completions <= 0:
            return 0
        comp = compile_rate(args.base_url, args.completions, temperature=args.temperature, api_key=args.api_key)
    except (CheckFailed, OSError, KeyError, ValueError) as e:
        print(f"error: API check failed: {e}", file=sys.stderr)
        return 1
    print(f"compile rate: {comp['compiled']}/{comp['n']} = {comp['rate']:.0%} "
          f"(rustc --edition 2021 --crate-type lib; {comp['truncated']} hit max_tokens; generation {comp['generation_seconds']}s)")
    if comp["example"]:
        print("example that compiles:\n" + "\n".join("    " + line for line in comp["example"].splitlines()[:20]))
    for f in comp["failures"][:3]:
        print(f"  failed: {f['error']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"api": api, "compile": comp}, fh, indent=2)
    if comp["rate"] < args.min_compile_rate:
        print(f"error: compile rate {comp['rate']:.0%} is under the threshold {args.min_compile_rate:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
