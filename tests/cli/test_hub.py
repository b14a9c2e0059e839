"""Sharing adapters end to end: pack, publish to a registry served over real loopback HTTP, search, pull
into a fresh cache, identical outputs; and every refusal (tampering, traversal, links, truncation,
another base model), with nothing left in the cache."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import ROOT, one_line_error, save_tiny_model
from typer.testing import CliRunner

from adapter_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model and a cache holding two trained-looking adapters with heads (Pfeiffer, Houlsby)."""
    from adapter_cli import AdapterModel, cache
    from adapter_cli.defaults import model_id

    root = tmp_path_factory.mktemp("hub")
    model_dir = save_tiny_model(root / "base")
    m = AdapterModel.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPT_CACHE", str(root / "cache_a"))
        for name, preset, task in (("sst2", "pfeiffer", "sst2"), ("mrpc", "houlsby", "mrpc")):
            m.add_adapter(name, preset)
            m.add_head(name, num_labels=2, label2id={"no": 0, "yes": 1})
            with torch.no_grad():
                for p in list(m.adapters[name].parameters()) + list(m.heads[name].parameters()):
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
            m.save_adapter(root / f"saved-{name}", name)
            cache.put(root / f"saved-{name}", model_id=model_id(str(model_dir)), entry_id=f"{name}-run",
                      info={"name": name, "task": task, "method": "adapter", "kind": "adapter",
                            "config_name": preset, "metrics": {"accuracy": 0.875}, "main_metric": "accuracy"})
    return {"root": root, "model": model_dir, "cache_a": root / "cache_a"}


TOKEN = "test-token-0123456789abcdef"  # what a writable test server wants from publishers


