"""End-to-end checks of a running server: the API answers, and what it writes compiles.

Used by `scripts/validate_e2e.sh` (and usable against any deployment):

    python -m nanochat_ternary.eval.api_check --base-url http://127.0.0.1:8000 \
        --completions 32 --min-compile-rate 0.8 --json out.json

It calls `/v1/models`, a chat completion and a streamed chat completion (checking the SSE
framing, `[DONE]` and the usage chunk), then asks `/v1/completions` for Rust programs from a
set of program openings and compiles every completion with `rustc --edition 2021 --crate-type
lib` (eval/compile.py). With `--chat N` it also asks `/v1/chat/completions` for N held-out
programs (requests whose names and phrasings no SFT pair uses, data/instruct.py) and compiles
the fenced code of each answer. Only the standard library is used for HTTP, so it runs anywhere.
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


def chat_compile_rate(base: str, n: int, max_tokens: int = 384, temperature: float = 0.0, api_key: str | None = None,
                      concurrency: int = 8) -> dict:
    """Ask /v1/chat/completions for `n` held-out programs (data/instruct.heldout_pairs: names and
    phrasings no training pair uses) and compile the first fenced code block of each answer; an
    answer without a fenced block counts as a failure."""
    from ..data.instruct import extract_rust, heldout_pairs

    model = fetch_json(base, "/v1/models", api_key=api_key)["data"][0]["id"]
    pairs = heldout_pairs(n)

    def one(i: int) -> tuple[str, str]:
        body = {"model": model, "messages": [{"role": "user", "content": pairs[i].user}], "max_tokens": max_tokens,
                "temperature": temperature, "top_k": 20, "seed": i}
        out = fetch_json(base, "/v1/chat/completions", body, api_key)
        return out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outs = list(pool.map(one, range(len(pairs))))
    gen_time = time.perf_counter() - t0
    codes = [extract_rust(text) for text, _ in outs]
    results = compile_many([c for c in codes if c is not None])
    it = iter(results)
    ok = [c is not None and next(it).ok for c in codes]
    named = sum(1 for c, p in zip(codes, pairs) if c is not None and p.name in c)
    failures = [{"request": p.user, "answer": text, "finish_reason": fr} for p, (text, fr), good in zip(pairs, outs, ok) if not good]
    return {"n": len(pairs), "compiled": sum(ok), "rate": sum(ok) / max(len(pairs), 1), "fenced": sum(c is not None for c in codes),
            "named": named, "generation_seconds": round(gen_time, 2), "failures": failures[:5],
            "example": next(({"request": p.user, "answer": text} for p, (text, _), good in zip(pairs, outs, ok) if good), None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--completions", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--min-compile-rate", type=float, default=0.0)
    p.add_argument("--chat", type=int, default=0, help="also ask /v1/chat/completions for this many held-out programs")
    p.add_argument("--min-chat-compile-rate", type=float, default=0.0)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    try:
        api = check_api(args.base_url, args.api_key)
        print(f"api: /v1/models, chat and streamed chat OK ({api['stream_chunks']} chunks)")
        if args.completions <= 0 and args.chat <= 0:
            return 0
        comp = compile_rate(args.base_url, args.completions, temperature=args.temperature, api_key=args.api_key) if args.completions > 0 else None
        chat = chat_compile_rate(args.base_url, args.chat, temperature=args.temperature, api_key=args.api_key) if args.chat > 0 else None
    except (CheckFailed, OSError, KeyError, ValueError) as e:
        print(f"error: API check failed: {e}", file=sys.stderr)
        return 1
    if comp:
        print(f"compile rate: {comp['compiled']}/{comp['n']} = {comp['rate']:.0%} "
              f"(rustc --edition 2021 --crate-type lib; {comp['truncated']} hit max_tokens; generation {comp['generation_seconds']}s)")
        if comp["example"]:
            print("example that compiles:\n" + "\n".join("    " + line for line in comp["example"].splitlines()[:20]))
        for f in comp["failures"][:3]:
            print(f"  failed: {f['error']}")
    if chat:
        print(f"chat compile rate: {chat['compiled']}/{chat['n']} = {chat['rate']:.0%} of answers to held-out requests "
              f"({chat['fenced']} with a fenced block, {chat['named']} using the requested name; generation {chat['generation_seconds']}s)")
        if chat["example"]:
            print("request: " + chat["example"]["request"] + "\n" + "\n".join("    " + line for line in chat["example"]["answer"].splitlines()[:20]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"api": api, "compile": comp, "chat": chat}, fh, indent=2)
    rc = 0
    if comp and comp["rate"] < args.min_compile_rate:
        print(f"error: compile rate {comp['rate']:.0%} is under the threshold {args.min_compile_rate:.0%}", file=sys.stderr)
        rc = 1
    if chat and chat["rate"] < args.min_chat_compile_rate:
        print(f"error: chat compile rate {chat['rate']:.0%} is under the threshold {args.min_chat_compile_rate:.0%}", file=sys.stderr)
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
