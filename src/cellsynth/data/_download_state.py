"""What a resumable download keeps beside its ``.part`` and what it checks before writing.

* ``NAME.part.json``: the validators of the reply the ``.part`` began with (the file's total
  size, ``ETag``, ``Last-Modified``). A resume sends ``If-Range`` and compares the new reply's
  validators with these, so that bytes of two versions of the file are never joined.
* ``NAME.lock``: an exclusive ``flock`` held for the whole download, so that two processes
  never write into one ``.part``.
* The first bytes of a reply are checked (an HTML page, not the HDF5 signature) before any
  file is touched, so that a maintenance page cannot destroy a good partial download.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from cellsynth.errors import DownloadError

logger = logging.getLogger(__name__)

#: the HDF5 signature, at byte 0 or (after a user block) at 512, 1024, 2048... bytes
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HEAD_BYTES = 4096  # bytes of a reply looked at before anything is written


@dataclass(frozen=True)
class Validators:
    """What identifies one version of the server's file (None: not announced)."""

    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str], total: int | None) -> Validators:
        return cls(total, headers.get("ETag") or None, headers.get("Last-Modified") or None)

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else the Last-Modified date (or None)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differences(self, now: Validators) -> list[str]:
        """How ``now`` differs from these validators, in words (empty: the same file, as far
        as both replies tell)."""
        out = []
        for name, said in (("total", "size"), ("etag", "ETag"),
                           ("last_modified", "Last-Modified")):  # fmt: skip
            before, after = getattr(self, name), getattr(now, name)
            if before is not None and after is not None and before != after:
                out.append(f"{said} {before} then {after}")
        return out


def state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")  # data.h5ad.part -> data.h5ad.part.json


def read_state(part: Path) -> Validators | None:
    """The validators stored beside ``part``, or None (none stored, or unreadable)."""
    try:
        data = json.loads(state_path(part).read_text(encoding="utf-8"))
        found = Validators(**{k: data.get(k) for k in ("total", "etag", "last_modified")})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not (found.total is None or (isinstance(found.total, int) and found.total >= 0)):
        return None
    if not all(v is None or isinstance(v, str) for v in (found.etag, found.last_modified)):
        return None
    return found


def write_state(part: Path, validators: Validators, url: str) -> None:
    """Store ``validators`` beside ``part`` (written whole, then renamed; the caller holds the
    download's lock, so the temporary name is its own)."""
    path = state_path(part)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, **asdict(validators)}), encoding="utf-8")
    os.replace(tmp, path)


def drop_state(part: Path) -> None:
    state_path(part).unlink(missing_ok=True)


def discard(part: Path) -> None:
    """Remove a partial download and its validators."""
    drop_state(part)
    part.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold ``DEST.lock`` (``flock``, exclusive) for the block; refuse at once, with a one-line
    :class:`DownloadError`, when another process downloads the same file. The lock file is
    removed when the block ends."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no locking
        yield
        return
    lock = dest.with_name(dest.name + ".lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only folder, a full disk
            raise DownloadError(f"cannot write in {dest.parent} ({exc.strerror or exc}: "
                                f"{lock.name}); choose another --cache-dir (cache_dir=), or "
                                "make the folder writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DownloadError(
                    f"another download of {dest.name} into {dest.parent} is running (it holds "
                    f"{lock.name}); this one does not wait: run the same command again once it "
                    "has finished, and it uses the saved file") from None
            logger.warning("cannot lock %s (%s): downloading without a lock", lock, exc)
            yield
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # the holder before us removed it after we opened it
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while held: a process that opened it finds it gone
        os.close(fd)


def read_head(read: Callable[[int], bytes]) -> tuple[bytes, BaseException | None]:
    """Up to the first few KiB of a reply (less only at its end), for :func:`not_the_file`,
    and the read error (a timeout, a closed connection) that ended it early, if any: the bytes
    read before it are kept."""
    head = b""
    try:
        while len(head) < _HEAD_BYTES and (chunk := read(_HEAD_BYTES - len(head))):
            head += chunk
    except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, TimeoutError...
        return head, exc
    return head, None


def signature_offsets(size: int) -> Iterator[int]:
    """Where HDF5 may put its signature in a file of ``size`` bytes: 0, 512, 1024, 2048, ..."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        yield offset
        offset = 512 if offset == 0 else offset * 2


def has_hdf5_signature(head: bytes) -> bool:
    """Whether ``head`` holds the HDF5 signature where HDF5 puts it (:func:`signature_offsets`)."""
    return any(head[at:at + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE
               for at in signature_offsets(len(head)))


def describe_bytes(head: bytes, size: int) -> str:
    """What a file that is not HDF5 looks like, from its first bytes, in words (an HTML page
    and its title, gzip, zip, text and how it starts, or its first bytes)."""
    if not head:
        return "an empty file"
    text = head.decode("utf-8", errors="replace")
    lower = text.lower()
    if "<html" in lower or "<!doctype html" in lower:
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return "an HTML page" + (f": {' '.join(title.group(1).split())[:80]!r}" if title else "")
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (decompress it first?)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if all(c.isprintable() or c.isspace() for c in text[:200]):
        return f"text starting {' '.join(text[:60].split())!r}"
    return f"{size} bytes starting {head[:8].hex(' ')}"


def not_the_file(content_type: str | None, head: bytes, *, hdf5: bool,
                 replacing: bool) -> str | None:
    """Why a reply is not the file asked for, in words, or None when it may be: an HTML page
    (by its content type or its first bytes); and, when the reply would replace a partial
    download (``replacing``: a whole file from byte 0), first bytes that are not HDF5's."""
    kind = (content_type or "").split(";")[0].strip().lower()
    what = describe_bytes(head, len(head))
    if kind in ("text/html", "application/xhtml+xml"):
        return what if what.startswith("an HTML page") else f"a {kind} page"
    if what.startswith("an HTML page"):
        return what
    if replacing and hdf5 and not has_hdf5_signature(head):
        return what
    return None


def disk_full(part: Path, exc: OSError, total: int | None) -> DownloadError:
    """The error for a write that failed: a full disk says how much space is needed and free."""
    try:
        have = part.stat().st_size
    except OSError:
        have = 0
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(f"cannot write {part} ({exc.strerror or exc}); choose another "
                             "--cache-dir (cache_dir=)")
    try:
        free = f"{shutil.disk_usage(part.parent).free:,} bytes are free"
    except OSError:
        free = "the free space is not known"
    need = (f"{total - have:,} more bytes ({total:,} in all)" if total is not None
            else "more space (the size was not announced)")
    return DownloadError(
        f"the disk holding {part.parent} is full: the download needs {need} and {free}; free "
        f"space or choose another --cache-dir (cache_dir=), then run the same command again: "
        f"it resumes from the {have:,} bytes kept in {part.name}")
