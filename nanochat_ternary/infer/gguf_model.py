"""Read and validate an exported GGUF (+ .mhc) into hyper-parameters and weights for the engine.

Why this module exists: the engine builds the network from the file alone (no config, no
training code), so everything it needs is checked here, once, with a FormatError that names the
file and the problem: the GGUF structure (via the `gguf` package), the metadata keys of the
contract (export/gguf_export.py), every tensor's presence, type and shape, the ternary codes, the
tokenizer, and the .mhc sidecar and its checksum against the GGUF.

Ternary projections (TQ2_0 / TQ1_0, or F16 values t * scale) are decoded to t in {-1, 0, 1}
plus the block scales d; blocks of one weight group share d (the group's absmean scale), so the
scales collapse to one per row and group (or stay per 256-block if a file's scales do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from ..data.tokenizer import Tokenizer
from ..errors import DataError, FormatError
from ..export.mhc_file import MhcParams, read_mhc
from ..export.mtp_file import CHECKSUM_KEY as MTP_CHECKSUM_KEY
from ..export.mtp_file import sidecar_tensors
from ..export.gguf_deltanet import read_hparams as read_deltanet_hparams
from ..export.gguf_deltanet import tensor_names as deltanet_tensor_names
from .moe import check_moe_hparams, is_moe_layer, read_moe_layer
from .gguf_validate import check_tensor_table, check_tokenizer_arrays, read_layout

QK = 256
ARCHS = ("bitnet", "nanochat")
SUPPORTED_FORMAT = 1
_PROJ_TYPES = (GGMLQuantizationType.TQ2_0, GGMLQuantizationType.TQ1_0, GGMLQuantizationType.F16, GGMLQuantizationType.F32)
_BLOCK_PROJ = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_BLOCK_NORMS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


@dataclass
class HParams:
    arch: str
    name: str
    n_ctx: int
    dim: int
    n_layers: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    rope_theta: float
    vocab_size: int
    use_bitlinear: bool
    activation_bits: int
    group_size: int
    n_streams: int
    mhc_checksum: str
    n_mtp: int
    # Gated DeltaNet layers (export/gguf_deltanet.py); none in a file without the keys
    dn_layers: tuple = ()
    dn_heads: int = 0
    dn_dk: int = 0
    dn_dv: int = 0
    dn_conv: int = 0
    n_experts: int = 0  # MoE (infer/moe.py): 0 for a dense model
    n_experts_used: int = 0
    expert_ffn: int = 0
    moe_interval: int = 1


@dataclass
class Projection:
    """A projection's weights: ternary (t int8 [N, K] and scales [N, G]) or dense ([N, K])."""

    n_out: int
    n_in: int
    t: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    dense: torch.Tensor | None = None  # float16 or float32
    stored_bytes: int = 0  # bytes in the file


@dataclass
class GGUFModel:
    path: Path
    hp: HParams
    tokenizer: Tokenizer
    chat_template: str
    embed: torch.Tensor  # [V, D] float16 or float32 (tied LM head)
    norms: dict[str, torch.Tensor] = field(default_factory=dict)  # GGUF name -> float32 (also F32 matrices)
    projections: dict[str, Projection] = field(default_factory=dict)
    mhc: MhcParams | None = None
    mhc_path: Path | None = None
    file_bytes: int = 0


class _Meta:
    """Typed access to the GGUF key/values, with errors that name the file and the key."""

    def __init__(self, reader: GGUFReader, path: Path):
        self.reader, self.path = reader, path

    def get(self, key: str, kind: type, default=None, required: bool = True):
        f = self.reader.fields.get(key)
        if f is None:
            if required:
                raise FormatError(f"{self.path}: missing metadata key '{key}'")
            return default
        try:
            value = f.contents()
        except Exception as e:  # a corrupted field
            raise FormatError(f"{self.path}: metadata key '{key}' is unreadable ({e})") from None
        if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, (int, float, np.floating, np.integer)):
            return float(value)
        if kind is bool and isinstance(value, (bool, np.bool_)):
            return bool(value)
        if kind in (str, list) and isinstance(value, kind):
            return value
        raise FormatError(f"{self.path}: metadata key '{key}' should be {kind.__name__}, found {type(value).__name__}")


