"""Run configuration: three small dataclasses, loaded from TOML and validated.

A config file has the sections `[model]`, `[training]` and `[hardware]`. Every key is a field
below; an unknown key, a value of the wrong type, or a shape the model cannot build is a
`ConfigError` that names the key and the file. `--set section.key=value` overrides any key
(the value is parsed as TOML, so `--set training.batch_size=4` and
`--set model.use_bitlinear=false` both work).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config_bounds import check_bounds
from .errors import ConfigError

# Every BitLinear input dimension must be a multiple of this, so the ternary weights pack into
# GGUF's TQ1_0/TQ2_0 blocks (256 weights per block) without padding.
QK_K = 256


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int = 4
    ffn_mult: float = 3.5
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # ternary weights / int8 activations
    use_bitlinear: bool = True
    activation_bits: int = 8
    group_size: int = 0  # 0: one absmean scale per tensor; else one per `group_size` input columns
    # mHC residual routing
    mhc_n_streams: int = 1
    mhc_post_main: float = 1.6  # H_post at init on the stream the next block reads (1.0: every stream alike; model/mhc.py)
    # hybrid attention and mixture of experts (built in the scale issue)
    deltanet_ratio: float = 0.0
    use_moe: bool = False
    num_experts: int = 8
    num_active_experts: int = 2
    expert_capacity_factor: float = 1.25
    expert_ffn_mult: float = 0.0  # 0: experts use ffn_mult
    moe_layer_interval: int = 1  # every k-th layer's FFN is an MoE (layers k-1, 2k-1, ...; model/moe.py)
    moe_aux_weight: float = 0.01  # Switch load-balancing loss weight (equals the loss at uniform routing)
    moe_z_loss_weight: float = 0.0  # router z-loss weight (ST-MoE); 0 disables it
    # multi-token prediction
    use_mtp: bool = False
    mtp_n_tokens: int = 4

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden size: ffn_mult * hidden_dim rounded up to a multiple of 256."""
        return int(math.ceil(self.ffn_mult * self.hidden_dim / QK_K) * QK_K)

    @property
    def expert_ffn_hidden(self) -> int:
        """An MoE expert's SwiGLU hidden size: expert_ffn_mult (or ffn_mult) * hidden_dim, to 256."""
        return int(math.ceil((self.expert_ffn_mult or self.ffn_mult) * self.hidden_dim / QK_K) * QK_K)


@dataclass
class TrainingConfig:
    total_steps: int = 1000
    batch_size: int = 8  # global batch of one optimizer step: ranks x micro_batch_size x accumulation steps
    micro_batch_size: int = 0  # rows per forward on each rank; 0 (or more than its share): the rank's whole share
    seq_length: int = 256
    learning_rate: float = 0.02
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    entropy_weight: float = 0.01
    mtp_weight: float = 0.2
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5  # Newton–Schulz iterations; its cost does not shrink with the batch
    lion_lr_mult: float = 0.05
    lion_weight_decay: float = 0.1
    mhc_lr_mult: float = 1.0  # mHC routing logits: Lion's lr times this (train/optim.py: Lion moves a logit <= lr a step)
    lion_betas: tuple = (0.9, 0.99)
    schedule_type: str = "wsd"
    stable_ratio: float = 0.8
    min_lr_ratio: float = 0.1
    use_8bit_optim: bool = False
    gradient_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: shard weights, grads and states with FSDP2 (train/fsdp.py)
    align_windows: bool = True  # windows start at document starts (data/loader.py says why)
    use_async_loader: bool = True
    num_workers: int = 2
    prefetch_batches: int = 4
    checkpoint_interval: int = 1000
    log_interval: int = 10
    eval_interval: int = 250  # validation loss/bpb every N steps and at the end; 0: off (train/validation.py)
    eval_windows: int = 32  # fixed validation windows of seq_length tokens scored each time
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    max_hours: float = 0.0  # wall-clock budget: the schedule decays in time, the run stops at it (0: off)
    seed: int = 1337


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | float32 | bfloat16
    num_threads: int = 0  # 0: leave torch's default
    compile: bool = False  # torch.compile the trunk (device.compile_trunk; a GPU option, no faster on CPU)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


