"""``adapt hub serve``: a small HTTP server for a registry directory that, when asked, accepts
authenticated PUTs (the protocol is in ``http.py``). Nothing a client sends is trusted: writes want a token
(compared in constant time), bodies are streamed to disk under a cap, archives are checked as ``adapt pull``
checks them, a published version never changes, silent connections are dropped, and a malformed request
gets a 4xx answer, never a traceback."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import AdaptError, UsageError
from ..reporting import log
from .http import MIN_RATE, TOKEN_HINT, _printable, checked_token
from .registry import (INDEX, archive_path, archive_path_of, empty_index, max_index_bytes, parse_index,
                       published_key)


DEFAULT_MAX_UPLOAD_MB = 512
IDLE_TIMEOUT = 30.0           # seconds a connection may stay silent before the server drops it
LINGER_BYTES = 64_000_000     # after refusing a body, read and drop up to this much of it, so the client
LINGER_SECONDS = 10.0         # sees the answer instead of a reset connection; no longer than this
ARCHIVE_RE = re.compile(r"archives/[a-z0-9][a-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,240}\.tar\.gz")


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class _Refusal(Exception):
    """An answer that ends a request: its status, one line of text and any headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RegistryHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of the registry directory with ETags on the index; authenticated PUT when writable."""

    writable = False
    token: bytes | None = None
    max_upload = DEFAULT_MAX_UPLOAD_MB * 1_000_000
    timeout: float | None = IDLE_TIMEOUT  # StreamRequestHandler puts it on the socket: a silent client is dropped
    write_lock = threading.Lock()
    _unread = 0  # bytes of the request body not read yet

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("ADAPT_DEBUG"):
            super().log_message(format, *args)

    def _relative(self) -> str | None:
        """The request's path inside the registry, resolved (so '..' cannot climb out), or None for a path
        that is odd (NUL, control characters, overlong), outside, or a dot file (locks, uploads in flight)."""
        path = unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        if len(path) > 1024 or re.search(r"[\x00-\x1f\x7f]", path):
            return None
        root = Path(self.directory).resolve()
        try:
            target = (root / path.lstrip("/")).resolve()
        except (OSError, ValueError, RuntimeError):
            return None
        if not target.is_relative_to(root):
            return None
        relative = target.relative_to(root).as_posix()
        return None if any(part.startswith(".") for part in relative.split("/")) else relative

    def _reply(self, status: int, message: str = "", headers: dict[str, str] | None = None) -> None:
        """A complete answer: the message is the status line's reason and the plain-text body."""
        text = _printable(message)
        body = (text + "\n").encode() if text else b""
        self.send_response(status, text or None)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def list_directory(self, path: Any) -> None:  # no listings: a registry is its index
        self._reply(HTTPStatus.NOT_FOUND, "not found")

    def do_GET(self) -> None:
        self._get(body=True)

    def do_HEAD(self) -> None:
        self._get(body=False)

    def _get(self, body: bool) -> None:
        relative = self._relative()
        if relative is None:
            self._reply(HTTPStatus.NOT_FOUND, "not found")
        elif relative == INDEX:
            self._send_index(body)
        elif body:
            super().do_GET()
        else:
            super().do_HEAD()

    def _send_index(self, body: bool) -> None:
        """The index and its ETag from one read, under the write lock: an ETag must name the bytes sent,
        or a publisher could overwrite a change it never saw."""
        with self.write_lock:
            path = Path(self.directory) / INDEX
            data = path.read_bytes() if path.is_file() else None
        if data is None:
            self._reply(HTTPStatus.NOT_FOUND, "no index yet")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag_of(data))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "a registry takes GET, HEAD and PUT", {"Allow": "GET, HEAD, PUT"})

    do_DELETE = do_POST = do_PATCH = _not_allowed

    # ----------------------------------------------------------------------------------- writes

    def do_PUT(self) -> None:
        try:
            self._put()
        except _Refusal as refusal:
            self.close_connection = True
            try:
                self._reply(refusal.status, refusal.message, refusal.headers)
                self._linger()
            except OSError:  # the client is gone; nothing to tell it
                pass

    def _put(self) -> None:
        """Checks in order of cost: writable, a sane Content-Length, the token, the path, the cap; only
        then is the body read (to a temporary file), checked and moved into place."""
        if not self.writable:
            raise _Refusal(HTTPStatus.METHOD_NOT_ALLOWED, "this registry is read-only (serve it with `writable`)")
        self._unread = self._content_length()
        self._authorize()
        relative = self._relative()
        if relative is None or not (relative == INDEX or ARCHIVE_RE.fullmatch(relative)):
            raise _Refusal(HTTPStatus.FORBIDDEN, "only index.json and archives/<author>/<name>.tar.gz may be written")
        cap = min(self.max_upload, max_index_bytes()) if relative == INDEX else self.max_upload
        if self._unread > cap:
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"larger than the {cap // 1_000_000} MB this "
                           "registry accepts")
        root = Path(self.directory).resolve()
        tmp, digest = self._receive(root)
        try:
            status, headers = self._put_index(root, tmp) if relative == INDEX else \
                self._put_archive(root, relative, tmp, digest)
        except OSError as exc:  # the registry's disk, not the client: say so instead of hanging up
            raise _Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot store it: {exc.strerror or exc}") from None
        except AdaptError as exc:  # the registry stayed locked by another publisher
            raise _Refusal(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)  # before answering: a client that got its answer finds no leftovers
        self._reply(status, headers=headers)

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length; chunked uploads are not accepted")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        value = values.pop()
        if values or not re.fullmatch(r"[0-9]{1,15}", value):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "Content-Length must be one number of bytes")
        return int(value)

    def _authorize(self) -> None:
        scheme, _, credential = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise _Refusal(HTTPStatus.UNAUTHORIZED, "publishing needs a token: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": 'Bearer realm="adapt"'})
        # constant time, on bytes: a timing difference must not spell the token out
        if not self.token or not hmac.compare_digest(credential.strip().encode("latin-1", "replace"), self.token):
            raise _Refusal(HTTPStatus.FORBIDDEN, "wrong token")

    def _receive(self, root: Path) -> tuple[Path, str]:
        """Stream the body into a temporary dot file in the registry (the final rename stays on one disk),
        1 MB at a time, hashing it on the way; within a deadline that grows with its size."""
        deadline = time.monotonic() + (self.timeout or IDLE_TIMEOUT) + self._unread / MIN_RATE
        try:
            fd, name = tempfile.mkstemp(prefix=".upload-", dir=root)
        except OSError as exc:
            raise _Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot store uploads: {exc.strerror}") from None
        tmp, digest = Path(name), hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                while self._unread:
                    chunk = self._read_chunk(deadline)  # socket errors become answers in there
                    digest.update(chunk)
                    out.write(chunk)
                    self._unread -= len(chunk)
        except OSError as exc:  # writing or flushing: the registry's disk is full or failing
            tmp.unlink(missing_ok=True)
            raise _Refusal(HTTPStatus.INSUFFICIENT_STORAGE, f"cannot store it: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, digest.hexdigest()

    def _read_chunk(self, deadline: float) -> bytes:
        try:
            chunk = self.rfile.read1(min(self._unread, 1 << 20))
        except OSError:  # a timeout or a reset: the client stalled or went away
            chunk = None
        if chunk is None or time.monotonic() > deadline:
            self._unread = 0
            raise _Refusal(HTTPStatus.REQUEST_TIMEOUT, "the upload stalled or was too slow")
        if not chunk:
            self._unread = 0
            raise _Refusal(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        return chunk

    def _linger(self) -> None:
        """Read and drop what is left of a refused body (bounded), so the client reads our answer."""
        left, stop = min(self._unread, LINGER_BYTES), time.monotonic() + LINGER_SECONDS
        while left > 0 and time.monotonic() < stop:
            chunk = self.rfile.read1(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _put_archive(self, root: Path, relative: str, tmp: Path, digest: str) -> tuple[int, dict[str, str]]:
        """A new archive: the one its index record names (sha256), checked as `adapt pull` checks it, at the
        path its card gives; refused if its version is already published with other bytes."""
        from .archive import verify_archive

        claimed = (self.headers.get("X-Adapt-Sha256") or "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", claimed):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "send the sha256 of the archive's index record as X-Adapt-Sha256")
        if claimed != digest:
            raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, "the upload does not match the sha256 of its index "
                           "record (damaged on the way?)")
        try:
            card = verify_archive(tmp, source=relative)
        except AdaptError as exc:
            raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        if archive_path(card, digest) != relative:
            raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, f"this archive of {card.id} belongs at "
                           f"{archive_path(card, digest)}")
        key = published_key({**card.index_record(), "sha256": digest})
        with self._locked(root):
            if any(published_key(r) == key and r["sha256"] != digest for r in self._current_index(root)["adapters"]):
                raise _Refusal(HTTPStatus.CONFLICT, f"version {card.version} of {card.id} ({card.base_model.id}, "
                               f"{card.architecture}) is published with other content and never changes; publish "
                               "a new `version`")
            target = root / relative
            if target.exists():
                from .archive import file_digest

                if file_digest(target) != digest:
                    raise _Refusal(HTTPStatus.CONFLICT, "a published archive never changes")
                return HTTPStatus.NO_CONTENT, {}  # the same bytes again: nothing to do
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        return HTTPStatus.CREATED, {"ETag": f'"{digest[:32]}"'}

    def _put_index(self, root: Path, tmp: Path) -> tuple[int, dict[str, str]]:
        """A new index: under the If-Match condition, every record well-formed, every published version
        kept exactly as it was, and every new one pointing at an archive the server holds, byte for byte."""
        raw = tmp.read_bytes()  # at most the index cap (checked before reading the body)
        try:
            new = parse_index(raw, "the uploaded index", strict=True)
        except AdaptError as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, str(exc)) from None
        with self._locked(root):
            path = root / INDEX
            current_raw = path.read_bytes() if path.is_file() else None
            if_match, if_none = self.headers.get("If-Match"), self.headers.get("If-None-Match")
            if (if_match and (current_raw is None or etag_of(current_raw) != if_match)) or \
                    (if_none == "*" and current_raw is not None) or (not if_match and if_none != "*"):
                raise _Refusal(HTTPStatus.PRECONDITION_FAILED, "the index changed (or no condition was given); "
                               "read it again")
            _check_append_only(self._current_index(root), new, root)
            os.replace(tmp, path)
        return HTTPStatus.CREATED if current_raw is None else HTTPStatus.NO_CONTENT, {"ETag": etag_of(raw)}

    @contextmanager
    def _locked(self, root: Path) -> Iterator[None]:
        """The same lock as directory publishers: serving a directory others publish to directly is safe."""
        from .registry import _locked

        with self.write_lock, _locked(root / ".lock", str(root)):
            yield

    def _current_index(self, root: Path) -> dict[str, Any]:
        path = root / INDEX
        if not path.is_file():
            return empty_index()
        try:
            return parse_index(path.read_bytes(), str(root))
        except AdaptError as exc:
            raise _Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, f"the registry's own index is unusable: {exc}") from None


