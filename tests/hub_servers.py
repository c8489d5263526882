"""Local Hugging Face Hub servers for the test suite (no network needed).

Two servers, both bound to 127.0.0.1 only:

* :class:`OlahServer` -- the READ side.  Runs the real ``olah`` mirror server
  (PyPI) as a subprocess in offline mode.  It serves git repositories found at
  ``<mirrors_root>/models/<org>/<name>`` (branch ``main``) over the Hub HTTP API,
  so ``snapshot_download``, ``hf_hub_download``, ``ModelCard.load`` and
  ``DiffusionPipeline.from_pretrained(repo, revision="main")`` work against it.
  It accepts no uploads and checks no tokens.

* :class:`UploadHubServer` -- the WRITE side.  No package offers a local server
  that accepts uploads from ``huggingface_hub``, so this is a minimal
  Hub-protocol server (stdlib ``http.server``) implementing what
  ``HfApi.create_repo`` / ``upload_folder`` / ``upload_file`` / ``create_commit``
  use in huggingface_hub 2.4: ``POST /api/repos/create``, ``POST
  /api/validate-yaml``, ``POST /api/{type}s/{repo}/preupload/{rev}`` (always
  answers ``uploadMode: "regular"`` so file contents travel base64-inline in the
  commit and no LFS endpoint is needed), ``POST /api/{type}s/{repo}/commit/{rev}``
  (NDJSON), ``GET /api/whoami-v2``, plus the read endpoints that ``push_to_hub``
  touches on the way (repo info, ``resolve`` HEAD/GET, e.g. diffusers'
  ``load_or_create_model_card``).  Write endpoints require
  ``Authorization: Bearer <token>`` and answer 401 otherwise.  Every commit is
  recorded *and* written as a git commit on ``main`` into the same mirrors root
  that olah serves, so a test can push, then pull through the real local Hub
  server.

``huggingface_hub`` reads ``HF_ENDPOINT`` once, when it is imported.  Call
:func:`reserve_hub_endpoint` from ``pytest_configure`` (before anything imports
huggingface_hub or diffusers): it reserves a loopback port for olah and points
``HF_ENDPOINT`` at it; the session fixture :func:`olah_hub` then starts olah on
that port lazily, the first time a test asks for it.

This module must not import huggingface_hub or diffusers at import time.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml  # PyYAML, a dependency of huggingface_hub and olah (it does not import huggingface_hub)

__all__ = [
    "HubEndpoint",
    "OlahServer",
    "RecordedCommit",
    "RecordedRepo",
    "UploadHubServer",
    "free_loopback_port",
    "mirror_repo_dir",
    "olah_hub",
    "publish_folder",
    "reserve_hub_endpoint",
    "reserved_hub_endpoint",
    "upload_hub",
]

LOOPBACK = "127.0.0.1"
_REPO_TYPE_DIRS = {"model": "models", "dataset": "datasets"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_ENV_RESERVATION = "DDPM_EXT_TEST_HUB_RESERVATION"  # "<pid>:<port>:<root>"
_MAX_BODY_BYTES = 512 * 1024 * 1024
# read by huggingface_hub / diffusers (most at import time): cleared from the suite's environment
_USER_HUB_VARIABLES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE", "DIFFUSERS_")


# --------------------------------------------------------------------------- #
# small utilities
# --------------------------------------------------------------------------- #
def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process could in theory
    take it before the server binds it; the server start then fails loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    """Split ``"org/name"``; raise ``ValueError`` for anything else."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) and ".." not in p for p in parts):
        raise ValueError(f"repo id must look like 'org/name', got {repo_id!r}")
    return parts[0], parts[1]


def mirror_repo_dir(mirrors_root: str | os.PathLike[str], repo_id: str, repo_type: str = "model") -> Path:
    """Directory of the git repository that olah serves for ``repo_id``."""
    if repo_type not in _REPO_TYPE_DIRS:
        raise ValueError(f"unsupported repo_type {repo_type!r}")
    org, name = _split_repo_id(repo_id)
    return Path(mirrors_root) / _REPO_TYPE_DIRS[repo_type] / org / name


