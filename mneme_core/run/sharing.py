"""Runs on a hub: push a run's tables and cross-coder to a dataset repo, fetch or pull one.

Activation shards, checkpoints, triage marks and the lock stay behind: a pushed run is
what the dashboard needs to show the study, not what re-running it needs.
"""

from __future__ import annotations

from pathlib import Path

from mneme_core.common.hub import Hub
from mneme_core.run.store import LOCK_FILE, REPLICAS_DIR, add_provenance, read_manifest

# Left out of a pushed run: activation shards (large; the models reproduce them),
# training checkpoints, the auditors' triage marks, the lock file and the copies `mneme seeds`
# retrained (their record, seed_agreement.json, goes).
_NOT_PUSHED = ("activations", "crosscoder/checkpoints", "triage.sqlite", LOCK_FILE, REPLICAS_DIR)


def run_files(run_path: str | Path) -> dict[str, Path]:
    """What a pushed run carries: every file but activations, checkpoints, triage marks,
    the lock and hidden temp files (path in repo → file)."""
    run_path = Path(run_path)
    files = {}
    for path in sorted(run_path.rglob("*")):
        rel = path.relative_to(run_path).as_posix()
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if path.is_file() and not hidden and not any(rel == x or rel.startswith(x + "/") for x in _NOT_PUSHED):
            files[rel] = path
    return files


def run_card(run_path: Path, repo_id: str) -> str:
    """README.md of a pushed run: the study in one paragraph and how to open it."""
    m = read_manifest(run_path)
    models = m.get("models", {})
    name = lambda role: (models.get(role) or {}).get("path", "?") if isinstance(models.get(role), dict) else "?"  # noqa: E731
    stages = ", ".join(f"{s} {e.get('status', 'missing')}" for s, e in m.get("stages", {}).items())
    return (
        "---\ntags:\n- mneme\n- model-diffing\n---\n\n"
        f"# {m.get('name', repo_id)}\n\nA MNEME study: base `{name('base')}` against fine-tuned `{name('ft')}`, "
        f"layer {m.get('layer', '?')}. Stages: {stages}. Activation shards are not included.\n\n"
        f"```bash\nmneme pull {repo_id} ./{repo_id.split('/')[-1]} && mneme dashboard ./{repo_id.split('/')[-1]}\n```\n"
    )


def push_run(
    run_path: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    message: str = "Upload MNEME run",
    hub: Hub | None = None,
) -> str:
    """Push a run's tables, manifest and cross-coder to a dataset repo; returns the commit URL."""
    run_path = Path(run_path)
    read_manifest(run_path)
    files: dict[str, Path | bytes] = dict(run_files(run_path))
    files["README.md"] = run_card(run_path, repo_id).encode()
    return (hub or Hub()).upload(repo_id, files, repo_type="dataset", message=message, private=private)


def fetch_run(repo_id: str, revision: str | None = None, hub: Hub | None = None) -> Path:
    """A pushed run in huggingface_hub's cache (read-only: open it, do not run stages in it)."""
    path = (hub or Hub()).download(repo_id, repo_type="dataset", revision=revision)
    read_manifest(path)
    return path


def pull_run(repo_id: str, dest: str | Path, revision: str | None = None, hub: Hub | None = None) -> Path:
    """A pushed run copied into ``dest`` (a folder of its own), its manifest noting where from."""
    dest = Path(dest)
    (hub or Hub()).download(repo_id, repo_type="dataset", revision=revision, local_dir=dest)
    read_manifest(dest)
    add_provenance(dest, [{"kind": "hub_run", "repo_id": repo_id, "revision": revision or "main"}])
    return dest
