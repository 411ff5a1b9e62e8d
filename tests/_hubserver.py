"""A tiny Hugging Face hub on 127.0.0.1, in memory, for testing pushes and downloads offline.

It speaks the part of the hub's HTTP protocol that ``huggingface_hub`` uses to create a
repo, commit files (every file as a regular, base64 blob: the preupload answer never asks
for LFS), read repo info and the file tree, and resolve files — so ``create_commit`` and
``snapshot_download`` run unchanged against it. Not a model of the hub's permissions,
LFS/xet storage or pagination.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_API = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit)/([^/]+)(/.*)?)?$")
_RESOLVE = re.compile(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class FakeHub:
    """Repos keyed by (type, id); each a list of commits (sha, {path: bytes}), newest last."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], list[tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []
        self.url = ""

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self._commit(repo_type, repo_id, revision)[1]

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        commits = self.repos[(repo_type, repo_id)]
        if revision == "main":
            return commits[-1]
        return next(c for c in commits if c[0] == revision)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **(headers or {}),
            }.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj: object, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode())

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            hub.requests.append(f"POST {path}")
            body = self._body()
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_type, repo_id = req.get("type") or "model", f"{req['organization'] or 'user'}/{req['name']}"
                if (repo_type, repo_id) in hub.repos:
                    return self._json({"error": "You already created this repo"}, 409)
                hub.repos[(repo_type, repo_id)] = [("0" * 40, {})]
                prefix = "datasets/" if repo_type == "dataset" else ""
                return self._json({"url": f"{hub.url}/{prefix}{repo_id}"})
            if path == "/api/validate-yaml":
                return self._json({"errors": [], "warnings": []})
            match = _API.match(path)
            if not match or (match.group(1)[:-1], match.group(2)) not in hub.repos:
                return self._json({"error": "Repository not found"}, 404)
            repo_type, repo_id, action = match.group(1)[:-1], match.group(2), match.group(3)
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._json(
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if action == "commit":
                files = dict(hub.files(repo_type, repo_id))
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hashlib.sha1(
                    json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
                ).hexdigest()
                hub.repos[(repo_type, repo_id)].append((sha, files))
                return self._json({"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})
            return self._json({"error": "not supported"}, 400)

        def do_GET(self, head: bool = False) -> None:  # noqa: N802
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{'HEAD' if head else 'GET'} {path}")
            match = _RESOLVE.match(path)
            if match:
                repo_type = "dataset" if match.group(1) else "model"
                key = (repo_type, match.group(2))
                try:
                    sha, files = hub._commit(*key, match.group(3))
                except (KeyError, StopIteration):
                    return self._json({"error": "Repository not found"}, 404)
                if match.group(4) not in files:
                    return self._send(404, b"{}", {"X-Repo-Commit": sha, "X-Error-Code": "EntryNotFound"}, head)
                data = files[match.group(4)]
                return self._send(
                    200,
                    data,
                    {
                        "Content-Type": "application/octet-stream",
                        "X-Repo-Commit": sha,
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                    },
                    head,
                )
            match = _API.match(path)
            key = (match.group(1)[:-1], match.group(2)) if match else None
            if key not in hub.repos:
                return self._json({"error": "Repository not found"}, 404)
            try:
                sha, files = hub._commit(*key, match.group(4) or "main")
            except StopIteration:
                return self._json({"error": "Invalid rev id"}, 404)
            if match.group(3) == "tree":
                return self._json(
                    [
                        {"type": "file", "path": p, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                        for p, v in sorted(files.items())
                    ]
                )
            return self._json({"id": key[1], "sha": sha, "siblings": [{"rfilename": p} for p in sorted(files)]})

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET(head=True)

    return Handler


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    """A running FakeHub; ``hub.url`` is its endpoint."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
