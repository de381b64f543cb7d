"""Download Expression Atlas experiments into a local cache, resumably.

Only the standard library talks to the network (:mod:`urllib`). A download streams into
``<file>.part``; an interrupted one is resumed with an HTTP ``Range`` request the next time the
same command runs, and the file gets its final name (atomically) only once its size matches the
size the server announced.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from cellsynth.errors import ConfigError, DownloadError
from cellsynth.options import progress_bar

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://ftp.ebi.ac.uk/pub/databases/microarray/data/atlas/sc_experiments"

_ACCESSION = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)+")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
_USER_AGENT = "cellsynth (python-urllib)"
_BY_HAND = "download the file by hand and pass it with `cellsynth run --set dataset.path=FILE`"


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
    if not str(base_url).lower().startswith(("http://", "https://", "file://")):
        raise ConfigError(f"the base URL must start with http://, https:// or file://, got "
                          f"{base_url!r}; give the directory's full address (--base-url)")
    return f"{base_url.rstrip('/')}/{acc}/{acc}.project.h5ad"


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
        Download again (from zero) even if the file or a partial download exists.
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
        If the host cannot be reached, the file does not exist or the transfer is cut short.
    """
    url = expression_atlas_url(accession, base_url)
    dest = Path(cache_dir).expanduser() / url.rsplit("/", 1)[1]
    if dest.is_file() and not force:
        damage = unreadable(dest)
        if damage is None:
            logger.info("using cached %s; pass force=True to download again", dest)
            return dest
        if "truncated" not in damage:
            raise DownloadError(f"the cached {dest} is not a readable h5ad ({damage}); "
                                "download it again with --force (force=True)")
        logger.warning("the cached %s is incomplete (%s): resuming its download", dest, damage)
        os.replace(dest, _part_path(dest))
    if force:
        _part_path(dest).unlink(missing_ok=True)
    return download_url(url, dest, timeout=timeout, chunk_size=chunk_size)


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")  # data.h5ad -> data.h5ad.part


def download_url(
    url: str,
    dest: Path,
    *,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Stream ``url`` into ``dest``, resuming a previous partial download.

    Parameters
    ----------
    url
        Address of the file.
    dest
        Final path; the transfer goes to ``dest`` + ``".part"`` and is renamed when complete.
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
        If the host cannot be reached, the server answers with an error or the transfer ends
        before the announced size (the ``.part`` file is kept so that a rerun resumes it).
    """
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadError(f"{dest} is a folder, where the download would be saved: move it "
                            "away or download into another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    if (part.is_file() and part.stat().st_size >= len(HDF5_SIGNATURE) and
            _hdf5_name(dest) and not is_hdf5(part)):  # fmt: skip
        logger.warning("the partial download %s does not start as an HDF5 file (%s): starting "
                       "again from zero", part, describe(part))
        part.unlink()
    for _attempt in range(2):  # a second attempt only after discarding an unusable .part
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            logger.info("resuming %s at byte %d", url, offset)
        else:
            logger.info("downloading %s to %s", url, dest)
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                total = _parse_content_range(exc.headers.get("Content-Range"))[1]
                exc.close()
                if total == offset:
                    logger.info("%s was already complete (%d bytes)", part, offset)
                    return _finish(part, dest)
                logger.warning("discarding %s (%d bytes): the server has %s bytes",
                               part, offset, total)
                part.unlink()
                continue
            raise _http_error(url, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"cannot reach {url} ({reason}): this machine seems offline or the host "
                f"unreachable; {_BY_HAND}"
            ) from None
        with response:
            return _receive(response, url, part, dest, offset, chunk_size)
    raise DownloadError(f"cannot resume {url} into {part}; delete it and run again")


def _http_error(url: str, exc: urllib.error.HTTPError) -> DownloadError:
    exc.close()
    if exc.code == 404:
        return DownloadError(
            f"{url} answered HTTP 404 Not Found: the accession may not exist at that URL; "
            "check the accession and the base URL"
        )
    return DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}; try again later or {_BY_HAND}")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None if absent."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _receive(response: http.client.HTTPResponse, url: str, part: Path, dest: Path,
             offset: int, chunk_size: int) -> Path:
    """Write the body of ``response`` into ``part`` and rename it to ``dest`` when complete."""
    status = getattr(response, "status", None) or 200
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            raise DownloadError(f"{url} resumed at byte {start} instead of {offset}; delete {part}")
        if total is None and length is not None:
            total = offset + length
    else:
        if offset:
            logger.warning("server ignored the Range request for %s; restarting from zero", url)
        offset, total = 0, length
    written = offset
    with open(part, "ab" if status == 206 else "wb") as fh, progress_bar(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=dest.name,
    ) as bar:
        try:
            # read1: what has arrived, up to a chunk (read() waits for a whole chunk, so a
            # transfer stalled or cut mid-chunk lost what it had received)
            read = getattr(response, "read1", response.read)
            while chunk := read(chunk_size):
                fh.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        except (http.client.IncompleteRead, OSError) as exc:
            logger.debug("transfer of %s interrupted: %r", url, exc)
    if total is not None and written != total:
        if written > total:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} sent {written} bytes, more than the {total} announced; "
                                "the partial file was removed, run the same command again")
        raise DownloadError(
            f"transfer of {url} was truncated at {written} of {total} bytes; {part} is kept "
            "and running the same command again resumes it"
        )
    if total is None:
        logger.warning("%s announced no size; cannot verify the %d bytes received", url, written)
    return _finish(part, dest)


#: the HDF5 signature, at byte 0 or (after a user block) at 512, 1024, 2048... bytes
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5_name(path: Path) -> bool:
    """Whether ``path`` is named as an HDF5 file (what a download is checked as)."""
    return path.suffix in (".h5ad", ".h5", ".hdf5")


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts (or, after a user block, continues) with the HDF5 signature."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def describe(path: Path) -> str:
    """What a file that is not HDF5 looks like, in words (an HTML page and its title, gzip,
    zip, text and how it starts, or its first bytes)."""
    head = path.read_bytes()[:4096] if path.stat().st_size else b""
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
    return f"{path.stat().st_size} bytes starting {head[:8].hex(' ')}"


def _finish(part: Path, dest: Path) -> Path:
    if _hdf5_name(dest) and not is_hdf5(part):
        what = describe(part)
        part.unlink(missing_ok=True)
        raise DownloadError(f"the server sent {what}, not an HDF5 (.h5ad) file; nothing was saved "
                            f"as {dest}: check the accession and the base URL, or {_BY_HAND}")
    damage = unreadable(part) if _hdf5_name(dest) else None
    if damage is not None and "truncated" in damage:  # a server that announced no size
        raise DownloadError(f"the transfer ended after {part.stat().st_size} bytes, but the file "
                            f"is not complete ({damage}); {part} is kept and running the same "
                            "command again resumes it")
    if damage is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"the server sent a damaged HDF5 file ({damage}); nothing was saved "
                            f"as {dest}: run the same command again, or {_BY_HAND}")
    os.replace(part, dest)
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