def _check_append_only(current: dict[str, Any], new: dict[str, Any], root: Path) -> None:
    """Published versions stay exactly as they are; new records name archives the server holds."""
    mine: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in new["adapters"]:
        if published_key(r) in mine:
            raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY,
                           f"the index lists version {r['version']} of {r['id']} twice")
        mine[published_key(r)] = r
    old = {published_key(r): r for r in current["adapters"]}
    for key, r in old.items():
        if mine.get(key) != r:
            verb = "remove" if key not in mine else "change"
            raise _Refusal(HTTPStatus.CONFLICT, f"the upload would {verb} version {r['version']} of {r['id']} "
                           f"({r['base_model']['id']}, {r.get('architecture')}); a published version never changes")
    for key, r in mine.items():
        if key not in old:
            _check_new_record(r, root)


def _check_new_record(record: dict[str, Any], root: Path) -> None:
    from .archive import file_digest

    what = f"version {record['version']} of {record['id']}"
    if record["archive"] != archive_path_of(record):
        raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, f"{what}: its archive belongs at {archive_path_of(record)}")
    path = (root / record["archive"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, f"{what}: upload its archive before the index")
    if path.stat().st_size != record["size"] or file_digest(path) != record["sha256"]:
        raise _Refusal(HTTPStatus.UNPROCESSABLE_ENTITY, f"{what}: its size or sha256 is not that of the archive "
                       "the registry holds")


class RegistryServer(ThreadingHTTPServer):
    """One thread per connection (each dropped after its idle timeout); a failed request is one line on
    stderr, never a traceback, and never takes the server down."""

    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away or fell silent: its problem, not the server's
        if os.environ.get("ADAPT_DEBUG"):
            super().handle_error(request, client_address)
            return
        log.warning(f"a request from {client_address[0]} failed ({type(exc).__name__}: "
                    f"{_printable(str(exc), 200)})")


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 0, writable: bool = False, *,
                token: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                timeout: float = IDLE_TIMEOUT) -> ThreadingHTTPServer:
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; create the registry with `adapt publish NAME --to {directory}`"
                         " or mkdir it first")
    if not 0 <= port <= 65535:
        raise UsageError(f"`port` {port} is not a port; use 1-65535 (or 0 for a free one)")
    if writable and not token:
        raise UsageError(f"`writable` needs `token_file` FILE holding the token publishers must send; {TOKEN_HINT}")
    if not max_upload_mb > 0 or not timeout > 0:
        raise UsageError("`max_upload_mb` and `timeout` must be positive numbers")

    class Handler(RegistryHandler):
        pass

    Handler.writable, Handler.max_upload, Handler.timeout = writable, int(max_upload_mb * 1_000_000), timeout
    Handler.token = checked_token(token, "the token").encode() if token else None
    try:
        return RegistryServer((host, port), lambda *a, **k: Handler(*a, directory=str(directory), **k))
    except (OSError, OverflowError) as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
