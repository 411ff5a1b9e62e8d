"""Reaching a Hugging Face hub: one small client that cross-coders and runs share.

The hub is optional: everything MNEME does runs offline, and this module only wraps
huggingface_hub's download and commit calls so that their failures read as one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mneme_core.common.errors import InteropError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a hub repo id, owner/name


@dataclass(frozen=True)
class Hub:
    """How to reach a Hugging Face hub. ``None`` fields keep huggingface_hub's own defaults
    (``HF_ENDPOINT``, the saved token, ``HF_HUB_CACHE``); ``local_files_only`` reads the cache
    and never the network (as ``HF_HUB_OFFLINE=1`` does)."""

    endpoint: str | None = None
    token: str | bool | None = None
    cache_dir: str | Path | None = None
    local_files_only: bool = False

    def download(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        revision: str | None = None,
        allow_patterns: list[str] | None = None,
        local_dir: str | Path | None = None,
    ) -> Path:
        """The repo's files on disk (huggingface_hub's cache, or ``local_dir``)."""
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    repo_id,
                    repo_type=repo_type,
                    revision=revision,
                    allow_patterns=allow_patterns,
                    cache_dir=self.cache_dir,
                    local_dir=local_dir,
                    endpoint=self.endpoint,
                    token=self.token,
                    local_files_only=self.local_files_only,
                )
            )
        except Exception as exc:  # any failure of the hub client (HTTP, network, cache) is one line
            raise InteropError(f"cannot fetch {repo_type} repo {repo_id!r} from the hub: {_first_line(exc)}") from exc

    def upload(
        self, repo_id: str, files: dict[str, Path | bytes], *, repo_type: str, message: str, private: bool | None = None
    ) -> str:
        """Create the repo if needed and commit ``files`` (path in repo → file or bytes) at
        once; returns the commit's URL."""
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        operations = [
            CommitOperationAdd(
                path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content)
            )
            for name, content in sorted(files.items())
        ]
        try:
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            return str(api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type).commit_url)
        except Exception as exc:  # as in download
            raise InteropError(f"cannot push to {repo_type} repo {repo_id!r}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
