"""Rendering chat messages into a prompt with the chat template stored in the GGUF.

Why this module exists: the model was trained on one exact conversation format, and that format
travels with the model (`tokenizer.chat_template` in the GGUF metadata), so the server must
render it rather than hard-code ChatML. The template is untrusted input (it comes from a model
file), so it runs in jinja2's immutable sandbox, like HF transformers does.
"""

from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import FormatError


def _raise_exception(message: str) -> None:
    """HF templates call `raise_exception(...)` to reject a conversation they cannot format."""
    raise TemplateError(message)


class ChatTemplate:
    """A compiled chat template; `render(messages)` gives the prompt text."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "chat template"):
        if not isinstance(source, str) or not source.strip():
            raise FormatError(f"{origin}: the model has no chat template")
        # trim_blocks / lstrip_blocks as in HF transformers' apply_chat_template
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise FormatError(f"{origin}: invalid jinja2 chat template ({e})") from e
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Raises ValueError (a bad conversation for this template) with jinja's message."""
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except TemplateError as e:
            raise ValueError(f"the chat template rejected the messages: {e}") from e
