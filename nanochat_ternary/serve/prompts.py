"""From a validated request to a `Job`: prompt tokens, token budget, sampling parameters.

Why this module exists: this is where a request is checked against the model itself (its
context length, its vocabulary, its chat template), so that every impossible request becomes a
400 that says the numbers instead of failing later inside the engine.

Prompts start with BOS (`<|endoftext|>`, the document separator the model saw before every
training document) unless they already do.
"""

from __future__ import annotations

from typing import Any

from ..infer.requests import SamplingParams
from .chat_template import ChatTemplate
from .errors import APIError
from .generation import Job
from .schemas import ChatCompletionRequest, CompletionRequest, GenerationFields

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _with_bos(ids: list[int], bos: int) -> list[int]:
    return ids if ids and ids[0] == bos else [bos] + ids


def _check_model(req: GenerationFields, model_name: str) -> None:
    if req.model != model_name:
        raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{model_name}'.", "model_not_found", "model")


def _budget(prompts: list[list[int]], max_tokens: int | None, n_ctx: int, what: str) -> int:
    """max_tokens to use: the requested one if prompt + it fits the context, else a 400."""
    longest = max(len(p) for p in prompts)
    if max_tokens is None:
        max_tokens = n_ctx - longest
    if longest + max_tokens > n_ctx or max_tokens < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{longest + max_tokens} tokens ({longest} in the {what}, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or the completion.",
            "context_length_exceeded",
            "max_tokens",
        )
    return max_tokens


def _job(req: GenerationFields, chat: bool, model: str, prompts: list[list[int]], max_tokens: int) -> Job:
    params = SamplingParams(
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_k=req.top_k or 0,
        top_p=1.0 if req.top_p is None else float(req.top_p),
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        seed=req.seed,
    )
    return Job(chat, model, prompts, req.n or 1, max_tokens, params, req.stop_list(), bool(req.ignore_eos), req.include_usage(),
               req.speculative)


def plan_completion(req: CompletionRequest, engine: Any, model_name: str) -> Job:
    _check_model(req, model_name)
    tok = engine.tokenizer
    if isinstance(req.prompt, str):
        prompts = [_with_bos(tok.encode(req.prompt), tok.bos_id)]
    elif not req.prompt:
        raise APIError(400, "Invalid value for 'prompt': it must not be an empty list.", "invalid_value", "prompt")
    elif isinstance(req.prompt[0], str):
        prompts = [_with_bos(tok.encode(p), tok.bos_id) for p in req.prompt]  # type: ignore[arg-type]
    else:
        bad = [t for t in req.prompt if not 0 <= t < engine.vocab_size]  # type: ignore[operator]
        if bad:
            raise APIError(400, f"Invalid value for 'prompt': token id {bad[0]} is outside the vocabulary (0..{engine.vocab_size - 1}).",
                           "invalid_value", "prompt")
        prompts = [list(req.prompt)]  # type: ignore[arg-type]
    if len(prompts) * (req.n or 1) > 16:
        raise APIError(400, f"Invalid value for 'n': {len(prompts)} prompts x n={req.n} exceeds 16 choices.", "invalid_value", "n")
    max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    return _job(req, False, model_name, prompts, _budget(prompts, max_tokens, engine.n_ctx, "prompt"))


def plan_chat(req: ChatCompletionRequest, engine: Any, template: ChatTemplate, model_name: str) -> Job:
    _check_model(req, model_name)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        text = template.render(messages, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, f"Invalid value for 'messages': {e}.", "invalid_value", "messages") from e
    tok = engine.tokenizer
    prompts = [_with_bos(tok.encode(text), tok.bos_id)]
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return _job(req, True, model_name, prompts, _budget(prompts, max_tokens, engine.n_ctx, "messages"))
