"""Download Expression Atlas experiments into a local cache, resumably.

Only the standard library talks to the network (:mod:`urllib`). A download streams into
``<file>.part``; an interrupted one is resumed with an HTTP ``Range`` request (and ``If-Range``)
the next time the same command runs, only when the server's file is the one it began with (the
validators kept in ``<file>.part.json``), and the file gets its final name (atomically) only
once the size on disk matches the size the server announced. ``<file>.lock`` keeps a second
process from writing into the same ``.part``.
"""

from __future__ import annotations

import http.client
import logging
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cellsynth.errors import ConfigError, DataError, DownloadError
from cellsynth.options import progress_bar
from cellsynth.paths import expand_user
from cellsynth.seeds import checked_whole

from ._download_errors import (
    BY_HAND,
    DEFAULT_BASE_URL,
    check_base_url,
    http_error,
    stopped,
    unreachable,
)
from ._download_state import (
    HDF5_SIGNATURE,
    Validators,
    describe_bytes,
    discard,
    disk_full,
    drop_state,
    locked,
    not_the_file,
    read_head,
    read_state,
    signature_offsets,
    write_state,
)

logger = logging.getLogger(__name__)

_ACCESSION = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)+")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
_USER_AGENT = "cellsynth (python-urllib)"


def _check_accession(accession: str) -> str:
    """Return the accession upper-cased, or raise :class:`ConfigError` if it is malformed."""
    acc = accession.strip().upper() if isinstance(accession, str) else ""
    if not _ACCESSION.fullmatch(acc):
        raise ConfigError(
            f"invalid accession {accession!r}: expected letters and digits separated by dashes, "
            "such as E-ANND-5 or E-MTAB-1234"
        )
    return acc


def expression_atlas_url(accession: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """URL of an Expression Atlas experiment's ``.project.h5ad`` file.

    Parameters
    ----------
    accession
        Experiment accession, e.g. ``"E-ANND-5"`` (case-insensitive).
    base_url
        Root of the single-cell experiments directory.

    Returns
    -------
    str
        ``{base_url}/{ACC}/{ACC}.project.h5ad``.
    """
    acc = _check_accession(accession)
    check_base_url(base_url)
    return f"{base_url.rstrip('/')}/{acc}/{acc}.project.h5ad"


def _checked_settings(timeout: object, chunk_size: object) -> tuple[float, int]:
    """``timeout`` and ``chunk_size`` checked, or a :class:`DataError` naming the bad one."""
    chunk_size = checked_whole(chunk_size, "chunk_size (bytes read per step)")
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not math.isfinite(timeout) or timeout <= 0):  # fmt: skip
        raise DataError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout), chunk_size


