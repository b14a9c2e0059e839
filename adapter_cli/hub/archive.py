"""Adapter archives: one gzip'd tar holding the card and the artifact files, flat, nothing else.

Writing is deterministic (sorted members, fixed owner and time), so the same adapter packs to the same
bytes and the same sha256. Reading trusts nothing: every member must be a plain regular file with a plain
name (no directories, ``..``, absolute paths, links or devices), sizes are bounded while reading (not only
as declared), and every file must match the sha256 its card lists, with no file missing or extra.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..cache import sha256 as file_digest
from ..errors import ArtifactError, UsageError
from .card import CARD, Card

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
MAX_MEMBERS = 64


def max_bytes() -> int:
    """The largest unpacked archive accepted (ADAPT_MAX_ARCHIVE_MB, default 2048 MB): a bottleneck
    adapter is a few MB, so anything near this is a mistake or an attack."""
    raw = os.environ.get("ADAPT_MAX_ARCHIVE_MB", "2048")
    try:
        return int(float(raw) * 1_000_000)
    except ValueError:
        raise UsageError(f"ADAPT_MAX_ARCHIVE_MB must be a number of megabytes, got {raw!r}") from None


def write_archive(directory: Path, card: Card, target: Path, skip: tuple[str, ...] = ()) -> str:
    """Pack ``directory``'s files (but ``skip``) plus ``card``, with their hashes filled in, into ``target``;
    return the archive's sha256.

    ``target`` is written beside itself and renamed into place, so a reader never sees half an archive.
    """
    files = sorted(f for f in directory.iterdir() if f.is_file() and f.name != CARD and f.name not in skip)
    for f in files:
        if not SAFE_NAME.fullmatch(f.name):
            raise ArtifactError(f"cannot pack {f}: file names must be plain ASCII names")
    card.files = {f.name: {"sha256": file_digest(f), "size": f.stat().st_size} for f in files}
    card_bytes = (json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n").encode()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as raw:
            # mtime=0 in the gzip header and fixed tar metadata: the same content gives the same bytes
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    _add(tar, CARD, io.BytesIO(card_bytes), len(card_bytes))
                    for f in files:
                        with f.open("rb") as fh:
                            _add(tar, f.name, fh, f.stat().st_size)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return file_digest(target)


def _add(tar: tarfile.TarFile, name: str, fileobj: io.IOBase, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0o644, 0, 0, 0, "", ""
    tar.addfile(info, fileobj)


@dataclass
class Unpacked:
    card: Card
    directory: Path


def extract_archive(archive: Path, into: Path, *, source: str | None = None) -> Unpacked:
    """Unpack ``archive`` into the empty directory ``into`` after checking every member; verify every file.

    Raises ArtifactError (one line, naming the archive) on anything unsafe or inconsistent; the caller
    removes ``into`` then, so nothing half-checked is ever kept.
    """
    label = source or str(archive)
    limit = max_bytes()
    total = 0
    seen: set[str] = set()
    try:
        _prescan(archive, limit, label)
        with tarfile.open(archive, mode="r:gz") as tar:
            for count, member in enumerate(iter(tar.next, None), start=1):
                if count > MAX_MEMBERS:
                    raise ArtifactError(f"refusing {label}: more than {MAX_MEMBERS} files")
                _check_member(member, label)
                if member.name.lower() in {n.lower() for n in seen}:
                    raise ArtifactError(f"refusing {label}: {member.name} appears twice")
                seen.add(member.name)
                total += member.size
                if total > limit:
                    raise ArtifactError(f"refusing {label}: unpacks to more than {limit // 1_000_000} MB "
                                        "(raise ADAPT_MAX_ARCHIVE_MB if this is expected)")
                source_file = tar.extractfile(member)
                assert source_file is not None  # a regular file, checked above
                written = 0
                with (into / member.name).open("xb") as out:
                    for chunk in iter(functools.partial(source_file.read, 1 << 20), b""):
                        written += len(chunk)
                        if written > member.size:
                            raise ArtifactError(f"refusing {label}: {member.name} is larger than declared")
                        out.write(chunk)
                if written != member.size:
                    raise ArtifactError(f"refusing {label}: {member.name} is truncated")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArtifactError(f"refusing {label}: not a readable adapter archive ({_short(str(exc) or type(exc).__name__)}); "
                            "the download may be truncated or the file damaged") from None
    except OSError as exc:
        raise ArtifactError(f"refusing {label}: cannot unpack it ({_short(str(exc))})") from None
    if CARD not in seen:
        raise ArtifactError(f"refusing {label}: it has no {CARD}")
    try:
        card = Card.from_dict(json.loads((into / CARD).read_text(encoding="utf-8")), f"{label}:{CARD}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"refusing {label}: {CARD} is not valid JSON ({exc})") from None
    listed = set(card.files)
    present = seen - {CARD}
    if listed != present:
        extra, missing = sorted(present - listed), sorted(listed - present)
        raise ArtifactError(f"refusing {label}: its files do not match its card "
                            f"(unlisted: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
    for name, meta in sorted(card.files.items()):
        if file_digest(into / name) != meta.get("sha256"):
            raise ArtifactError(f"refusing {label}: {name} does not match the sha256 in its card (tampered or damaged)")
    return Unpacked(card, into)


def _prescan(archive: Path, limit: int, label: str) -> None:
    """Walk the raw tar headers before tarfile sees them: anything but a plain file is refused here,
    including GNU long-name and pax headers, which tarfile would read whole into memory first (a tiny
    archive could claim gigabytes). Member sizes are bounded as declared, and the walk reads in 1 MB chunks."""
    members = total = 0
    with gzip.open(archive, "rb") as gz:
        while True:
            header = gz.read(512)
            if len(header) < 512:
                raise ArtifactError(f"refusing {label}: the archive ends in the middle (truncated)")
            if header == bytes(512):
                return
            name = _short(header[:100].split(b"\0")[0].decode("utf-8", "replace"))
            kind = header[156:157]
            if kind in (b"1", b"2"):
                raise ArtifactError(f"refusing {label}: {name!r} is a link (archives may hold only plain files)")
            if kind not in (b"0", b"\0"):
                raise ArtifactError(f"refusing {label}: {name!r} is not a regular file (archives may hold only "
                                    "plain files with short names)")
            try:
                size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                raise ArtifactError(f"refusing {label}: a damaged tar header") from None
            members, total = members + 1, total + size
            if members > MAX_MEMBERS:
                raise ArtifactError(f"refusing {label}: more than {MAX_MEMBERS} files")
            if total > limit:
                raise ArtifactError(f"refusing {label}: unpacks to more than {limit // 1_000_000} MB "
                                    "(raise ADAPT_MAX_ARCHIVE_MB if this is expected)")
            left = (size + 511) // 512 * 512
            while left:
                chunk = gz.read(min(left, 1 << 20))
                if not chunk:
                    raise ArtifactError(f"refusing {label}: the archive ends in the middle (truncated)")
                left -= len(chunk)


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"


RESERVED = ("entry.json",)  # the cache's own record of an entry: never taken from an archive


def _check_member(member: tarfile.TarInfo, label: str) -> None:
    """Names only: links, devices and every other non-file member were refused by ``_prescan``."""
    name = _short(member.name)
    if "/" in member.name or "\\" in member.name or member.name == "..":
        raise ArtifactError(f"refusing {label}: unsafe path {name!r} (archives are flat; no directories or '..')")
    if not SAFE_NAME.fullmatch(member.name) or member.name in RESERVED:
        raise ArtifactError(f"refusing {label}: unsafe file name {name!r}")
