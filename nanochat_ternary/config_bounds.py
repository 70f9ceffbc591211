"""Upper bounds and finiteness for config values, checked with the rest of config validation.

Why this module exists: a config (or a checkpoint's meta.json, which carries one) is user
input. Without bounds, `num_layers = 9999999999999999999999` passes every shape rule and then
spends forever building layers, and `ffn_mult = nan` or `inf` passes `> 0` checks and fails
deep inside the model with an unrelated error. The limits are far beyond any model this project
trains (medium_3b uses 28 layers of 2560), so they only stop impossible values.
"""

from __future__ import annotations

import math
from dataclasses import fields

from .errors import ConfigError

MAX_INT = 2**40  # steps, tokens, intervals: plenty for any run
LIMITS = {
    "model.vocab_size": 1 << 24, "model.hidden_dim": 1 << 16, "model.num_layers": 1024, "model.num_heads": 1024,
    "model.num_kv_heads": 1024, "model.max_seq_len": 1 << 20, "model.num_experts": 4096, "model.num_active_experts": 4096,
    "model.mtp_n_tokens": 64, "model.group_size": 1 << 16, "model.ffn_mult": 64.0, "model.expert_ffn_mult": 64.0,
    "training.batch_size": 1 << 20, "training.seq_length": 1 << 20, "training.muon_ns_steps": 100,
    "training.num_workers": 256, "training.prefetch_batches": 4096,
}


def check_bounds(cfg) -> None:
    """ConfigError naming the key for a non-finite number or a value past its limit."""
    for section in ("model", "training", "hardware"):
        obj = getattr(cfg, section)
        for f in fields(obj):
            value, key = getattr(obj, f.name), f"{section}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{cfg.source}: '{key}' must be a finite number (got {value})")
            limit = LIMITS.get(key, MAX_INT if isinstance(value, int) else None)
            if limit is not None and abs(value) > limit:
                raise ConfigError(f"{cfg.source}: '{key}' = {value} is out of range (at most {limit})")
