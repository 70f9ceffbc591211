"""The engine and its scheduler in a child process, driven over a pipe (`nanochat serve`'s default).

Why this module exists: in one process, the HTTP event loop and the scheduler thread share one
interpreter lock. Each streamed token costs the HTTP side about 40 us of Python (SSE formatting,
Starlette, uvicorn's socket write). At 8 clients on 2 cores the scheduler's engine call waited
for the lock about as long as the HTTP thread ran (0.3 ms of a 1 ms step, measured). In a child
process the scheduler has an interpreter of its own, and the two sides exchange one message per
decode step. vLLM's V1 engine core runs in its own process for the same reason.

The child runs the unchanged `infer.scheduler.Scheduler`; its main thread reads commands, and
the events of each decode step leave from the scheduler thread in one message (`_Pipe` stands in
for the event loop a request came from, `_Outbox` for its queue).
The parent holds an `EngineProcess`, which has the Scheduler's public surface (submit, cancel,
the gauges /metrics reads), so app.py serves either one.

The child is `python -m nanochat_ternary.serve.engine_process FD`, started with subprocess (not
multiprocessing's spawn, which imports the parent's main script again in the child), and the two
talk over a socket pair with `multiprocessing.connection.Connection` messages: pickled tuples
between two processes of this program, never data from outside.
  parent -> child: ("start", engine_kwargs, max_batch, speculative) once, then
                   ("submit", rid, GenerationRequest, index), ("cancel", rid), ("stop",)
  child -> parent: ("ready", EngineInfo) or ("failed", message) once, then
                   ("events", [(rid, Event)], (batch size, decode steps)) per decode step, and
                   ("failed", message) if the scheduler thread fails
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multiprocessing.connection import Connection

from ..errors import NanochatError
from ..infer.requests import EngineUnavailable, Event, GenerationRequest, QueueFull

if TYPE_CHECKING:  # imported by the child only (it loads PyTorch)
    from ..infer.scheduler import Scheduler

_CHILD_QUEUE = 1 << 30  # the parent enforces --max-queue; the child takes whatever it is sent


@dataclass
class EngineInfo:
    """What the HTTP side needs of the engine (prompts.py, app.py): no weights."""

    name: str
    tokenizer: Any
    chat_template: str
    n_ctx: int
    vocab_size: int
    n_mtp: int
    backend: str
    can_speculate: bool


# ---- child ---------------------------------------------------------------------------------
class _Outbox:
    """A request's event queue in the child: the scheduler's events join the step's message."""

    __slots__ = ("rid", "pipe")

    def __init__(self, rid: int, pipe: "_Pipe"):
        self.rid, self.pipe = rid, pipe

    def put_nowait(self, event: Event) -> None:
        self.pipe.pending.append((self.rid, event))
        if event.finish_reason is not None:
            self.pipe.handles.pop(self.rid, None)


class _Pipe:
    """The child's stand-in for the event loop a request was submitted from: the scheduler
    thread's `call_soon_threadsafe(_put_all, batch)` (one per decode step) runs at once, in that
    thread, and the step's events leave in one message."""

    def __init__(self, conn: Connection, scheduler: Scheduler):
        self.conn, self.scheduler = conn, scheduler
        self.handles: dict[int, Any] = {}
        self.pending: list[tuple[int, Event]] = []
        self.lock = threading.Lock()  # the scheduler thread and the reader both send

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        with self.lock:
            fn(*args)  # scheduler._put_all: each event goes through its _Outbox into `pending`
            batch, self.pending = self.pending, []
            s = self.scheduler
            try:
                self.conn.send(("events", batch, (s.batch_size, s.decode_steps_total)))
            except OSError:  # the parent is gone: the reader sees the pipe close and stops
                pass

    def serve(self) -> None:
        """Commands until ("stop",) or the parent's end closes; then stop the scheduler."""
        self.scheduler.start()
        try:
            while True:
                try:
                    if not self.conn.poll(0.5):
                        if self.scheduler.failure:  # its requests have had their error events
                            self.conn.send(("failed", self.scheduler.failure))
                            return
                        continue
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    return
                if msg[0] == "submit":
                    _, rid, request, index = msg
                    try:
                        handle = self.scheduler.submit(request, _Outbox(rid, self), index, loop=self)
                    except Exception as e:  # validated by the parent already; answer rather than hang
                        self.call_soon_threadsafe(_Outbox(rid, self).put_nowait, Event(index, "", 0, "error", str(e)))
                        continue
                    with self.lock:  # unless it has finished already (its last event went out under the lock)
                        if not handle.finished:
                            self.handles[rid] = handle
                elif msg[0] == "cancel":
                    handle = self.handles.pop(msg[1], None)
                    if handle is not None:
                        handle.cancel()
                elif msg[0] == "stop":
                    return
        finally:
            self.scheduler.stop()  # requests still running end with an error event, sent as the others


def _child_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    try:
        _, engine_kwargs, max_batch, speculative = conn.recv()
        from ..infer.engine import Engine  # the child's imports: PyTorch is loaded here, not in the server
        from ..infer.scheduler import Scheduler

        engine = Engine.load(**engine_kwargs)
        scheduler = Scheduler(engine, max_batch=max_batch, max_queue=_CHILD_QUEUE, speculative=speculative)
    except EOFError:  # the parent is gone
        return
    except Exception as e:
        conn.send(("failed", str(e) or type(e).__name__))
        return
    try:
        conn.send(("ready", EngineInfo(engine.name, engine.tokenizer, engine.chat_template, engine.n_ctx, engine.vocab_size,
                                       engine.n_mtp, engine.backend, scheduler.can_speculate)))
    except OSError:  # the parent went away while the model loaded
        return
    _Pipe(conn, scheduler).serve()