def download(
    accession: str,
    cache_dir: str | Path = "~/.cache/cellsynth",
    *,
    base_url: str = DEFAULT_BASE_URL,
    force: bool = False,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download an Expression Atlas experiment into ``cache_dir`` unless it is already there.

    Parameters
    ----------
    accession
        Experiment accession, e.g. ``"E-ANND-5"``.
    cache_dir
        Directory for the file (``~`` is expanded); created if missing.
    base_url
        Root of the single-cell experiments directory.
    force
        Discard the cached file and download it again. A partial download (``.part``) is still
        resumed when the server's file is unchanged (same size, ETag and Last-Modified).
    timeout
        Seconds to wait for the server on connect and on each read.
    chunk_size
        Bytes read per chunk.

    Returns
    -------
    Path
        ``cache_dir/{ACC}.project.h5ad``.

    Raises
    ------
    ConfigError
        If the accession is malformed.
    DownloadError
        If the host cannot be reached, the file does not exist, the transfer is cut short, the
        disk is full or another process downloads the same file.
    """
    timeout, chunk_size = _checked_settings(timeout, chunk_size)
    url = expression_atlas_url(accession, base_url)
    dest = expand_user(cache_dir, "--cache-dir (cache_dir=)") / url.rsplit("/", 1)[1]
    _make_folder(dest)
    if not force and dest.is_file() and unreadable(dest) is None:
        # no lock needed to read it (a download replaces it whole, by a rename): a cache in
        # a read-only folder, where no lock file can be made, serves what it holds
        logger.info("using cached %s; download it again with --force (force=True)", dest)
        return dest
    with locked(dest):
        if dest.is_file() and force:
            logger.info("--force (force=True): discarding the cached %s", dest)
            dest.unlink()
        if dest.is_file():
            damage = unreadable(dest)
            if damage is None:
                logger.info("using cached %s; download it again with --force (force=True)",
                            dest)
                return dest
            if "truncated" not in damage:
                raise DownloadError(f"the cached {dest} is not a readable h5ad ({damage}); "
                                    "download it again with --force (force=True)")
            # which version of the server's file it holds is not known: resuming it could join
            # two versions, so it is fetched again
            logger.warning("the cached %s is incomplete (%s): downloading it again", dest,
                           damage)
            dest.unlink()
        return _fetch(url, dest, timeout, chunk_size)


def download_hint(path: Path) -> str:
    """How to get a missing ``path`` named as a download is (``ACC.project.h5ad``, as the
    E-ANND-5 presets name theirs): ``cellsynth download ACC`` into its folder, which resumes a
    download stopped there; "" for any other name."""
    acc = path.name.removesuffix(".project.h5ad")
    if acc == path.name or not _ACCESSION.fullmatch(acc):
        return ""
    stopped = (" (a download of it was stopped part-way: that command resumes it)"
               if _part_path(path).is_file() else "")
    return (f"; it is the file `cellsynth download {acc} --cache-dir {path.parent}` writes: "
            f"download it first{stopped}, or")


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")  # data.h5ad -> data.h5ad.part


def _make_folder(dest: Path) -> None:
    if dest.is_dir():
        raise DownloadError(f"{dest} is a folder, where the download would be saved: move it "
                            "away or download into another folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only parent
        raise DownloadError(f"cannot make the folder {dest.parent} for the download "
                            f"({exc.strerror or exc}: {exc.filename or dest.parent}); choose "
                            "another --cache-dir (cache_dir=)") from None


def download_url(
    url: str,
    dest: Path,
    *,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Stream ``url`` into ``dest``, resuming a previous partial download of the same file.

    Parameters
    ----------
    url
        Address of the file.
    dest
        Final path; the transfer goes to ``dest`` + ``".part"`` (the first reply's validators
        in ``.part.json``) and is renamed when complete; ``dest`` + ``".lock"`` is held meanwhile.
    timeout
        Seconds to wait for the server on connect and on each read.
    chunk_size
        Bytes read per chunk.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DownloadError
        If the host cannot be reached, the server answers with an error or a page instead of
        the file, the transfer ends before the announced size (the ``.part`` file is kept so
        that a rerun resumes it), the disk is full or another process downloads the same file.
    """
    timeout, chunk_size = _checked_settings(timeout, chunk_size)
    dest = expand_user(dest, "the destination")
    _make_folder(dest)
    with locked(dest):
        return _fetch(url, dest, timeout, chunk_size)


def _fetch(url: str, dest: Path, timeout: float, chunk_size: int) -> Path:
    """:func:`download_url`'s work, under the download's lock."""
    part = _part_path(dest)
    if not part.is_file():
        drop_state(part)
    elif (part.stat().st_size >= len(HDF5_SIGNATURE) and
            _hdf5_name(dest) and not is_hdf5(part)):  # fmt: skip
        logger.warning("the partial download %s does not start as an HDF5 file (%s): starting "
                       "again from zero", part, describe(part))
        discard(part)
    elif read_state(part) is None:
        logger.warning("the partial download %s has no record of the server's file it came "
                       "from (left by an older cellsynth?): starting again from zero", part)
        discard(part)
    for _attempt in range(2):  # a second attempt only after discarding an unusable .part
        offset = part.stat().st_size if part.is_file() else 0
        stored = read_state(part) if offset else None
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset and stored is not None:
            headers["Range"] = f"bytes={offset}-"
            if stored.if_range():  # the server sends the whole file if its file changed
                headers["If-Range"] = stored.if_range()
            logger.info("resuming %s at byte %d", url, offset)
        else:
            offset, stored = 0, None
            logger.info("downloading %s to %s", url, dest)
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                total = _parse_content_range(exc.headers.get("Content-Range"))[1]
                exc.close()
                if total is None:  # no size with the refusal: the one the .part was begun with
                    total = stored.total
                if total == offset and stored.total in (None, total):
                    logger.info("%s was already complete (%d bytes)", part, offset)
                    return _finish(part, dest, url, total)
                logger.warning("discarding %s (%d bytes): the server has %s", part, offset,
                               "no such range and did not say its size" if total is None else
                               f"{total} bytes")
                discard(part)
                continue
            raise http_error(url, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise unreachable(url, exc, timeout) from None
        except (ValueError, http.client.InvalidURL) as exc:  # a bad port, a space, "http://[::1"
            raise ConfigError(f"{url} is not a valid address ({exc}); check the base URL "
                              "(--base-url)") from None
        except http.client.HTTPException as exc:  # a reply that is not HTTP (BadStatusLine...)
            said = " ".join(str(exc).split())[:80]
            raise DownloadError(f"{url} did not answer in HTTP ({type(exc).__name__}: {said!r}): "
                                "the address may be another kind of server, or a proxy broke "
                                f"the reply; check the base URL (--base-url), or {BY_HAND}"
                                ) from None
        with response:
            done = _receive(response, url, part, dest, offset, stored, chunk_size, timeout)
        if done is not None:
            return done
    raise DownloadError(f"cannot resume {url} into {part}; delete it and run again")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None if absent."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _receive(response: http.client.HTTPResponse, url: str, part: Path, dest: Path, offset: int,
             stored: Validators | None, chunk_size: int, timeout: float) -> Path | None:
    """Write the body of ``response`` into ``part`` and rename it to ``dest`` when complete;
    None when the server's file changed since ``part`` was begun (``part`` is then discarded)."""
    status = getattr(response, "status", None) or 200
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            sent = ("no byte range (its Content-Range is missing or malformed: "
                    f"{response.headers.get('Content-Range')!r})" if start is None else
                    f"the bytes from {start}")
            asked = (f"the bytes from {offset} were asked for" if offset else
                     "the whole file was asked for")
            kept = (f"{part} is kept; delete it if the same command fails again"
                    if offset else f"nothing was saved as {dest}")
            raise DownloadError(f"{url} answered 206 Partial Content with {sent}, where "
                                f"{asked}; {kept}, or {BY_HAND}")
        if total is None and length is not None:
            total = offset + length
        now = Validators.of(response.headers, total)
        if stored is not None and (changed := stored.differences(now)):
            logger.warning("the server's file changed since %s was begun (%s): starting again "
                           "from zero", part, "; ".join(changed))
            discard(part)
            return None
        if stored is None:  # a 206 to a request for the whole file: its rest can be resumed
            try:
                write_state(part, now, url)
            except OSError as exc:  # a full disk
                raise disk_full(part, exc, total) from None
    else:
        if offset:
            logger.warning("%s sent the whole file, not the rest of %s (it ignores Range, or its "
                           "file changed): restarting from zero", url, part)
        offset, total = 0, length
        now = Validators.of(response.headers, total)
    read = getattr(response, "read1", response.read)
    head, cut = read_head(read)
    if cut is not None:
        logger.debug("reading %s failed: %r", url, cut)
        if not head:  # not "an empty file": the server stalled or hung up
            kept = (f"{part} is kept and running the same command again resumes it"
                    if part.is_file() else f"nothing was saved as {dest}")
            raise DownloadError(f"{url} sent its headers but no data ({stopped(cut, timeout)});"
                                f" {kept}; try again later, or {BY_HAND}")
    why = not_the_file(response.headers.get("Content-Type"), head, hdf5=_hdf5_name(dest),
                       replacing=status != 206 and part.is_file())
    if why is None and not head and status != 206:
        why = describe_bytes(head, 0)  # "an empty file"
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":  # asked for none: its bytes are not the file's (nor its sizes)
        why = f"the file compressed (Content-Encoding: {encoding}, which cellsynth does not undo)"
    if why is not None:
        kept = (f"the partial download {part} is kept and the same command resumes it once the "
                "server sends the file again" if part.is_file() else
                f"nothing was saved as {dest}: check the accession and the base URL, or {BY_HAND}")
        raise DownloadError(f"the server sent {why}, not an HDF5 (.h5ad) file; {kept}")
    target = part if status == 206 else part.with_name(part.name + ".new")
    error = _stream(read, head, target, part, url, now, total, offset, chunk_size, dest.name,
                    stop=cut)
    size = part.stat().st_size  # what is on disk, not what this process counted
    if total is not None and size != total:
        if size > total:
            discard(part)
            raise DownloadError(f"{url} sent {size} bytes, more than the {total} announced; "
                                "the partial file was removed, run the same command again")
        why = stopped(error, timeout)
        raise DownloadError(f"transfer of {url} was truncated at {size} of {total} bytes ({why}); "
                            f"{part} is kept and running the same command again resumes it")
    if total is None:
        logger.warning("%s announced no size; cannot verify the %d bytes received", url, size)
    return _finish(part, dest, url, total)


def _stream(read: Callable[[int], bytes], head: bytes, target: Path, part: Path, url: str,
            now: Validators, total: int | None, offset: int, chunk_size: int,
            name: str, stop: BaseException | None = None) -> BaseException | None:
    """Write ``head`` and the rest of the reply into ``target`` (``part``, or a new file that
    replaces ``part`` once its first bytes are written); the read error that ended the
    transfer, if any (``stop``: the one that ended ``head``, nothing more is read). A write
    error (a full disk) is a :class:`DownloadError`."""
    error = None
    try:
        with open(target, "ab" if target == part else "wb", buffering=0) as fh, progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name,
        ) as bar:
            chunk = head
            while chunk:
                view = memoryview(chunk)
                while view:  # an unbuffered write may take part of the chunk
                    view = view[fh.write(view):]
                bar.update(len(chunk))
                if target != part:  # the new reply passed its check: it replaces the old part
                    drop_state(part)
                    os.replace(target, part)
                    write_state(part, now, url)
                    target = part
                if stop is not None:
                    error = stop
                    break
                try:
                    # read1: what has arrived, up to a chunk (read() waits for a whole chunk,
                    # so a transfer stalled or cut mid-chunk lost what it had received)
                    chunk = read(chunk_size)
                except (http.client.HTTPException, OSError) as exc:  # IncompleteRead...
                    logger.debug("transfer of %s interrupted: %r", url, exc)
                    error = exc
                    break
    except OSError as exc:  # writing, not reading
        if target != part:
            target.unlink(missing_ok=True)
        raise disk_full(part, exc, total) from None
    if target != part:  # an empty reply: nothing replaced the old part
        target.unlink(missing_ok=True)
    return error


