"""The cache and atomic directories under SIGKILL at every write boundary, and under concurrent writers:
an entry is whole or absent (on overwrite: the old one or the new one, never neither), temporaries are
never listed, and the next write sweeps what the killed writer left (issue 12, item 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli import cache
from adapter_cli.cli import app
from conftest import save_tiny_model, write_sentiment_task

DRIVER = Path(__file__).with_name("fault_driver.py")
runner = CliRunner()


def drive(*args: str, kill_at: int = 0, log: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run the fault driver (see fault_driver.py) with the test's ADAPT_CACHE."""
    extra = {"FAULT_KILL_AT": str(kill_at), **({"FAULT_LOG": str(log)} if log else {}), **env}
    return subprocess.run([sys.executable, str(DRIVER), *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **extra}, timeout=300)


def count_points(tmp_path: Path, *args: str, **env: str) -> list[dict]:
    """The write boundaries of one undisturbed run (which must succeed)."""
    log = tmp_path / f"points-{time.monotonic_ns()}.jsonl"
    done = drive(*args, log=log, **env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def listed() -> list[dict]:
    result = runner.invoke(app, ["cache", "ls", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def leftovers(root: Path) -> list[str]:
    """Everything in the cache that is neither an entry nor the current version of one (nor its lock)."""
    found = []
    for folder in (root / "adapters").iterdir() if (root / "adapters").is_dir() else []:
        for path in folder.iterdir():
            if path.name.startswith(".") and path.name != ".store":
                found.append(str(path.relative_to(root)))
        for store in (folder / ".store").iterdir() if (folder / ".store").is_dir() else []:
            link = folder / store.name
            current = Path(os.readlink(link)).name if link.is_symlink() else None
            found += [str(p.relative_to(root)) for p in store.iterdir() if p.name not in (".lock", current)]
    return found


def assert_whole(allowed_runs: set[str] | None, entry_id: str, present: bool | None) -> None:
    """`adapt cache ls` lists ``entry_id`` alone (or nothing where ``present`` is None/False), whole."""
    entries = listed()
    ids = [e["id"] for e in entries]
    assert ids in (([entry_id],) if present else ([], [entry_id]) if present is None else ([],)), ids
    for e in cache.entries():
        cache.verify(e)  # every file there, with its recorded sha256
        if allowed_runs is not None:
            assert e.data.get("run_dir") in allowed_runs, e.data.get("run_dir")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two finished runs with the same name (so the same cache id) in different places: old and new."""
    from adapter_cli.training.loop import train
    from adapter_cli.training.recipe import Recipe

    root = tmp_path_factory.mktemp("trained")
    recipe = Recipe(task=str(write_sentiment_task(root / "task")), model=str(save_tiny_model(root / "tiny")),
                    epochs=1, batch_size=16, max_length=32, patience=None)
    train(recipe, root / "old" / "run")
    shutil.copytree(root / "old" / "run", root / "new" / "run")
    return {"root": root, "old": str((root / "old" / "run").resolve()), "new": str((root / "new" / "run").resolve())}


@pytest.fixture
def env(tmp_path, monkeypatch, trained) -> dict:
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    return {**trained, "cache": tmp_path / "cache", "tmp": tmp_path}


def _extract(run: str) -> None:
    from adapter_cli.runs import extract

    extract(run)


@pytest.mark.parametrize("before", ["none", "entry", "legacy"])
def test_extract_killed_at_every_write_boundary(env, before) -> None:
    """SIGKILL before each file-system change of `adapt extract` (a fresh entry, an overwrite, and an
    overwrite of an entry in the plain-directory layout of older versions)."""
    points = None
    tried = 0
    while points is None or tried < len(points):
        shutil.rmtree(env["cache"], ignore_errors=True)
        if before != "none":
            _extract(env["old"])
        if before == "legacy":  # what older versions wrote: the entry as a plain directory
            for link in (env["cache"] / "adapters").glob("*/run"):
                if link.is_symlink():
                    version = link.resolve()
                    link.unlink()
                    shutil.move(version, link)
                    shutil.rmtree(link.parent / ".store")
        if points is None:
            points = count_points(env["tmp"], "cli", "extract", env["new"])
            assert len(points) >= 6, points
            continue
        tried += 1
        killed = drive("cli", "extract", env["new"], kill_at=tried)
        assert killed.returncode == -9, (tried, points[tried - 1], killed.stderr)
        where = f"killed before {points[tried - 1]}"
        try:
            assert_whole({env["old"], env["new"]}, "run", present=True if before != "none" else None)
            if before != "none":
                assert [e.data["run_dir"] for e in cache.entries()][0] in (env["old"], env["new"])
            _extract(env["old"])  # a later write works, and sweeps what the killed one left
            assert_whole({env["old"]}, "run", present=True)
            assert leftovers(env["cache"]) == []
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
    print(f"{before}: {tried} fault points tried, all clean")


def test_pull_killed_at_every_write_boundary(env, tmp_path, monkeypatch) -> None:
    """`adapt pull ARCHIVE` writes the cache the same way: a kill at any point leaves nothing half-made."""
    _extract(env["old"])
    archive = tmp_path / "run.tar.gz"
    packed = runner.invoke(app, ["pack", "run", "--author", "me", "--catalog", "sentiment/toy", "-o", str(archive)])
    assert packed.exit_code == 0, packed.stderr
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "pulled"))
    # A process killed with SIGKILL cannot remove its unpacking directory: keep those in this test's own
    # folder (the killed processes inherit TMPDIR), not in the machine's /tmp, 26 per run.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    points = count_points(tmp_path, "cli", "pull", str(archive))
    pulled_id = listed()[0]["id"]
    for k in range(1, len(points) + 1):
        shutil.rmtree(tmp_path / "pulled")
        killed = drive("cli", "pull", str(archive), kill_at=k)
        assert killed.returncode == -9, killed.stderr
        assert_whole(None, pulled_id, present=None)
        assert runner.invoke(app, ["pull", str(archive)]).exit_code == 0
        assert_whole(None, pulled_id, present=True)
        assert leftovers(tmp_path / "pulled") == [], f"killed before {points[k - 1]}"
    print(f"pull: {len(points)} fault points tried, all clean")


def test_four_writers_of_one_entry_at_once(env, tmp_path) -> None:
    """Four processes replace the same entry at the same moment (each held just before its first rename,
    then all let go together): all succeed, one whole entry is left, no ghosts."""
    import fcntl

    source = Path(env["old"]) / "best"
    cache.put(source, model_id="org/model", entry_id="same", info={"mark": "first"})
    for round_ in range(3):
        barrier = tmp_path / f"barrier-{round_}"
        barrier.touch()
        with barrier.open() as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            procs = [subprocess.Popen([sys.executable, str(DRIVER), "put", str(source), "org/model", "same", f"w{i}"],
                                      env={**os.environ, "FAULT_BARRIER": f"replace:{barrier}"},
                                      stderr=subprocess.PIPE, text=True) for i in range(4)]
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob(f"barrier-{round_}.*"))) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # the others arrive too (or, if writers take turns, wait on the entry's lock)
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), results
        entries = cache.entries()
        assert [e.id for e in entries] == ["same"] and entries[0].data["mark"] in {"w0", "w1", "w2", "w3"}
        cache.verify(entries[0])
        assert leftovers(env["cache"]) == []


def test_atomic_directory_killed_at_every_write_boundary(tmp_path) -> None:
    """An artifact directory (adapter, fusion, head, run/best) replaced by a process killed at any point is
    the old one or the new one after recovery, and the next write leaves no temporaries beside it."""
    from adapter_cli import fsutil

    target = tmp_path / "out" / "adapter"

    def whole() -> str:
        mark = json.loads((target / "adapter_config.json").read_text())["mark"]
        assert (target / "weights.bin").read_bytes() == mark.encode() * 4096
        return mark

    assert drive("dir", str(target), "old").returncode == 0
    points = count_points(tmp_path, "dir", str(target), "old")
    for k in range(1, len(points) + 1):
        killed = drive("dir", str(target), "new", kill_at=k)
        assert killed.returncode == -9, killed.stderr
        recover = getattr(fsutil, "recover_directory", None)  # what readers of run/best call first
        if recover is not None:
            recover(target)
        assert target.is_dir(), f"killed before {points[k - 1]}: {target} is gone"
        assert whole() in ("old", "new")
        assert drive("dir", str(target), "old").returncode == 0
        assert whole() == "old"
        assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"], f"killed before {points[k - 1]}"
    print(f"atomic_directory: {len(points)} fault points tried, all clean")


def test_what_older_versions_left_is_never_listed_and_is_put_right(env) -> None:
    """Older adapt versions wrote `.ID.tmp-*` and `.ID.old-PID` beside an entry, and a kill between their
    two renames left only the `.old-`: those are never listed, the lost entry comes back on the next
    listing, and the next write removes the rest."""
    _extract(env["old"])
    [entry] = cache.entries()
    folder = entry.path.parent
    entry.path.unlink()
    shutil.rmtree(folder / ".store")
    shutil.copytree(Path(env["old"]) / "best", folder / ".run.tmp-ab12cd_3")
    (folder / ".run.tmp-ab12cd_3" / "entry.json").write_text(json.dumps({**entry.data, "id": "ghost"}))
    shutil.copytree(folder / ".run.tmp-ab12cd_3", folder / ".run.old-4242")
    (folder / ".run.old-4242" / "entry.json").write_text(json.dumps(entry.data))
    assert [e["id"] for e in listed()] == ["run"]  # the moved-aside entry is back; the temporary is not an entry
    assert (folder / "run").is_dir() and not (folder / ".run.old-4242").exists()
    _extract(env["new"])
    assert_whole({env["new"]}, "run", present=True)
    assert leftovers(env["cache"]) == []
