"""Continuous batching: many requests share one Engine through one background thread.

Why this module exists: the Engine is not thread-safe and a batched decode step costs little
more than a single one, so one thread owns the Engine and loops (Orca-style iteration-level
scheduling, https://www.usenix.org/conference/osdi22/presentation/yu):

1. drop cancelled sequences (their state, i.e. their KV cache, is freed with them);
2. admit waiting requests into free slots (up to `max_batch`), prefill them in one batched
   forward, sample each one's first token;
3. one batched `engine.decode` for every active sequence, then one batched sampling call in which
   each sequence draws from its own Sampler. Requests that speculate (`speculative`, or the
   scheduler's default) instead feed their MTP-head drafts in that same forward and keep the
   accepted ones (speculative_batch.py: lossless for sampled requests, exact for greedy ones),
   at the batch sizes where drafting measured faster (spec_policy.py).

Each generated token becomes an `Event` pushed into the request's asyncio queue with
`loop.call_soon_threadsafe`, so the HTTP layer just awaits its queue. Every request samples
with its own seeded generator, so a `seed` reproduces its text however it was batched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from . import speculative_batch as spec
from .spec_policy import SpecPolicy
from .requests import EngineUnavailable, Event, GenerationRequest, QueueFull
from .sampling import Sampler, SamplingParams, sample_batch
from .stream import TextStream

log = logging.getLogger(__name__)


# prompt tokens prefilled in one forward at most (unless a single prompt is longer): the batched
# prefill's activations stay those of one long prompt
PREFILL_GROUP_TOKENS = 2048


class RequestHandle:
    """What `submit` returns: the event queue to await, and `cancel()` to give up the slot."""

    def __init__(self, request: GenerationRequest, sampler: Sampler, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop, index: int, scheduler: "Scheduler"):
        self.request, self.sampler, self.queue, self.loop, self.index = request, sampler, queue, loop, index
        self.cancelled = False
        self.finished = False  # set by the scheduler thread before it delivers the last event
        self._scheduler = scheduler

    def cancel(self) -> None:
        """Stop generating (client went away): removed from the wait queue now, or from the
        batch at the scheduler's next iteration."""
        self._scheduler._cancel(self)


def _put_all(batch: list[tuple["RequestHandle", Event]]) -> None:
    for handle, event in batch:
        handle.queue.put_nowait(event)


def _deliver_batch(loop: asyncio.AbstractEventLoop, batch: list[tuple[RequestHandle, Event]]) -> None:
    """Hand events to an event loop in ONE thread-safe call (one wake-up per decode step, not
    one per sequence: with many sequences the wake-ups would cost more than the decode)."""
    try:
        loop.call_soon_threadsafe(_put_all, batch)
    except RuntimeError:  # the event loop is closed: nobody is listening any more
        for handle, _ in batch:
            handle.cancelled = True


@dataclass
class _Sequence:
    handle: RequestHandle
    state: Any  # the Engine's SeqState
    sampler: Sampler
    stream: TextStream
    history: list[int]  # prompt + generated, for the repetition penalty
    generated: int = 0
    last_token: int = -1


def _release(state: Any) -> None:
    """Free a sequence's cache now, in the scheduler thread, rather than whenever it is collected."""
    release = getattr(state, "release", None)
    if release is not None:
        release()


