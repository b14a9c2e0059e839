"""HTTP(S) registries, the client: GET, and PUT with If-Match for publishing (the server that answers it,
``adapt hub serve``, is ``server.py``).

The protocol is plain HTTP: ``GET index.json`` (with an ETag), ``GET archives/...``; a publisher PUTs the
archive (with ``X-Adapt-Sha256``, the sha256 of its index record), then PUTs the new index with
``If-Match: <etag read>`` (``If-None-Match: *`` when there was none), both with ``Authorization: Bearer
<token>``. A 412 answer means another publisher won the race: read the index again and retry.

Nothing a server sends is trusted to be small or quick: an index is capped in size, and every request
has a deadline for the whole exchange (a per-read timeout alone is reset by each trickled byte). Nothing
a client sends is trusted either: the server wants a token for writes, streams bodies to disk under a cap,
checks archives as ``adapt pull`` does, and never lets a published version change.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import AdaptError, UsageError, positive_env
from ..reporting import log, progress
from .registry import (
    INDEX,
    IndexConflict,
    Published,
    Registry,
    RegistryError,
    add_record,
    copy_limited,
    dump_index,
    empty_index,
    max_index_bytes,
    parse_index,
    too_large,
)

TIMEOUT = 60           # seconds for one socket operation (connecting, one read)
RETRIES = 20
MIN_RATE = 64_000      # bytes/s a transfer must average: an archive's deadline grows with its size
TOKEN_RE = re.compile(r"[\x21-\x7e]{16,4096}")
TOKEN_HINT = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def time_budget() -> float:
    """Seconds one registry request may take in all (ADAPT_REGISTRY_TIMEOUT, default 120)."""
    return positive_env("ADAPT_REGISTRY_TIMEOUT", "120", "seconds")


def transfer_budget(size: int) -> float:
    return time_budget() + size / MIN_RATE


def checked_token(token: str, what: str) -> str:
    """A token that fits in a header and is not trivially guessed, else one UsageError line."""
    if not TOKEN_RE.fullmatch(token):
        raise UsageError(f"{what} must be 16 to 4096 printable characters without spaces; {TOKEN_HINT}")
    return token


def read_token(path: Path) -> str:
    """The token in ``path`` (its first line, surrounding blanks ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return checked_token(text.strip(), f"the token in {path}")


def env_token() -> str | None:
    raw = os.environ.get("ADAPT_REGISTRY_TOKEN", "").strip()
    return checked_token(raw, "ADAPT_REGISTRY_TOKEN") if raw else None


def _printable(text: str, n: int = 300) -> str:
    """Text from the other side, safe for a terminal line or a status line: no control characters."""
    clean = re.sub(r"[^\x20-\x7e]", "?", text)
    return clean if len(clean) <= n else clean[:n] + "..."


class _Deadline:
    """Shuts down every socket opened under it once its time is up, so that no request, however slowly
    the other side trickles bytes (each of which resets a per-read timeout), outlives it."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.expired = seconds, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv/send in another thread; close() would not
    except OSError:
        pass


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib (proxies, redirects, TLS) whose connections report their sockets to ``deadline``."""

    class Http(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Https, req, context=getattr(self, "_context", None))

    return urllib.request.build_opener(HttpHandler, HttpsHandler)


class HttpRegistry(Registry):
    def __init__(self, base: str, spec: str, token: str | None = None) -> None:
        self.base, self.spec = base, spec
        self._token = checked_token(token, "the token") if token is not None else None
        self._warned = False

    @contextmanager
    def _request(self, relative: str, method: str = "GET", data: Any = None, headers: dict[str, str] | None = None,
                 seconds: float | None = None) -> Iterator[tuple[Any, _Deadline]]:
        """One request and its response, all of it (connecting, sending, reading) within ``seconds``."""
        seconds = seconds or time_budget()
        deadline = _Deadline(seconds)
        url = f"{self.base}/{relative}"
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"User-Agent": "adapt", **(headers or {})})
        started = False
        try:
            with _opener(deadline).open(request, timeout=min(TIMEOUT, seconds)) as response:  # http(s): open_registry
                started = True
                yield response, deadline
                if deadline.expired:  # what was read may have been cut short by the deadline
                    raise TimeoutError()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._refused(exc.code, _printable(str(exc.reason)), method, relative) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError, AdaptError) as exc:
            if deadline.expired:  # whatever broke, it broke because the time was up: say that
                raise RegistryError(f"{method} {url} took more than {round(seconds, 1):g} s; the registry is too "
                                    "slow or stalled (ADAPT_REGISTRY_TIMEOUT sets the limit)") from None
            if isinstance(exc, AdaptError):
                raise
            reason = _printable(str(getattr(exc, "reason", None) or exc or type(exc).__name__))
            if started:
                raise RegistryError(f"{method} {url} broke off ({reason}); nothing was kept, try again") from None
            raise RegistryError(f"cannot reach registry {self.spec}: {reason}") from None
        finally:
            deadline.cancel()

    def _refused(self, code: int, reason: str, method: str, relative: str) -> Exception:
        """An HTTP error answer as the exception its callers expect (bad input: exit 2; failure: exit 1)."""
        if code == HTTPStatus.PRECONDITION_FAILED:
            return IndexConflict()
        if code == HTTPStatus.NOT_FOUND and method in ("GET", "HEAD"):
            return FileNotFoundError(relative)
        if code == HTTPStatus.UNAUTHORIZED:
            return UsageError(f"{self.spec} wants a token to publish: set ADAPT_REGISTRY_TOKEN or pass "
                              "--token-file FILE")
        if code == HTTPStatus.FORBIDDEN and "token" in reason:
            return UsageError(f"{self.spec} refused the token (HTTP 403); check ADAPT_REGISTRY_TOKEN or `token_file`")
        if code == HTTPStatus.CONFLICT:
            return UsageError(f"{self.spec} refused {relative}: {reason}")
        if code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            return RegistryError(f"{self.spec} refused {relative}: larger than the server accepts (HTTP 413; "
                                 "its `max_upload_mb`)")
        return RegistryError(f"{method} {self.base}/{relative} failed: HTTP {code} {reason}")

    def _read_index(self) -> tuple[dict[str, Any], Any]:
        try:
            with self._request(INDEX) as (response, deadline):
                raw = read_bounded(response, deadline, self.spec)
                return parse_index(raw, self.spec), response.headers.get("ETag")
        except FileNotFoundError:
            return empty_index(), None

    def fetch(self, record: dict[str, Any], dest: Path) -> None:
        size = int(record.get("size") or 0)
        try:
            with self._request(record["archive"], seconds=transfer_budget(size)) as (response, _):
                with progress(size, f"pull {record['id']}") as advance:
                    copy_limited(response, dest, size, self.url_of(record), advance)
        except FileNotFoundError:
            raise RegistryError(f"registry {self.spec} lists {record['archive']} but serves no such file") from None

    def url_of(self, record: dict[str, Any]) -> str:
        return f"{self.base}/{record['archive']}"

    def _write_headers(self, content_type: str, **extra: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, **extra}
        token = self._token or env_token()  # read when writing: a bad $ADAPT_REGISTRY_TOKEN does not stop reads
        if token:
            headers["Authorization"] = f"Bearer {token}"
            host = urlparse(self.base).hostname or ""
            if self.base.startswith("http://") and not _loopback(host) and not self._warned:
                self._warned = True
                log.warning(f"sending the registry token unencrypted to {self.base}; use https:// outside a "
                            "trusted network")
        return headers

    def _put_archive(self, archive: Path, record: dict[str, Any]) -> None:
        """Stream the archive up (never all in memory), with the sha256 its index record gives."""
        size = archive.stat().st_size
        headers = self._write_headers("application/gzip", **{"Content-Length": str(size), "If-None-Match": "*",
                                                             "X-Adapt-Sha256": record["sha256"]})
        try:
            with archive.open("rb") as body, self._request(record["archive"], "PUT", body, headers,
                                                            transfer_budget(size)):
                pass
        except IndexConflict:  # an older server answers 412 when the archive exists with other bytes
            raise RegistryError(f"{self.spec} already holds {record['archive']} with other bytes") from None

    def _publish(self, archive: Path, record: dict[str, Any], force: bool) -> Published:
        for _ in range(RETRIES):
            index, etag = self._read_index()
            if not add_record(index, record, force):
                return Published(record, self.spec, False)
            self._put_archive(archive, record)
            condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
            try:
                with self._request(INDEX, "PUT", dump_index(index), self._write_headers("application/json",
                                                                                         **condition)):
                    return Published(record, self.spec, True)
            except IndexConflict:
                continue  # somebody published in between: start again from their index
        raise RegistryError(f"registry {self.spec} kept changing under us ({RETRIES} tries); try again")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_bounded(response: Any, deadline: _Deadline, where: str) -> bytes:
    """An index body, refused as soon as it is declared or found to be larger than the cap."""
    cap = max_index_bytes()
    declared = (response.headers.get("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > cap:
        raise too_large(int(declared), where)
    chunks, total = [], 0
    while chunk := response.read1(1 << 16):  # read1: returns what has arrived, so the cap is checked often
        total += len(chunk)
        if total > cap:
            raise too_large(total, where, at_least=True)
        chunks.append(chunk)
    if deadline.expired:
        raise TimeoutError()
    return b"".join(chunks)
