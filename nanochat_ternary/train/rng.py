"""Every random number generator a run uses, saved as plain JSON data and restored exactly.

Part of a checkpoint's `meta.json`, so a resumed run draws the same random numbers as the
uninterrupted one would have.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import FormatError


def rng_state() -> dict:
    """Every RNG the run uses, as plain JSON data (python, numpy, torch CPU, CUDA, MPS)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [torch.cuda.get_rng_state(i).tolist() for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned. Device RNGs are skipped where the device is absent."""
    try:
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(torch.tensor(s, dtype=torch.uint8), i)
        if "mps" in state and torch.backends.mps.is_available():
            torch.mps.set_rng_state(torch.tensor(state["mps"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FormatError(f"checkpoint RNG state is malformed ({type(e).__name__}: {e})") from None