class Scheduler:
    """Owns an Engine in a background thread; see the module docstring."""

    def __init__(self, engine: Any, max_batch: int = 8, max_queue: int = 64, speculative: bool = False):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        tok = engine.tokenizer
        self.stop_ids = {tok.eos_id, tok.im_end_id}
        # a model's vocabulary may be padded beyond the tokenizer's (a BPE can come out smaller
        # than asked for): never sample an id that has no text
        self.n_sampled = min(engine.vocab_size, tok.vocab_size)
        self._cond = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()
        self._active: list[_Sequence] = []  # touched only by the scheduler thread
        self._n_active = 0  # slots taken (admitted, not finished); guarded by _cond
        self._stopping = False
        self._thread: threading.Thread | None = None
        # counters for /metrics (read without the lock: plain ints, written by one thread)
        self.batch_size = 0  # size of the last decode step (0 when idle)
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        self.decode_steps_total = 0
        self.cancelled_total = 0
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Event]]] = {}
        # speculative decoding (speculative_batch.py): the default for requests that do not say;
        # models that cannot speculate (no MTP heads, DeltaNet layers) decode every request plainly
        self.can_speculate = spec.supported(engine)
        self.speculative = speculative
        self.spec = spec.SpecCounters()
        self.spec_policy = SpecPolicy()  # which batch sizes draft (greedy and unseeded requests)
        self.failure: str | None = None  # why the engine cannot serve any more (the loop failed); None while it can

    # ---- public API ------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self._n_active

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._waiting) + self._n_active

    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nanochat-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still queued or running end with finish_reason "error"."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._end_all("the server is shutting down")

    def submit(self, request: GenerationRequest, queue: asyncio.Queue | None = None, index: int = 0, loop: Any = None) -> RequestHandle:
        """Queue a request; call from a running event loop, or give `loop`: any object whose
        `call_soon_threadsafe(fn, batch)` hands a step's events over (engine_process.py's pipe).
        Raises QueueFull when the wait queue (`max_queue` beyond the free slots) is full,
        ValueError on an impossible request."""
        if not request.prompt:
            raise ValueError("the prompt must hold at least one token")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        sampler = Sampler(request.params)  # validates the parameters before queueing
        if self.failure:
            raise EngineUnavailable(self.failure)
        loop = loop if loop is not None else asyncio.get_running_loop()
        handle = RequestHandle(request, sampler, queue if queue is not None else asyncio.Queue(), loop, index, self)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            free = max(0, self.max_batch - self._n_active)
            if len(self._waiting) >= self.max_queue + free:
                raise QueueFull(f"too many requests: {self._n_active} running and {len(self._waiting)} waiting (max_queue={self.max_queue})")
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    # ---- scheduler thread ------------------------------------------------------------------
    def _cancel(self, handle: RequestHandle) -> None:
        with self._cond:
            if handle.cancelled or handle.finished:
                return
            handle.cancelled = True
            self.cancelled_total += 1
            try:
                self._waiting.remove(handle)
            except ValueError:
                pass  # already admitted: the loop drops it at its next iteration
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug, not one request's failure (those end that request only)
            log.exception("the scheduler thread failed")
            self._fail_all(f"the scheduler failed ({type(e).__name__}: {e})")

    def _fail_all(self, why: str) -> None:
        """Refuse new requests (EngineUnavailable) and end every queued or running one with an error."""
        self.failure = why
        self._end_all(why)

    def _end_all(self, why: str) -> None:
        """End every queued or running request with an error event `why` (stop, or a failed loop)."""
        with self._cond:
            leftovers = list(self._waiting) + [s.handle for s in self._active if not s.handle.finished]
            self._waiting.clear()
            self._active.clear()
            self._n_active = 0
        self._outbox = {}  # a failed step's events: its requests get the error instead
        for h in leftovers:
            h.finished = True
            _deliver_batch(h.loop, [(h, Event(h.index, "", 0, "error", why))])

    def _loop(self) -> None:
        torch.set_flush_denormal(True)
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self.batch_size = 0
                    self._cond.wait()
                if self._stopping:
                    return
                admit: list[RequestHandle] = []
                while self._waiting and self._n_active < self.max_batch:
                    admit.append(self._waiting.popleft())
                    self._n_active += 1
            self._drop_cancelled()
            t0, before = time.perf_counter(), self.generated_tokens_total
            if admit:
                self._admit_all(admit)
            choice = self._decode_step() if self._active else None
            self._flush_outbox()
            if choice is not None and not admit:  # the whole step, its events' delivery included
                self.spec_policy.record(*choice, self.generated_tokens_total - before, time.perf_counter() - t0)

    def _emit(self, handle: RequestHandle, event: Event) -> None:
        self._outbox.setdefault(handle.loop, []).append((handle, event))

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, batch in outbox.items():
            _deliver_batch(loop, batch)

    def _finish(self, seq: _Sequence | None, handle: RequestHandle, event: Event) -> None:
        handle.finished = True
        with self._cond:
            if seq is not None and seq in self._active:
                self._active.remove(seq)
            self._n_active -= 1
        if seq is not None:
            _release(seq.state)
        self._emit(handle, event)  # after freeing: a client that sees the end sees the slot free

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.handle.cancelled]:
            with self._cond:
                self._active.remove(seq)
                self._n_active -= 1
            _release(seq.state)

    def _admit_all(self, handles: list[RequestHandle]) -> None:
        """Prefill the admitted requests in batched forwards (Engine.prefill_batch: per request
        costs such as the Python around each forward are paid once per group; a group holds at
        most PREFILL_GROUP_TOKENS prompt tokens, or one prompt, so that its activations take no
        more memory than one long prompt's), then sample each one's first token."""
        seqs = [seq for seq in map(self._new_sequence, handles) if seq is not None]
        group: list[_Sequence] = []
        tokens = 0
        for seq in seqs:
            n = len(seq.handle.request.prompt)
            if group and tokens + n > PREFILL_GROUP_TOKENS:
                self._prefill_group(group)
                group, tokens = [], 0
            group.append(seq)
            tokens += n
        if group:
            self._prefill_group(group)

    def _prefill_group(self, seqs: list[_Sequence]) -> None:
        """One batched prefill; when it fails (one bad prompt, say) the sequences prefill one by
        one, so that only the request at fault ends with an error."""
        if len(seqs) > 1:
            try:
                logits = self.engine.prefill_batch([s.state for s in seqs], [list(s.handle.request.prompt) for s in seqs])
            except Exception:
                log.debug("batched prefill failed; prefilling one by one", exc_info=True)
                for seq in seqs:  # fresh states: the failed forward may have advanced some
                    _release(seq.state)
                    seq.state = self.engine.new_state()
            else:
                for seq, row in zip(seqs, logits):
                    self._start(seq, row)
                return
        for seq in seqs:
            self._prefill_one(seq)

    def _new_sequence(self, handle: RequestHandle) -> _Sequence | None:
        """An admitted request's sequence with a fresh cache slot (None: it was cancelled, or
        failed and has been answered)."""
        if handle.cancelled:
            with self._cond:
                self._n_active -= 1
            return None
        req = handle.request
        seq = _Sequence(handle, None, handle.sampler, TextStream(self.engine.tokenizer, req.stop), list(req.prompt))
        try:
            seq.state = self.engine.new_state()
        except Exception as e:
            log.exception("no cache slot")
            self._finish(None, handle, Event(handle.index, "", 0, "error", f"prefill failed: {e}"))
            return None
        return seq

    def _prefill_one(self, seq: _Sequence) -> None:
        try:
            logits = self.engine.prefill(seq.state, list(seq.handle.request.prompt))
        except Exception as e:  # an engine failure ends this request, not the server
            log.exception("prefill failed")
            _release(seq.state)
            self._finish(None, seq.handle, Event(seq.handle.index, "", 0, "error", f"prefill failed: {e}"))
            return
        self._start(seq, logits)

    def _start(self, seq: _Sequence, logits: torch.Tensor) -> None:
        """A prefilled sequence joins the batch with its first token."""
        self.prompt_tokens_total += len(seq.handle.request.prompt)
        with self._cond:
            self._active.append(seq)
        self._sample(seq, logits)

    def _drafts_for(self, seq: _Sequence) -> int:
        req = seq.handle.request
        wanted = self.speculative if req.speculative is None else req.speculative
        if not (wanted and self.can_speculate):
            return 0
        return spec.draft_count(self.engine.n_mtp, seq.state.length, self.engine.n_ctx, req.max_tokens - seq.generated)

    def _decode_step(self) -> tuple[int, bool] | None:
        """One step for every active sequence; (batch size, drafted) when the speculation policy
        chose, for _loop to time the step against."""
        batch = list(self._active)
        self.batch_size = len(batch)
        counts = [self._drafts_for(s) for s in batch]
        if not any(counts):
            self._plain_step(batch)
            return None
        # drafting is a speed choice for greedy requests (exact either way) and unseeded ones; a
        # seeded sampled request's text depends on it, so those draft whenever they ask
        if not self.spec_policy.draft(len(batch)):
            counts = [c if s.sampler.params.temperature > 0 and s.sampler.params.seed is not None else 0 for s, c in zip(batch, counts)]
        if any(counts):
            self._speculative_step(batch, counts)
        else:
            self._plain_step(batch)
        return len(batch), any(counts)

    def _plain_step(self, batch: list[_Sequence]) -> None:
        """One batched decode forward and one batched sampling call for the whole batch."""
        try:
            logits = self.engine.decode([s.state for s in batch], [s.last_token for s in batch])
        except Exception as e:
            self._fail_batch(batch, e, "decode")
            return
        self.decode_steps_total += 1
        try:  # the whole batch at once (sampling.sample_batch) ...
            tokens = sample_batch([s.sampler for s in batch], logits[:, : self.n_sampled], [s.history for s in batch])
        except Exception:  # ... or, when some row fails, one by one so that only that request ends
            for i, seq in enumerate(batch):
                self._sample(seq, logits[i])
            return
        for seq, token in zip(batch, tokens):
            self._on_token(seq, token)

    def _fail_batch(self, batch: list[_Sequence], e: Exception, what: str) -> None:
        """A forward failed: every sequence of the batch ends with an error event."""
        log.exception("%s failed", what)
        for seq in batch:
            self._finish(seq, seq.handle, Event(seq.handle.index, "", seq.generated, "error", f"decode failed: {e}"))

    def _speculative_step(self, batch: list[_Sequence], counts: list[int]) -> None:
        """One verify forward for the whole batch: drafting sequences feed [x, drafts], the others [x]."""
        drafts: list[spec.Draft | None] = [None] * len(batch)
        starts = [s.state.length for s in batch]
        try:
            drafting = [i for i, c in enumerate(counts) if c]
            mtp = self.engine.mtp_logits_batch(torch.stack([batch[i].state.last_z for i in drafting]))[..., : self.n_sampled]
            for row, i in enumerate(drafting):
                drafts[i] = spec.make_drafts(mtp[row], batch[i].sampler, batch[i].history, counts[i])
            results = spec.step(self.engine, [s.state for s in batch], [s.last_token for s in batch], drafts)
        except Exception as e:
            self._fail_batch(batch, e, "speculative decode")
            return
        self.decode_steps_total += 1
        for seq, draft, start, (logits, zs) in zip(batch, drafts, starts, results):
            if draft is None:
                self._sample(seq, logits[0])
                continue
            try:
                tokens = spec.accept(logits[:, : self.n_sampled], draft, seq.sampler, seq.history)
                spec.rollback(self.engine, seq.state, start, len(tokens) - 1, zs)
            except Exception as e:  # a failure of one sequence must not stop the others
                log.exception("speculative sampling failed")
                self._finish(seq, seq.handle, Event(seq.handle.index, "", seq.generated, "error", f"sampling failed: {e}"))
                continue
            self.spec.steps += 1
            self.spec.drafted += len(draft.tokens)
            self.spec.accepted += len(tokens) - 1
            for token in tokens:
                self._on_token(seq, token)
                if seq.handle.finished:
                    break

    def _sample(self, seq: _Sequence, logits: torch.Tensor) -> None:
        try:
            self._on_token(seq, seq.sampler(logits[: self.n_sampled], seq.history))
        except Exception as e:  # a failure of one sequence must not stop the others
            log.exception("sampling failed")
            if not seq.handle.finished:
                self._finish(seq, seq.handle, Event(seq.handle.index, "", seq.generated, "error", f"sampling failed: {e}"))

    def _on_token(self, seq: _Sequence, token: int) -> None:
        """Account one sampled token: stream its text, and end the request when it is done."""
        req, handle = seq.handle.request, seq.handle
        seq.generated += 1
        seq.history.append(token)
        seq.last_token = token
        self.generated_tokens_total += 1
        finish = None
        if token in self.stop_ids and not req.ignore_eos:
            text, finish = seq.stream.flush(), "stop"
        else:
            text = seq.stream.push(token)
            if seq.stream.stopped:
                finish = "stop"
            elif seq.generated >= req.max_tokens or seq.state.length >= self.engine.n_ctx:
                # no room to feed this token back: the context is full
                text, finish = text + seq.stream.flush(), "length"
        if finish is None:
            self._emit(handle, Event(handle.index, text, seq.generated, token_id=token))
        else:
            self._finish(seq, handle, Event(handle.index, text, seq.generated, finish, token_id=token))
