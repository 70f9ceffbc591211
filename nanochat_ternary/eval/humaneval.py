"""`nanochat eval humaneval-rs`: functional correctness (pass@k) on the user's Rust problems.

Two problem formats, one JSON object per line (the file is the user's; nothing is downloaded):

- MultiPL-E (https://github.com/nuprl/MultiPL-E): `name`, `prompt` (doc comment + signature +
  `{`), `tests` (starts with the `}` that closes the function, then `fn main` with asserts),
  `stop_tokens`. Program = prompt + completion cut at the first stop token + tests, built as a
  binary; it passes when it runs and exits 0.
- HumanEval-Rust / HumanEval-X: `task_id`, `prompt`, `test` (a `#[cfg(test)] mod tests`),
  `entry_point`, optionally `declaration` (its `use` lines are added when the prompt lacks
  them). The completion is cut where the function's braces close; program = prompt +
  completion + test, built with `rustc --test`; it passes when every test passes.

Each program is built and run in a fresh temporary folder with time and memory limits and no
network where the platform allows (eval/compile.py). pass@k is the unbiased estimator of Chen
et al. 2021 (https://arxiv.org/abs/2107.03374), 1 - C(n-c, k) / C(n, k), averaged over problems.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, NanochatError
from ..infer.sampling import SamplingParams
from .compile import run_limited, rustc_path
from .model_access import EvalModel
from .rust_text import close_index


@dataclass
class Problem:
    name: str
    prompt: str
    tests: str
    stop_tokens: list[str]
    harness: str  # "main" (MultiPL-E) or "test" (HumanEval-Rust)


def load_problems(path: str | Path) -> list[Problem]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the problems file ({e})") from e
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            p = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{no}: not valid JSON ({e})") from e
        if not isinstance(p, dict):
            raise DataError(f"{path}:{no}: expected a JSON object")
        if {"name", "prompt", "tests"} <= p.keys():
            out.append(Problem(str(p["name"]), p["prompt"], p["tests"], list(p.get("stop_tokens") or []), "main"))
        elif {"task_id", "prompt", "test"} <= p.keys():
            prompt = p["prompt"]
            uses = [ln for ln in (p.get("declaration") or "").splitlines() if ln.startswith("use ") and ln not in prompt]
            if uses:
                prompt = "\n".join(uses) + "\n" + prompt
            out.append(Problem(str(p["task_id"]), prompt, p["test"], list(p.get("stop_tokens") or []), "test"))
        else:
            raise DataError(f"{path}:{no}: neither MultiPL-E (name, prompt, tests, stop_tokens) nor HumanEval-Rust "
                            f"(task_id, prompt, test, entry_point) fields; found {sorted(p)}")
    if not out:
        raise DataError(f"{path}: no problems in the file")
    return out


def cut_completion(problem: Problem, text: str) -> str | None:
    """The completion as the program uses it, or None while it is not finished."""
    cuts = [i for i in (text.find(s) for s in problem.stop_tokens) if i >= 0]
    if problem.harness == "main":
        return text[:min(cuts)] if cuts else None
    end = close_index(problem.prompt, text)
    if end is not None:
        return text[:end]
    return text[:min(cuts)] if cuts else None


def program(problem: Problem, completion: str) -> str:
    return problem.prompt + completion + ("" if problem.harness == "main" else "\n") + problem.tests


def run_program(problem: Problem, source: str, timeout: float = 20.0) -> tuple[bool, str]:
    """Build (rustc, or rustc --test) and run it with limits: (passed, short reason)."""
    rustc = rustc_path()
    if rustc is None:
        raise NanochatError("rustc not found: install Rust (https://rustup.rs) or Debian's rustc package")
    with tempfile.TemporaryDirectory(prefix="nanochat_he_") as tmp:
        src, exe = os.path.join(tmp, "main.rs"), os.path.join(tmp, "prog")
        with open(src, "w") as f:
            f.write(source)
        cmd = [rustc, "--edition", "2021", "--cap-lints", "allow", "-C", "debuginfo=0", "-o", exe, src]
        if problem.harness == "test":
            cmd.insert(1, "--test")
        code, out = run_limited(cmd, tmp, timeout, no_network=False)
        if code != 0:
            return False, "compile: " + (next((ln for ln in out.splitlines() if ln.startswith("error")), out.strip()[:200]))
        code, out = run_limited([exe], tmp, timeout)
        return code == 0, "ok" if code == 0 else ("timeout" if code is None else f"exit {code}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples of which c pass (Chen et al. 2021, numerically stable form)."""
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def evaluate_completions(problem: Problem, completions: list[str | None], workers: int = 2) -> list[tuple[bool, str]]:
    """Pass/fail of each completion (None: never finished); identical programs are run once."""
    sources = {c: program(problem, c) for c in completions if c is not None}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = dict(zip(sources, pool.map(lambda c: run_program(problem, sources[c]), sources)))
    return [done[c] if c is not None else (False, "unfinished") for c in completions]


def eval_humaneval(model: EvalModel, problems_file: str, n: int = 20, ks: tuple[int, ...] = (1, 10),
                   temperature: float = 0.8, max_new_tokens: int = 384, seed: int = 0, workers: int = 2) -> dict:
    problems = load_problems(problems_file)
    ks = tuple(k for k in ks if k <= n)
    if not ks:
        raise DataError(f"every k must be <= -n ({n})")
    tok = model.tokenizer
    t0 = time.perf_counter()
    rows = []
    for p in problems:
        def finished(out: list[int], p: Problem = p) -> bool:
            return cut_completion(p, tok.decode(out)) is not None

        outs = model.generate([tok.eos_id] + tok.encode(p.prompt), n, max_new_tokens,
                              SamplingParams(temperature=temperature, top_k=50 if temperature > 0 else 0, seed=seed),
                              finished)
        completions = [cut_completion(p, tok.decode(o)) for o in outs]
        results = evaluate_completions(p, completions, workers)
        c = sum(ok for ok, _ in results)
        rows.append({"name": p.name, "n": n, "passed": c, **{f"pass@{k}": pass_at_k(n, c, k) for k in ks},
                     "sample": program(p, completions[0]) if completions[0] is not None else p.prompt + tok.decode(outs[0]),
                     "first_failure": next((why for ok, why in results if not ok), "")})
    summary = {f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows) for k in ks}
    return {"model": str(model.path), "problems": problems_file, "n": n, "temperature": temperature, **summary,
            "seconds": round(time.perf_counter() - t0, 2), "results": rows}