SECTIONS = {"model": ModelConfig, "training": TrainingConfig, "hardware": HardwareConfig}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of the field's default; ints are accepted for floats."""
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{where}: expected a list of {len(default)} numbers, got {value!r}")
        return tuple(_coerce(v, d, where) for v, d in zip(value, default))
    return value


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    cfg = Config(source=source)
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}] (expected one of {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        target = getattr(cfg, section)
        known = {f.name: f for f in fields(target)}
        for key, value in body.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key '{section}.{key}'")
            default = getattr(target, key)
            setattr(target, key, _coerce(value, default, f"{source}: '{section}.{key}'"))
    validate(cfg)
    return cfg


def apply_overrides(data: dict, overrides: list[str] | None, source: str) -> dict:
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as cpu or wsd is taken as a string
        data.setdefault(section, {})[key] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a TOML config (or the defaults when `path` is None) and apply `--set` overrides."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return config_from_dict(apply_overrides(data, overrides, source), source)


def validate(cfg: Config) -> None:
    m, t, h, src = cfg.model, cfg.training, cfg.hardware, cfg.source
    check_bounds(cfg)  # config_bounds.py: finite numbers, no impossible sizes

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{src}: '{key}' {why}")

    for key in ("vocab_size", "hidden_dim", "num_layers", "num_heads", "num_kv_heads", "max_seq_len"):
        if getattr(m, key) <= 0:
            raise bad(f"model.{key}", "must be positive")
    if m.hidden_dim % m.num_heads:
        raise bad("model.hidden_dim", f"({m.hidden_dim}) must be divisible by model.num_heads ({m.num_heads})")
    if m.num_heads % m.num_kv_heads:
        raise bad("model.num_heads", f"({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})")
    if m.head_dim % 2:
        raise bad("model.hidden_dim", f"gives an odd head dimension ({m.head_dim}); RoPE needs it even")
    if m.use_bitlinear:
        if m.hidden_dim % QK_K:
            raise bad("model.hidden_dim", f"({m.hidden_dim}) is a BitLinear input size and must be a multiple of {QK_K}")
        if m.group_size and (m.group_size % QK_K or m.hidden_dim % m.group_size):
            raise bad("model.group_size", f"({m.group_size}) must be a multiple of {QK_K} dividing every input size")
        if m.group_size and m.ffn_hidden % m.group_size:
            raise bad("model.group_size", f"({m.group_size}) must divide the FFN hidden size ({m.ffn_hidden})")
        if not 2 <= m.activation_bits <= 8:
            raise bad("model.activation_bits", "must be between 2 and 8")
    if m.ffn_mult <= 0:
        raise bad("model.ffn_mult", "must be positive")
    if m.mhc_n_streams not in (1, 2, 4):
        raise bad("model.mhc_n_streams", f"must be 1, 2 or 4 (got {m.mhc_n_streams})")
    if not 0.0 < m.mhc_post_main < 2.0:
        raise bad("model.mhc_post_main", f"must be in (0, 2): H_post = 2 sigmoid(logit) (got {m.mhc_post_main})")
    if not 0.0 <= m.deltanet_ratio < 1.0:
        raise bad("model.deltanet_ratio", "must be in [0, 1)")
    if m.use_mtp and m.mtp_n_tokens < 1:
        raise bad("model.mtp_n_tokens", "must be at least 1 when model.use_mtp is true")
    if m.use_moe:
        _validate_moe(m, bad)
    for key in ("total_steps", "batch_size", "seq_length", "checkpoint_interval", "log_interval"):
        if getattr(t, key) <= 0:
            raise bad(f"training.{key}", "must be positive")
    if t.eval_interval < 0 or t.eval_windows < 1:
        raise bad("training.eval_interval/eval_windows", "eval_interval must be >= 0 (0: off) and eval_windows >= 1")
    if t.seq_length > m.max_seq_len:
        raise bad("training.seq_length", f"({t.seq_length}) exceeds model.max_seq_len ({m.max_seq_len})")
    # a micro-batch of at least the batch is the whole batch at once (a config's micro-batch stays
    # valid under `--set training.batch_size=...` and on more ranks)
    if t.micro_batch_size < 0 or (0 < t.micro_batch_size < t.batch_size and t.batch_size % t.micro_batch_size):
        raise bad("training.micro_batch_size", f"({t.micro_batch_size}) must be 0, at least training.batch_size, or divide it ({t.batch_size})")
    if t.mhc_lr_mult <= 0:
        raise bad("training.mhc_lr_mult", "must be positive")
    if t.max_hours < 0:
        raise bad("training.max_hours", "must not be negative (0 turns the budget off)")
    if t.learning_rate <= 0:
        raise bad("training.learning_rate", "must be positive")
    if t.muon_ns_steps < 1:
        raise bad("training.muon_ns_steps", "must be at least 1")
    if t.warmup_steps < 0 or t.num_workers < 0 or t.prefetch_batches < 0:
        raise bad("training.warmup_steps/num_workers/prefetch_batches", "must not be negative")
    if not 0.0 <= t.stable_ratio <= 1.0 or not 0.0 <= t.min_lr_ratio <= 1.0:
        raise bad("training.stable_ratio/min_lr_ratio", "must be in [0, 1]")
    if t.schedule_type not in ("wsd", "cosine", "constant"):
        raise bad("training.schedule_type", f"must be wsd, cosine or constant (got {t.schedule_type!r})")
    if h.device not in ("auto", "cpu", "cuda", "mps"):
        raise bad("hardware.device", f"must be auto, cpu, cuda or mps (got {h.device!r})")
    if h.dtype not in ("auto", "float32", "bfloat16"):
        raise bad("hardware.dtype", f"must be auto, float32 or bfloat16 (got {h.dtype!r})")


def _validate_moe(m: ModelConfig, bad) -> None:
    if m.num_experts < 1:
        raise bad("model.num_experts", "must be at least 1")
    if not 1 <= m.num_active_experts <= m.num_experts:
        raise bad("model.num_active_experts", "must be between 1 and model.num_experts")
    if m.expert_capacity_factor <= 0:
        raise bad("model.expert_capacity_factor", "must be positive")
    if m.expert_ffn_mult < 0:
        raise bad("model.expert_ffn_mult", "must not be negative (0: the experts use model.ffn_mult)")
    if not 1 <= m.moe_layer_interval <= m.num_layers:
        raise bad("model.moe_layer_interval", f"must be between 1 and model.num_layers ({m.num_layers})")
    if m.moe_aux_weight < 0 or m.moe_z_loss_weight < 0:
        raise bad("model.moe_aux_weight/moe_z_loss_weight", "must not be negative")
    if m.use_bitlinear and m.group_size and m.expert_ffn_hidden % m.group_size:
        raise bad("model.group_size", f"({m.group_size}) must divide the expert hidden size ({m.expert_ffn_hidden})")


def require_supported(cfg: Config) -> None:
    """Refuse features that are configured but not built yet, instead of silently ignoring them."""
    from .errors import NotSupportedError

    m = cfg.model
    del m  # every configurable feature is built now; a new one that is not refuses here