def _safe_repo_path(path: str) -> str:
    """Validate a path inside a repo (relative, no '..', no '.git')."""
    parts = path.strip("/").split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
        raise ValueError(f"invalid path in repo: {path!r}")
    return "/".join(parts)


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub calls the oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------- #
# git mirror repositories (shared by publish_folder and the upload server)
# --------------------------------------------------------------------------- #
# Why olah 0.5.4 answers HTTP 500 for some 121..149-byte files:
# olah/mirror/repos.py (get_file, get_file_head, _get_path_info) sniffs every
# blob whose size is strictly between 120 and 150 bytes -- the size range of a
# git-LFS pointer file -- with ``blob.data_stream.read().decode("utf-8")`` and
# a regex for the pointer text.  A blob in that range that is not valid UTF-8
# (any binary file) raises UnicodeDecodeError -> 500 on HEAD and GET.  Text
# (e.g. a 130-byte JSON config) decodes fine and is served correctly, unless its
# text happens to *be* an LFS pointer, in which case olah looks for an LFS object
# that does not exist.  Loose vs packed git objects make no difference.
#
# Workaround (honest, uses olah's own LFS support, like the real Hub that keeps
# binaries in LFS): such a file is committed as a real git-LFS pointer and its
# bytes are stored at .git/lfs/objects/<oid[:2]>/<oid[2:4]>/<oid>, where olah
# reads them; olah then serves the original bytes (and their sha256 as ETag).
# Every other file is committed as a plain git blob.
_LFS_POINTER_RE = re.compile(
    r"version https://git-lfs\.github\.com/spec/v[0-9]\noid sha256:([0-9a-z]{64})\nsize ([0-9]+?)\n"
)


def _olah_would_misread(data: bytes) -> bool:
    """True if olah 0.5.4 cannot serve ``data`` stored as a plain git blob."""
    if not 120 < len(data) < 150:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return _LFS_POINTER_RE.match(text) is not None


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,  # no user/system config (e.g. lfs filters, signing) leaks in
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="hub-test-server",
        GIT_AUTHOR_EMAIL="hub-test-server@localhost",
        GIT_COMMITTER_NAME="hub-test-server",
        GIT_COMMITTER_EMAIL="hub-test-server@localhost",
    )
    return env


class _GitMirror:
    """A non-bare git repository on branch ``main`` in the layout olah serves."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", "-C", str(self.path), *args],
            env=_git_env(),
            capture_output=True,
            check=check,
            timeout=60,
        )

    def exists(self) -> bool:
        return (self.path / ".git").is_dir()

    def init(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")

    def head(self) -> str | None:
        proc = self._git("rev-parse", "--verify", "-q", "refs/heads/main", check=False)
        return proc.stdout.decode().strip() or None

    def list_files(self) -> list[str]:
        if self.head() is None:
            return []
        out = self._git("ls-tree", "-r", "-z", "--name-only", "refs/heads/main").stdout.decode()
        return [p for p in out.split("\0") if p]

    def read(self, path: str) -> bytes | None:
        """Current content of ``path`` on ``main`` (LFS pointers resolved), or None."""
        proc = self._git("cat-file", "blob", f"refs/heads/main:{path}", check=False)
        if proc.returncode != 0:
            return None
        data = proc.stdout
        if 120 < len(data) < 150:
            match = _LFS_POINTER_RE.match(data.decode("utf-8", errors="replace"))
            if match and self._lfs_object(match.group(1)).is_file():
                return self._lfs_object(match.group(1)).read_bytes()
        return data

    def get_config(self, key: str) -> str | None:
        proc = self._git("config", "--local", "--get", key, check=False)
        return proc.stdout.decode().strip() or None

    def set_config(self, key: str, value: str) -> None:
        self._git("config", "--local", key, value)

    def _lfs_object(self, oid: str) -> Path:
        return self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def _write(self, rel_path: str, data: bytes) -> None:
        target = self.path / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if _olah_would_misread(data):  # see the comment above _LFS_POINTER_RE
            oid = hashlib.sha256(data).hexdigest()
            obj = self._lfs_object(oid)
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            data = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
        target.write_bytes(data)

    def _remove(self, rel_path: str) -> None:
        target = self.path / rel_path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()

    def commit(
        self,
        message: str,
        *,
        description: str = "",
        additions: dict[str, bytes] | None = None,
        deletions: Iterable[str] = (),
        replace_all: bool = False,
    ) -> str:
        """Apply deletions then additions to the work tree, commit on main, return the sha.

        ``replace_all`` first empties the tree, so the commit holds exactly ``additions``.
        """
        if not self.exists():
            self.init()
        if replace_all:
            for entry in self.path.iterdir():
                if entry.name != ".git":
                    self._remove(entry.name)
        for path in deletions:
            self._remove(_safe_repo_path(path))
        for path, data in (additions or {}).items():
            self._write(_safe_repo_path(path), data)
        self._git("add", "-A")
        msg = ["-m", message or "Update"] + (["-m", description] if description else [])
        self._git("commit", "-q", "--allow-empty", "--no-verify", *msg)
        head = self.head()
        assert head is not None
        return head


def publish_folder(
    mirrors_root: str | os.PathLike[str],
    repo_id: str,
    folder: str | os.PathLike[str],
    *,
    repo_type: str = "model",
    message: str = "Publish folder",
) -> str:
    """Commit the content of ``folder`` as branch ``main`` of the mirror repo ``repo_id``.

    Creates the repository if needed; otherwise adds a commit whose tree is exactly
    the folder (files missing from the folder are deleted).  Returns the commit sha.
    Olah serves the new commit immediately.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(root)
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }
    mirror = _GitMirror(mirror_repo_dir(mirrors_root, repo_id, repo_type))
    return mirror.commit(message, additions=files, replace_all=True)


