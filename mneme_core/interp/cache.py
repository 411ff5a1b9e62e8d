"""Per-latent answer cache on disk, so a rerun or a crash never pays for an answer twice.

One small JSON file per (namespace, latent), written atomically the moment the answer
arrives: a killed run keeps everything finished before the kill. An entry records the
hash of the prompt it answered; a changed prompt (other contexts, other explainer
settings) misses instead of returning a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from mneme_core.common.atomic import atomic_write_json


def prompt_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


class AnswerCache:
    """``root/<namespace>/<latent // 1000>/<latent>.json`` (sharded: 131k files in one
    folder make listings slow on most file systems)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, namespace: str, latent: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", namespace)
        return self.root / safe / str(int(latent) // 1000) / f"{int(latent)}.json"

    def get(self, namespace: str, latent: int, key: str) -> dict[str, Any] | None:
        path = self._path(namespace, latent)
        try:
            entry = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return entry if entry.get("key") == key else None

    def put(self, namespace: str, latent: int, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self._path(namespace, latent), {"key": key, **value})