def _hdf5_name(path: Path) -> bool:
    """Whether ``path`` is named as an HDF5 file (what a download is checked as)."""
    return path.suffix in (".h5ad", ".h5", ".hdf5")


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts (or, after a user block, continues) with the HDF5 signature."""
    with open(path, "rb") as fh:
        for offset in signature_offsets(path.stat().st_size):
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
    return False


def describe(path: Path) -> str:
    """What a file that is not HDF5 looks like, in words (see :func:`describe_bytes`)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return describe_bytes(fh.read(4096), size)


def _finish(part: Path, dest: Path, url: str, total: int | None) -> Path:
    if _hdf5_name(dest) and not is_hdf5(part):
        what = describe(part)
        discard(part)
        raise DownloadError(f"the server sent {what}, not an HDF5 (.h5ad) file; nothing was saved "
                            f"as {dest}: check the accession and the base URL, or {BY_HAND}")
    damage = unreadable(part) if _hdf5_name(dest) else None
    size = part.stat().st_size
    if damage is not None and "truncated" in damage and total is not None and size == total:
        discard(part)  # downloading again gives the same bytes
        raise DownloadError(f"the server's own copy of {url} is incomplete: it announced {total} "
                            f"bytes and sent them all, but the file is cut short ({damage}); "
                            f"nothing was saved as {dest}: try another mirror (--base-url) or "
                            f"later, or {BY_HAND}")
    if damage is not None and "truncated" in damage:  # a server that announced no size
        raise DownloadError(f"the transfer ended after {size} bytes, but the file is not "
                            f"complete ({damage}); {part} is kept and running the same "
                            "command again resumes it")
    if damage is not None:
        discard(part)
        raise DownloadError(f"the server sent a damaged HDF5 file ({damage}); nothing was saved "
                            f"as {dest}: run the same command again, or {BY_HAND}")
    os.replace(part, dest)
    drop_state(part)
    logger.info("saved %s (%d bytes)", dest, dest.stat().st_size)
    return dest


def unreadable(path: Path) -> str | None:
    """Why HDF5 cannot open ``path`` (a truncated file: "truncated file: eof = ...,
    stored_eof = ..."), or None when it opens: a download that stopped early without a
    size to check it against is caught here, before it is taken for the data."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return None
    except OSError as exc:
        return " ".join(str(exc).split())[:300]
