"""A small Hub-compatible HTTP server that stores repos on disk, for offline tests of pushing and loading.

It speaks the subset of the Hugging Face Hub API that huggingface_hub 2.4 and datasets 5.2 use to create a repo,
upload a folder (preupload, LFS batch + basic PUT transfer, NDJSON commit), download files (`resolve`, with Range),
and list or inspect repos (repo info, tree, paths-info), so `vital push` followed by
`datasets.load_dataset("org/name", config)` (also streaming) runs against it unchanged. Xet is not spoken: clients
must run with HF_HUB_DISABLE_XET=1. Parquet, images and other binary files are LFS, as on the Hub.

Storage, under `root`:
    lfs/<sha256>                     LFS objects, uploaded by PUT before the commit that names them
    blobs/<git sha1>                 regular (non-LFS) file contents
    repos/<type>s/<org>/<name>.json  {"private", "created", "refs": {branch: commit}, "commits": {oid: commit}}
A commit is {"parent", "title", "description", "date", "files": {path: {"oid", "size", "lfs": sha256|null}}}.

Writes need `Authorization: Bearer <token>` when the server has a token; private repos need it for reads too.
`requests` records (method, path) of every request and `lfs_puts` counts LFS uploads, so tests can check what the
client did (for instance that a re-run uploads nothing twice). `fail_commits` makes the next N commits fail with a
500, to test resuming an interrupted push. README metadata is checked as the Hub checks it (`card_rules`):
`/api/validate-yaml` answers 400 with the reasons, and a commit holding a README the Hub would refuse fails. `tree_page_size` sets how many entries a tree page holds (the
Hub's 1000 by default; tests lower it to exercise pagination).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.fakes.card_rules import card_errors, front_matter

REPO_TYPES = ("model", "dataset", "space")
LFS_SUFFIXES = (
    ".parquet", ".arrow", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npy", ".npz",
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".zip", ".gz", ".tgz", ".tar", ".zst", ".xz",
    ".7z", ".pkl", ".pickle", ".msgpack", ".model",
)  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 1 << 20


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An error the Hub would answer with: status, X-Error-Code and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class HubStore:
    """Repos, commits and objects on disk; every method is safe to call from several request threads."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("lfs", "blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_file(repo_type, repo_id)
        if not path.exists():
            raise HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def save(self, repo_type: str, repo_id: str, repo: dict) -> None:
        path = self._repo_file(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(repo))
        tmp.replace(path)

    def create(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create an empty repo with an initial commit; False if it already exists."""
        with self.lock:
            if self._repo_file(repo_type, repo_id).exists():
                return False
            initial = {"parent": None, "title": "initial commit", "description": "", "date": _now(), "files": {}}
            oid = _commit_oid(initial)
            repo = {"private": private, "created": _now(), "refs": {"main": oid}, "commits": {oid: initial}}
            self.save(repo_type, repo_id, repo)
            return True

    def resolve_revision(self, repo: dict, revision: str) -> str:
        if revision in repo["refs"]:
            return repo["refs"][revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files_at(self, repo_type: str, repo_id: str, revision: str) -> tuple[dict, str, dict]:
        repo = self.load(repo_type, repo_id)
        oid = self.resolve_revision(repo, revision)
        return repo, oid, repo["commits"][oid]["files"]

    def has_lfs(self, sha256: str) -> bool:
        return (self.root / "lfs" / sha256).exists()

    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def content_path(self, entry: dict) -> Path:
        return self.lfs_path(entry["lfs"]) if entry["lfs"] else self.root / "blobs" / entry["oid"]

    def put_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = self.root / "tmp" / f"{oid}.{secrets.token_hex(4)}"
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def commit(self, repo_type: str, repo_id: str, branch: str, header: dict, operations: list[dict]) -> str:
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if branch not in repo["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = repo["refs"][branch]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo["commits"][parent]["files"])
            for key, value in operations:
                _apply_operation(self, files, key, value)
            commit = {
                "parent": parent,
                "title": header.get("summary", ""),
                "description": header.get("description", ""),
                "date": _now(),
                "files": files,
            }
            oid = _commit_oid(commit)
            repo["commits"][oid] = commit
            repo["refs"][branch] = oid
            self.save(repo_type, repo_id, repo)
            return oid

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> bool:
        with self.lock:
            repo = self.load(repo_type, repo_id)
            if branch in repo["refs"]:
                return False
            repo["refs"][branch] = self.resolve_revision(repo, starting_point or "main")
            self.save(repo_type, repo_id, repo)
            return True


def _apply_operation(store: HubStore, files: dict, key: str, value: dict) -> None:
    path = value["path"].strip("/")
    if key == "file":
        if value.get("encoding", "base64") != "base64":
            raise HubError(400, f"unsupported encoding for {path}")
        data = base64.b64decode(value["content"])
        files[path] = {"oid": store.put_blob(data), "size": len(data), "lfs": None}
    elif key == "lfsFile":
        sha256 = value["oid"]
        if not store.has_lfs(sha256):
            raise HubError(422, f"LFS object {sha256} for {path} was never uploaded")
        size = store.lfs_path(sha256).stat().st_size
        files[path] = {"oid": git_blob_oid(lfs_pointer(sha256, size)), "size": size, "lfs": sha256}
    elif key == "deletedFile":
        if path not in files:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        del files[path]
    elif key == "deletedFolder":
        for name in [name for name in files if name.startswith(path + "/")]:
            del files[name]
    else:
        raise HubError(400, f"unknown commit operation {key!r}")


def _commit_oid(commit: dict) -> str:
    payload = json.dumps(commit, sort_keys=True).encode() + secrets.token_bytes(8)
    return hashlib.sha1(payload).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _needs_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample


def _tree_entries(files: dict, folder: str, recursive: bool, last_commit: dict | None) -> list[dict]:
    """Tree listing entries under `folder`, folders first as the Hub does; raises 404 for a missing folder."""
    prefix = folder + "/" if folder else ""
    below = sorted(name for name in files if name.startswith(prefix))
    if folder and not below:
        raise HubError(404, f"{folder} does not exist", "EntryNotFound")
    folders: set[str] = set()
    entries: list[dict] = []
    for name in below:
        rest = name[len(prefix) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            if depth > 1 and not recursive:
                break
            folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(_file_entry(name, files[name], last_commit))
    folder_entries = [_folder_entry(name, last_commit) for name in sorted(folders)]
    return folder_entries + entries


def _file_entry(path: str, entry: dict, last_commit: dict | None) -> dict:
    out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        pointer = lfs_pointer(entry["lfs"], entry["size"])
        out["lfs"] = {"oid": entry["lfs"], "size": entry["size"], "pointerSize": len(pointer)}
    if last_commit is not None:
        out["lastCommit"] = last_commit
    return out


def _folder_entry(path: str, last_commit: dict | None) -> dict:
    out = {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}
    if last_commit is not None:
        out["lastCommit"] = last_commit
    return out


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHubServer

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        return

    # ---- plumbing

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.server.record(method, split.path)
        try:
            self._route(method, split.path)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._send_json({"error": err.message}, status=err.status, headers=headers, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            return

    def _route(self, method: str, raw_path: str) -> None:
        segments = raw_path.strip("/").split("/")
        if raw_path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if raw_path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()
        if raw_path == "/api/whoami-v2" and method == "GET":
            self._require_token()
            return self._send_json({"type": "user", "name": "vital-tester", "orgs": []})
        if segments[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(segments[1])
        if segments[0] == "lfs-verify" and method == "POST":
            return self._lfs_verify()
        if segments[0] == "api" and len(segments) >= 4 and segments[1].rstrip("s") in REPO_TYPES:
            return self._route_api(method, segments[1][:-1], segments[2:])
        if len(segments) >= 3 and segments[1].endswith(".git") and raw_path.endswith("/info/lfs/objects/batch"):
            return self._lfs_batch("model", f"{segments[0]}/{segments[1][:-4]}")
        if len(segments) >= 4 and segments[2].endswith(".git") and raw_path.endswith("/info/lfs/objects/batch"):
            return self._lfs_batch(segments[0].rstrip("s"), f"{segments[1]}/{segments[2][:-4]}")
        if method in ("GET", "HEAD"):
            repo_type, rest = ("model", segments)
            if segments[0] in ("datasets", "spaces"):
                repo_type, rest = segments[0][:-1], segments[1:]
            if len(rest) >= 5 and rest[2] == "resolve":
                return self._resolve(method, repo_type, f"{rest[0]}/{rest[1]}", unquote(rest[3]), rest[4:])
        raise HubError(404, f"no route for {method} {raw_path}")

    def _route_api(self, method: str, repo_type: str, rest: list[str]) -> None:
        repo_id = f"{rest[0]}/{rest[1]}"
        action = rest[2] if len(rest) > 2 else None
        revision = unquote(rest[3]) if len(rest) > 3 else "main"
        tail = unquote("/".join(rest[4:])) if len(rest) > 4 else ""
        if method == "GET" and action in (None, "revision"):
            return self._repo_info(repo_type, repo_id, revision)
        if method == "GET" and action == "tree":
            return self._tree(repo_type, repo_id, revision, tail.strip("/"))
        if method == "POST" and action == "paths-info":
            return self._paths_info(repo_type, repo_id, revision)
        if method == "POST" and action == "preupload":
            return self._preupload(repo_type, repo_id, revision)
        if method == "POST" and action == "commit":
            return self._commit(repo_type, repo_id, revision)
        if method == "POST" and action == "branch":
            return self._create_branch(repo_type, repo_id, revision)
        if method == "GET" and action == "commits":
            return self._commits(repo_type, repo_id, revision)
        raise HubError(404, f"no API route for {method} {action}")

    def _read_body(self) -> bytes:
        return b"".join(self._iter_body())

    def _iter_body(self) -> Iterator[bytes]:
        """The request body in chunks, whether sent with Content-Length or chunked transfer encoding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise HubError(400, "request body ended early")
            remaining -= len(chunk)
            yield chunk

    def _json_body(self) -> dict:
        return json.loads(self._read_body() or b"{}")

    def _send_json(self, payload, status: int = 200, headers: dict | None = None, head: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _require_token(self) -> None:
        if self.server.token is not None and self._token() != self.server.token:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        repo = self.server.store.load(repo_type, repo_id)
        if repo["private"] and self.server.token is not None and self._token() != self.server.token:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _prefix(self, repo_type: str) -> str:
        return "" if repo_type == "model" else f"{repo_type}s/"

    # ---- repos

    def _create_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or 'vital-tester'}/{payload['name']}"
        created = self.server.store.create(repo_type, repo_id, payload.get("visibility") == "private")
        url = f"{self._base()}/{self._prefix(repo_type)}{repo_id}"
        if not created:  # the Hub answers 409 with the url, which create_repo(exist_ok=True) reads
            message = "You already created this repo"
            self._send_json({"error": message, "url": url}, status=409, headers={"X-Error-Message": message})
            return
        self._send_json({"url": url, "name": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable(repo_type, repo_id)
        oid = self.server.store.resolve_revision(repo, revision)
        commit = repo["commits"][oid]
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": oid,
            "lastModified": commit["date"],
            "createdAt": repo["created"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(commit["files"])],
        }
        readme = commit["files"].get("README.md")
        if readme is not None:  # the Hub sends the card's YAML metadata, parsed, as `cardData`
            text = self.server.store.content_path(readme).read_text(encoding="utf-8", errors="replace")
            if isinstance(meta := front_matter(text), dict) and meta:
                info["cardData"] = meta
        self._send_json(info)

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        self._require_token()
        payload = self._json_body()
        if not self.server.store.create_branch(repo_type, repo_id, branch, payload.get("startingPoint")):
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        self._send_json({})

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable(repo_type, repo_id)
        oid, out = self.server.store.resolve_revision(repo, revision), []
        while oid is not None:
            commit = repo["commits"][oid]
            out.append({"id": oid, "title": commit["title"], "message": commit["description"], "date": commit["date"],
                        "authors": [{"user": "vital-tester"}]})  # fmt: skip
            oid = commit["parent"]
        self._send_json(out)

    def _last_commit(self, repo: dict, oid: str) -> dict:
        commit = repo["commits"][oid]
        return {"id": oid, "title": commit["title"], "date": commit["date"]}

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str) -> None:
        repo = self._readable(repo_type, repo_id)
        oid = self.server.store.resolve_revision(repo, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        last_commit = self._last_commit(repo, oid) if expand else None
        entries = _tree_entries(repo["commits"][oid]["files"], folder, recursive, last_commit)
        # Cursor pagination with a GitHub-style Link header, as the Hub pages large trees.
        start = int(self.query.get("cursor", ["0"])[0])
        page = entries[start : start + self.server.tree_page_size]
        headers = {}
        if start + self.server.tree_page_size < len(entries):
            query = urlencode({**{k: v[0] for k, v in self.query.items()}, "cursor": start + len(page)})
            headers["Link"] = f'<{self._base()}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._send_json(page, headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable(repo_type, repo_id)
        oid = self.server.store.resolve_revision(repo, revision)
        files = repo["commits"][oid]["files"]
        body = self._read_body().decode()
        form = json.loads(body) if self.headers.get("Content-Type", "").startswith("application/json") else None
        form = form if form is not None else {k: v for k, v in parse_qs(body).items()}
        paths = form.get("paths", [])
        expand = str(form.get("expand", ["false"])[0] if isinstance(form.get("expand"), list) else form.get("expand"))
        last_commit = self._last_commit(repo, oid) if expand.lower() in ("1", "true") else None
        out = []
        for path in [paths] if isinstance(paths, str) else paths:
            path = path.strip("/")
            if path in files:
                out.append(_file_entry(path, files[path], last_commit))
            elif any(name.startswith(path + "/") for name in files):
                out.append(_folder_entry(path, last_commit))
        self._send_json(out)

    # ---- uploads

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        self.server.store.load(repo_type, repo_id)
        payload = self._json_body()
        try:
            _, _, files = self.server.store.files_at(repo_type, repo_id, revision)
        except HubError:
            files = {}  # a branch about to be created has no files yet
        out = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            lfs = _needs_lfs(path, int(item.get("size", 0)), sample)
            existing = files.get(path)
            remote_oid = None
            if existing is not None:
                remote_oid = existing["lfs"] if existing["lfs"] else existing["oid"]
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": remote_oid})  # fmt: skip
        self._send_json({"files": out, "commitOid": None})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        self.server.store.load(repo_type, repo_id)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "only uploads go through this fake's batch endpoint")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            if not self.server.store.has_lfs(oid):
                signature = self.server.sign(oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{self._base()}/lfs-upload/{oid}?size={size}&sig={signature}", "header": {}},
                    "verify": {"href": f"{self._base()}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str) -> None:
        size = int(self.query.get("size", ["-1"])[0])
        if self.query.get("sig", [""])[0] != self.server.sign(oid, size):
            raise HubError(403, "bad upload signature")
        store = self.server.store
        digest, written = hashlib.sha256(), 0
        tmp = store.root / "tmp" / f"{oid}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as handle:
                for chunk in self._iter_body():
                    digest.update(chunk)
                    written += len(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != oid or written != size:
                raise HubError(400, f"uploaded content does not match oid {oid} / size {size}")
            tmp.replace(store.lfs_path(oid))
        finally:
            tmp.unlink(missing_ok=True)
        self.server.lfs_puts += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("ETag", f'"{oid}"')
        self.end_headers()

    def _validate_yaml(self) -> None:
        """As the Hub answers huggingface_hub's `RepoCard.validate`: 200 when accepted, else 400 with the reasons."""
        payload = self._json_body()
        errors = card_errors(payload.get("content") or "", payload.get("repoType") or "model")
        if not errors:
            return self._send_json({})
        body = "\n".join(errors).encode()
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", errors[0])
        self.end_headers()
        self.wfile.write(body)

    def _lfs_verify(self) -> None:
        payload = self._json_body()
        if not self.server.store.has_lfs(payload.get("oid", "")):
            raise HubError(404, "object not found")
        self._send_json({"ok": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        if self.server.take_commit_failure():
            raise HubError(500, "injected commit failure")
        operations = [(line["key"], line["value"]) for line in lines[1:]]
        for key, value in operations:  # the Hub refuses a commit whose README metadata it would not accept
            if key == "file" and value["path"].strip("/") == "README.md":
                errors = card_errors(base64.b64decode(value["content"]).decode("utf-8", "replace"), repo_type)
                if errors:
                    raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        oid = self.server.store.commit(repo_type, repo_id, revision, lines[0]["value"], operations)
        url = f"{self._base()}/{self._prefix(repo_type)}{repo_id}/commit/{oid}"
        self._send_json({"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None})

    # ---- downloads

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, rest: list[str]) -> None:
        repo = self._readable(repo_type, repo_id)
        oid = self.server.store.resolve_revision(repo, revision)
        path = unquote("/".join(rest))
        entry = repo["commits"][oid]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=oid)
        content = self.server.store.content_path(entry)
        size = entry["size"]
        etag = entry["lfs"] or entry["oid"]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Last-Modified": formatdate(content.stat().st_mtime, usegmt=True)}  # fmt: skip
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        requested = self.headers.get("Range")
        if requested:
            start, end = _parse_range(requested, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(max(0, end - start + 1)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "HEAD":
            return
        with open(content, "rb") as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise HubError(416, f"bad range {header!r}")
    first, last = match.groups()
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise HubError(416, f"range {header!r} starts after the end of a {size}-byte file")
    return start, end


class FakeHubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, token: str | None = None, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), HubHandler)
        self.store = HubStore(root)
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.lfs_puts = 0
        self.fail_commits = 0
        self.tree_page_size = 1000
        self._secret = secrets.token_hex(16)
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, unquote(path)))

    def sign(self, oid: str, size: int) -> str:
        return hashlib.sha256(f"{self._secret}:{oid}:{size}".encode()).hexdigest()[:32]

    def take_commit_failure(self) -> bool:
        with self._lock:
            if self.fail_commits > 0:
                self.fail_commits -= 1
                return True
            return False

    def add_files(
        self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset", message: str = "add"
    ) -> str:
        """Commit files straight into storage (creating the repo), to set up what a test downloads."""
        store = self.store
        store.create(repo_type, repo_id, private=False)
        operations = []
        for path, data in files.items():
            if _needs_lfs(path, len(data), data[:512]):
                sha256 = hashlib.sha256(data).hexdigest()
                store.lfs_path(sha256).write_bytes(data)
                operations.append(("lfsFile", {"path": path, "oid": sha256, "size": len(data)}))
            else:
                operations.append(("file", {"path": path, "content": base64.b64encode(data).decode()}))
        return store.commit(repo_type, repo_id, "main", {"summary": message}, operations)

    def file_bytes(self, repo_id: str, path: str, repo_type: str = "dataset", revision: str = "main") -> bytes:
        """The content of a committed file, read straight from storage (for assertions)."""
        _, _, files = self.store.files_at(repo_type, repo_id, revision)
        return self.store.content_path(files[path]).read_bytes()

    def list_files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, dict]:
        return dict(self.store.files_at(repo_type, repo_id, revision)[2])


@contextlib.contextmanager
def running_hub(root: Path, token: str | None = None) -> Iterator[FakeHubServer]:
    """Start a fake Hub on 127.0.0.1 with a free port in a background thread; stop it on exit."""
    server = FakeHubServer(Path(root), token=token)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main() -> None:
    """Run a fake Hub in the foreground, for trying `vital push` and `load_dataset` by hand."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder that stores the repos")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="token that writes must present (default: none needed)")
    args = parser.parse_args()
    server = FakeHubServer(Path(args.root), token=args.token, port=args.port)
    print(f"fake Hub at {server.endpoint} (HF_ENDPOINT={server.endpoint} HF_HUB_DISABLE_XET=1)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
