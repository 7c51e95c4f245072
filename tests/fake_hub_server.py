"""A faked Hugging Face Hub for tests: uploads land in a local store, a stdlib HTTP server on 127.0.0.1 serves it.

Uploads: ``install_fake_uploads`` replaces ``HfApi.create_repo`` / ``upload_folder`` (``create_commit`` fails the
test) with functions that write the hub-cache layout into ``store``:
``<store>/<type>s--org--name/refs/main`` (the commit sha) and ``snapshots/<sha>/<files>`` (hf-stack-notes §3).

Downloads: ``FakeHubServer(store)`` answers the requests that ``huggingface_hub`` 2.4 (``hf_hub_download``,
``snapshot_download``, ``HfFileSystem``), ``datasets`` 5.2 (``load_dataset("org/name", config)``) and
``transformers`` (``from_pretrained`` / ``pipeline`` by repo id, remote code) make, for models and datasets;
``<rev>`` is ``main`` or the 40-hex commit sha, ``{type}`` is ``models`` or ``datasets``:

- ``GET  /api/{type}/org/name`` and ``/api/{type}/org/name/revision/<rev>``: repo info (``id``, ``sha``,
  ``siblings`` with ``rfilename``/``size``/``blobId``).
- ``GET  /api/{type}/org/name/tree/<rev>[/<path>]?recursive=&expand=``: ``{"type": "file"|"directory", "path",
  "oid", "size", "lastCommit"}`` entries, one page (no ``Link`` header).
- ``POST /api/{type}/org/name/paths-info/<rev>`` (form ``paths=...``): the same entries for the given paths.
- ``HEAD|GET /org/name/resolve/<rev>/<file>`` (models) and ``/datasets/org/name/resolve/<rev>/<file>``: the bytes
  (``Range: bytes=a-b`` gives 206), with ``X-Repo-Commit``, ``ETag`` (the git blob sha1, as the Hub gives for
  non-LFS files) and ``Content-Length``; served directly (200), never redirected, so the client's ``Location``
  is the request URL.

Errors carry the Hub's ``X-Error-Code`` so the clients raise their usual exceptions: ``RepoNotFound`` (401, as
the Hub answers unknown repos), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit`` so
the client caches the absence). Any other route answers 404 and is recorded in ``requests`` like every request,
so a test can see what the clients asked for.

Clients reach it through ``client_env(url, home)`` (environment for a subprocess: ``HF_ENDPOINT``,
``HF_HUB_OFFLINE=0``, fresh caches, no telemetry, no parquet-export or download-count calls) or, in this process,
``point_clients_at`` (the same settings, also patched into the module constants that huggingface_hub and
datasets read at import time). ``BLOCK_REMOTE_HOSTS`` is code for a subprocess that refuses to resolve any host
other than 127.0.0.1/localhost; ``point_clients_at`` installs the same guard in this process. The ``served_hub``
fixture does all of it for one test (store, uploads, server, clients) and stops the server at teardown.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LOCAL_HOSTS = ("127.0.0.1", "localhost")

BLOCK_REMOTE_HOSTS = '''
import socket
_getaddrinfo = socket.getaddrinfo
def _local_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
        raise OSError("network blocked in tests: " + str(host))
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _local_only
'''


def repo_dir(store: Path, repo_id: str, repo_type: str | None) -> Path:
    return Path(store) / f"{repo_type or 'model'}s--{repo_id.replace('/', '--')}"


def install_fake_uploads(monkeypatch, store: Path) -> dict:
    """Patch HfApi.create_repo / upload_folder to write into ``store``; returns the calls made, per method."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, *, repo_type=None, exist_ok=False, private=None, **kw):
        d = repo_dir(store, repo_id, repo_type)
        if d.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        (d / "refs").mkdir(parents=True, exist_ok=True)
        calls["create_repo"].append((repo_id, repo_type))
        return RepoUrl(f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}")

    def upload_folder(self, *, folder_path, repo_id, repo_type=None, commit_message=None, ignore_patterns=None, **kw):
        d = repo_dir(store, repo_id, repo_type)
        if not (d / "refs").is_dir():
            raise FileNotFoundError(f"repo {repo_id} was not created")
        files = sorted(p for p in Path(folder_path).rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        sha = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
        snap = d / "snapshots" / sha
        for p in files:
            target = snap / p.relative_to(folder_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        (d / "refs" / "main").write_text(sha)
        calls["upload_folder"].append((repo_id, repo_type, commit_message, [str(p.relative_to(folder_path)) for p in files]))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", commit_message=commit_message or "",
                          commit_description="", oid=sha)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, *a, **k: pytest.fail("unexpected create_commit"))
    return calls


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _HubError(Exception):
    def __init__(self, status: int, code: str, commit: str | None = None):
        super().__init__(code)
        self.status, self.code, self.commit = status, code, commit


