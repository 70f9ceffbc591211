"""Incremental detokenisation with stop strings, for streaming generated text.

Why this module exists: a byte-level BPE token can end in the middle of a UTF-8 character, and a
stop string can span several tokens. A streaming server must never send half a character and
must never send text that later turns out to be the start of a stop string. `TextStream` holds
back exactly what is still undecided and emits the rest.

Invariant: the held-back text is the longest suffix of the decoded text that is a proper prefix
of some stop string. Hence any stop string completed by new text starts inside the held-back
text or the new text, so searching `held + new` finds every match.
"""

from __future__ import annotations

import codecs
from typing import Protocol


class _BytesDecoder(Protocol):
    def decode_bytes(self, ids: list[int]) -> bytes: ...


class TextStream:
    """Feeds token ids in, gets safe-to-emit text out (see the module docstring)."""

    def __init__(self, tokenizer: _BytesDecoder, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]  # an empty stop string would match everywhere
        # errors="replace": invalid byte sequences become U+FFFD instead of raising mid-stream
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False
        self.text = ""  # all text emitted so far

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to emit ("" once stopped)."""
        if self.stopped:
            return ""
        return self._advance(self._decoder.decode(self.tokenizer.decode_bytes([token_id])), final=False)

    def flush(self) -> str:
        """End of generation: return the held-back text (a dangling partial character as U+FFFD)."""
        if self.stopped:
            return ""
        return self._advance(self._decoder.decode(b"", final=True), final=True)

    def _advance(self, new: str, final: bool) -> str:
        pending = self._held + new
        match = self._first_stop(pending)
        if match is not None:
            out, self._held, self.stopped = pending[:match], "", True
        else:
            keep = 0 if final else self._partial_stop_suffix(pending)
            out, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.text += out
        return out

    def _first_stop(self, text: str) -> int | None:
        """Start index of the earliest stop string in `text`, or None."""
        starts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(starts) if starts else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