class _Server:
    def __init__(self, directory: Path, handler: type | None = None, writable: bool = False) -> None:
        from adapter_cli.hub.server import make_server

        if handler is None:
            self.httpd = make_server(directory, writable=True, token=TOKEN) if writable else make_server(directory)
        else:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(directory), **k))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def registry(world, tmp_path, monkeypatch):
    """Both adapters published from cache A into a directory registry, served over loopback HTTP."""
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    reg = tmp_path / "registry"
    for name in ("sst2-run", "mrpc-run"):
        r = runner.invoke(app, ["publish", name, "--to", str(reg), "--author", "ukp", "--license", "apache-2.0",
                                "--json"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["new"] is True
    server = _Server(reg)
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache_b"))  # from here on: a fresh cache
    yield {"dir": reg, "url": server.url, "cache_b": tmp_path / "cache_b"}
    server.close()


def _nothing_cached(cache_dir: Path) -> bool:
    return not cache_dir.exists() or not any(p.is_file() for p in cache_dir.rglob("*"))


def _infer(model: Path, adapter: str) -> list[dict]:
    r = runner.invoke(app, ["infer", "--model", str(model), "-a", adapter, "good film", "the worst plot"])
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_publish_search_pull_over_http_gives_identical_outputs(world, registry, monkeypatch):
    r = runner.invoke(app, ["search", "--registry", registry["url"], "--json"])
    assert r.exit_code == 0, r.stderr
    found = {x["id"]: x for x in json.loads(r.stdout)}
    assert set(found) == {"sentiment/sst-2@ukp", "sts/mrpc@ukp"}
    assert found["sts/mrpc@ukp"]["architecture"] == "houlsby"
    assert found["sentiment/sst-2@ukp"]["reduction_factor"] == 16
    assert found["sentiment/sst-2@ukp"]["license"] == "apache-2.0"

    r = runner.invoke(app, ["pull", "sentiment/sst-2@ukp", "--registry", registry["url"], "--model",
                            str(world["model"]), "--json"])
    assert r.exit_code == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["registry_id"] == "sentiment/sst-2@ukp" and str(registry["cache_b"]) in pulled["path"]

    fresh = _infer(world["model"], "sentiment/sst-2@ukp")
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    original = _infer(world["model"], "sst2-run")
    assert fresh == original
    # and the weights are byte-identical
    from safetensors.torch import load_file

    a = load_file(Path(pulled["path"]) / "adapter_weights.safetensors")
    b = load_file(world["root"] / "saved-sst2" / "adapter_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_commands_pull_on_the_fly_from_ADAPT_REGISTRY(world, registry, monkeypatch):
    monkeypatch.setenv("ADAPT_REGISTRY", registry["url"])
    out = _infer(world["model"], "sts/mrpc@ukp:1")
    assert len(out) == 2 and {"label", "score"} <= set(out[0])
    r = runner.invoke(app, ["cache", "ls", "--json"])
    assert [e["id"] for e in json.loads(r.stdout)] == ["sts--mrpc@ukp--houlsby"]


def test_search_filters_prefixes_and_ambiguity(world, registry):
    url = registry["url"]

    def ids(*args: str) -> list[str]:
        r = runner.invoke(app, ["search", "--registry", url, "--json", *args])
        found = [x["id"] for x in json.loads(r.stdout)]
        assert r.exit_code == (0 if found else 1), r.stderr  # nothing found: [] and exit 1, like grep
        return found

    assert ids("--arch", "houlsby") == ["sts/mrpc@ukp"]
    assert ids("--task", "sentiment", "--reduction-factor", "16") == ["sentiment/sst-2@ukp"]
    assert ids("--author", "someone-else") == []
    assert ids("--dataset", "mrpc", "--model", str(world["model"])) == ["sts/mrpc@ukp"]  # a local model by path
    assert ids("mrpc ukp") == ["sts/mrpc@ukp"]
    r = runner.invoke(app, ["search", "--registry", url, "--model", "bert-base-uncased"])
    assert r.exit_code == 1  # nothing found is a failure for scripts, said on stderr
    # a unique prefix of a name is enough; an ambiguous one lists the candidates
    r = runner.invoke(app, ["pull", "ss", "--registry", url, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["registry_id"] == "sentiment/sst-2@ukp"
    msg = one_line_error(runner.invoke(app, ["pull", "@ukp", "--registry", url]))
    assert "ambiguous" in msg and "sentiment/sst-2@ukp" in msg and "sts/mrpc@ukp" in msg


def test_pull_refuses_an_adapter_for_another_base_model(world, registry, tmp_path):
    other = save_tiny_model(tmp_path / "other", seed=3)  # same shapes, other weights: another base model
    msg = one_line_error(runner.invoke(app, ["pull", "sentiment/sst-2@ukp", "--registry", registry["url"],
                                             "--model", str(other)]))
    assert "published for local/base-" in msg and "not for local/other-" in msg
    assert _nothing_cached(registry["cache_b"])


def _record(reg: Path, rid: str) -> dict:
    return next(r for r in json.loads((reg / "index.json").read_text())["adapters"] if r["id"] == rid)


def _point_record_at(reg: Path, rid: str, data: bytes) -> None:
    """What a malicious or broken registry does: serve other bytes, with an index that vouches for them."""
    import hashlib

    index = json.loads((reg / "index.json").read_text())
    for r in index["adapters"]:
        if r["id"] == rid:
            (reg / r["archive"]).write_bytes(data)
            r["sha256"], r["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (reg / "index.json").write_text(json.dumps(index))


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _pull_refused(registry: dict, world: dict, rid: str = "sentiment/sst-2@ukp") -> str:
    msg = one_line_error(runner.invoke(app, ["pull", rid, "--registry", registry["url"], "--model",
                                             str(world["model"])]))
    assert _nothing_cached(registry["cache_b"])
    return msg


def test_a_tampered_archive_is_refused(world, registry):
    path = registry["dir"] / _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # the index still has the honest sha256
    assert "tampered" in _pull_refused(registry, world)


def test_a_file_changed_inside_a_rebuilt_archive_is_refused(world, registry, tmp_path):
    """Even when the index is rewritten to match, each file must match the sha256 in the card."""
    path = registry["dir"] / _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    members = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            if m.name == "head_config.json":
                data = data.replace(b'"yes"', b'"YES"')
            members.append(_file(m.name, data))
    _point_record_at(registry["dir"], "sentiment/sst-2@ukp", _tar(members))
    msg = _pull_refused(registry, world)
    assert "head_config.json does not match the sha256 in its card" in msg


@pytest.mark.parametrize("evil, expected", [
    ("../evil.json", "unsafe path"),
    ("/tmp/evil.json", "unsafe path"),
    ("sub/dir.json", "unsafe path"),
    ("symlink", "is a link"),
    ("hardlink", "is a link"),
    ("fifo", "not a regular file"),
])
def test_archives_with_paths_links_or_devices_are_refused(world, registry, tmp_path, evil, expected):
    path = registry["dir"] / _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    with tarfile.open(path) as tar:
        members = [_file(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    if evil in ("symlink", "hardlink", "fifo"):
        info = tarfile.TarInfo("adapter_weights2.safetensors")
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[evil]
        info.linkname = "/etc/passwd"
        members.insert(1, (info, None))
    else:
        members.insert(1, _file(evil, b"{}"))
    _point_record_at(registry["dir"], "sentiment/sst-2@ukp", _tar(members))
    assert expected in _pull_refused(registry, world)
    assert not (tmp_path / "evil.json").exists() and not Path("/tmp/evil.json").exists()


def test_an_oversized_archive_is_refused(world, registry, monkeypatch):
    monkeypatch.setenv("ADAPT_MAX_ARCHIVE_MB", "0.01")  # 10 kB: smaller than the adapter
    assert "unpacks to more than" in _pull_refused(registry, world)


class _Truncating(SimpleHTTPRequestHandler):
    """Announces the whole archive, sends half of it and hangs up."""

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        if self.path.endswith(".tar.gz"):
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            super().copyfile(source, outputfile)


def test_a_truncated_download_is_refused(world, registry):
    server = _Server(registry["dir"], handler=_Truncating)
    try:
        msg = one_line_error(runner.invoke(app, ["pull", "sentiment/sst-2@ukp", "--registry", server.url,
                                                 "--model", str(world["model"])]), code=1)
    finally:
        server.close()
    assert "broke off" in msg or "truncated" in msg
    assert _nothing_cached(registry["cache_b"])


def test_a_truncated_archive_file_is_refused(world, registry):
    path = registry["dir"] / _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    _point_record_at(registry["dir"], "sentiment/sst-2@ukp", path.read_bytes()[:3000])
    assert "truncated" in _pull_refused(registry, world)


def _archives(world: dict, out: Path, n: int) -> list[Path]:
    """n distinct archives (versions 1..n of one adapter) packed from cache A."""
    from adapter_cli.hub.pack import pack

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPT_CACHE", str(world["cache_a"]))
        return [pack("sst2-run", out, author="lab", version=str(i))[0] for i in range(1, n + 1)]


def test_concurrent_publishers_to_a_directory_all_land(world, tmp_path):
    archives = _archives(world, tmp_path / "dist", 6)
    reg = tmp_path / "shared-registry"
    procs = [subprocess.Popen([sys.executable, "-m", "adapter_cli", "publish", str(a), "--to", str(reg)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in archives]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    index = json.loads((reg / "index.json").read_text())
    assert sorted(r["version"] for r in index["adapters"]) == [str(i) for i in range(1, 7)]
    for r in index["adapters"]:
        assert (reg / r["archive"]).is_file()
    assert not [p for p in reg.iterdir() if ".tmp-" in p.name]


def test_concurrent_publishers_over_http_all_land(world, tmp_path):
    from adapter_cli.hub.archive import extract_archive, file_digest
    from adapter_cli.hub.registries import open_registry

    archives = _archives(world, tmp_path / "dist", 8)
    cards = {}
    for a in archives:
        (tmp_path / a.name).mkdir()
        cards[a] = extract_archive(a, tmp_path / a.name).card
    reg = tmp_path / "http-registry"
    reg.mkdir()
    server = _Server(reg, writable=True)
    errors: list[BaseException] = []

    def publish(a: Path) -> None:
        try:
            open_registry(server.url, TOKEN).publish(a, cards[a], file_digest(a))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(a,)) for a in archives]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.close()
    assert not errors, errors
    index = json.loads((reg / "index.json").read_text())
    assert sorted(int(r["version"]) for r in index["adapters"]) == list(range(1, 9))


def test_a_read_only_http_registry_refuses_publishing(world, registry, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    msg = one_line_error(runner.invoke(app, ["publish", "sst2-run", "--author", "x", "--to", registry["url"]]), code=1)
    assert "HTTP 501" in msg or "HTTP 405" in msg


def test_a_published_version_is_immutable(world, registry, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    again = runner.invoke(app, ["publish", "sst2-run", "--to", str(registry["dir"]), "--author", "ukp",
                                "--license", "apache-2.0", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["new"] is False  # same bytes: nothing to do
    msg = one_line_error(runner.invoke(app, ["publish", "sst2-run", "--to", str(registry["dir"]), "--author", "ukp",
                                             "--description", "changed"]))
    assert "already published with other content" in msg


def test_pack_needs_an_author_and_a_catalog(world, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    monkeypatch.delenv("ADAPT_AUTHOR", raising=False)
    assert "--author" in one_line_error(runner.invoke(app, ["pack", "sst2-run", "-o", str(tmp_path)]))
    r = runner.invoke(app, ["pack", "sst2-run", "-o", str(tmp_path), "--author", "Not Valid"])
    assert "lower-case" in one_line_error(r)
    assert not list(tmp_path.glob("*.tar.gz"))
    r = runner.invoke(app, ["pack", "sst2-run", "-o", str(tmp_path / "a.tar.gz"), "--author", "me", "--json"])
    first = json.loads(r.stdout)
    r = runner.invoke(app, ["pack", "sst2-run", "-o", str(tmp_path / "b.tar.gz"), "--author", "me", "--json"])
    assert json.loads(r.stdout)["sha256"] == first["sha256"]  # packing is deterministic
    assert first["files"] == ["adapter_config.json", "adapter_weights.safetensors", "head_config.json",
                              "head_weights.safetensors"]


def _site(registry: dict, tmp_path: Path) -> Path:
    out = tmp_path / "site"
    r = runner.invoke(app, ["hub", "site", registry["url"], "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"index": str(out / "index.html"), "pages": 3, "adapters": 2, "tasks": 2}
    return out


def test_the_explore_site_has_the_hierarchy_and_a_page_per_adapter(world, registry, tmp_path):


    out = _site(registry, tmp_path)
    index = (out / "index.html").read_text()
    # task -> dataset -> adapters
    assert re.search(r'<section class="task" id="task-sentiment">.*?<div class="dataset" id="ds-sentiment-sst-2">'
                     r'.*?sentiment/sst-2@ukp', index, re.DOTALL)
    assert re.search(r'id="task-sts">.*?id="ds-sts-mrpc">.*?sts/mrpc@ukp', index, re.DOTALL)
    assert 'data-arch="houlsby"' in index and 'data-arch="pfeiffer"' in index
    links = re.findall(r'href="(adapters/[^"]+)"', index)
    assert len(links) == 2 and all((out / link).is_file() for link in links)
    page = (out / links[0]).read_text()
    rec = _record(registry["dir"], "sentiment/sst-2@ukp")
    assert "-a sentiment/sst-2@ukp:1" in page and rec["sha256"] in page and "apache-2.0" in page
    assert f"ADAPT_REGISTRY={registry['url']} adapt infer --model {rec['base_model']['id']}" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--hide-scrollbars", "--virtual-time-budget=2000"]


@pytest.mark.skipif(_chromium() is None, reason="no chromium (apt-get install chromium) for the browser test")
def test_the_explore_site_filters_in_a_real_browser(world, registry, tmp_path):
    out = _site(registry, tmp_path)
    url = (out / "index.html").as_uri() + "?arch=houlsby"
    dom = subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'id="count">1 adapter<' in dom  # the script ran and counted what the filter leaves
    rows = {m.group(2): "hidden" in m.group(1) for m in
            re.finditer(r'<tr class="adapter"([^>]*)>.*?>((?:sentiment|sts)/[^<]+)</a>', dom)}
    assert rows == {"sentiment/sst-2@ukp": True, "sts/mrpc@ukp": False}
    assert re.search(r'<section class="task" id="task-sentiment" hidden', dom)


# ------------------------------------------------------------------ hostile registries and archives


def _rewrite_card(registry: dict, rid: str, **changes) -> None:
    """Rebuild an archive whose card says something else, hashes still valid, and vouch for it in the index."""
    path = registry["dir"] / _record(registry["dir"], rid)["archive"]
    members = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            if m.name == "adapt-card.json":
                card = json.loads(data)
                card.update(changes)
                data = json.dumps(card).encode()
            members.append(_file(m.name, data))
    _point_record_at(registry["dir"], rid, _tar(members))


def test_a_card_cannot_steer_the_cache_path(world, registry, tmp_path):
    victim = tmp_path / "victim_model"
    victim.mkdir()
    (victim / "model.safetensors").write_text("precious")
    _rewrite_card(registry, "sentiment/sst-2@ukp", architecture=f"x/../../../../../../..{victim}")
    msg = _pull_refused(registry, world)
    assert "architecture must be a lower-case identifier" in msg
    assert (victim / "model.safetensors").read_text() == "precious"


def test_an_archive_may_not_bring_its_own_cache_record(world, registry):
    path = registry["dir"] / _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    with tarfile.open(path) as tar:
        members = [_file(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members.append(_file("entry.json", b"{}"))
    _point_record_at(registry["dir"], "sentiment/sst-2@ukp", _tar(members))
    assert "unsafe file name 'entry.json'" in _pull_refused(registry, world)


def test_long_name_headers_are_refused_before_tarfile_reads_them(world, registry):
    info = tarfile.TarInfo("a" * 5000)  # a GNU long-name header: tarfile would read it whole first
    info.size = 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"{}"))
    _point_record_at(registry["dir"], "sentiment/sst-2@ukp", buf.getvalue())
    assert "not a regular file" in _pull_refused(registry, world)


def test_a_malformed_index_record_is_skipped_not_fatal(world, registry):
    index = json.loads((registry["dir"] / "index.json").read_text())
    index["adapters"] += ["junk", {"id": "x"}, {**index["adapters"][0], "version": 1},
                          {**index["adapters"][0], "archive": "../../etc/passwd"}]
    (registry["dir"] / "index.json").write_text(json.dumps(index))
    r = runner.invoke(app, ["search", "--registry", registry["url"], "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2
    assert "skipped 4 malformed index record(s)" in r.stderr


def test_the_writable_server_only_writes_the_index_and_new_archives(world, registry, tmp_path):
    import urllib.error
    import urllib.request

    server = _Server(registry["dir"], writable=True)
    archive = _record(registry["dir"], "sentiment/sst-2@ukp")["archive"]
    held = (registry["dir"] / archive).read_bytes()
    sha = _record(registry["dir"], "sentiment/sst-2@ukp")["sha256"]

    def put(path: str, data: bytes, **headers: str) -> int:
        from http.client import HTTPConnection

        conn = HTTPConnection("127.0.0.1", server.httpd.server_address[1])
        conn.request("PUT", path, body=data, headers={"Authorization": f"Bearer {TOKEN}", **headers})  # raw path
        status = conn.getresponse().status
        conn.close()
        return status

    try:
        before = (registry["dir"] / "index.json").read_bytes()
        assert put("/archives/../index.json", b"garbage", **{"If-None-Match": "*"}) in (400, 403, 412)
        assert put("/archives/../evil.json", b"{}") == 403
        assert put("/index.json", b"garbage", **{"If-None-Match": "*"}) == 400  # not an index
        assert put("/index.json", before) == 412  # no condition: refused
        assert put(f"/{archive}", b"other bytes") == 400  # no sha256 of its index record
        assert put(f"/{archive}", b"other bytes", **{"X-Adapt-Sha256": sha}) == 422  # not the bytes it names
        assert put(f"/{archive}", held, **{"X-Adapt-Sha256": sha}) == 204  # the same bytes: fine
        assert (registry["dir"] / "index.json").read_bytes() == before
        assert (registry["dir"] / archive).read_bytes() == held
        assert not (registry["dir"] / "evil.json").exists()
        assert not [p for p in registry["dir"].rglob(".upload-*")]  # refused uploads leave nothing behind
        with pytest.raises(urllib.error.HTTPError) as listing:
            urllib.request.urlopen(server.url + "/archives/")
        assert listing.value.code == 404  # no directory listings
    finally:
        server.close()


def test_on_the_fly_pulls_need_a_full_id(world, registry, monkeypatch):
    monkeypatch.setenv("ADAPT_REGISTRY", registry["url"])
    r = runner.invoke(app, ["infer", "--model", str(world["model"]), "-a", "sst", "good film"])
    assert "no cached adapter 'sst'" in one_line_error(r)  # a typo is not a request for a stranger's adapter
    assert _nothing_cached(registry["cache_b"])


def test_one_unreachable_registry_does_not_hide_the_next(world, registry):
    r = runner.invoke(app, ["pull", "sentiment/sst-2@ukp", "--registry", "http://127.0.0.1:9", "--registry",
                            registry["url"], "--model", str(world["model"]), "--json"])
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args, code, message", [
    (["search", "--registry", "ftp://x"], 2, "unknown registry 'ftp://x'"),
    (["search", "--registry", "nope"], 1, "registry nope does not exist"),
    (["search", "--registry", "bad-index"], 1, "is not valid JSON"),
    (["pull", "sentiment/sst-2@ukp"], 2, "pass --registry"),
    (["pull", "./missing.tar.gz", "--registry", "."], 2, "is not an adapter identifier"),
    (["publish", "no-such-adapter", "--to", "out"], 2, "no cached adapter 'no-such-adapter'"),
    (["publish", "sst2-run", "--author", "me", "--to", "a-file"], 1, "cannot publish to a-file"),
    (["pack", "sst2-run", "--author", "me", "--catalog", "Bad Catalog/x", "-o", "out"], 2, "lower-case"),
    (["hub", "site", "nope", "-o", "out"], 1, "does not exist"),
    (["hub", "serve", "nope"], 2, "is not a directory"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_hub_input_is_one_line_and_writes_nothing(world, tmp_path, monkeypatch, args, code, message):
    monkeypatch.setenv("ADAPT_CACHE", str(world["cache_a"]))
    monkeypatch.delenv("ADAPT_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a registry")
    (tmp_path / "bad-index").mkdir()
    (tmp_path / "bad-index" / "index.json").write_text("{bad")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert message in one_line_error(runner.invoke(app, args), code=code)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written: no out/, no archive