class _Snapshot:
    """One repo at one commit: its files under ``root``."""

    def __init__(self, repo_id: str, sha: str, root: Path):
        self.repo_id, self.sha, self.root = repo_id, sha, root
        self.date = datetime.fromtimestamp(root.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def entry(self, path: str) -> dict:
        target = self.root / path
        if ".." in Path(path).parts:  # never serve outside the snapshot
            raise _HubError(404, "EntryNotFound", self.sha)
        commit = {"id": self.sha, "title": "upload", "date": self.date}
        if target.is_file():
            data = target.read_bytes()
            return {"type": "file", "path": path, "oid": _git_blob_sha1(data), "size": len(data), "lastCommit": commit}
        if target.is_dir() and path:
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0,
                    "lastCommit": commit}
        raise _HubError(404, "EntryNotFound", self.sha)

    def info(self) -> dict:
        siblings = [{"rfilename": f, "size": (e := self.entry(f))["size"], "blobId": e["oid"]} for f in self.files()]
        return {"id": self.repo_id, "sha": self.sha, "siblings": siblings, "private": False, "gated": False,
                "disabled": False, "lastModified": self.date, "tags": [], "downloads": 0, "likes": 0}

    def tree(self, path: str, recursive: bool) -> list[dict]:
        folder = self.root / path
        if ".." in Path(path).parts or not folder.is_dir():
            raise _HubError(404, "EntryNotFound", self.sha)
        children = folder.rglob("*") if recursive else folder.iterdir()
        return [self.entry(p.relative_to(self.root).as_posix()) for p in sorted(children)]


