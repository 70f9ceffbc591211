"""SIGTERM / Ctrl-C during training: finish the step, checkpoint, say how to resume, exit cleanly.

Why this module exists: a cluster's scheduler sends SIGTERM before it kills a job, and a user
presses Ctrl-C; both should cost at most the step in progress, not the work since the last
periodic checkpoint. The first signal only sets a flag that the training loop reads after each
step (so the checkpoint is written from a consistent state, never from inside a handler); a
second signal exits at once with os._exit(128 + signal number) (143 for SIGTERM, 130 for
Ctrl-C: not 0, since no checkpoint of the last steps was written). That is safe because checkpoints are written to a
temporary folder and renamed (checkpoint.py): a save cut short leaves `latest` on the previous
complete checkpoint, and the next save removes the leftover.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_CODES = {"SIGTERM": 0, "SIGINT": 130}  # 130 = 128 + SIGINT, the shell's convention for Ctrl-C


class GracefulStop:
    """`with GracefulStop() as stop: ... if stop.requested: save and leave`."""

    def __init__(self):
        self.requested: str | None = None  # "SIGTERM" or "SIGINT" once a signal arrived
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # the second signal: leave now
            os.write(2, f"\n{name} again: exiting now without a checkpoint (the previous one is intact)\n".encode())
            os._exit(128 + signum)  # the shell's "killed by this signal": 143 for SIGTERM, 130 for SIGINT
        self.requested = name
        os.write(2, f"\n{name} received: finishing this step and writing a checkpoint (send it again to exit at once)\n".encode())

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.requested is not None:
            # A stop is under way: the process is leaving. Keep our handlers so that a second
            # signal during the rest of the shutdown still exits at once with the right code
            # (the default SIGINT handler would raise KeyboardInterrupt mid-shutdown instead).
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def exit_code(self) -> int:
        return EXIT_CODES.get(self.requested or "", 0)


def resume_hint(run_dir, step: int) -> str:
    args = " ".join(a for a in sys.argv[1:] if a != "--resume")
    return f"stopped at step {step}; checkpoint saved. Resume with: nanochat {args} --resume (run dir {run_dir})"
