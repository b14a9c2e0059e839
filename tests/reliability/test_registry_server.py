"""`adapt hub serve`: nobody without the token writes, nothing published changes, bodies are capped and
streamed, silent clients are dropped, and no malformed request gets a traceback or kills the server.

Every server here listens on 127.0.0.1 only, answers a bounded number of requests, and is stopped by the
test (threads are daemons; processes get Ctrl-C, then a kill)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from hub_kit import TOKEN, ProcessServer, ThreadServer, get, packed, published_registry, put, raw_request, runner, \
    sha256, snapshot

from adapter_cli.cli import app


@pytest.fixture
def reg(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPT_REGISTRY_TOKEN", raising=False)
    return published_registry(tmp_path)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def _index(reg: Path) -> dict:
    return json.loads((reg / "index.json").read_text())


# ------------------------------------------------------------------------------------------- tokens


def test_writes_without_the_token_change_nothing(reg, tmp_path):
    server = ThreadServer(reg, writable=True, token=TOKEN)
    before = snapshot(reg)
    etag = f'"{sha256((reg / "index.json").read_bytes())[:32]}"'
    wiped = json.dumps({"format": "adapt.registry", "format_version": 1, "adapters": []}).encode()
    archive, meta = packed(tmp_path / "dist", version="2")
    target = "/" + _archive_path(archive, meta)
    try:
        assert put(server.port, "/index.json", wiped, token=None, If_Match=etag) == 401  # anonymous: wipe refused
        assert put(server.port, "/index.json", wiped, token="x" * 32, If_Match=etag) == 403  # wrong token
        assert put(server.port, target, archive.read_bytes(), token=None, X_Adapt_Sha256=meta["sha256"]) == 401
        assert put(server.port, target, archive.read_bytes(), token=TOKEN[:-1] + "!",
                   X_Adapt_Sha256=meta["sha256"]) == 403
        assert raw_request(server.port, b"PUT /index.json HTTP/1.1\r\nContent-Length: 2\r\n"
                                        b"Authorization: Bearer \xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9"
                                        b"\xe9\xe9\xe9\r\n\r\n{}") == 403  # non-ASCII: refused, not a TypeError
        assert snapshot(reg) == before
    finally:
        server.close()


def _archive_path(archive: Path, meta: dict) -> str:
    from adapter_cli.hub.archive import verify_archive
    from adapter_cli.hub.registry import archive_path

    return archive_path(verify_archive(archive), meta["sha256"])


def test_publish_sends_the_token_from_the_environment_or_a_file(reg, tmp_path, token_file, monkeypatch):
    server = ThreadServer(reg, writable=True, token=TOKEN)
    try:
        two, _ = packed(tmp_path / "dist", version="2")
        msg = one_line_error(runner.invoke(app, ["publish", str(two), "--to", server.url]))
        assert "wants a token" in msg and "ADAPT_REGISTRY_TOKEN" in msg
        monkeypatch.setenv("ADAPT_REGISTRY_TOKEN", "y" * 32)
        assert "refused the token" in one_line_error(runner.invoke(app, ["publish", str(two), "--to", server.url]))
        assert [r["version"] for r in _index(reg)["adapters"]] == ["1"]
        r = runner.invoke(app, ["publish", str(two), "--to", server.url, "--token-file", str(token_file), "--json"])
        assert r.exit_code == 0, r.stderr  # --token-file wins over the environment
        monkeypatch.setenv("ADAPT_REGISTRY_TOKEN", TOKEN)
        three, _ = packed(tmp_path / "dist", version="3")
        r = runner.invoke(app, ["publish", str(three), "--to", server.url, "--json"])
        assert r.exit_code == 0, r.stderr
        assert sorted(r["version"] for r in _index(reg)["adapters"]) == ["1", "2", "3"]
        r = runner.invoke(app, ["pull", "sentiment/x@me:3", "--registry", server.url, "--json"])
        assert r.exit_code == 0, r.stderr
    finally:
        server.close()


@pytest.mark.parametrize("args, message", [
    (["--writable"], "--writable needs --token-file FILE"),
    (["--token-file", "{token}"], "--token-file is for --writable"),
    (["--writable", "--token-file", "{short}"], "must be 16 to 4096 printable characters"),
    (["--writable", "--token-file", "{missing}"], "cannot read the token file"),
    (["--port", "99999"], "--port 99999 is not a port"),
    (["--port", "-1"], "--port -1 is not a port"),
    (["--writable", "--token-file", "{token}", "--max-upload-mb", "0"], "--max-upload-mb and --timeout must be"),
], ids=["no-token", "token-read-only", "short-token", "missing-token", "port-99999", "port-negative", "no-cap"])
def test_serve_refuses_bad_options_with_one_line(tmp_path, token_file, args, message):
    (tmp_path / "short").write_text("abc\n")
    subs = {"{token}": str(token_file), "{short}": str(tmp_path / "short"), "{missing}": str(tmp_path / "nope")}
    r = runner.invoke(app, ["hub", "serve", str(tmp_path), *[subs.get(a, a) for a in args]])
    assert message in one_line_error(r)


def test_serve_port_99999_through_the_real_entry_point_is_one_line(tmp_path):
    import subprocess

    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "adapter_cli", "hub", "serve", str(tmp_path), "--port", "99999"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: --port 99999 is not a port; use 1-65535 (or 0 for a free one)"]


# ------------------------------------------------------------------------------------- immutability


def test_a_published_version_never_changes_on_the_server(reg, tmp_path):
    server = ThreadServer(reg, writable=True, token=TOKEN)
    before = snapshot(reg)
    index = _index(reg)
    etag = f'"{sha256((reg / "index.json").read_bytes())[:32]}"'
    other, meta = packed(tmp_path / "dist", version="1", description="other bytes, same version")
    other_path = _archive_path(other, meta)

    def index_put(adapters: list) -> int | None:
        body = json.dumps({**index, "adapters": adapters}).encode()
        return put(server.port, "/index.json", body, If_Match=etag)

    repointed = [{**index["adapters"][0], "sha256": meta["sha256"], "size": meta["bytes"], "archive": other_path}]
    try:
        # another archive for the published (id, base model, architecture, version): refused, not stored
        assert put(server.port, "/" + other_path, other.read_bytes(), X_Adapt_Sha256=meta["sha256"]) == 409
        assert not (reg / other_path).exists()
        assert index_put([]) == 409                     # wiping the index
        assert index_put(repointed) == 409              # re-pointing version 1 at other bytes
        fresh = {**index["adapters"][0], "version": "9", "archive": other_path.replace("_1-", "_9-")}
        assert index_put(index["adapters"] + [fresh]) == 422  # a record whose archive was never uploaded
        assert put(server.port, "/" + other_path, b"\x1f\x8b not an archive", X_Adapt_Sha256=sha256(
            b"\x1f\x8b not an archive")) == 422         # not an archive
        assert put(server.port, "/" + other_path, other.read_bytes(), X_Adapt_Sha256="0" * 64) == 422  # wrong sha256
        assert put(server.port, "/archives/me/elsewhere.tar.gz", other.read_bytes(),
                   X_Adapt_Sha256=meta["sha256"]) == 422  # not where its card says it belongs
        assert snapshot(reg) == before
        r = runner.invoke(app, ["publish", str(other), "--to", server.url, "--token-file", str(_token(tmp_path)),
                                "--force"])  # --force cannot get past the server either
        assert "never changes" in one_line_error(r)
        assert snapshot(reg) == before
    finally:
        server.close()


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "token-for-publish"
    path.write_text(TOKEN)
    return path


# ------------------------------------------------------------------------------- caps and streaming


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak memory from /proc")
def test_bodies_are_capped_and_streamed_not_held_in_memory(reg, token_file):
    mb = 1 << 20
    zeros = b"\0" * mb
    before = snapshot(reg)
    server = ProcessServer(reg, "--writable", "--token-file", str(token_file), "--max-upload-mb", "48")
    try:
        assert get(server.url + "/index.json")[0] == 200
        base = server.peak_rss()
        head = (f"PUT /archives/me/big_1-{'0' * 8}.tar.gz HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"X-Adapt-Sha256: {sha256(zeros * 40)}\r\n")
        # over the cap: 413 from the headers alone
        assert raw_request(server.port, (head + f"Content-Length: {64 * mb}\r\n\r\n").encode(), 30, 64, zeros) == 413
        # under the cap: 40 MB streamed to disk, then refused as no archive; memory never holds it
        assert raw_request(server.port, (head + f"Content-Length: {40 * mb}\r\n\r\n").encode(), 30, 40, zeros) == 422
        growth = server.peak_rss() - base
        assert growth < 16 * mb, f"the server's peak memory grew by {growth / mb:.0f} MB for a 40 MB body"
        assert snapshot(reg) == before  # nothing stored, no temporary file left
    finally:
        assert "Traceback" not in server.close()


# -------------------------------------------------------------------------------- idle connections


def test_silent_clients_are_dropped_and_gets_keep_answering(reg):
    server = ThreadServer(reg, writable=True, token=TOKEN, timeout=1.0)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=8) for _ in range(30)]
    stalled = []
    for _ in range(5):  # a PUT that promises 1000 bytes and sends 10
        s = socket.create_connection(("127.0.0.1", server.port), timeout=8)
        s.sendall(f"PUT /index.json HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nIf-None-Match: *\r\n"
                  "Content-Length: 1000\r\n\r\n0123456789".encode())
        stalled.append(s)
    try:
        status, _, took = get(server.url + "/index.json", timeout=5)
        assert status == 200 and took < 2
        start = time.monotonic()
        for s in idle + stalled:
            rest = b""
            while chunk := s.recv(4096):  # the server hangs up (a stalled PUT first hears 408)
                rest += chunk
            assert rest == b"" or rest.startswith(b"HTTP/1.0 408")
        assert time.monotonic() - start < 6
        assert get(server.url + "/index.json", timeout=5)[0] == 200
    finally:
        for s in idle + stalled:
            s.close()
        server.close()


# --------------------------------------------------------------------------------- malformed input


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _requests(index: bytes) -> list[tuple[str, bytes]]:
    """Raw requests no client library would send; each must get a 4xx answer (or a clean hang-up)."""
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()

    def put_index(body: bytes, extra: bytes = b"") -> bytes:
        return (b"PUT /index.json HTTP/1.1\r\n" + auth + b"If-None-Match: *\r\n" + extra
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    record = json.loads(index)["adapters"][0]
    nested_record = json.dumps({"format": "adapt.registry", "adapters": [{**record, "x": json.loads(_deep(60))}]})
    return [
        ("length abc", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Content-Length: abc\r\n\r\n{}"),
        ("length negative", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Content-Length: -5\r\n\r\n{}"),
        ("length float", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Content-Length: 1e9\r\n\r\n{}"),
        ("length huge", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Content-Length: 99999999999999999999999\r\n\r\n"),
        ("length twice", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        ("length missing", b"PUT /index.json HTTP/1.1\r\n" + auth + b"\r\n{}"),
        ("chunked", b"PUT /index.json HTTP/1.1\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("NUL in GET path", b"GET /index%00.json HTTP/1.1\r\n\r\n"),
        ("NUL in HEAD path", b"HEAD /archives/%00/x HTTP/1.1\r\n\r\n"),
        ("NUL in PUT path", b"PUT /index%00.json HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("dot-dot GET", b"GET /archives/%2e%2e/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n\r\n"),
        ("dot-dot PUT", b"PUT /../../evil.json HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("overlong path", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"),
        ("garbage request line", b"GET /a b HTTP/1.1\r\n\r\n"),
        ("overlong header", b"GET /index.json HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"),
        ("DELETE", b"DELETE /index.json HTTP/1.1\r\n" + auth + b"\r\n"),
        ("basic auth", b"PUT /index.json HTTP/1.1\r\nAuthorization: Basic YTpi\r\nContent-Length: 2\r\n\r\n{}"),
        ("deep JSON index", put_index(_deep(100_000))),
        ("deep JSON in a record", put_index(nested_record.encode())),
        ("5000-digit number", put_index(b'{"format": "adapt.registry", "adapters": [' + b"1" * 5000 + b"]}")),
        ("not UTF-8", put_index(b'{"format": "\xff\xfe"}')),
        ("bad sha header", b"PUT /archives/me/x_1-00000000.tar.gz HTTP/1.1\r\n" + auth
         + b"X-Adapt-Sha256: zz\r\nContent-Length: 2\r\n\r\n{}"),
        ("short body", b"PUT /index.json HTTP/1.1\r\n" + auth + b"If-None-Match: *\r\nContent-Length: 100\r\n\r\n{}"),
    ]


def test_malformed_requests_get_4xx_never_a_traceback(reg, token_file):
    before = snapshot(reg)
    server = ProcessServer(reg, "--writable", "--token-file", str(token_file), "--timeout", "2")
    answers = {}
    try:
        for name, data in _requests((reg / "index.json").read_bytes()):
            answers[name] = raw_request(server.port, data, timeout=10)
        assert get(server.url + "/index.json")[0] == 200  # still alive
    finally:
        err = server.close()
    wrong = {name: status for name, status in answers.items()
             if not (status is not None and 400 <= status < 500) and not (name == "short body" and status is None)}
    assert not wrong, wrong
    assert "Traceback" not in err and "Error" not in err, err
    assert snapshot(reg) == before
