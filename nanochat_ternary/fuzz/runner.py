"""Run fuzz cases against one format's loader and count what happened.

Why this module exists: the loaders promise three things for any file (issue 17): the only
exception is the documented one, the answer comes in under a second, and no file that is invalid
by construction is accepted. A target (one per format, see targets.py) builds a valid seed file
and mutates it; this runner writes each mutant, times the load under a 1-second alarm, and
classifies the outcome. Case i of a run is rebuilt from (seed, format, i) alone, so any failure
it lists can be replayed with `--only`.
"""

from __future__ import annotations

import random
import resource
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HANG_SECONDS = 1.0


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in a loader swallows it."""


@dataclass
class Case:
    files: dict[str, bytes]  # file name (relative to the case folder) -> content
    kind: str  # the mutation class, e.g. "lie", "truncate"
    must_reject: bool  # invalid by construction (unless `benign` says the result is the original)


@dataclass
class Target:
    """One format: a seed builder, a mutator, a loader and a check of what was accepted."""

    name: str
    error: type  # the documented exception
    mutate: Callable[[random.Random], Case]
    load: Callable[[Path], object]  # loads the case folder; returns what a user would get
    accepted_problem: Callable[[object, Case], str | None]  # None: accepting it was right
    benign: Callable[[object], bool] = lambda obj: False  # the result equals the original's


def _on_alarm(signum, frame):
    raise Hang()


def run_cases(target: Target, workdir: Path, cases: int, seed: int = 0, only: list[int] | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    counts = {"rejected": 0, "accepted": 0, "accepted_original": 0, "crash": 0, "hang": 0, "accepted_invalid": 0}
    by_kind: dict[str, dict[str, int]] = {}
    failures: list[dict] = []
    times: list[float] = []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for i in (only if only is not None else range(cases)):
            case = target.mutate(random.Random(f"{seed}:{target.name}:{i}"))
            folder = workdir / "case"
            folder.mkdir(exist_ok=True)
            for name, content in case.files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(content)
            outcome, detail, elapsed = "rejected", "", None
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS * 3)  # the alarm ends a hang; > 1 s still counts as one
            try:
                result = target.load(folder)
                signal.setitimer(signal.ITIMER_REAL, 0)
                elapsed = time.perf_counter() - t0  # the promise is about the loader, not the checks below
                if case.must_reject and not target.benign(result):
                    outcome, detail = "accepted_invalid", f"{case.kind}: an invalid file was accepted"
                else:
                    problem = target.accepted_problem(result, case)
                    outcome = "accepted_invalid" if problem else ("accepted_original" if target.benign(result) else "accepted")
                    detail = problem or ""
            except Hang:
                outcome, detail = "hang", "no answer within the alarm"
            except target.error:
                signal.setitimer(signal.ITIMER_REAL, 0)
            except BaseException as e:  # noqa: BLE001 - counting these is the point; a Rust panic
                # inside `tokenizers` (pyo3's PanicException) is a BaseException, not an Exception
                signal.setitimer(signal.ITIMER_REAL, 0)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                outcome, detail = "crash", "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - t0 if elapsed is None else elapsed
            if elapsed > HANG_SECONDS and outcome != "hang":
                outcome, detail = "hang", f"took {elapsed:.2f} s"
            times.append(elapsed)
            counts[outcome] += 1
            by_kind.setdefault(case.kind, {}).setdefault(outcome, 0)
            by_kind[case.kind][outcome] += 1
            if outcome in ("crash", "hang", "accepted_invalid") and len(failures) < 20:
                failures.append({"case": i, "kind": case.kind, "outcome": outcome, "detail": detail})
            for name in case.files:
                (folder / name).unlink(missing_ok=True)
    finally:
        signal.signal(signal.SIGALRM, old)
    times.sort()
    n = len(times)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "format": target.name, "cases": n, "seed": seed, **counts, "by_kind": by_kind,
        "ok": counts["crash"] == counts["hang"] == counts["accepted_invalid"] == 0,
        "seconds_p50": times[n // 2] if n else 0.0, "seconds_p99": times[min(n - 1, int(n * 0.99))] if n else 0.0,
        "seconds_max": times[-1] if n else 0.0, "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),
        "failures": failures,
    }
