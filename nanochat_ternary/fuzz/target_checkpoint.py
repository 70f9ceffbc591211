"""Fuzz target: a training checkpoint as resume reads it (load_checkpoint + check_resumable).

The sha256 of model.safetensors and optimizer.pt is in meta.json, so any change to those two
files must be rejected; meta.json itself gets JSON-aware mutations and byte damage, and what is
accepted must be resumable (its config builds a model its tensors fit).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import NanochatError
from .mutate import flip_bytes, lie, put_uint, splice, truncate
from .mutate_text import _paths, mutate_json
from .runner import Case, Target

FILES = ("model.safetensors", "optimizer.pt", "meta.json")


def checkpoint_target(step_dir: Path) -> Target:
    from ..train.checkpoint import load_checkpoint
    from ..train.resume import check_resumable

    originals = {f: (step_dir / f).read_bytes() for f in FILES}
    meta_text = originals["meta.json"].decode()
    paths = _paths(json.loads(meta_text))

    def mutate(rng: random.Random) -> Case:
        name = rng.choice(FILES)
        data = originals[name]
        if name == "meta.json" and rng.random() < 0.6:
            kind, data = "meta_json", mutate_json(rng, meta_text, paths).encode()
        else:
            kind = rng.choice(["flip", "truncate", "splice", "lie"])
            if kind == "flip":
                data = flip_bytes(rng, data, 0, len(data))
            elif kind == "truncate":
                data = truncate(rng, data)
            elif kind == "splice":
                data = splice(rng, data)
            else:  # safetensors starts with its header length (u64); a zip has lengths everywhere
                data = put_uint(data, 0, 8, lie(rng, int.from_bytes(data[:8], "little")))
        files = {f"step_1/{f}": (data if f == name else originals[f]) for f in FILES}
        changed = data != originals[name]
        must = changed and (name != "meta.json" or kind == "truncate")
        return Case(files, f"{name}:{kind}" if changed else "noop", must_reject=must)

    def load(folder: Path):
        ckpt = load_checkpoint(folder / "step_1")
        check_resumable(ckpt)
        return ckpt

    return Target("checkpoint", NanochatError, mutate, load, lambda ckpt, case: None)