# --------------------------------------------------------------------------- #
# READ side: olah
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class HubEndpoint:
    """A loopback port reserved for olah and the directory its files live in."""

    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def reserved_hub_endpoint() -> HubEndpoint | None:
    """The reservation made by :func:`reserve_hub_endpoint` in this process, if any."""
    value = os.environ.get(_ENV_RESERVATION, "")
    pid, _, rest = value.partition(":")
    port, _, root = rest.partition(":")
    if pid != str(os.getpid()) or not port or not root:
        return None  # none, or inherited from a parent process (e.g. a pytest-xdist controller)
    return HubEndpoint(port=int(port), root=Path(root))


def reserve_hub_endpoint() -> HubEndpoint:
    """Reserve a port for the olah server and point the Hub client environment at it.

    Call from ``pytest_configure`` before huggingface_hub/diffusers are imported.
    First removes every Hub/diffusers variable the user's shell may hold (``HF_*``,
    ``HUGGINGFACE_*``, ``HUGGING_FACE_*``, ``TRANSFORMERS_OFFLINE``, ``DIFFUSERS_*``):
    ``HF_HUB_OFFLINE=1`` (common behind a firewall) would make every client refuse
    the suite's own loopback servers, ``HF_TOKEN`` would be sent where a test expects
    none, ``HF_HUB_CACHE``/``HF_TOKEN_PATH`` would point at the user's real cache and
    login, ``HF_HUB_DISABLE_*`` would change what the clients do.  Then sets
    ``HF_ENDPOINT`` (olah's future URL), a fresh empty ``HF_HOME``,
    ``HF_HUB_DISABLE_TELEMETRY=1`` and ``HF_HUB_DISABLE_PROGRESS_BARS=1``.
    Idempotent within a process.  Subprocesses inherit these variables.
    """
    existing = reserved_hub_endpoint()
    if existing is not None:
        return existing
    if "huggingface_hub" in sys.modules:
        raise RuntimeError(
            "huggingface_hub was imported before reserve_hub_endpoint(); "
            "HF_ENDPOINT would be ignored by it. Call it earlier (pytest_configure)."
        )
    root = Path(tempfile.mkdtemp(prefix="ddpm-ext-hub-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    endpoint = HubEndpoint(port=free_loopback_port(), root=root)
    (root / "hf_home").mkdir()
    for name in [k for k in os.environ if k.startswith(_USER_HUB_VARIABLES)]:
        del os.environ[name]
    os.environ.update(
        HF_ENDPOINT=endpoint.url,
        HF_HOME=str(root / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    os.environ[_ENV_RESERVATION] = f"{os.getpid()}:{endpoint.port}:{root}"
    return endpoint


class OlahServer:
    """The ``olah`` Hub mirror, run as a subprocess on 127.0.0.1 in offline mode.

    ``root`` holds ``mirrors/`` (the served git repos), ``cache/``, ``logs/`` and
    the generated ``olah.toml``; a temporary directory is used (and removed on
    :meth:`stop`) when ``root`` is not given.
    """

    def __init__(
        self,
        port: int | None = None,
        root: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 90.0,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="olah-")) if root is None else Path(root)
        self.port = free_loopback_port() if port is None else port
        self.startup_timeout = startup_timeout
        self.mirrors_root = self.root / "mirrors"
        self.log_path = self.root / "olah-stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _write_config(self) -> Path:
        for sub in ("mirrors/models", "mirrors/datasets", "cache", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # json.dumps gives valid TOML basic strings.  hf-netloc points at a dead
        # loopback port so that nothing can ever be fetched from outside even if
        # olah tried; metadata-cache-ttl = 0 so a new push is visible at once.
        config = f"""\
[basic]
host = "{LOOPBACK}"
port = {self.port}
hf-scheme = "http"
hf-netloc = "{LOOPBACK}:9"
hf-lfs-netloc = "{LOOPBACK}:9"
repos-path = {json.dumps(str(self.root / "cache"))}
mirrors-path = [{json.dumps(str(self.mirrors_root))}]
metadata-cache-ttl = 0

[accessibility]
offline = true
"""
        path = self.root / "olah.toml"
        path.write_text(config)
        return path

    def start(self) -> OlahServer:
        """Start olah and wait (bounded) until it answers HTTP."""
        if self._proc is not None:
            return self
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "--config", str(config),
                 "--log-path", str(self.root / "logs")],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"olah exited with code {self._proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"olah did not answer on {self.url} within {self.startup_timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of olah's stdout/stderr, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Stop olah (SIGTERM, then SIGKILL after 10 s) and remove an owned root dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OlahServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- #
# WRITE side: minimal Hub-protocol upload server
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class RecordedRepo:
    """A repository created through the upload server."""

    repo_id: str
    repo_type: str
    private: bool


@dataclasses.dataclass
class RecordedCommit:
    """One commit received by the upload server."""

    repo_id: str
    repo_type: str
    oid: str
    summary: str
    description: str
    added: dict[str, bytes]
    deleted_files: list[str]
    deleted_folders: list[str]


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class UploadHubServer:
    """Minimal Hub write API on 127.0.0.1 that commits pushes into olah's mirrors.

    ``token`` (generated if omitted) must be sent as ``Authorization: Bearer``
    on every write endpoint.  ``repos`` and ``commits`` record what clients did.
    Only branch ``main`` exists; PRs, LFS uploads, copies and gitignore
    filtering are not implemented (answered with an explicit 4xx).
    """

    def __init__(self, mirrors_root: str | os.PathLike[str], token: str | None = None,
                 *, user: str = "test-user") -> None:
        self.mirrors_root = Path(mirrors_root)
        self.token = token or f"hf_test_{secrets.token_hex(16)}"
        self.user = user
        self.repos: dict[tuple[str, str], RecordedRepo] = {}
        self.commits: list[RecordedCommit] = []
        self.request_log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    def start(self) -> UploadHubServer:
        if self._httpd is None:
            self._httpd = ThreadingHTTPServer((LOOPBACK, 0), _UploadHandler)
            self._httpd.daemon_threads = True
            self._httpd.hub = self  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="upload-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> UploadHubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def commits_for(self, repo_id: str) -> list[RecordedCommit]:
        """Commits recorded for ``repo_id``, oldest first."""
        return [c for c in self.commits if c.repo_id == repo_id]

    # ---- helpers used by the handler ------------------------------------- #
    def _mirror(self, repo_type: str, repo_id: str) -> _GitMirror:
        try:
            return _GitMirror(mirror_repo_dir(self.mirrors_root, repo_id, repo_type))
        except ValueError as err:
            raise _HubError(400, str(err)) from None

    def _existing_mirror(self, repo_type: str, repo_id: str) -> _GitMirror:
        mirror = self._mirror(repo_type, repo_id)
        if not mirror.exists() or mirror.head() is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return mirror

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{_REPO_TYPE_DIRS[repo_type]}/"
        return f"{self.url}/{prefix}{repo_id}"

    def _is_private(self, mirror: _GitMirror) -> bool:
        return mirror.get_config("hubtest.private") == "true"


def _check_main(revision: str) -> None:
    if revision not in ("main", "refs/heads/main"):
        raise _HubError(404, f"Revision Not Found: {revision} (this test server only has 'main')",
                        "RevisionNotFound")


class _UploadHandler(BaseHTTPRequestHandler):
    """Routes of the upload server; one instance per request."""

    server_version = "hub-test-server/1"
    hub: UploadHubServer

    # ---- plumbing -------------------------------------------------------- #
    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            raise _HubError(413, "Request body too large for the test server")
        return self.rfile.read(length) if length else b""

    def _json_body(self, raw: bytes) -> Any:
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.request_log.append((self.command, self.path, status))

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.hub.token.encode())

    def _require_auth(self) -> None:
        if not self._authorized():
            # Same status and message as huggingface.co for a bad token.
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self) -> None:
        self.hub = self.server.hub  # type: ignore[attr-defined]
        try:
            body = self._body() if self.command == "POST" else b""
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            query = parse_qs(url.query)
            with self.hub._lock:
                self._route(parts, query, body)
        except _HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            self._send_json(err.status, {"error": err.message}, headers)
        except (ValueError, KeyError) as err:  # malformed request: bad path, bad JSON line, missing key
            self._send_json(400, {"error": f"Bad request: {type(err).__name__}: {err}"})
        except Exception as err:  # a bug or gap in this server: report it, fail fast
            # 501, not 500: huggingface_hub retries 500 with backoff for ~25 s.
            self._send_json(501, {"error": f"test server error: {type(err).__name__}: {err}"})

    do_GET = do_HEAD = do_POST = _dispatch

    # ---- routes ---------------------------------------------------------- #
    def _route(self, parts: list[str], query: dict[str, list[str]], body: bytes) -> None:
        method = self.command
        if parts[:1] == ["api"]:
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo(self._json_body(body))
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(self._json_body(body))
            if method == "GET" and parts == ["api", "whoami-v2"]:
                self._require_auth()
                return self._send_json(200, {"type": "user", "name": self.hub.user, "orgs": [],
                                             "auth": {"type": "access_token",
                                                      "accessToken": {"displayName": "test", "role": "write"}}})
            type_dir = parts[1] if len(parts) > 1 else ""
            repo_type = {v: k for k, v in _REPO_TYPE_DIRS.items()}.get(type_dir)
            if repo_type and len(parts) >= 4:
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                if method == "POST" and len(rest) >= 2 and rest[0] in ("preupload", "commit"):
                    if query.get("create_pr", ["0"])[0] not in ("", "0", "false"):
                        raise _HubError(400, "Pull requests are not supported by this test server")
                    self._require_auth()
                    revision = "/".join(rest[1:])
                    if rest[0] == "preupload":
                        return self._preupload(repo_type, repo_id, revision, self._json_body(body))
                    return self._commit(repo_type, repo_id, revision, body)
                if method in ("GET", "HEAD") and (not rest or rest[0] == "revision"):
                    return self._repo_info(repo_type, repo_id, "/".join(rest[1:]) or "main")
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]))
        else:
            # /{org}/{name}/resolve/{rev}/{path} or /datasets/{org}/{name}/resolve/...
            repo_type = "dataset" if parts[:1] == ["datasets"] else "model"
            rest = parts[1:] if repo_type == "dataset" else parts
            if method in ("GET", "HEAD") and len(rest) >= 5 and rest[2] == "resolve":
                return self._resolve(repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        raise _HubError(404, f"Not implemented by the test Hub server: {method} {self.path}")

    def _create_repo(self, payload: dict[str, Any]) -> None:
        self._require_auth()
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPE_DIRS:
            raise _HubError(400, f"Unsupported repo type {repo_type!r}")
        if not organization or not isinstance(name, str):
            raise _HubError(400, "This test server only accepts repo ids of the form 'org/name'")
        repo_id = f"{organization}/{name}"
        mirror = self.hub._mirror(repo_type, repo_id)
        url = self.hub._repo_url(repo_type, repo_id)
        private = payload.get("visibility") == "private" or payload.get("private") is True
        if mirror.exists():  # like the Hub: 409 with the url (create_repo(exist_ok=True) accepts it)
            return self._send_json(409, {"error": "You already created this repo", "url": url},
                                   {"X-Error-Message": "You already created this repo"})
        mirror.init()
        mirror.set_config("hubtest.private", "true" if private else "false")
        mirror.commit("initial commit")  # an empty commit, so that branch main exists
        self.hub.repos[(repo_type, repo_id)] = RecordedRepo(repo_id, repo_type, private)
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---", content, flags=re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as err:
            return self._send_json(400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []})
        if data is not None and not isinstance(data, dict):
            return self._send_json(400, {"errors": [{"message": "Metadata must be a YAML mapping"}],
                                         "warnings": []})
        self._send_json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        _check_main(revision)
        mirror = self.hub._existing_mirror(repo_type, repo_id)
        files = []
        for item in payload.get("files", []):
            path = _safe_repo_path(str(item.get("path", "")))
            current = mirror.read(path)
            files.append({
                "path": item["path"],
                "uploadMode": "regular",  # content comes base64-inline in the commit: no LFS needed
                "shouldIgnore": False,
                "oid": git_blob_sha1(current) if current is not None else None,
            })
        self._send_json(200, {"files": files, "commitOid": mirror.head()})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        _check_main(revision)
        mirror = self.hub._existing_mirror(repo_type, repo_id)
        header: dict[str, Any] = {}
        added: dict[str, bytes] = {}
        deleted_files: list[str] = []
        deleted_folders: list[str] = []
        existing = set(mirror.list_files())
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                added[_safe_repo_path(value["path"])] = base64.b64decode(value["content"], validate=True)
            elif key == "deletedFile":
                path = _safe_repo_path(value["path"])
                if path not in existing:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                deleted_files.append(path)
            elif key == "deletedFolder":
                path = _safe_repo_path(value["path"].rstrip("/"))
                if not any(p.startswith(path + "/") for p in existing):
                    raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                deleted_folders.append(path)
            elif key == "lfsFile":
                raise _HubError(400, "LFS files are not supported by this test server (preupload never asks for them)")
            else:
                raise _HubError(400, f"Unknown commit operation {key!r}")
        if not header:
            raise _HubError(400, "Missing commit header")
        parent = header.get("parentCommit")
        if parent and parent != mirror.head():
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        oid = mirror.commit(
            header.get("summary") or "Upload",
            description=header.get("description") or "",
            additions=added,
            deletions=deleted_files + deleted_folders,
        )
        self.hub.commits.append(RecordedCommit(repo_id, repo_type, oid, header.get("summary") or "",
                                               header.get("description") or "", added,
                                               deleted_files, deleted_folders))
        self._send_json(200, {"success": True, "commitOid": oid, "pullRequestUrl": None,
                              "commitUrl": f"{self.hub._repo_url(repo_type, repo_id)}/commit/{oid}"})

    def _readable_mirror(self, repo_type: str, repo_id: str) -> _GitMirror:
        try:
            mirror = self.hub._existing_mirror(repo_type, repo_id)
        except _HubError as err:
            raise _HubError(401, err.message, err.error_code) from None  # the Hub answers 401 here
        if self.hub._is_private(mirror) and not self._authorized():
            raise _HubError(401, "Repository not found", "RepoNotFound")
        return mirror

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        mirror = self._readable_mirror(repo_type, repo_id)
        _check_main(revision)
        self._send_json(200, {
            "id": repo_id, "author": repo_id.split("/")[0], "sha": mirror.head(),
            "private": self.hub._is_private(mirror), "disabled": False, "gated": False,
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": p} for p in mirror.list_files()],
        })

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        """The recursive file listing (`list_repo_files`, used by `upload_folder(delete_patterns=...)`); one page."""
        mirror = self._readable_mirror(repo_type, repo_id)
        _check_main(revision)
        prefix = _safe_repo_path(path) + "/" if path else ""
        entries = []
        for p in mirror.list_files():
            if p.startswith(prefix):
                data = mirror.read(p) or b""
                entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)})
        self._send_json(200, entries)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        mirror = self._readable_mirror(repo_type, repo_id)
        _check_main(revision)
        data = mirror.read(_safe_repo_path(path))
        if data is None:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": mirror.head() or "", "ETag": f'"{git_blob_sha1(data)}"'}
        self._send(200, data, headers, content_type="application/octet-stream")


# --------------------------------------------------------------------------- #
# pytest fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahServer]:
    """The olah read server for the session, started on first use.

    Uses the port/dir reserved by :func:`reserve_hub_endpoint` (so ``HF_ENDPOINT``
    points at it); without a reservation it picks its own port, and clients must
    pass ``endpoint=olah_hub.url`` explicitly.
    """
    reserved = reserved_hub_endpoint()
    if reserved is not None:
        server = OlahServer(port=reserved.port, root=reserved.root / "olah")
    else:
        server = OlahServer(root=tmp_path_factory.mktemp("olah"))
    with server:
        yield server


@pytest.fixture
def upload_hub(olah_hub: OlahServer) -> Iterator[UploadHubServer]:
    """A fresh upload server (own port and token) writing into ``olah_hub``'s mirrors.

    Use ``HfApi(endpoint=upload_hub.url, token=upload_hub.token)``, or run the
    pushing code in a subprocess with ``HF_ENDPOINT=upload_hub.url`` and
    ``HF_TOKEN=upload_hub.token``.  Repos persist in the mirrors for the session,
    so use repo ids unique to each test.
    """
    with UploadHubServer(olah_hub.mirrors_root) as server:
        yield server
