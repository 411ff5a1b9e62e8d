"""Which weights a run was made from: a fingerprint of each local model file.

A run resumes by skipping its finished stages, and the config alone names a model by its
path. Rebuild the fine-tuned model in place (another RMU setting, a retrained adapter) and
the same config would resume on activations and a dictionary of the old weights. So the
run records, per model, a fingerprint of the weight files its path names, and a resume
whose files differ is refused (``store.init_run``).

The fingerprint reads the file's size, its first MiB (a safetensors header and the first
tensors) and ``SAMPLES`` evenly spaced 64 KiB pieces: a few MiB per file whatever its size,
and any retraining changes values throughout. Models named by a hub id or a packaged name
have no local file here and are not fingerprinted (a hub revision belongs in the config).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mneme_core.common.config import ModelsConfig, ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
HEAD = 1 << 20
CHUNK = 1 << 16
SAMPLES = 16


def file_print(path: Path) -> str:
    """Size, head and evenly spaced samples of one file, hashed."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(HEAD))
        for i in range(1, SAMPLES + 1):
            f.seek(max(0, size * i // (SAMPLES + 1) - CHUNK // 2))
            h.update(f.read(CHUNK))
    return h.hexdigest()[:16]


def weight_files(spec: ModelSpec) -> list[Path]:
    """The local weight files a model spec names: the file itself, or those in its folder."""
    if spec.source == "named" or not spec.path:
        return []
    path = Path(spec.path)
    if spec.gguf_file and path.is_dir():
        path = path / spec.gguf_file
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return []  # a hub id


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
