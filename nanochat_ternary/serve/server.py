"""Running the app on uvicorn: in the foreground (`nanochat serve`), in a background thread, or
as a child process.

Why this module exists: the tests need a real server on a free loopback port inside the current
process (`ServerThread`: binding port 0 lets the OS pick the port with no race, and it reports
the port it got once uvicorn is accepting connections); the benchmark needs one in its own
process (`ServerProcess`), as it is deployed, so that the clients it drives do not share the
server's interpreter lock.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import uvicorn

from ..errors import NanochatError


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> uvicorn.Server:
    # http="auto": httptools (a dependency: ~15-20% more streamed tokens/s at 8 clients on 2
    # cores), or h11, uvicorn's pure-Python implementation, where httptools cannot be installed;
    # loop="auto": uvloop (a dependency off Windows: the HTTP thread's CPU a streamed token at 8
    # clients 40-45 us against asyncio's 51-52), else asyncio's own loop
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http="auto", loop="auto",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


class ServerThread:
    """`with ServerThread(app) as srv: httpx.get(srv.url + "/health")`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server = make_server(app, host, port, log_level)
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="nanochat-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise NanochatError(f"the server failed to start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise NanochatError(f"the server did not start within {timeout:.0f}s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_threads() -> int:
    """Engine compute threads for serving: every core the process may use but one, which is left
    to the HTTP event loop (on 2 cores, 2 compute threads made 8 streaming clients ~20% slower
    than 1: the event loop and the kernels' threads took turns on the same cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`nanochat serve ARGS` as a child process on a free loopback port; `with` waits until
    /health answers and stops the server (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, serve_args: list[str], host: str = "127.0.0.1", timeout: float = 120.0, env: dict | None = None):
        self.host, self.port, self.timeout, self.env = host, free_port(host), timeout, env
        self.args = [sys.executable, "-m", "nanochat_ternary.cli", "serve", *serve_args, "--host", host, "--port", str(self.port)]
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, text=True, env=self.env)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self._log.seek(0)
                why = "exited" if self.proc.returncode is not None else f"did not answer within {self.timeout:.0f}s"
                raise NanochatError(f"the server process {why}:\n{self._log.read()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()
