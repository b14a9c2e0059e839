"""HTTP(S) registries: the client (GET, and PUT with If-Match for publishing) and a small server
(``adapt hub serve``) that serves a registry directory and, when asked, accepts conditional PUTs.

The protocol is plain HTTP: ``GET index.json`` (with an ETag), ``GET archives/...``; a publisher PUTs the
archive, then PUTs the new index with ``If-Match: <etag read>`` (``If-None-Match: *`` when there was
none). A 412 answer means another publisher won the race: read the index again and retry.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import UsageError
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
    parse_index,
)

TIMEOUT = 60
RETRIES = 20


class HttpRegistry(Registry):
    def __init__(self, base: str, spec: str) -> None:
        self.base, self.spec = base, spec

    def _open(self, relative: str, method: str = "GET", data: bytes | None = None,
              headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(f"{self.base}/{relative}", data=data, method=method, headers={
            "User-Agent": "adapt", **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)  # http(s) only: checked by open_registry
        except urllib.error.HTTPError as exc:
            if exc.code == HTTPStatus.PRECONDITION_FAILED:
                raise IndexConflict() from None
            if exc.code == HTTPStatus.NOT_FOUND:
                raise FileNotFoundError(relative) from None
            raise RegistryError(f"{method} {self.base}/{relative} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RegistryError(f"cannot reach registry {self.spec}: {reason}") from None

    def _read_index(self) -> tuple[dict[str, Any], Any]:
        try:
            with self._open(INDEX) as response:
                return parse_index(response.read(), self.spec), response.headers.get("ETag")
        except FileNotFoundError:
            return empty_index(), None
        except (OSError, http.client.HTTPException) as exc:  # the body broke off
            raise RegistryError(f"reading the index of {self.spec} failed: {exc}") from None

    def fetch(self, record: dict[str, Any], dest: Path) -> None:
        try:
            response = self._open(record["archive"])
        except FileNotFoundError:
            raise RegistryError(f"registry {self.spec} lists {record['archive']} but serves no such file") from None
        size = int(record.get("size") or 0)
        with download_progress(size, record["id"]) as advance:
            try:
                copy_limited(response, dest, size, self.url_of(record), advance)
            except (OSError, http.client.HTTPException) as exc:  # the connection dropped mid-way
                raise RegistryError(f"download of {self.url_of(record)} broke off ({exc}); "
                                    "nothing was kept, try again") from None

    def url_of(self, record: dict[str, Any]) -> str:
        return f"{self.base}/{record['archive']}"

    def _publish(self, archive: Path, record: dict[str, Any], force: bool) -> Published:
        data = archive.read_bytes()
        for _ in range(RETRIES):
            index, etag = self._read_index()
            if not add_record(index, record, force):
                return Published(record, self.spec, False)
            try:  # archives are write-once: the server refuses to replace one with other bytes
                self._open(record["archive"], "PUT", data, {"Content-Type": "application/gzip",
                                                            "If-None-Match": "*"}).close()
            except IndexConflict:
                raise RegistryError(f"{self.spec} already holds {record['archive']} with other bytes") from None
            condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
            try:
                self._open(INDEX, "PUT", dump_index(index), {"Content-Type": "application/json", **condition}).close()
                return Published(record, self.spec, True)
            except IndexConflict:
                continue  # somebody published in between: start again from their index
        raise RegistryError(f"registry {self.spec} kept changing under us ({RETRIES} tries); try again")


@contextmanager
def download_progress(total: int, label: str) -> Iterator[Any]:
    """A byte progress bar on a terminal's stderr; nothing when piped."""
    if not sys.stderr.isatty() or total < 1_000_000:
        yield None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns()[:2], DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"pull {label}", total=total)
        yield lambda n: progress.advance(task, n)


# ------------------------------------------------------------------------------------------- server

def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class RegistryHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of the registry directory with ETags on the index; PUT with If-Match when writable."""

    writable = False
    write_lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("ADAPT_DEBUG"):
            super().log_message(format, *args)

    def _relative(self) -> str | None:
        """The request's path inside the registry, resolved (so '..' cannot climb out), or None."""
        from urllib.parse import unquote

        root = Path(self.directory).resolve()
        target = (root / unquote(self.path.split("?")[0]).lstrip("/")).resolve()
        if not target.is_relative_to(root):
            return None
        relative = target.relative_to(root).as_posix()
        return None if any(part.startswith(".") for part in relative.split("/")) else relative

    def list_directory(self, path: Any) -> None:  # no listings: a registry is its index
        self.send_error(HTTPStatus.NOT_FOUND)

    def do_GET(self) -> None:
        self._get(body=True)

    def do_HEAD(self) -> None:
        self._get(body=False)

    def _get(self, body: bool) -> None:
        relative = self._relative()
        if relative is None:
            self.send_error(HTTPStatus.NOT_FOUND)
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
            self.send_error(HTTPStatus.NOT_FOUND, "no index yet")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag_of(data))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_PUT(self) -> None:
        if not self.writable:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "this registry is read-only (serve it with --writable)")
            return
        relative = self._relative()
        if relative is None or not (relative == INDEX or (relative.startswith("archives/")
                                                          and relative.endswith(".tar.gz"))):
            self.send_error(HTTPStatus.FORBIDDEN, "only index.json and archives/....tar.gz may be written")
            return
        root = Path(self.directory).resolve()
        target = root / relative
        length = int(self.headers.get("Content-Length") or -1)
        from .archive import max_bytes

        if length < 0 or length > max_bytes():
            self.send_error(HTTPStatus.LENGTH_REQUIRED if length < 0 else HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length)
        from .registry import _locked

        # The same lock as directory publishers: serving a directory others publish to directly is safe.
        with self.write_lock, _locked(root / ".lock", str(root)):
            current = target.read_bytes() if target.is_file() else None
            if_match, if_none = self.headers.get("If-Match"), self.headers.get("If-None-Match")
            if relative != INDEX:  # archives are write-once; the same bytes again are fine
                if current is not None:
                    if current == body:
                        self.send_response(HTTPStatus.NO_CONTENT)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        self.send_error(HTTPStatus.PRECONDITION_FAILED, "a published archive never changes")
                    return
            elif (if_match and (current is None or etag_of(current) != if_match)) or \
                    (if_none == "*" and current is not None) or (not if_match and if_none != "*"):
                self.send_error(HTTPStatus.PRECONDITION_FAILED, "the index changed (or no condition was given); "
                                "read it again")
                return
            if relative == INDEX:
                try:
                    parse_index(body, "the uploaded index")
                except RegistryError as exc:
                    self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
                    return
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{threading.get_ident()}")
            tmp.write_bytes(body)
            os.replace(tmp, target)
        self.send_response(HTTPStatus.CREATED if current is None else HTTPStatus.NO_CONTENT)
        self.send_header("ETag", etag_of(body))
        self.send_header("Content-Length", "0")
        self.end_headers()


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 0, writable: bool = False) -> ThreadingHTTPServer:
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; create the registry with `adapt publish NAME --to {directory}`"
                         " or mkdir it first")

    class Handler(RegistryHandler):
        pass

    Handler.writable = writable
    try:
        return ThreadingHTTPServer((host, port), lambda *a, **k: Handler(*a, directory=str(directory), **k))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
