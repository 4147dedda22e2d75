"""A Hugging Face Hub stand-in on 127.0.0.1, for testing `rephrase push` with the real `huggingface_hub` client.

It answers the routes huggingface_hub 2.x calls to create a dataset repo and a branch, list a tree, validate a card,
pre-upload, move LFS blobs and commit; any other route is a 404 the tests can see in `requests`. Parquet files are
LFS as on the Hub (its default `.gitattributes`), everything else is a regular git blob sent base64 in the commit.
Xet is out of scope: the client must run with `HF_HUB_DISABLE_XET=1`, since the Xet CAS protocol (hf_xet, in Rust)
is not something a test server can speak; LFS is the same "pre-upload, then commit pointers" shape.

Every request is recorded without its Authorization value; every route but the LFS PUT (a presigned URL on the
real Hub) checks `Bearer <token>`. `fail(route, *statuses)` answers the next requests to a route with those
statuses; `hang(route, nth)` holds the nth request open until `stop()`, so a test can kill a client mid-push.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(".parquet")


@dataclass
class Seen:
    """One request as the hub saw it: no Authorization value, only whether it was the expected one."""

    route: str
    method: str
    path: str
    status: int
    body_size: int
    auth_ok: bool
    headers: dict[str, str]


@dataclass
class Commit:
    repo_id: str
    branch: str
    summary: str
    added: list[str]
    deleted: list[str]


@dataclass
class Repo:
    repo_type: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": GITATTRIBUTES}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})


_REPO = r"/api/datasets/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", "create_repo", r"/api/repos/create"),
    ("POST", "validate_yaml", r"/api/validate-yaml"),
    ("GET", "repo_info", _REPO + r"(?:/revision/(?P<rev>[^/]+))?"),
    ("POST", "branch", _REPO + r"/branch/(?P<rev>[^/]+)"),
    ("GET", "tree", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?"),
    ("POST", "preupload", _REPO + r"/preupload/(?P<rev>[^/]+)"),
    ("POST", "commit", _REPO + r"/commit/(?P<rev>[^/]+)"),
    ("POST", "lfs_batch", r"/datasets/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch"),
    ("PUT", "lfs_put", r"/lfs-upload/(?P<oid>[0-9a-f]{64})"),
    ("POST", "lfs_verify", r"/lfs-verify"),
]


class FakeHub:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Seen] = []
        self.commits: list[Commit] = []
        self.lfs_puts: list[str] = []
        self._failures: dict[str, deque[tuple[int, str | None]]] = defaultdict(deque)
        self._hangs: dict[str, int] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def fail(self, route: str, *statuses: int, retry_after: str | None = "0") -> None:
        """Answer the next len(statuses) requests to `route` with these statuses (and this Retry-After)."""
        self._failures[route].extend((s, retry_after) for s in statuses)

    def hang(self, route: str, nth: int) -> None:
        """Hold the nth request to `route` (1-based, counting from now) open until the hub stops."""
        self._hangs[route] = self._counts[route] + nth

    def count(self, route: str) -> int:
        """Requests to `route` received so far, answered or still held open by `hang`."""
        return self._counts[route]

    def seen(self, route: str) -> list[Seen]:
        return [r for r in self.requests if r.route == route]

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    # -- route handlers: (status, json body) from the match groups, query and request body --------------------

    def create_repo(self, body: bytes, **_: str) -> tuple[int, object]:
        req = json.loads(body)
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else f"user/{req['name']}"
        url = f"{self.url}/datasets/{repo_id}"
        if req.get("type") != "dataset":
            return 400, {"error": f"this hub only holds datasets, not {req.get('type')!r}"}
        if repo_id in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": url}
        self.repos[repo_id] = Repo(req["type"], private=req.get("visibility") == "private")
        return 200, {"url": url, "name": repo_id}

    def validate_yaml(self, body: bytes, **_: str) -> tuple[int, object]:
        content = json.loads(body)["content"]
        parts = content.split("---\n")
        meta = yaml.safe_load(parts[1]) if content.startswith("---\n") and len(parts) > 2 else None
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "README.md has no YAML metadata block"}]}
        return 200, {"errors": [], "warnings": []}

    def repo_info(self, repo: str, rev: str | None = None, **_: str) -> tuple[int, object]:
        r = self.repos[repo]
        return 200, {"id": repo, "private": r.private, "sha": r.heads[unquote(rev or "main")]}

    def branch(self, repo: str, rev: str, body: bytes, **_: str) -> tuple[int, object]:
        r, name = self.repos[repo], unquote(rev)
        if name in r.branches:
            return 409, {"error": f"branch {name} already exists"}
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        r.branches[name], r.heads[name] = dict(r.branches[start]), r.heads[start]
        return 200, {}

    def tree(self, repo: str, rev: str, query: dict, sub: str | None = None, **_: str) -> tuple[int, object]:
        prefix = f"{unquote(sub)}/" if sub else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path, data in sorted(self.repos[repo].branches[unquote(rev)].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for i in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:i]))
            if recursive or len(rest) == 1:
                entries.append(self._tree_entry(path, data))
        entries += [{"type": "directory", "path": f, "oid": git_sha1(f.encode()), "size": 0} for f in sorted(folders)]
        return 200, entries

    def _tree_entry(self, path: str, data: bytes) -> dict:
        if not is_lfs(path):
            return {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        lfs = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
        return {"type": "file", "path": path, "size": len(data), "oid": git_sha1(pointer), "lfs": lfs}

    def preupload(self, repo: str, rev: str, body: bytes, **_: str) -> tuple[int, object]:
        existing = self.repos[repo].branches[unquote(rev)]
        answer = []
        for f in json.loads(body)["files"]:
            data, lfs = existing.get(f["path"]), is_lfs(f["path"])
            oid = None if data is None else hashlib.sha256(data).hexdigest() if lfs else git_sha1(data)
            answer.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return 200, {"files": answer}

    def lfs_batch(self, repo: str, body: bytes, **_: str) -> tuple[int, object]:
        objects = []
        for obj in json.loads(body)["objects"]:
            actions = {
                "upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"},
                "verify": {"href": f"{self.url}/lfs-verify"},
            }
            objects.append(obj if obj["oid"] in self.lfs else {**obj, "actions": actions})
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid: str, body: bytes, **_: str) -> tuple[int, object]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        self.lfs[oid] = body
        self.lfs_puts.append(oid)
        return 200, {}

    def lfs_verify(self, body: bytes, **_: str) -> tuple[int, object]:
        return (200, {}) if json.loads(body)["oid"] in self.lfs else (404, {"error": "object not uploaded"})

    def commit(self, repo: str, rev: str, body: bytes, **_: str) -> tuple[int, object]:
        r, name = self.repos[repo], unquote(rev)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files, added, deleted = dict(r.branches[name]), [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile" and value["oid"] in self.lfs:
                files[value["path"]] = self.lfs[value["oid"]]
            elif key == "deletedFile" and value["path"] in files:
                del files[value["path"]]
            else:
                return 422, {"error": f"cannot apply {key} {value.get('path')!r}"}
            (deleted if key == "deletedFile" else added).append(value["path"])
        oid = hashlib.sha1(body + name.encode(), usedforsecurity=False).hexdigest()
        r.branches[name], r.heads[name] = files, oid
        self.commits.append(Commit(repo, name, lines[0]["value"]["summary"], added, deleted))
        return 200, {"success": True, "commitUrl": f"{self.url}/datasets/{repo}/commit/{oid}", "commitOid": oid}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this each answer waits ~40 ms

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output for failures
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def _serve(self) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        url, body = urlsplit(self.path), self._body()
        route, groups = "unknown", {}
        for method, name, pattern in ROUTES:
            if method == self.command and (m := re.fullmatch(pattern, url.path)):
                route, groups = name, {k: v for k, v in m.groupdict().items() if v is not None}
                break
        auth_ok = self.headers.get("Authorization") == f"Bearer {hub.token}"
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        with hub._lock:
            hub._counts[route] += 1
            hanging = hub._hangs.get(route) == hub._counts[route]
            failure = hub._failures[route].popleft() if hub._failures[route] else None
        extra: dict[str, str] = {}
        if hanging:
            hub._release.wait(timeout=60)
            status, answer = 503, {"error": "hub stopped"}
        elif route == "unknown":
            status, answer = 404, {"error": f"no route for {self.command} {url.path}"}
        elif not auth_ok and route != "lfs_put":
            status, answer = 401, {"error": "Invalid credentials in Authorization header"}
        elif failure is not None:
            status, answer = failure[0], {"error": "injected failure"}
            extra = {"Retry-After": failure[1]} if failure[1] is not None else {}
        elif "repo" in groups and groups["repo"] not in hub.repos:
            status, answer = 404, {"error": "Repository not found"}
        else:
            with hub._lock:
                status, answer = getattr(hub, route)(body=body, query=parse_qs(url.query), **groups)
        hub.requests.append(Seen(route, self.command, url.path, status, len(body), auth_ok, headers))
        payload = json.dumps(answer).encode()
        if status >= 400:  # where the Hub puts the reason that huggingface_hub shows in its errors
            extra["X-Error-Message"] = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed while this request hung
            pass

    do_GET = do_POST = do_PUT = _serve