def _read_hparams(meta: _Meta) -> HParams:
    arch = meta.get("general.architecture", str)
    if arch not in ARCHS:
        raise FormatError(f"{meta.path}: architecture '{arch}' is not supported (expected one of {', '.join(ARCHS)})")
    version = meta.get("nanochat.format_version", int)
    if version != SUPPORTED_FORMAT:
        raise FormatError(f"{meta.path}: nanochat.format_version {version} is not supported (this build reads {SUPPORTED_FORMAT})")

    def a(key: str, kind: type = int):
        return meta.get(f"{arch}.{key}", kind)

    hp = HParams(
        arch=arch, name=meta.get("general.name", str, "nanochat", required=False), n_ctx=a("context_length"),
        dim=a("embedding_length"), n_layers=a("block_count"), ffn=a("feed_forward_length"),
        n_heads=a("attention.head_count"), n_kv_heads=a("attention.head_count_kv"), head_dim=0,
        norm_eps=a("attention.layer_norm_rms_epsilon", float), rope_theta=a("rope.freq_base", float),
        vocab_size=a("vocab_size"), use_bitlinear=meta.get("nanochat.use_bitlinear", bool),
        activation_bits=meta.get("nanochat.activation_bits", int), group_size=meta.get("nanochat.weight_group_size", int),
        n_streams=meta.get("nanochat.mhc.n_streams", int), mhc_checksum=meta.get("nanochat.mhc.checksum", str),
        n_mtp=meta.get("nanochat.mtp.n_tokens", int),
    )
    for key in ("n_ctx", "dim", "n_layers", "ffn", "n_heads", "n_kv_heads", "vocab_size"):
        if getattr(hp, key) <= 0:
            raise FormatError(f"{meta.path}: hyper-parameter {key} = {getattr(hp, key)} must be positive")
    if hp.dim % hp.n_heads or hp.n_heads % hp.n_kv_heads:
        raise FormatError(f"{meta.path}: {hp.n_heads} heads / {hp.n_kv_heads} kv heads do not divide embedding_length {hp.dim}")
    hp.head_dim = hp.dim // hp.n_heads
    rope_dims = meta.get(f"{arch}.rope.dimension_count", int, hp.head_dim, required=False)
    if rope_dims != hp.head_dim or hp.head_dim % 2:
        raise FormatError(f"{meta.path}: rope.dimension_count {rope_dims} must equal the (even) head dimension {hp.head_dim}")
    if not 2 <= hp.activation_bits <= 8:
        raise FormatError(f"{meta.path}: nanochat.activation_bits = {hp.activation_bits} must be between 2 and 8")
    if hp.group_size % QK:
        raise FormatError(f"{meta.path}: nanochat.weight_group_size = {hp.group_size} must be 0 or a multiple of {QK}")
    if hp.n_streams not in (1, 2, 4):
        raise FormatError(f"{meta.path}: nanochat.mhc.n_streams = {hp.n_streams} must be 1, 2 or 4")
    if hp.n_mtp < 0 or hp.n_mtp > 64:
        raise FormatError(f"{meta.path}: nanochat.mtp.n_tokens = {hp.n_mtp} is out of range")
    hp.n_experts = meta.get(f"{arch}.expert_count", int, 0, required=False)
    if hp.n_experts:
        hp.n_experts_used, hp.expert_ffn = a("expert_used_count"), a("expert_feed_forward_length")
        hp.moe_interval = meta.get("nanochat.moe.layer_interval", int)
    check_moe_hparams(meta.path, hp)
    if arch == "bitnet" and (hp.n_streams != 1 or (hp.n_mtp and not meta.get(MTP_CHECKSUM_KEY, str, "", required=False))):
        raise FormatError(f"{meta.path}: a 'bitnet' file cannot have mHC streams, or MTP heads other than in an .mtp sidecar")
    read_deltanet_hparams(meta, hp)
    return hp