# ---- parent --------------------------------------------------------------------------------
class _Handle:
    """What `EngineProcess.submit` returns, as Scheduler.submit's RequestHandle: `queue`, `cancel()`."""

    __slots__ = ("rid", "queue", "index", "owner", "finished", "cancelled")

    def __init__(self, rid: int, queue: Any, index: int, owner: "EngineProcess"):
        self.rid, self.queue, self.index, self.owner = rid, queue, index, owner
        self.finished = self.cancelled = False

    def cancel(self) -> None:
        self.owner._cancel(self)


class EngineProcess:
    """Starts the child (Engine.load(**engine_kwargs) + Scheduler) and waits until it is ready or
    has failed (NanochatError with its message). `start()` and `stop()` run on the server's event
    loop (the app's lifespan); `submit` raises QueueFull as Scheduler.submit does, and
    EngineUnavailable once the engine has stopped for good (`failure` says why)."""

    def __init__(self, engine_kwargs: dict, max_batch: int = 8, max_queue: int = 64, speculative: bool = False,
                 timeout: float = 600.0):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.max_batch, self.max_queue, self.speculative = max_batch, max_queue, speculative
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=[theirs.fileno()])
        self._conn = Connection(ours.detach())
        self._conn.send(("start", engine_kwargs, max_batch, speculative))
        self.info: EngineInfo = self._wait_ready(timeout)
        self.can_speculate = self.info.can_speculate
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: str | None = None  # why submit refuses: stopping, or the child exited
        self.failure: str | None = None  # why the engine stopped for good (the child exited, or its scheduler failed)
        self.last_batch_size = self.decode_steps_total = 0  # as of the child's last message
        self.cancelled_total = 0

    def _wait_ready(self, timeout: float) -> EngineInfo:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise NanochatError(f"the engine process {self._exit()} before it had loaded the model")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._kill()
            raise NanochatError(f"the engine process {self._exit()} while loading the model") from None
        if kind != "ready":
            self._kill()
            raise NanochatError(payload)
        return payload

    def _exit(self) -> str:
        code = self._proc.poll()
        return "did not answer" if code is None else f"exited (code {code})"

    # the gauges /metrics and /health read, from this side's count of requests in flight (the
    # child admits a waiting request as soon as a slot frees, and says nothing when it goes idle)
    @property
    def in_flight(self) -> int:
        return len(self._handles)

    @property
    def active(self) -> int:
        return min(len(self._handles), self.max_batch)

    @property
    def queued(self) -> int:
        return max(0, len(self._handles) - self.max_batch)

    @property
    def batch_size(self) -> int:
        return self.last_batch_size if self._handles else 0

    def start(self) -> "EngineProcess":
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._on_message)
        return self

    def submit(self, request: GenerationRequest, queue: Any = None, index: int = 0) -> _Handle:
        """Queue a request (from the event loop); the same checks and errors as Scheduler.submit."""
        if not request.prompt:
            raise ValueError("the prompt must hold at least one token")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        request.params.validate()  # here, where the error can still be a 400
        if self.failure:
            raise EngineUnavailable(self.failure)
        if self._closed:
            raise QueueFull(self._closed)
        if len(self._handles) >= self.max_batch + self.max_queue:
            raise QueueFull(f"too many requests: {len(self._handles)} in flight (max_batch={self.max_batch}, "
                            f"max_queue={self.max_queue})")
        handle = _Handle(next(self._ids), queue if queue is not None else asyncio.Queue(), index, self)
        try:
            self._conn.send(("submit", handle.rid, request, index))
        except OSError:  # the child died; its end of the pipe is not read yet
            self._lost()
            raise EngineUnavailable(self.failure) from None
        self._handles[handle.rid] = handle
        return handle

    def _cancel(self, handle: _Handle) -> None:
        if handle.finished or handle.cancelled:
            return
        handle.cancelled = True
        self.cancelled_total += 1
        self._handles.pop(handle.rid, None)
        if not self._closed:
            try:
                self._conn.send(("cancel", handle.rid))
            except OSError:  # the child died: _on_message will see it
                pass

    def _on_message(self) -> None:
        try:
            kind, *msg = self._conn.recv()
        except (EOFError, OSError):
            self._lost()
            return
        if kind == "failed":  # the child's scheduler thread failed (it has ended its requests)
            self.failure = msg[0]
            self._close(self.failure)
            return
        batch, stats = msg
        self.last_batch_size, self.decode_steps_total = stats
        handles = self._handles
        for rid, event in batch:
            handle = handles.get(rid)
            if handle is None:  # cancelled meanwhile
                continue
            if event.finish_reason is not None:
                del handles[rid]
                handle.finished = True
            handle.queue.put_nowait(event)

    def _lost(self) -> None:
        """The child exited (or closed its end) without being asked to."""
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if not self._closed:
            self.failure = f"the engine process {self._exit()}"
            self._close(self.failure)

    def _close(self, why: str) -> None:
        """No more requests; those in flight end with an error event."""
        if self._closed:
            return
        self._closed = why
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        for handle in list(self._handles.values()):
            handle.finished = True
            handle.queue.put_nowait(Event(handle.index, "", 0, "error", why))
        self._handles.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (its scheduler first); requests in flight end with finish_reason "error"."""
        if not self._closed:
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
        self._close("the server is shutting down")
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._kill()
        self._conn.close()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":  # the child; run from the module's own name, so that what it pickles names that module
    from nanochat_ternary.serve.engine_process import _child_main as child_main

    child_main(Connection(int(sys.argv[1])))
