"""Device selection and per-device numerics: CPU, CUDA (bf16 autocast) and Apple MPS.

CPU: fp32 with flush-denormal on (denormals made CPU steps up to 15x slower here) and freed
memory kept for reuse (cpu_malloc.py); bf16 and torch.compile were measured no faster on CPU, so
they stay GPU options (`[hardware] dtype` and `[hardware] compile`).
"""

from __future__ import annotations

import contextlib

import torch

from .cpu_malloc import keep_freed_memory
from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r} (expected auto, cpu, cuda or mps)")
    return torch.device(name)


def setup_device(device: torch.device, num_threads: int = 0) -> None:
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        keep_freed_memory()
        if num_threads:
            torch.set_num_threads(num_threads)
    elif device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: str = "auto"):
    """bf16 autocast on CUDA (or when asked for), nothing on CPU by default."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_trunk(model: torch.nn.Module) -> None:
    """`[hardware] compile`: torch.compile the model's trunk (`GPT.trunk`: the blocks, which every
    forward and loss runs). The compiled function is set on the instance, so the module, its
    parameters and its state-dict names stay the plain model's: checkpoints, resume and export
    do not change. The compiler traces the PyTorch ops (model/native_ops.py steps aside while it
    traces), and the first steps pay the compilation."""
    model.trunk = torch.compile(model.trunk)