def _read_tokenizer(meta: _Meta, hp: HParams) -> tuple[Tokenizer, str]:
    text = meta.get("tokenizer.huggingface.json", str)
    try:
        tok = Tokenizer.from_json(text, source=f"{meta.path}: tokenizer.huggingface.json")
    except DataError as e:
        raise FormatError(str(e)) from None
    if tok.vocab_size > hp.vocab_size:
        raise FormatError(f"{meta.path}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {hp.vocab_size}")
    tokens = meta.get("tokenizer.ggml.tokens", list)
    if len(tokens) != hp.vocab_size:
        raise FormatError(f"{meta.path}: tokenizer.ggml.tokens has {len(tokens)} entries, expected vocab_size {hp.vocab_size}")
    return tok, meta.get("tokenizer.chat_template", str)


def _float_tensor(path: Path, t, shape: tuple[int, ...], allow_f16: bool) -> torch.Tensor:
    types = (GGMLQuantizationType.F32, GGMLQuantizationType.F16) if allow_f16 else (GGMLQuantizationType.F32,)
    if t.tensor_type not in types:
        raise FormatError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, expected {' or '.join(x.name for x in types)}")
    arr = np.array(t.data, copy=True)
    if arr.size != int(np.prod(shape)):
        raise FormatError(f"{path}: tensor '{t.name}' has {arr.size} values, expected shape {list(shape)}")
    out = torch.from_numpy(arr.reshape(shape))
    if not torch.isfinite(out).all():
        raise FormatError(f"{path}: tensor '{t.name}' contains NaN or infinite values")
    return out


