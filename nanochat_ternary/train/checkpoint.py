"""Checkpoints: atomic save, exact resume.

Layout (ARCHITECTURE.md section 2):

    <run_dir>/checkpoints/step_<N>/model.safetensors   model.state_dict()
                                   optimizer.pt        list of optimizer state_dicts (torch.save)
                                   meta.json           the caller's dict + step + format_version
    <run_dir>/checkpoints/latest                       one line: the folder name of the newest

A checkpoint is written into `.tmp_step_<N>_<pid>/`, every file is fsynced, and the folder is
renamed to `step_<N>`; only then is `latest` replaced (temp file + os.replace). Renames within
one folder are atomic on POSIX, so a kill at any moment leaves `latest` naming a complete
folder. Re-saving a step that `latest` names first points `latest` at a hard-linked copy of the
old folder, so even that swap never exposes a missing checkpoint.

optimizer.pt is read with `torch.load(weights_only=True)`: optimizer state_dicts hold only
tensors, numbers, strings, lists, tuples and dicts, and nothing else may be unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import FormatError
from .checkpoint_integrity import CHECKSUMS_KEY, file_checksums, recorded_sizes, verify_checksums, write_failed

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
LEFTOVER = re.compile(r"^\.(tmp|prev|trash|latest)_(?:.*_)?(\d+)$")  # our temporary names end in _<pid>
ALIASES_KEY = "nanochat_aliases"  # safetensors metadata: state_dict keys that share another key's tensor


@dataclass
class Checkpoint:
    path: Path  # the step_<N> folder
    model_state: dict[str, Tensor]
    optim_states: list | None  # None when the checkpoint was saved without optimizers
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])


# ---------------------------------------------------------------- durability helpers

def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames/creations inside `path` durable (not possible on every OS: then skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_latest(ckdir: Path, name: str) -> None:
    tmp = ckdir / f".latest_{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckdir / LATEST_FILE)
    _fsync_dir(ckdir)


def _read_latest(ckdir: Path) -> str | None:
    try:
        return (ckdir / LATEST_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def _step_dirs(ckdir: Path) -> list[Path]:
    """The step_<N> folders of `ckdir`, oldest (smallest N) first."""
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in ckdir.iterdir() if d.is_dir() and (m := STEP_DIR.match(d.name))]
    return [d for _, d in sorted(found)]


def _missing_files(step_dir: Path) -> list[str]:
    return [f for f in (MODEL_FILE, META_FILE) if not (step_dir / f).is_file()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def _remove_leftovers(ckdir: Path) -> None:
    """Delete temporary folders/files of crashed saves (their pid is dead, or is ours)."""
    latest = _read_latest(ckdir)
    for entry in ckdir.iterdir():
        m = LEFTOVER.match(entry.name)
        if not m or entry.name == latest:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live process may be saving right now
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def link_copy(src: Path, dst: Path) -> None:
    """Copy a folder by hard links (no data copied); plain copies where links are refused."""
    dst.mkdir()
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)
            _fsync_file(dst / f.name)
    _fsync_dir(dst)


def _install(ckdir: Path, tmp: Path, name: str) -> None:
    """Rename the complete `tmp` folder to `name`, replacing an existing one safely."""
    final = ckdir / name
    if final.exists():
        if _read_latest(ckdir) == name:
            backup = ckdir / f".prev_{name}_{os.getpid()}"
            shutil.rmtree(backup, ignore_errors=True)
            link_copy(final, backup)
            _write_latest(ckdir, backup.name)  # `latest` stays on a complete copy during the swap
        trash = ckdir / f".trash_{name}_{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(tmp, final)
        _fsync_dir(ckdir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
        _fsync_dir(ckdir)


def _model_tensors(state_dict: dict) -> tuple[dict[str, Tensor], dict[str, str]]:
    """CPU tensors for safetensors, plus {alias key: stored key} for keys sharing one tensor."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple, str] = {}
    seen_storages: set[tuple] = set()
    for name, t in state_dict.items():
        if not torch.is_tensor(t):
            raise TypeError(f"save_checkpoint: model.state_dict()[{name!r}] is a {type(t).__name__}, not a tensor")
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in seen_views:  # the same tensor under two names (tied weights)
            aliases[name] = seen_views[view]
            continue
        out = t.detach().to("cpu").contiguous()
        if t.numel() and storage in seen_storages and out.untyped_storage().data_ptr() == storage[1]:
            out = out.clone()  # a different view of memory already stored: safetensors needs its own copy
        seen_views[view] = name
        seen_storages.add(storage)
        tensors[name] = out
    return tensors, aliases


# ---------------------------------------------------------------- public API

def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module,
                    optimizers: list[torch.optim.Optimizer] | None, meta: dict,
                    states: tuple[dict, list] | None = None) -> Path:
    """Write `<run_dir>/checkpoints/step_<step>/` atomically and point `latest` at it.

    `states`: (model state_dict, optimizer state_dicts) to write instead of the objects' own,
    e.g. the gathered full states of an FSDP run (train/fsdp.py)."""
    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0 (got {step})")
    ckdir = Path(run_dir) / "checkpoints"
    name = f"step_{step}"
    tensors, aliases = _model_tensors(states[0] if states else model.state_dict())
    body = {**meta, "step": step, "format_version": FORMAT_VERSION}
    try:
        json.dumps(body)  # fail before touching the disk
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: meta is not JSON-serialisable: {e}") from None

    tmp = ckdir / f".tmp_{name}_{os.getpid()}"
    try:
        _write_step(ckdir, tmp, name, tensors, aliases, states[1] if states else optimizers, body)
    except (OSError, SafetensorError, RuntimeError) as e:  # full disk, read-only folder, quota (torch.save and
        # safetensors report a failed write as RuntimeError / SafetensorError): the previous checkpoint is untouched
        raise write_failed(e, tmp, ckdir, name, _read_latest(ckdir)) from e
    _remove_leftovers(ckdir)
    return ckdir / name


