"""Helpers for the registry reliability tests: small adapter archives (packed from an AdapterHub fixture, no
model loaded), registry servers in a thread or a subprocess (127.0.0.1 only, stopped by the test), and raw
HTTP requests that no client library would send."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import FIXTURES, ROOT
from typer.testing import CliRunner

from adapter_cli.cli import app

TOKEN = "reliability-token-0123456789abcdef"
ADAPTER = FIXTURES / "adapterhub_distilbert" / "adapters" / "pfd"
runner = CliRunner()


def packed(out: Path, version: str = "1", description: str = "") -> tuple[Path, dict]:
    """An archive of the fixture adapter as sentiment/x@me; other descriptions give other bytes."""
    r = runner.invoke(app, ["pack", str(ADAPTER), "--author", "me", "--catalog", "sentiment/x", "--version", version,
                            "--description", description, "-o", str(out / f"{version}-{len(description)}.tar.gz"),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    return Path(json.loads(r.stdout)["archive"]), json.loads(r.stdout)


def published_registry(root: Path) -> Path:
    """A directory registry holding version 1 of sentiment/x@me."""
    archive, _ = packed(root / "dist")
    r = runner.invoke(app, ["publish", str(archive), "--to", str(root / "registry")])
    assert r.exit_code == 0, r.stderr
    return root / "registry"


class ThreadServer:
    """``make_server`` in a daemon thread; close() stops it."""

    def __init__(self, directory: Path, **options) -> None:
        from adapter_cli.hub.server import make_server

        self.httpd = make_server(directory, **options)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ProcessServer:
    """``adapt hub serve`` as a real process (its own memory and stderr), stopped with Ctrl-C by close()."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "adapter_cli", "hub", "serve", str(directory), "--port", "0",
                                      *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        first = self.proc.stderr.readline()  # "serving DIR at http://127.0.0.1:PORT ..."
        found = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        if not found:
            self.proc.kill()
            raise AssertionError(f"the server did not start: {first}{self.proc.stderr.read()}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024

    def close(self) -> str:
        """Stop it (Ctrl-C, then kill if it lingers) and return everything it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def raw_request(port: int, data: bytes, timeout: float = 10.0, body_chunks: int = 0, chunk: bytes = b"") -> int | None:
    """Send raw bytes (then ``body_chunks`` copies of ``chunk``) and return the status of the answer, or None
    when the server answered nothing before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            for _ in range(body_chunks):
                sock.sendall(chunk)
        except OSError:  # the server answered early and stopped reading: its answer is what counts
            pass
        answer = b""
        try:
            while b"\r\n" not in answer:
                got = sock.recv(4096)
                if not got:
                    break
                answer += got
        except OSError:
            pass
    found = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(found.group(1)) if found else None


def put(port: int, path: str, body: bytes, token: str | None = TOKEN, **headers: str) -> int | None:
    lines = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """Status, body and seconds taken of a GET."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - start
    except urllib.error.HTTPError as exc:
        return exc.code, b"", time.monotonic() - start


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (dot files too) and its sha256: 'nothing changed' is an equality."""
    return {str(p.relative_to(directory)): sha256(p.read_bytes()) for p in sorted(directory.rglob("*")) if p.is_file()
            and p.name != ".lock"}
