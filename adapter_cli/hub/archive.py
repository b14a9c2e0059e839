"""Adapter archives: one gzip'd tar holding the card and the artifact files, flat, nothing else.

Writing is deterministic (sorted members, fixed owner and time), so the same adapter packs to the same
bytes and the same sha256. Reading trusts nothing: every member must be a plain regular file with a plain
name (no directories, ``..``, absolute paths, links or devices); the raw headers and the card are checked
before anything is written (declared sizes equal to the card's, within the cap and a sane compression
ratio), sizes are bounded again while writing, and every file must match the sha256 its card lists, with
no file missing or extra.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..fsutil import file_sha256 as file_digest
from ..errors import ArtifactError, UsageError
from ..jsonio import load_json
from .card import CARD, Card, check_card

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
MAX_MEMBERS = 64
CARD_MAX = 1_000_000     # a card is a few kB; a larger "card" is not one
JSON_MAX = 16_000_000    # nor is any other JSON file of an adapter (config, head config) near this
BOMB_RATIO = 100         # float weights barely compress; 100x is a compression bomb, not an adapter
BOMB_SLACK = 64_000_000  # ... except for small adapters, which may be mostly zeros


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
    check_card(card, "pack")
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
        unpacked = len(card_bytes) + sum(meta["size"] for meta in card.files.values())
        if unpacked > BOMB_SLACK + BOMB_RATIO * tmp.stat().st_size:  # pull would take it for a bomb
            raise ArtifactError(f"cannot pack {directory}: its files compress more than {BOMB_RATIO}x "
                                "(mostly zeros?); adapt pull would refuse the archive")
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


@dataclass
class _Scan:
    """What the raw headers declare: (name, size) per member in order, and the card's bytes."""

    members: list[tuple[str, int]]
    card: bytes | None


def extract_archive(archive: Path, into: Path, *, source: str | None = None) -> Unpacked:
    """Unpack ``archive`` into the empty directory ``into`` after checking every member; verify every file.

    The headers and the card are checked before a byte is written: each member's declared size must be
    the size its card lists, and the total must fit the cap; while writing, no member may exceed it.
    Raises ArtifactError (one line, naming the archive) on anything unsafe or inconsistent; the caller
    removes ``into`` then, so nothing half-checked is ever kept.
    """
    return Unpacked(_verified(archive, source or str(archive), into), into)


def verify_archive(archive: Path, *, source: str | None = None) -> Card:
    """Every check ``extract_archive`` makes (headers, card, sizes, each file's sha256), writing nothing."""
    return _verified(archive, source or str(archive), None)


def _verified(archive: Path, label: str, into: Path | None) -> Card:
    limit = max_bytes()
    try:
        scan = _prescan(archive, limit, label)
        card = _checked_card(scan, label, archive.stat().st_size)
        _unpack(archive, label, scan, card, into)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArtifactError(f"refusing {label}: not a readable adapter archive ({_short(str(exc) or type(exc).__name__)}); "
                            "the download may be truncated or the file damaged") from None
    except OSError as exc:
        raise ArtifactError(f"refusing {label}: cannot unpack it ({_short(str(exc))})") from None
    return card