def _decode_tq2(path: Path, name: str, raw: np.ndarray, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TQ2_0 blocks (64 bytes of 2-bit codes, then F16 d) -> t int8 [N, K], d float32 [N, K/256].

    Code q in {0, 1, 2} means t = q - 1; element c*128 + s*32 + j of a block sits in bits 2s of
    byte c*32 + j (gguf.quants' TQ2_0 layout)."""
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).reshape(n, k // QK, 66)
    qs = blocks[..., :64].reshape(n, k // QK, 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 1, 4, 1)
    codes = ((qs >> shifts) & 3).reshape(n, k)
    if bool((codes == 3).any()):
        raise FormatError(f"{path}: tensor '{name}' holds invalid TQ2_0 codes (corrupted data)")
    d = blocks[..., 64:66].contiguous().view(torch.float16).reshape(n, k // QK).float()
    return codes.to(torch.int8) - 1, d


def _ternary(path: Path, t, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t int8 [N, K] and per-block scales [N, K/256] from a TQ2_0, TQ1_0 or F16/F32 tensor."""
    raw = np.asarray(t.data)
    if t.tensor_type == GGMLQuantizationType.TQ2_0:
        return _decode_tq2(path, t.name, raw, n, k)
    if t.tensor_type == GGMLQuantizationType.TQ1_0:
        w = torch.from_numpy(dequantize(raw, t.tensor_type).reshape(n, k))
        d = torch.from_numpy(np.ascontiguousarray(raw).reshape(n, k // QK, 54)[..., 52:54].copy()).view(torch.float16)
        d = d.reshape(n, k // QK).float()
    else:  # F16 / F32 values t * scale
        w = torch.from_numpy(np.array(raw, dtype=np.float32).reshape(n, k))
        d = w.abs().reshape(n, k // QK, QK).amax(-1)
    tern = torch.sign(w).to(torch.int8)
    # every nonzero weight of a block must be +-d: otherwise the tensor is not ternary
    if not torch.allclose(w.abs().reshape(n, k // QK, QK), d[..., None] * tern.abs().reshape(n, k // QK, QK).float(), rtol=1e-3, atol=0):
        raise FormatError(f"{path}: tensor '{t.name}' is not ternary (values other than 0 and +-scale in a block)")
    return tern, d


def group_scales(t: torch.Tensor, d: torch.Tensor, group_size: int) -> torch.Tensor:
    """Collapse per-block scales [N, K/256] to [N, G] when blocks of each group agree.

    All-zero blocks do not count (their d is 0 or anything). Falls back to per-block scales."""
    n, nb = d.shape
    per = (nb if group_size == 0 else group_size // QK)
    if per <= 0 or nb % per:
        return d.contiguous()
    nonzero = t.reshape(n, nb, QK).ne(0).any(-1)
    dg = d.masked_fill(~nonzero, 0).reshape(n, nb // per, per)
    g = dg.amax(-1)
    consistent = ((dg == g[..., None]) | ~nonzero.reshape(n, nb // per, per)).all()
    return g.contiguous() if bool(consistent) else d.contiguous()


def _projection(path: Path, t, n: int, k: int, hp: HParams) -> Projection:
    if t.tensor_type not in _PROJ_TYPES:
        raise FormatError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, expected TQ2_0, TQ1_0, F16 or F32")
    if tuple(int(x) for x in t.shape) != (k, n):  # GGUF lists dimensions fastest first
        raise FormatError(f"{path}: tensor '{t.name}' has shape {list(t.shape)[::-1]}, expected [{n}, {k}]")
    nbytes = int(np.asarray(t.data).nbytes)
    if t.tensor_type in (GGMLQuantizationType.TQ2_0, GGMLQuantizationType.TQ1_0) and not hp.use_bitlinear:
        raise FormatError(f"{path}: tensor '{t.name}' is ternary but nanochat.use_bitlinear is false")
    if hp.use_bitlinear and k % QK == 0:
        tern, d = _ternary(path, t, n, k)
        if not torch.isfinite(d).all() or bool((d < 0).any()):
            raise FormatError(f"{path}: tensor '{t.name}' has invalid block scales")
        return Projection(n, k, t=tern, scales=group_scales(tern, d, hp.group_size), stored_bytes=nbytes)
    return Projection(n, k, dense=_float_tensor(path, t, (n, k), allow_f16=True), stored_bytes=nbytes)


def _read_mhc(path: Path, hp: HParams, mhc_path: str | Path | None) -> tuple[MhcParams | None, Path | None]:
    if hp.n_streams == 1:
        if mhc_path is not None:
            raise FormatError(f"{mhc_path}: an .mhc file was given but {path} is a single-stream model (nanochat.mhc.n_streams = 1)")
        return None, None
    if mhc_path is None:
        guess = path.with_suffix(".mhc")
        if not guess.is_file():
            raise FormatError(f"{path}: the model has {hp.n_streams} mHC streams and needs its .mhc file (none given, none at {guess})")
        mhc_path = guess
    mhc_path = Path(mhc_path)
    params, checksum = read_mhc(mhc_path)
    if params.n_streams != hp.n_streams or params.n_layers != hp.n_layers:
        raise FormatError(f"{mhc_path}: has {params.n_streams} streams x {params.n_layers} layers but {path} expects {hp.n_streams} x {hp.n_layers}")
    if checksum != hp.mhc_checksum:
        raise FormatError(f"{mhc_path}: checksum {checksum[:12]}... does not match the one recorded in {path} ({hp.mhc_checksum[:12]}...): not this model's .mhc")
    return params, mhc_path


def read_gguf_model(gguf_path: str | Path, mhc_path: str | Path | None = None, mtp_path: str | Path | None = None) -> GGUFModel:
    """Read, validate and decode a GGUF (+ .mhc, + .mtp for a `bitnet` file with MTP heads).
    Raises FormatError naming the file and problem."""
    path = Path(gguf_path)
    if not path.is_file():
        raise FormatError(f"{path}: GGUF file not found")
    layout = read_layout(path)  # counts, types, offsets checked before the reader believes them
    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/IndexError/... on a bad or truncated file
        raise FormatError(f"{path}: not a valid GGUF file, truncated or corrupted ({type(e).__name__}: {e})") from None
    meta = _Meta(reader, path)
    hp = _read_hparams(meta)
    check_tokenizer_arrays(path, layout, reader.fields, hp.vocab_size)
    tokenizer, template = _read_tokenizer(meta, hp)
    tensors = {t.name: t for t in reader.tensors}
    heads: dict = {}
    if hp.arch == "bitnet" and hp.n_mtp:  # the heads live in the .mtp sidecar (export/mtp_file.py)
        hp.n_mtp, heads = sidecar_tensors(path, hp.n_mtp, meta.get(MTP_CHECKSUM_KEY, str), mtp_path)
        tensors.update(heads)

    def need(name: str):
        if name not in tensors:
            raise FormatError(f"{path}: missing tensor '{name}'")
        return tensors[name]

    model = GGUFModel(path, hp, tokenizer, template, embed=_float_tensor(path, need("token_embd.weight"), (hp.vocab_size, hp.dim), True))
    model.norms["output_norm.weight"] = _float_tensor(path, need("output_norm.weight"), (hp.dim,), False)
    kv = hp.n_kv_heads * hp.head_dim
    shapes = {"attn_q": (hp.dim, hp.dim), "attn_k": (kv, hp.dim), "attn_v": (kv, hp.dim), "attn_output": (hp.dim, hp.dim),
              "ffn_gate": (hp.ffn, hp.dim), "ffn_up": (hp.ffn, hp.dim), "ffn_down": (hp.dim, hp.ffn)}
    names: list[tuple[str, tuple[int, int] | int]] = []
    floats: list[tuple[str, tuple[int, int]]] = []  # full-precision matrices (DeltaNet a, b, conv)
    for i in range(hp.n_layers):
        dense = not is_moe_layer(hp, i)  # an MoE layer's FFN tensors are read by read_moe_layer below
        dn = i in hp.dn_layers  # a Gated DeltaNet mixer instead of attention
        if dn:
            n, f = deltanet_tensor_names(hp, i)
            names, floats = names + n, floats + f
        names += [(f"blk.{i}.{s}.weight", hp.ffn if s == "ffn_sub_norm" else hp.dim) for s in _BLOCK_NORMS
                  if (dense or s != "ffn_sub_norm") and not (dn and s == "attn_sub_norm")]
        names += [(f"blk.{i}.{s}.weight", shapes[s]) for s in _BLOCK_PROJ
                  if (dense or not s.startswith("ffn_")) and (not dn or s.startswith("ffn_"))]
    for k in range(hp.n_mtp):
        names += [(f"mtp.{k}.norm_in.weight", hp.dim), (f"mtp.{k}.proj.weight", (hp.dim, hp.dim)), (f"mtp.{k}.norm_out.weight", hp.dim)]
    # the GGUF's own tensor table (a bitnet file's MTP heads come from the .mtp sidecar, checked there)
    check_tensor_table(path, layout, {n: (s,) if isinstance(s, int) else s for n, s in names if n not in heads})
    for name, shape in names:
        t = need(name)
        if isinstance(shape, int):
            model.norms[name] = _float_tensor(path, t, (shape,), False)
        else:
            model.projections[name] = _projection(path, t, shape[0], shape[1], hp)
    for name, shape in floats:
        model.norms[name] = _float_tensor(path, need(name), shape, False)
    for i in range(hp.n_layers):
        if is_moe_layer(hp, i):
            read_moe_layer(path, need, i, hp, model, _projection, _float_tensor)
    model.mhc, model.mhc_path = _read_mhc(path, hp, mhc_path)
    model.file_bytes = path.stat().st_size
    return model
