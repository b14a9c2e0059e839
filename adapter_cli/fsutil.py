"""Atomic file and directory writes: a failed or killed command never leaves a half-written artifact behind,
and never deletes a directory that is not one of ours.

A directory is written as ``.NAME.tmp-<token>`` beside ``NAME`` and renamed into place only when complete.
The writer holds an flock on its temporary for as long as it lives, so a later writer can tell a dead
writer's leftovers (swept) from a live one's (kept) without guessing from ages. Replacing an existing
``NAME`` takes two renames (``NAME`` to ``.NAME.old-<token>``, then the temporary to ``NAME``); both run
under an flock on the parent directory, so whoever next holds that lock and finds ``NAME`` missing beside an
``.old-`` knows the writer died in between, and puts the old version back (``recover_directory``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # no advisory locks on this platform: nothing is swept (a live writer looks like a dead one)
    fcntl = None  # type: ignore[assignment]

# A directory holding one of these was written by adapt (or AdapterHub) and may be replaced.
ARTIFACT_MARKERS = ("adapter_config.json", "fusion_config.json", "adapter_fusion_config.json", "head_config.json",
                    "model.safetensors", "entry.json", "activations.json", "results.json",
                    "site.json", "multitask.json")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(dump_json(data), encoding="utf-8")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file beside it, then one rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """The one atomic file write (text goes through it too)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name the target
            exc.filename = str(path)
        raise


class _Recording:
    """A file for torch.save that keeps the OSError behind torch's own error (which names no cause)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(payload: Any, path: Path) -> None:
    """torch.save ``payload`` to ``path`` whole or not at all (``.NAME.tmp``, flushed to disk, one rename);
    a full disk raises the OSError that says so rather than torch's "unexpected pos"."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            out = _Recording(f)
            try:
                torch.save(payload, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a power cut after it keeps it); a no-op where directories cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk before it is renamed into place: after a power cut a name
    never points at empty files."""
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.EINVAL):  # Windows: no fsync on a read-only handle
                    raise
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _open_dir(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _lock(fd: int | None, wait: bool) -> bool | None:
    """flock ``fd`` exclusively: True when held, False when another process holds it (only without
    ``wait``), None when this platform or file system has no such locks (then nobody can tell)."""
    if fcntl is None or fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. a network file system that refuses flock on a directory
        return None


@contextmanager
def _guard(parent: Path) -> Iterator[bool]:
    """Hold ``parent`` (an flock on the directory itself, so nothing is left behind) while leftovers are
    settled, a temporary is made and marked live, or two renames run. Yields whether it is held."""
    fd = _open_dir(parent)
    try:
        yield _lock(fd, wait=True) is True
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _leftovers(target: Path, kind: str) -> list[Path]:
    """``.NAME.tmp-*`` or ``.NAME.old-*`` beside ``target`` (also the names older adapt versions used),
    oldest first."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}-[0-9a-z_]+")
    found = [p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.lstat().st_mtime_ns)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _settle(target: Path) -> None:
    """Clean up after writers of ``target`` that died; the caller holds ``_guard(target.parent)``."""
    olds = _leftovers(target, "old")
    if olds and not os.path.lexists(target):  # died between its two renames: the old version goes back
        os.replace(olds.pop(), target)
    for path in olds:  # died after both renames: the old version is superseded
        _remove(path)
    for path in _leftovers(target, "tmp"):
        fd = _open_dir(path)
        try:
            if _lock(fd, wait=False) is True:  # no live writer holds it
                _remove(path)
        finally:
            if fd is not None:
                os.close(fd)


def recover_directory(target: Path | str) -> None:
    """Before reading ``target``: put back the version a killed writer had moved aside, and remove the
    temporaries no live writer holds. Safe beside live writers; a no-op where nothing can be written."""
    target = Path(target).expanduser().absolute()
    if not target.parent.is_dir():
        return
    try:
        with _guard(target.parent) as held:
            if held:
                _settle(target)
    except OSError:
        pass  # a read-only place: nothing to settle, and the reader reports what it finds


def _new_temporary(target: Path) -> tuple[Path, int | None]:
    """An empty ``.NAME.tmp-<token>`` beside ``target``, and the descriptor whose flock marks it live."""
    while True:
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
        try:
            os.mkdir(tmp)  # permissions from the umask, like any directory the user makes
        except FileExistsError:
            continue
        fd = _open_dir(tmp)
        _lock(fd, wait=False)
        return tmp, fd


def _replaceable(target: Path) -> bool:
    return not any(target.iterdir()) or any((target / m).is_file() for m in ARTIFACT_MARKERS)


def _check_target(target: Path, overwrite: bool) -> None:
    from .errors import UsageError

    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory; choose another output path")
    if not overwrite:
        raise UsageError(f"{target} already exists; choose another path")
    if not _replaceable(target):
        raise UsageError(f"{target} is a non-empty directory that holds no adapter, fusion or head; "
                         "choose a new path (it is never replaced)")


def _swap(tmp: Path, target: Path) -> None:
    """Move the complete ``tmp`` to ``target``; the caller holds the parent's guard (see the module doc)."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    backup = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(backup, target)  # put the old content back
        raise
    _remove(backup)


def _write_error(exc: BaseException, where: Path) -> Exception | None:
    from .errors import ArtifactError, disk_full

    full = disk_full(exc, str(where))
    if full is not None or not isinstance(exc, OSError):
        return full
    return ArtifactError(f"cannot write {where}: {exc.strerror or exc}")


@contextmanager
def atomic_directory(target: Path | str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; move it into place only if the block succeeds.

    An existing ``target`` is replaced only when ``overwrite`` is set and it is empty or holds an artifact
    (never an arbitrary user directory), and only after the new content is complete and on disk. Leftovers
    of killed writers of ``target`` are settled first (see the module doc).
    """
    target = Path(target).expanduser().resolve()
    _check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _guard(target.parent) as held:
            if held:
                _settle(target)
            tmp, live = _new_temporary(target)
    except OSError as exc:
        raise _write_error(exc, target.parent) from None  # type: ignore[misc]
    try:
        yield tmp
        fsync_tree(tmp)
        with _guard(target.parent):
            _check_target(target, overwrite)  # another process may have written it meanwhile
            _swap(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = _write_error(exc, target)
        if error is None:
            raise
        raise error from None
    finally:
        if live is not None:
            os.close(live)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
