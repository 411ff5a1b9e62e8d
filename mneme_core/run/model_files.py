"""Which weights a run was made from: a fingerprint of each local model's weight files.

A run resumes by skipping its finished stages, and the config alone names a model by its
path. Rebuild the fine-tuned model in place (another RMU setting, a retrained adapter) and
the same config would resume on activations and a dictionary of the old weights. So the
run records, per model, a fingerprint of the weight files its path names, and a resume
(``store.init_run``) or a confirmation (``mneme confirm``) on other weights is refused.

A safetensors file is fingerprinted by its header (names, shapes, offsets) and three 4 KiB
pieces (start, middle, end) of *every* tensor, so an edit of a few matrices (RMU changes
three layers' MLPs) shows; any other file by its size, first MiB and 16 evenly spaced
64 KiB pieces. Either way a few MiB are read, whatever the model's size. Models named by a
hub id or a packaged name have no local file here and are not fingerprinted (a hub
revision belongs in the config), and neither is a role whose files are not found now (a
run copied without its models can still be read and re-evaluated).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from mneme_core.common.config import ModelsConfig, ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
LOADED_FILES = ("model.safetensors", "adapter_model.safetensors")  # what a transformers / PEFT folder loads
SHARD_INDEX = "model.safetensors.index.json"
PIECE = 1 << 12
HEAD = 1 << 20
CHUNK = 1 << 16
SAMPLES = 16
ROLE_NAMES = {"base": "base model", "ft": "fine-tuned model"}


def _read(f: BinaryIO, at: int, n: int) -> bytes:
    f.seek(at)
    return f.read(n)


def _safetensors_print(f: BinaryIO, h: hashlib._Hash, size: int) -> bool:
    """Header and pieces of every tensor; False if the file is not a safetensors file."""
    raw = _read(f, 0, 8)
    if len(raw) < 8:
        return False
    n = struct.unpack("<Q", raw)[0]
    if not 2 <= n <= size - 8:
        return False
    try:
        header = json.loads(_read(f, 8, n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    h.update(raw + json.dumps(header, sort_keys=True).encode())
    base = 8 + n
    for name in sorted(k for k in header if k != "__metadata__"):
        begin, end = header[name].get("data_offsets", (0, 0))
        for at in (begin, (begin + end) // 2, max(begin, end - PIECE)):
            h.update(_read(f, base + at, min(PIECE, end - at)))
    return True


def file_print(path: Path) -> str:
    """The fingerprint of one weight file (module docstring)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if not (path.suffix == ".safetensors" and _safetensors_print(f, h, size)):
            h.update(_read(f, 0, HEAD))
            for i in range(1, SAMPLES + 1):
                h.update(_read(f, max(0, size * i // (SAMPLES + 1) - CHUNK // 2), CHUNK))
    return h.hexdigest()[:16]


def weight_files(spec: ModelSpec) -> list[Path]:
    """The local weight files a model spec loads: the file itself, or those its folder loads."""
    if spec.source == "named" or not spec.path:
        return []
    path = Path(spec.path)
    if spec.gguf_file and path.is_dir():
        path = path / spec.gguf_file
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []  # a hub id
    index = path / SHARD_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [path / s for s in shards if (path / s).is_file()]
    loaded = [path / name for name in LOADED_FILES if (path / name).is_file()]
    return loaded or sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def model_prints(models: ModelsConfig) -> dict[str, str]:
    """Role (``base``, ``ft``) -> fingerprint of its local weight files; roles without any are left out."""
    out = {}
    for role in ("base", "ft"):
        files = weight_files(getattr(models, role))
        if files:
            h = hashlib.sha256()
            for file in files:
                h.update(f"{file.name}:{file_print(file)};".encode())
            out[role] = h.hexdigest()[:16]
    return out


def changed_models(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Roles fingerprinted both when the run was made and now, whose weights differ."""
    return sorted(role for role in set(recorded) & set(now) if recorded[role] != now[role])


def changed_message(run_path: Path, roles: list[str]) -> str:
    return (
        f"the {' and '.join(ROLE_NAMES.get(r, r) for r in roles)} files changed since {run_path} was made "
        "(same path, other weights), so its finished stages belong to the old weights"
    )
