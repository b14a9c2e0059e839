"""The HTTP registry client against servers that misbehave on purpose: an index declared huge, one that
never ends, one trickled a byte at a time (which resets every per-read timeout), an archive trickled the
same way, and JSON nested deeper than Python's parser can go. Each ends in one line and exit 1, quickly.

The servers listen on 127.0.0.1 only, answer a handful of connections and stop by themselves."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import one_line_error
from hub_kit import published_registry, runner

from adapter_cli.cli import app

LIFETIME = 12.0  # no misbehaving server outlives this, whatever the client does


class RawServer:
    """Answers every connection with ``respond(conn, stop)`` in its own thread until closed (or LIFETIME)."""

    def __init__(self, respond) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        end = time.monotonic() + LIFETIME
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()
        self.sock.close()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(LIFETIME)
            try:
                request = b""
                while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                    request += chunk
                self.respond(conn, self.stop)
            except OSError:  # the client gave up: that is the point
                pass

    def close(self) -> None:
        self.stop.set()


def _waiting(stop: threading.Event, seconds: float, until: float) -> bool:
    """Sleep up to ``seconds``; False once the server is told to stop or its time (``until``) is up."""
    return not stop.wait(seconds) and time.monotonic() < until


def huge_declared(conn, stop) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 600000000\r\n\r\n{")
    stop.wait(LIFETIME)


def endless(conn, stop) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")  # no length: until we hang up
    block = b" " * 65536
    for _ in range(200):  # 13 MB at most
        if stop.is_set():
            return
        conn.sendall(block)


def trickled_body(conn, stop) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
    until = time.monotonic() + LIFETIME
    while _waiting(stop, 0.2, until):
        conn.sendall(b" ")


def trickled_headers(conn, stop) -> None:
    until = time.monotonic() + LIFETIME
    for byte in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"a" * 1000:
        if not _waiting(stop, 0.2, until):
            return
        conn.sendall(bytes([byte]))


def deep_json(conn, stop) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ADAPT_REGISTRY_TIMEOUT", "1.5")
    monkeypatch.delenv("ADAPT_REGISTRY", raising=False)
    return tmp_path


@pytest.mark.parametrize("respond, message", [
    (huge_declared, "is 600.0 MB, more than the 64 MB allowed"),
    (trickled_body, "took more than 1.5 s"),
    (trickled_headers, "took more than 1.5 s"),
    (deep_json, "nested too deeply"),
], ids=["declared-600MB", "trickled-body", "trickled-headers", "deep-json"])
def test_a_misbehaving_index_server_is_one_line_exit_1_and_quick(env, respond, message):
    server = RawServer(respond)
    start = time.monotonic()
    try:
        for args in (["search", "--registry", server.url], ["pull", "sentiment/x@me", "--registry", server.url]):
            msg = one_line_error(runner.invoke(app, args), code=1)
            assert message in msg, msg
    finally:
        server.close()
    assert time.monotonic() - start < 8  # two commands, each bounded by ADAPT_REGISTRY_TIMEOUT (1.5 s)


def test_an_index_that_never_ends_stops_at_the_cap(env, monkeypatch):
    monkeypatch.setenv("ADAPT_MAX_INDEX_MB", "1")
    server = RawServer(endless)
    try:
        msg = one_line_error(runner.invoke(app, ["search", "--registry", server.url]), code=1)
    finally:
        server.close()
    assert "goes past the 1 MB allowed" in msg and "ADAPT_MAX_INDEX_MB" in msg


def test_a_trickled_archive_download_is_bounded_in_time(env):
    registry = published_registry(env)

    class Trickle(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:
            if not self.path.endswith(".tar.gz"):
                return super().copyfile(source, outputfile)
            end = time.monotonic() + LIFETIME
            try:
                while time.monotonic() < end and (byte := source.read(1)):
                    outputfile.write(byte)
                    outputfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client hung up: that is the point
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Trickle(*a, directory=str(registry), **k))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    start = time.monotonic()
    try:
        r = runner.invoke(app, ["pull", "sentiment/x@me", "--registry", f"http://127.0.0.1:{httpd.server_address[1]}"])
        msg = one_line_error(r, code=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "took more than" in msg and time.monotonic() - start < 6
    assert not (env / "cache").exists() or not any(p.is_file() for p in (env / "cache").rglob("*"))


def test_a_deeply_nested_directory_index_is_one_line(env):
    (env / "deep").mkdir()
    (env / "deep" / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in one_line_error(runner.invoke(app, ["search", "--registry", str(env / "deep")]),
                                                 code=1)
    index = {"format": "adapt.registry", "adapters": [], "x": json.loads("[" * 50 + "]" * 50)}
    (env / "deep" / "index.json").write_text(json.dumps(index))  # parses, but deeper than any index is
    assert "nested too deeply" in one_line_error(runner.invoke(app, ["search", "--registry", str(env / "deep")]),
                                                 code=1)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_time_budget_is_bad_input(env, monkeypatch, value):
    monkeypatch.setenv("ADAPT_REGISTRY_TIMEOUT", value)
    msg = one_line_error(runner.invoke(app, ["search", "--registry", "http://127.0.0.1:9"]))
    assert "ADAPT_REGISTRY_TIMEOUT must be a positive number of seconds" in msg