def _write_step(ckdir: Path, tmp: Path, name: str, tensors: dict, aliases: dict, optimizers, body: dict) -> None:
    ckdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})
    written = [MODEL_FILE]
    if optimizers is not None:
        torch.save([opt if isinstance(opt, dict) else opt.state_dict() for opt in optimizers], tmp / OPTIM_FILE)
        written.append(OPTIM_FILE)
    # Sizes let load_checkpoint name a truncated file precisely.
    body["checkpoint_files"] = {f: (tmp / f).stat().st_size for f in written}
    body[CHECKSUMS_KEY] = file_checksums(tmp, written)  # checked on load: truncation or edits after the save
    (tmp / META_FILE).write_text(json.dumps(body, indent=1))
    for f in [*written, META_FILE]:
        _fsync_file(tmp / f)
    _fsync_dir(tmp)

    _install(ckdir, tmp, name)
    _write_latest(ckdir, name)


def resolve_checkpoint(path: str | Path) -> Path:
    """The step folder meant by a run dir, its checkpoints dir, a step_N dir or a model file."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such checkpoint file or folder")
    if p.is_file():
        if p.name != MODEL_FILE:
            raise FormatError(f"{p}: not a checkpoint (give a run folder, its checkpoints/ folder, "
                              f"a step_N folder or a {MODEL_FILE} file)")
        p = p.parent
    if (p / MODEL_FILE).exists() or STEP_DIR.match(p.name):
        missing = _missing_files(p)
        if missing:
            raise FormatError(f"{p}: incomplete checkpoint (missing {', '.join(missing)})")
        return p
    ckdir = p if (p / LATEST_FILE).exists() or _step_dirs(p) else p / "checkpoints"
    if not ckdir.is_dir():
        raise FormatError(f"{p}: not a checkpoint: no {MODEL_FILE}, no '{LATEST_FILE}' file and no checkpoints/ folder")
    latest = _read_latest(ckdir)
    if latest is not None:
        target = ckdir / latest
        if not latest or "/" in latest or "\\" in latest or latest in (".", ".."):
            raise FormatError(f"{ckdir / LATEST_FILE}: names {latest!r}, which is not a checkpoint folder")
        missing = _missing_files(target) if target.is_dir() else ["the folder itself"]
        if missing:
            raise FormatError(f"{ckdir / LATEST_FILE}: names {target}, which is incomplete (missing {', '.join(missing)})")
        return target
    complete = [d for d in _step_dirs(ckdir) if not _missing_files(d)]
    if not complete:
        raise FormatError(f"{ckdir}: no checkpoint found (no '{LATEST_FILE}' file and no complete step_N folder)")
    return complete[-1]


def _read_meta(file: Path) -> dict:
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{file}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{file}: expected a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{file}: unsupported checkpoint format_version {version!r} (this build reads 1..{FORMAT_VERSION})")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; any missing, truncated or corrupt file is a FormatError naming it."""
    step_dir = resolve_checkpoint(path)
    meta = _read_meta(step_dir / META_FILE)
    for fname, size in recorded_sizes(meta, step_dir / META_FILE).items():
        f = step_dir / fname
        if not f.is_file():
            raise FormatError(f"{f}: missing from the checkpoint")
        if f.stat().st_size != size:
            raise FormatError(f"{f}: {f.stat().st_size} bytes, expected {size} (truncated or overwritten)")
    verify_checksums(step_dir, meta)

    model_file = step_dir / MODEL_FILE
    try:
        with safe_open(str(model_file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        for alias, target in aliases.items():
            state[alias] = state[target]
    except Exception as e:  # SafetensorError, OSError, bad alias table: all mean a corrupt file
        raise FormatError(f"{model_file}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    if str(map_location) != "cpu":
        state = {k: v.to(map_location) for k, v in state.items()}

    optim_states = None
    optim_file = step_dir / OPTIM_FILE
    if optim_file.exists():
        try:
            optim_states = torch.load(optim_file, map_location=map_location, weights_only=True)
        except Exception as e:  # truncated zip, refused pickle global, ...
            raise FormatError(f"{optim_file}: unreadable optimizer state ({type(e).__name__}: {e})") from None
        if not isinstance(optim_states, list) or not all(isinstance(s, dict) for s in optim_states):
            raise FormatError(f"{optim_file}: expected a list of optimizer state_dicts")
    return Checkpoint(path=step_dir, model_state=state, optim_states=optim_states, meta=meta)


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step folders (never the one `latest` names)."""
    if keep < 0:
        raise ValueError(f"prune_checkpoints: keep must be >= 0 (got {keep})")
    ckdir = Path(run_dir) / "checkpoints"
    latest = _read_latest(ckdir) if ckdir.is_dir() else None
    dirs = _step_dirs(ckdir)
    removed = []
    for d in dirs[: max(0, len(dirs) - keep)]:
        if d.name == latest:
            continue
        trash = ckdir / f".trash_{d.name}_{os.getpid()}"
        os.rename(d, trash)  # a kill mid-delete must not leave a half-empty step_N folder
        shutil.rmtree(trash)
        removed.append(d)
    return removed
