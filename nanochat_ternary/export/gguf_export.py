"""Export a trained model to GGUF (+ a .mhc sidecar for mHC models).

Why this module exists: the GGUF is the hand-off between training and everything downstream
(our inference engine, the server, and llama.cpp). The file layout is the contract in
ARCHITECTURE.md section 2:

- `general.architecture` is llama.cpp's "bitnet" when the model has one residual stream
  (llama.cpp can load and run it; its MTP heads, if any, go to the `.mtp` sidecar, see
  mtp_file.py); otherwise "nanochat", with the same hyper-parameter keys and tensor names (see
  gguf_tensors.py) and the MTP heads inside.
- project keys `nanochat.*` record what llama.cpp's keys cannot: BitLinear on/off, activation
  bits, the weight group size, mHC streams (+ the .mhc checksum), MTP heads, a format version.
- tokenizer metadata, see gguf_tokenizer.py.

Files are written to a temporary name in the target folder and renamed, so an interrupted
export never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from tqdm import tqdm

from ..config import ModelConfig
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError
from ..model.gpt import GPT
from . import gguf_deltanet
from .checkpoint_source import load_for_export
from .gguf_moe import add_moe_hparams, stack_experts
from .gguf_tensors import check_quantizable, encode_tensor, tensor_plan
from .gguf_tokenizer import add_tokenizer_metadata
from .mhc_file import mhc_params_from_state_dict, write_mhc
from .mtp_file import CHECKSUM_KEY as MTP_CHECKSUM_KEY
from .mtp_file import default_mtp_path
from .mtp_file import write_mtp as write_mtp_file

FORMAT_VERSION = 1
LLAMA_CPP_ARCH = "bitnet"
PROJECT_ARCH = "nanochat"

_FILE_TYPES = {
    GGMLQuantizationType.TQ2_0: LlamaFileType.MOSTLY_TQ2_0,
    GGMLQuantizationType.TQ1_0: LlamaFileType.MOSTLY_TQ1_0,
    GGMLQuantizationType.F16: LlamaFileType.MOSTLY_F16,
}


def architecture_for(cfg: ModelConfig, drop_mtp: bool) -> str:
    """'bitnet' if llama.cpp can run the model (one residual stream, no Gated DeltaNet, no MoE; MTP
    heads go to the sidecar), else the project's own 'nanochat'. (`drop_mtp` no longer matters.)"""
    hybrid = bool(gguf_deltanet.layers_of(cfg))  # llama.cpp's bitnet has no Gated DeltaNet
    return LLAMA_CPP_ARCH if cfg.mhc_n_streams == 1 and not hybrid and not cfg.use_moe else PROJECT_ARCH


def temp_sibling(path: Path) -> Path:
    """A fresh hidden temporary name in `path`'s folder (same filesystem, so rename is atomic).

    Not tempfile.mkstemp: that creates the file with mode 0600, and an exported model must get
    the usual permissions from the umask like any other file.
    """
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the body succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_hparams(w: GGUFWriter, cfg: ModelConfig, arch: str, name: str, file_type: int, mhc_checksum: str, n_mtp: int) -> None:
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(GGML_QUANT_VERSION)
    # standard keys, under the architecture prefix (GGUFWriter fills in "{arch}.")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.hidden_dim)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    # project keys (always present, whatever the architecture name)
    w.add_bool("nanochat.use_bitlinear", cfg.use_bitlinear)
    w.add_uint32("nanochat.activation_bits", cfg.activation_bits)
    w.add_uint32("nanochat.weight_group_size", cfg.group_size)
    w.add_uint32("nanochat.mhc.n_streams", cfg.mhc_n_streams)
    # add_string silently drops empty strings; the key must exist even when it is ""
    w.add_key_value("nanochat.mhc.checksum", mhc_checksum, GGUFValueType.STRING)
    w.add_uint32("nanochat.mtp.n_tokens", n_mtp)
    w.add_uint32("nanochat.format_version", FORMAT_VERSION)
    gguf_deltanet.add_metadata(w, cfg)
    add_moe_hparams(w, cfg)  # expert counts (MoE models only; gguf_moe.py)


