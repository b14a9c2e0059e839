"""Archives and the names that become paths: a compression bomb is refused before a byte is written, a
version or id cannot write outside the directory it is meant for, a card that `pull` would refuse is
refused by `pack` and `publish` too, and an index cannot smuggle in another adapter than it names."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from hub_kit import ADAPTER, packed, published_registry, runner

from adapter_cli.cli import app

MB = 1 << 20


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPT_REGISTRY", raising=False)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where pull unpacks: watched below
    return tmp_path


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read (the test never holds the bomb in memory either)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(path: Path, size: int, honest: bool) -> None:
    """An archive of one card and one member of ``size`` zeros, whose card lists either a 10-byte file (a
    lie the headers contradict) or the real size and sha256 (an honest bomb)."""
    digest = hashlib.sha256()
    for _ in range(size // MB):
        digest.update(bytes(MB))
    card = json.loads(_card_bytes())
    card["files"] = {"weights.bin": {"sha256": digest.hexdigest() if honest else hashlib.sha256(bytes(10)).hexdigest(),
                                     "size": size if honest else 10}}
    raw = json.dumps(card).encode()
    with gzip.GzipFile(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data, n in (("adapt-card.json", io.BytesIO(raw), len(raw)), ("weights.bin", _Zeros(size), size)):
            info = tarfile.TarInfo(name)
            info.size = n
            tar.addfile(info, data)


def _card_bytes() -> bytes:
    """The card of a real packed adapter (so everything but the files is valid)."""
    global _CARD
    if "_CARD" not in globals():
        with tempfile.TemporaryDirectory() as tmp:
            archive, _ = packed(Path(tmp))
            with tarfile.open(archive) as tar:
                _CARD = tar.extractfile("adapt-card.json").read()
    return _CARD


def _pull_watching_tmp(env: Path, args: list[str]) -> tuple[object, int]:
    """Run `adapt pull` while sampling how many bytes it has under $TMPDIR; return the result and the peak."""
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            total = 0
            for root, _, files in os.walk(env / "tmpdir"):
                for f in files:
                    try:
                        total += os.stat(os.path.join(root, f)).st_size
                    except OSError:
                        pass
            peak[0] = max(peak[0], total)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = runner.invoke(app, ["pull", *args])
    finally:
        done.set()
        watcher.join()
    return result, peak[0]


@pytest.mark.parametrize("honest, message", [
    (False, "weights.bin declares 134217728 bytes, its card says 10"),
    (True, "are a compression bomb, not an adapter"),
], ids=["card-lies", "honest-bomb"])
def test_a_compression_bomb_is_refused_before_anything_is_written(env, honest, message):
    bomb = env / "bomb.tar.gz"
    _bomb(bomb, 128 * MB, honest)
    assert bomb.stat().st_size < 2 * MB  # 128 MB of zeros in well under 2 MB
    result, written = _pull_watching_tmp(env, [str(bomb)])
    assert message in one_line_error(result)
    assert written < MB, f"{written} bytes were unpacked into $TMPDIR before the refusal"
    assert not (env / "cache").exists() or not any(p.is_file() for p in (env / "cache").rglob("*"))


def test_a_deeply_nested_card_is_one_line(env):
    deep = b'{"format": "adapt.card", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = env / "deep.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("adapt-card.json")
        info.size = len(deep)
        tar.addfile(info, io.BytesIO(deep))
    assert "nested too deeply" in one_line_error(runner.invoke(app, ["pull", str(path)]))


def test_a_deeply_nested_adapter_config_is_refused_at_pull_not_at_load(env):
    """Hashes and card all consistent: only the adapter's own JSON is hostile (the loader would recurse)."""
    archive, _ = packed(env / "dist")
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    files["adapter_config.json"] = b"[" * 100_000 + b"]" * 100_000
    card = json.loads(files.pop("adapt-card.json"))
    card["files"]["adapter_config.json"] = {"sha256": hashlib.sha256(files["adapter_config.json"]).hexdigest(),
                                            "size": len(files["adapter_config.json"])}
    path = env / "deep-config.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("adapt-card.json", json.dumps(card).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    msg = one_line_error(runner.invoke(app, ["pull", str(path)]))
    assert "adapter_config.json is nested too deeply" in msg
    assert not (env / "cache").exists() or not any(p.is_file() for p in (env / "cache").rglob("*"))


def _files(root: Path) -> set[Path]:
    return {Path(dirpath) / f for dirpath, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("version", ["v/../../..", "../../x", "a/b", "..", ".hidden", "x" * 41, "v 1"])
def test_a_version_cannot_write_outside_the_output(env, version):
    out = env / "out" / "inner"
    before = _files(env)
    r = runner.invoke(app, ["pack", str(ADAPTER), "--author", "me", "--catalog", "sentiment/x", "--version", version,
                            "-o", str(out)])
    assert "--version" in one_line_error(r)
    assert _files(env) == before  # nothing written anywhere, inside -o or out of it


def test_publish_validates_the_version_before_packing_into_its_temporary_directory(env):
    before = _files(env)
    r = runner.invoke(app, ["publish", str(ADAPTER), "--author", "me", "--catalog", "sentiment/x",
                            "--version", "v/../../..", "--to", str(env / "registry")])
    assert "--version" in one_line_error(r)
    assert _files(env) == before and not (env / "registry").exists()


@pytest.mark.parametrize("option, value, problem", [
    ("--url", "javascript:alert(1)", "url must be an http(s) address"),
    ("--url", "file:///etc/passwd", "url must be an http(s) address"),
])
def test_a_card_pull_would_refuse_is_refused_by_pack_and_publish(env, option, value, problem):
    from adapter_cli.errors import UsageError
    from adapter_cli.hub.card import Card

    common = [str(ADAPTER), "--author", "me", "--catalog", "sentiment/x", option, value]
    before = _files(env)
    assert problem in one_line_error(runner.invoke(app, ["pack", *common, "-o", str(env / "out")]))
    assert problem in one_line_error(runner.invoke(app, ["publish", *common, "--to", str(env / "registry")]))
    assert _files(env) == before and not (env / "registry").exists()
    card = json.loads(_card_bytes())
    with pytest.raises(UsageError, match=re.escape(problem)):  # the very check pull makes
        Card.from_dict({**card, "url": value}, "card")


def test_an_index_cannot_install_another_adapter_than_it_names(env):
    """A registry whose index says sentiment/x@me v1 but whose archive (hash and all) holds v2."""
    registry = published_registry(env)
    two, meta = packed(env / "dist", version="2")
    index = json.loads((registry / "index.json").read_text())
    record = index["adapters"][0]
    (registry / record["archive"]).write_bytes(two.read_bytes())
    record["sha256"], record["size"] = meta["sha256"], meta["bytes"]
    (registry / "index.json").write_text(json.dumps(index))
    msg = one_line_error(runner.invoke(app, ["pull", "sentiment/x@me", "--registry", str(registry)]))
    assert "holds sentiment/x@me v2" in msg and "not what the index says (sentiment/x@me v1)" in msg
    assert not (env / "cache").exists() or not any(p.is_file() for p in (env / "cache").rglob("*"))
