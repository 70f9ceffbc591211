"""Find the checkpoint a run resumes from, falling back past damaged ones.

Why this module exists: `latest` names the newest complete checkpoint, but a file in it may
have been truncated or altered since (its checksum in meta.json no longer matches), or its
meta.json may not describe a model its tensors fit. Resume then uses the newest older
checkpoint that is sound, with a warning naming what was skipped and why, instead of stopping a
days-long run on one bad file, or crashing later on a KeyError or a shape mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import config_from_dict
from ..errors import FormatError, NanochatError
from .checkpoint import LATEST_FILE, Checkpoint, _step_dirs, load_checkpoint

_RESUME_KEYS = {"config": dict, "data": dict, "rng": dict, "data_dir": str}


def check_resumable(ckpt: Checkpoint) -> None:
    """FormatError unless meta.json has what resume reads and the tensors fit its config."""
    from ..model.gpt import GPT

    meta_file = ckpt.path / "meta.json"
    for key, kind in _RESUME_KEYS.items():
        if not isinstance(ckpt.meta.get(key), kind):
            raise FormatError(f"{meta_file}: '{key}' is missing or not a {kind.__name__}")
    step = ckpt.meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or ckpt.path.name != f"step_{step}":
        raise FormatError(f"{meta_file}: step {step!r} does not match the folder name {ckpt.path.name}")
    cfg = config_from_dict(ckpt.meta["config"], source=str(meta_file))
    with torch.device("meta"):  # shapes only, no memory
        want = {k: tuple(v.shape) for k, v in GPT(cfg.model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt.model_state.items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise FormatError(f"{ckpt.path}: model tensors do not fit the config in meta.json (first difference: {diff[0]!r})")


def load_for_resume(run_dir: str | Path, warn=print) -> Checkpoint:
    """The newest sound checkpoint of `run_dir`; warns (stderr) about each damaged one skipped."""
    ckdir = Path(run_dir) / "checkpoints"
    try:
        latest = (ckdir / LATEST_FILE).read_text().strip()
    except OSError:
        latest = None
    dirs = _step_dirs(ckdir)[::-1]  # newest first
    order = sorted(dirs, key=lambda d: d.name != latest)  # the one `latest` names first
    if not order:
        raise FormatError(f"{run_dir}: nothing to resume (no checkpoint in {ckdir})")
    problems = []
    for d in order:
        try:
            ckpt = load_checkpoint(d)
            check_resumable(ckpt)
        except NanochatError as e:
            problems.append(f"{d.name}: {e}")
            continue
        for p in problems:
            warn(f"warning: skipping damaged checkpoint {p}; resuming from {d.name} instead", file=sys.stderr)
        return ckpt
    raise FormatError(f"{run_dir}: no usable checkpoint; " + " | ".join(problems))
