"""Training metrics to TensorBoard (`<run-dir>/tensorboard`) and to `<run-dir>/metrics.jsonl`.

The JSON lines file carries the same scalars for scripts and tests that should not have to
parse TensorBoard event files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class TrainLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        clean = {k: (v if math.isfinite(v) else None) for k, v in scalars.items()}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()
            self.writer = self.jsonl = None
