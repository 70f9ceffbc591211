"""Load what an export needs from a training checkpoint: the model weights, config and tokenizer.

Why this module exists: `train.checkpoint.load_checkpoint` reads everything needed to resume,
including the optimizer state (about as large again as the model, twice for some optimizers).
Export needs only the model, so this reads `model.safetensors` tensor by tensor straight into
the model's parameters: peak memory is one model plus one tensor, which keeps exporting the
large configs possible on a machine with little memory.

The checkpoint layout and the safetensors alias table (tied weights) are those written by
`train.checkpoint.save_checkpoint`; a folder is resolved with its `resolve_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import config_from_dict
from ..data.tokenizer import Tokenizer
from ..errors import FormatError
from ..model.gpt import GPT
from ..train.checkpoint import ALIASES_KEY, FORMAT_VERSION, META_FILE, MODEL_FILE, resolve_checkpoint
from ..train.checkpoint_integrity import recorded_sizes


def _read_meta(step_dir: Path) -> dict:
    file = step_dir / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{file}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise FormatError(f'{file}: expected a JSON object with a "config" object')
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{file}: unsupported checkpoint format_version {version!r} (this build reads 1..{FORMAT_VERSION})")
    size = recorded_sizes(meta, file).get(MODEL_FILE)
    model_file = step_dir / MODEL_FILE
    if size is not None and model_file.stat().st_size != size:
        raise FormatError(f"{model_file}: {model_file.stat().st_size} bytes, expected {size} (truncated or overwritten)")
    return meta


@torch.no_grad()
def _load_weights(model: GPT, model_file: Path, meta_file: Path) -> None:
    """Copy every state-dict entry from the safetensors file into `model`, checking names and shapes."""
    try:
        with safe_open(str(model_file), framework="pt", device="cpu") as f:
            aliases = json.loads((f.metadata() or {}).get(ALIASES_KEY, "{}"))
            stored = set(f.keys())
            wanted = model.state_dict(keep_vars=True)
            missing = [k for k in wanted if k not in stored and aliases.get(k) not in stored]
            unexpected = sorted(stored - set(wanted))
            if missing or unexpected:
                raise FormatError(
                    f"{model_file}: does not match the config in {meta_file}: "
                    f"missing {missing[:4]}, unexpected {unexpected[:4]}"
                )
            for name, target in wanted.items():
                src = f.get_tensor(name if name in stored else aliases[name])
                if src.shape != target.shape:
                    raise FormatError(
                        f"{model_file}: does not match the config in {meta_file}: '{name}' has shape "
                        f"{tuple(src.shape)}, the config gives {tuple(target.shape)}"
                    )
                target.copy_(src)
    except FormatError:
        raise
    except Exception as e:  # SafetensorError, OSError, a bad alias table: a corrupt file
        raise FormatError(f"{model_file}: unreadable safetensors file ({type(e).__name__}: {e})") from None


def load_for_export(checkpoint: Path) -> tuple[GPT, Tokenizer, Path]:
    """Model (eval mode), tokenizer and step folder of a training checkpoint.

    `checkpoint` is a `<run>/checkpoints/step_N/` folder, its model.safetensors, or a run folder
    (its latest checkpoint). The tokenizer is `tokenizer.json` next to the checkpoint or in the
    run folder (`<run>/checkpoints/step_N/` -> `<run>/tokenizer.json`).
    """
    step_dir = resolve_checkpoint(checkpoint)
    meta = _read_meta(step_dir)
    meta_file = step_dir / META_FILE
    cfg = config_from_dict(meta["config"], source=str(meta_file))
    model = GPT(cfg.model)
    _load_weights(model, step_dir / MODEL_FILE, meta_file)
    model.eval()
    for candidate in (step_dir / "tokenizer.json", step_dir.parent.parent / "tokenizer.json"):
        if candidate.is_file():
            return model, Tokenizer.load(candidate), step_dir
    raise FormatError(f"{step_dir}: no tokenizer.json next to the checkpoint or in its run folder ({step_dir.parent.parent})")
