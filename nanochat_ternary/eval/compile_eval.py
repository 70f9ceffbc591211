"""`nanochat eval compile`: does the model complete held-out functions into Rust that compiles?

Prompts come from the validation split (by default the dataset the checkpoint was trained on):
top-level functions with a `///` doc comment (eval/rust_text.py), given as the file's `use`
lines + doc comment + signature + `{`. Only functions whose ORIGINAL body compiles on its own are
kept (so every prompt is solvable without the rest of its crate), then the model writes the
body until its braces close, and prompt + completion goes through rustc (eval/compile.py: fresh
temporary folder, time and memory limits, test modules type-checked too).
"""

from __future__ import annotations

import time

from ..errors import DataError
from ..infer.sampling import SamplingParams
from .compile import compile_many, first_error
from .documents import validation_documents
from .model_access import EvalModel
from .rust_text import RustFunction, close_index, doc_functions

MAX_PROMPT_CHARS = 1500


def solvable_prompts(docs: list[str], n: int, workers: int = 2) -> list[RustFunction]:
    """Up to n doc-commented functions whose original compiles alone, in document order."""
    found: list[RustFunction] = []
    seen = set()
    candidates = []
    for doc in docs:
        for f in doc_functions(doc):
            if len(f.prompt) <= MAX_PROMPT_CHARS and len(f.body) <= 2000 and f.prompt not in seen:
                seen.add(f.prompt)
                candidates.append(f)
    for i in range(0, len(candidates), 4 * n):
        batch = candidates[i:i + 4 * n]
        for f, r in zip(batch, compile_many([f.prompt + f.body for f in batch], workers=workers)):
            if r.ok:
                found.append(f)
        if len(found) >= n:
            break
    return found[:n]


def eval_compile(model: EvalModel, data: str | None, n: int = 64, max_new_tokens: int = 256,
                 temperature: float = 0.2, seed: int = 0, workers: int = 2) -> dict:
    if data is None:
        if model.data_dir is None:
            raise DataError("--data is needed: a GGUF does not record the dataset it was trained on")
        data = str(model.data_dir)
    t0 = time.perf_counter()
    prompts = solvable_prompts(validation_documents(data), n, workers)
    if not prompts:
        raise DataError(f"{data}: no doc-commented top-level function in the validation split compiles on its own")
    tok = model.tokenizer
    params = SamplingParams(temperature=temperature, top_k=50 if temperature > 0 else 0, seed=seed).validate()
    sources = []
    for i, f in enumerate(prompts):
        ids = [tok.eos_id] + tok.encode(f.prompt)

        def closed(out: list[int], prompt: str = f.prompt) -> bool:
            return close_index(prompt, tok.decode(out)) is not None

        out = model.generate(ids, 1, max_new_tokens, SamplingParams(temperature=params.temperature, top_k=params.top_k,
                                                                     seed=seed + i), closed)[0]
        text = tok.decode(out)
        end = close_index(f.prompt, text)
        sources.append(f.prompt + (text[:end] if end is not None else text))
    results = compile_many(sources, workers=workers)
    rows = [{"name": f.name, "ok": r.ok, "closed": close_index(f.prompt, s[len(f.prompt):]) is not None,
             "error": "" if r.ok else first_error(r.stderr), "source": s} for f, s, r in zip(prompts, sources, results)]
    ok = sum(r["ok"] for r in rows)
    return {"model": str(model.path), "data": data, "n": len(rows), "compiled": ok, "rate": ok / len(rows),
            "temperature": temperature, "max_new_tokens": max_new_tokens, "seconds": round(time.perf_counter() - t0, 2),
            "examples_ok": [r["source"] for r in rows if r["ok"]][:3],
            "examples_failed": [{"source": r["source"], "error": r["error"]} for r in rows if not r["ok"]][:3],
            "results": rows}