def _checked_card(scan: _Scan, label: str, packed: int) -> Card:
    """The card, refused unless it lists exactly the members, each with the size its header declares, and
    the whole fits both the cap and a sane compression ratio."""
    if scan.card is None:
        raise ArtifactError(f"refusing {label}: it has no {CARD}")
    card = Card.from_dict(load_json(scan.card, f"refusing {label}: {CARD}", ArtifactError), f"{label}:{CARD}")
    present = {name for name, _ in scan.members} - {CARD}
    listed = set(card.files)
    if listed != present:
        extra, missing = sorted(present - listed), sorted(listed - present)
        raise ArtifactError(f"refusing {label}: its files do not match its card "
                            f"(unlisted: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
    for name, size in scan.members:
        if name != CARD and card.files[name]["size"] != size:
            raise ArtifactError(f"refusing {label}: {name} declares {size} bytes, its card says "
                                f"{card.files[name]['size']} (tampered or damaged)")
    for name, size in scan.members:
        if name.endswith(".json") and size > JSON_MAX:  # configs are kB; they are parsed in memory
            raise ArtifactError(f"refusing {label}: {name} is {size} bytes; adapter JSON files are a few kB")
    total = sum(size for _, size in scan.members)
    if total > BOMB_SLACK + BOMB_RATIO * packed:
        raise ArtifactError(f"refusing {label}: {packed} bytes that unpack to {total // 1_000_000} MB "
                            f"(more than {BOMB_RATIO}x) are a compression bomb, not an adapter")
    return card


def _unpack(archive: Path, label: str, scan: _Scan, card: Card, into: Path | None) -> None:
    """Read the members tarfile yields (they must be the ones scanned), hash each while writing it (or
    not, when ``into`` is None) and never write more than its declared, card-checked size. The adapter's
    own JSON files are parsed as untrusted JSON too: the loader must not meet one nested 100,000 deep."""
    with tarfile.open(archive, mode="r:gz") as tar:
        count = 0
        for member in iter(tar.next, None):
            if count >= len(scan.members) or (member.name, member.size) != scan.members[count] or not member.isreg():
                raise ArtifactError(f"refusing {label}: its tar headers read differently on a second pass")
            count += 1
            source_file = tar.extractfile(member)
            assert source_file is not None  # a regular file, checked above
            keep = member.name.endswith(".json") and member.name != CARD
            with (into / member.name).open("xb") if into is not None else contextlib.nullcontext() as out:
                digest, data = _copy(source_file, member, out, keep, label)
            want = hashlib.sha256(scan.card or b"").hexdigest() if member.name == CARD \
                else card.files[member.name].get("sha256")
            if digest != want:
                raise ArtifactError(f"refusing {label}: {member.name} does not match the sha256 in its card "
                                    "(tampered or damaged)")
            if keep:
                load_json(data, f"refusing {label}: {member.name}", ArtifactError)
    if count != len(scan.members):
        raise ArtifactError(f"refusing {label}: its tar headers read differently on a second pass")


def _copy(source: IO[bytes], member: tarfile.TarInfo, out: IO[bytes] | None, keep: bool, label: str) -> tuple[str, bytes]:
    """Stream one member to ``out`` (if any) in 1 MB chunks; its sha256, and its bytes when ``keep``."""
    digest, kept, written = hashlib.sha256(), bytearray(), 0
    for chunk in iter(functools.partial(source.read, 1 << 20), b""):
        written += len(chunk)
        if written > member.size:  # cannot happen with tarfile; cheap to be sure
            raise ArtifactError(f"refusing {label}: {member.name} is larger than declared")
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        if keep:
            kept += chunk
    if written != member.size:
        raise ArtifactError(f"refusing {label}: {member.name} is truncated")
    return digest.hexdigest(), bytes(kept)


def _prescan(archive: Path, limit: int, label: str) -> _Scan:
    """Walk the raw tar headers before tarfile sees them: anything but a plain file with a plain name is
    refused here, including GNU long-name and pax headers, which tarfile would read whole into memory first
    (a tiny archive could claim gigabytes). Member sizes are bounded as declared, the walk reads in 1 MB
    chunks, and the card (at most 1 MB) is kept to be checked before anything is written."""
    members: list[tuple[str, int]] = []
    seen: set[str] = set()
    card = None
    with gzip.open(archive, "rb") as gz:
        while True:
            header = gz.read(512)
            if len(header) < 512:
                raise ArtifactError(f"refusing {label}: the archive ends in the middle (truncated)")
            if header == bytes(512):
                return _Scan(members, card)
            name, size = _header(header, label)
            _check_name(name, seen, label)
            members.append((name, size))
            if len(members) > MAX_MEMBERS:
                raise ArtifactError(f"refusing {label}: more than {MAX_MEMBERS} files")
            if sum(s for _, s in members) > limit:
                raise ArtifactError(f"refusing {label}: unpacks to more than {limit // 1_000_000} MB "
                                    "(raise ADAPT_MAX_ARCHIVE_MB if this is expected)")
            if name == CARD and size > CARD_MAX:
                raise ArtifactError(f"refusing {label}: its {CARD} is {size} bytes; a card is a few kB")
            data = _read_data(gz, size, keep=name == CARD, label=label)
            card = data if name == CARD else card


def _header(header: bytes, label: str) -> tuple[str, int]:
    """The name and size a raw tar header declares; links, devices and extension headers are refused."""
    name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
    kind = header[156:157]
    if kind in (b"1", b"2"):
        raise ArtifactError(f"refusing {label}: {_short(name)!r} is a link (archives may hold only plain files)")
    if kind not in (b"0", b"\0"):
        raise ArtifactError(f"refusing {label}: {_short(name)!r} is not a regular file (archives may hold only "
                            "plain files with short names)")
    if header[257:263] == b"ustar\0" and header[345:500].strip(b"\0"):  # POSIX name prefix: a directory part
        raise ArtifactError(f"refusing {label}: unsafe path in {_short(name)!r} (archives are flat; no directories "
                            "or '..')")
    try:
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        raise ArtifactError(f"refusing {label}: a damaged tar header") from None
    return name, size


def _read_data(gz: gzip.GzipFile, size: int, *, keep: bool, label: str) -> bytes:
    """Read past (or keep, for the card) one member's data and its padding, in bounded chunks."""
    kept = []
    left = (size + 511) // 512 * 512
    while left:
        chunk = gz.read(min(left, 1 << 20))
        if not chunk:
            raise ArtifactError(f"refusing {label}: the archive ends in the middle (truncated)")
        left -= len(chunk)
        if keep:
            kept.append(chunk)
    return b"".join(kept)[:size]


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"


RESERVED = ("entry.json",)  # the cache's own record of an entry: never taken from an archive


def _check_name(name: str, seen: set[str], label: str) -> None:
    """A member name must be a plain file name, not reserved, and new (case-insensitively)."""
    short = _short(name)
    if "/" in name or "\\" in name or name in ("..", "."):
        raise ArtifactError(f"refusing {label}: unsafe path {short!r} (archives are flat; no directories or '..')")
    if not SAFE_NAME.fullmatch(name) or name in RESERVED:
        raise ArtifactError(f"refusing {label}: unsafe file name {short!r}")
    if name.lower() in seen:
        raise ArtifactError(f"refusing {label}: {name} appears twice")
    seen.add(name.lower())
