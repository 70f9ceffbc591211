"""Fuzz target: the GGUF loader (`read_gguf_model`, then one engine step on what it accepted).

Mutation classes and what must happen:
- lie: a count, length, dimension or dimension count set to a wrong value -> rejected (or the
  loaded model is exactly the original's, e.g. a lie the reader never depends on);
- bad_type: a value or tensor type set to an unknown number -> rejected;
- offset: a tensor offset past the data, misaligned, wrapping (2^64-32) or onto another tensor
  -> rejected;
- version: any other version -> rejected unless the model is the original's (v2 == v3 here);
- truncate: any strict prefix -> rejected;
- flip_header / flip_data / splice: random damage -> the documented error or a model the
  engine can run (a flipped weight is a different but valid model: GGUF has no checksum).
The seed is a `bitnet` file with an MTP head, so every case also holds its unchanged `.mtp`
sidecar (`model.mtp`), as an export leaves it.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from gguf import GGMLQuantizationType

from ..errors import FormatError
from ..export.mtp_file import default_mtp_path
from .gguf_fields import map_gguf
from .mutate import INTERESTING, flip_bytes, lie, put_uint, splice, truncate
from .runner import Case, Target

_KNOWN_TTYPES = {int(t) for t in GGMLQuantizationType}
_KINDS = ["lie"] * 4 + ["bad_type"] * 2 + ["offset"] * 2 + ["version", "truncate"] + ["flip_header"] * 3 + ["flip_data", "splice"]


def model_digest(model) -> str:
    """A hash of everything the engine uses from a loaded GGUFModel."""
    h = hashlib.sha256(repr(model.hp).encode())
    h.update(model.chat_template.encode())
    h.update(model.tokenizer.to_json().encode())
    tensors = [model.embed, *model.norms.values()]
    for name in sorted(model.projections):
        p = model.projections[name]
        tensors += [x for x in (p.t, p.scales, p.dense) if x is not None]
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    if model.mhc is not None:
        for a in (model.mhc.res_logits, model.mhc.pre_logits, model.mhc.post_logits):
            h.update(a.tobytes())
    return h.hexdigest()


def _unknown_type(rng: random.Random, tensor: bool) -> int:
    if tensor:
        return rng.choice([v for v in range(64) if v not in _KNOWN_TTYPES] + [1 << 31, (1 << 32) - 1])
    return rng.choice([13, 14, 100, 1 << 31, (1 << 32) - 1])


def gguf_target(seed_file: Path) -> Target:
    from ..infer.engine import Engine
    from ..infer.gguf_model import read_gguf_model

    original = seed_file.read_bytes()
    # The exporter writes a `bitnet` model's MTP heads to a `.mtp` sidecar beside the GGUF, and the
    # reader looks for it there: without it every case would load as a different (headless) model.
    sidecar = default_mtp_path(seed_file)
    beside = {default_mtp_path(Path("model.gguf")).name: sidecar.read_bytes()} if sidecar.is_file() else {}
    fmap = map_gguf(original)
    by_kind = {k: [f for f in fmap.fields if f.kind in k] for k in (("count", "length", "dim", "n_dims"), ("value_type",), ("tensor_type",), ("offset",))}
    offsets = sorted({f.value for f in by_kind[("offset",)]})
    digest = model_digest(read_gguf_model(seed_file))

    def mutate(rng: random.Random) -> Case:
        kind = rng.choice(_KINDS)
        data = original
        if kind == "lie":
            f = rng.choice(by_kind[("count", "length", "dim", "n_dims")])
            value = lie(rng, f.value)
            data = put_uint(data, f.pos, f.width, value if value != f.value else value + 1)
        elif kind == "bad_type":
            tensor = rng.random() < 0.4
            f = rng.choice(by_kind[("tensor_type",)] if tensor else by_kind[("value_type",)])
            data = put_uint(data, f.pos, f.width, _unknown_type(rng, tensor))
        elif kind == "offset":
            f = rng.choice(by_kind[("offset",)])
            choices = [rng.choice(INTERESTING), f.value + rng.randint(1, 31), len(original), rng.choice(offsets)]
            value = rng.choice([c for c in choices if c != f.value] or [f.value + 1])
            data = put_uint(data, f.pos, f.width, value)
        elif kind == "version":
            f = next(f for f in fmap.fields if f.kind == "version")
            data = put_uint(data, f.pos, f.width, rng.choice([0, 1, 2, 4, 5, 0x03000000, (1 << 32) - 1]))
        elif kind == "truncate":
            data = truncate(rng, data)
        elif kind == "flip_header":
            data = flip_bytes(rng, data, 0, fmap.header_end)
        elif kind == "flip_data":
            data = flip_bytes(rng, data, fmap.data_start, len(data), max_changes=4)
        else:
            data = splice(rng, data)
        return Case({"model.gguf": data, **beside}, kind, must_reject=kind in ("lie", "bad_type", "offset", "version", "truncate"))

    def load(folder: Path):
        model = read_gguf_model(folder / "model.gguf")
        engine = Engine(model)  # what `nanochat generate -n 1` does next
        logits = engine.prefill(engine.new_state(), engine.tokenizer.encode("fn main"))
        return model, logits

    def accepted_problem(result, case: Case) -> str | None:
        return None

    return Target("gguf", FormatError, mutate, load, accepted_problem, benign=lambda r: model_digest(r[0]) == digest)