def export_model(
    model: GPT,
    tokenizer: Tokenizer,
    output: Path,
    mhc_output: Path | None,
    quant: str = "tq2_0",
    drop_mtp: bool = False,
    name: str = "nanochat",
    progress: bool = False,
    mtp_output: Path | None = None,
) -> dict:
    """Write `model` (+ tokenizer) to the GGUF `output`, and its mHC parameters to `mhc_output`
    (and, for a `bitnet` file with MTP heads, the heads to `mtp_output`, default `model.mtp`).

    Returns a summary: arch, file_type, tensors, bytes, the ternary tensors' parameter count,
    bytes and bits per weight, and the written paths and .mhc checksum.
    """
    torch.set_flush_denormal(True)
    cfg: ModelConfig = model.cfg
    output = Path(output)
    qtype = check_quantizable(cfg, quant)
    arch = architecture_for(cfg, drop_mtp)
    write_mtp = cfg.use_mtp and not drop_mtp
    n_mtp = cfg.mtp_n_tokens if write_mtp else 0
    state = stack_experts(model.state_dict(), cfg)  # MoE experts as stacked [E, ...] tensors
    plan = tensor_plan(cfg, list(state), write_mtp)
    sidecar = [s for s in plan if s.gguf_name.startswith("mtp.")] if arch == LLAMA_CPP_ARCH else []
    plan = [s for s in plan if s not in sidecar]
    mtp_output = (Path(mtp_output) if mtp_output else default_mtp_path(output)) if sidecar else None
    mtp_checksum = ""
    if mtp_output is not None and mtp_output.resolve() in (output.resolve(), Path(mhc_output or output).resolve()):
        raise ConfigError(f"{mtp_output}: the .mtp output must differ from the GGUF and .mhc outputs")

    mhc_checksum = ""
    if cfg.mhc_n_streams > 1:
        if mhc_output is None:
            raise ConfigError(f"model has mhc_n_streams={cfg.mhc_n_streams}: an .mhc output path is required")
        mhc_output = Path(mhc_output)
        if mhc_output.resolve() == output.resolve():
            raise ConfigError(f"{output}: the .mhc output must differ from the GGUF output")
        params = mhc_params_from_state_dict(state, cfg.num_layers, cfg.mhc_n_streams)
    else:
        mhc_output = None  # a single-stream model has no mHC parameters

    ternary_params = ternary_bytes = 0
    # both files go to temporary names and are renamed together at the end (.mhc first)
    with atomic_path(output) as tmp, (atomic_path(mhc_output) if mhc_output else nullcontext()) as mhc_tmp, \
            (atomic_path(mtp_output) if mtp_output else nullcontext()) as mtp_tmp:
        if mtp_tmp is not None:  # written first: its checksum goes into the GGUF
            mtp_checksum = write_mtp_file(mtp_tmp, n_mtp, [(s.gguf_name, *encode_tensor(s, state[s.state_key], cfg, qtype)) for s in sidecar])
        writer = GGUFWriter(tmp, arch)
        try:
            for spec in tqdm(plan, desc="export", unit="tensor", disable=not progress):
                data, dtype = encode_tensor(spec, state[spec.state_key], cfg, qtype)
                if dtype in (GGMLQuantizationType.F16, GGMLQuantizationType.F32):
                    writer.add_tensor(spec.gguf_name, data)
                else:
                    writer.add_tensor(spec.gguf_name, data, raw_dtype=dtype)
                if spec.kind == "proj":
                    ternary_params += state[spec.state_key].numel()
                    ternary_bytes += data.nbytes
            if mhc_tmp is not None:
                mhc_checksum = write_mhc(mhc_tmp, params)  # its checksum goes into the GGUF
            _add_hparams(writer, cfg, arch, name, _FILE_TYPES[qtype], mhc_checksum, n_mtp)
            if mtp_checksum:
                writer.add_string(MTP_CHECKSUM_KEY, mtp_checksum)
            add_tokenizer_metadata(writer, tokenizer, cfg.vocab_size)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)
        finally:
            writer.close()
    return {
        "arch": arch,
        "file_type": qtype.name,
        "tensors": len(plan),
        "bytes": output.stat().st_size,
        "ternary_params": ternary_params,
        "ternary_bytes": ternary_bytes,
        "bits_per_weight": 8.0 * ternary_bytes / ternary_params if ternary_params else 0.0,
        "gguf": str(output),
        "mhc": str(mhc_output) if mhc_output is not None else None,
        "mhc_checksum": mhc_checksum,
        "mtp": str(mtp_output) if mtp_output is not None else None,
    }


def default_mhc_path(output: Path) -> Path:
    """`model.gguf` -> `model.mhc`."""
    return Path(output).with_suffix(".mhc")


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    mhc_output: Path | None = None,
    quant: str = "tq2_0",
    drop_mtp: bool = False,
    progress: bool = False,
    mtp_output: Path | None = None,
) -> dict:
    """Export a checkpoint folder (or its model.safetensors); the .mhc defaults to next to the GGUF."""
    model, tokenizer, step_dir = load_for_export(Path(checkpoint))
    if mhc_output is None and model.cfg.mhc_n_streams > 1:
        mhc_output = default_mhc_path(output)
    name = step_dir.parent.parent.name or "nanochat"
    return export_model(model, tokenizer, Path(output), mhc_output, quant=quant, drop_mtp=drop_mtp, name=name, progress=progress,
                        mtp_output=mtp_output)