class FakeHubServer:
    """The HTTP side of the faked Hub (see the module docstring); a context manager that runs it in a thread."""

    def __init__(self, store: Path):
        self.store = Path(store)
        self.requests: list[tuple[str, str, int]] = []  # (method, path?query, status)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_POST(self):
                hub._answer(self, body=True)

            def log_message(self, *args):  # recorded in hub.requests instead of stderr
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    def __enter__(self) -> "FakeHubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- routing -----------------------------------------------------------------------------------------------
    def snapshot(self, repo_type: str, repo_id: str, revision: str) -> _Snapshot:
        d = repo_dir(self.store, repo_id, repo_type)
        if not (d / "refs" / "main").is_file():
            raise _HubError(401, "RepoNotFound")
        sha = (d / "refs" / "main").read_text().strip() if revision == "main" else revision
        if not re.fullmatch(r"[0-9a-f]{40}", sha) or not (d / "snapshots" / sha).is_dir():
            raise _HubError(404, "RevisionNotFound")
        return _Snapshot(repo_id, sha, d / "snapshots" / sha)

    def _route(self, method: str, path: str, query: dict, form: dict):
        """-> (status, headers, payload bytes) for one request; raises _HubError for the Hub's error answers."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            repo_type, repo_id, rest = parts[1][:-1], "/".join(parts[2:4]), parts[4:]
            if not rest and method == "GET":
                return self._json(self.snapshot(repo_type, repo_id, "main").info())
            if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                return self._json(self.snapshot(repo_type, repo_id, rest[1]).info())
            if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                return self._json(self.snapshot(repo_type, repo_id, rest[1]).tree("/".join(rest[2:]), recursive))
            if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                snap = self.snapshot(repo_type, repo_id, rest[1])
                found = []
                for p in form.get("paths", []):
                    try:
                        found.append(snap.entry(p.strip("/")))
                    except _HubError:
                        pass  # the Hub leaves missing paths out
                return self._json(found)
        elif method in ("GET", "HEAD"):
            repo_type = "dataset" if parts[:1] == ["datasets"] else "model"
            rest = parts[1:] if repo_type == "dataset" else parts
            if len(rest) >= 5 and rest[2] == "resolve":
                snap = self.snapshot(repo_type, "/".join(rest[:2]), rest[3])
                entry = snap.entry("/".join(rest[4:]))
                if entry["type"] != "file":
                    raise _HubError(404, "EntryNotFound", snap.sha)
                data = (snap.root / entry["path"]).read_bytes()
                headers = {"X-Repo-Commit": snap.sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                return (200, headers, data)
        return (404, {}, b"not a route of the fake hub")

    @staticmethod
    def _json(obj) -> tuple[int, dict, bytes]:
        return (200, {"Content-Type": "application/json"}, json.dumps(obj).encode())

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(handler.path)
        form = {}
        if handler.command == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            form = parse_qs(handler.rfile.read(length).decode())
        try:
            status, headers, payload = self._route(handler.command, url.path, parse_qs(url.query), form)
        except _HubError as e:
            status, payload = e.status, json.dumps({"error": e.code}).encode()
            headers = {"X-Error-Code": e.code, "Content-Type": "application/json"}
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
        start, end = 0, len(payload)
        if status == 200 and handler.headers.get("Range", "").startswith("bytes="):
            first, _, last = handler.headers["Range"][len("bytes="):].partition("-")
            start, end = int(first or 0), min(len(payload), int(last) + 1 if last else len(payload))
            if start >= len(payload):
                status, start, end = 416, 0, 0
                headers["Content-Range"] = f"bytes */{len(payload)}"
            else:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(payload)}"
        self.requests.append((handler.command, handler.path, status))
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(end - start))
        handler.end_headers()
        if body:
            handler.wfile.write(payload[start:end])


def client_env(url: str, home: Path) -> dict[str, str]:
    """Environment that points huggingface_hub / datasets / transformers at ``url`` with caches under ``home``."""
    home = Path(home)
    return {
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # the server speaks plain HTTP only
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would HEAD an S3 bucket
        "HF_DATASETS_OFFLINE": "0",
    }


def point_clients_at(monkeypatch, url: str, home: Path) -> None:
    """``client_env`` for this process: the environment, and the constants read from it at import time (the
    endpoint, offline mode, caches) in huggingface_hub and datasets; datasets' parquet-export lookup (another
    host) is turned off; name resolution outside 127.0.0.1/localhost raises."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    env = client_env(url, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(datasets_config, "HF_ENDPOINT", url)
    monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets_config, "USE_PARQUET_EXPORT", False)  # would ask datasets-server.<endpoint host>
    monkeypatch.setattr(datasets_config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    datasets_cache = Path(env["HF_DATASETS_CACHE"])
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", datasets_cache)
    monkeypatch.setattr(datasets_config, "DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads")
    monkeypatch.setattr(datasets_config, "EXTRACTED_DATASETS_PATH", datasets_cache / "downloads" / "extracted")

    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            raise OSError(f"network blocked in tests: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def served_hub(monkeypatch, tmp_path):
    """Fake uploads into ``tmp_path/hub-store``, the server on it, the clients of this process pointed at it with
    caches under ``tmp_path/hf-home``; gives the server with ``.calls`` (the upload calls, as ``fake_hub``) and
    ``.home``; the server is shut down at teardown."""
    store = tmp_path / "hub-store"
    calls = install_fake_uploads(monkeypatch, store)
    with FakeHubServer(store) as server:
        server.calls, server.home = calls, tmp_path / "hf-home"
        point_clients_at(monkeypatch, server.url, server.home)
        yield server
