"""Running the app on uvicorn: in the foreground (`nanochat serve`) or in a background thread.

Why this module exists: the benchmark and the tests need a real server on a free loopback
port inside the current process; binding port 0 lets the OS pick the port with no race, and
`ServerThread` reports the port it got once uvicorn is accepting connections.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from ..errors import NanochatError


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> uvicorn.Server:
    # h11 is uvicorn's pure-Python HTTP implementation: always installed, no compiled extras
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http="h11",
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
