"""What a run writes, and where it may: atomic text and JSON, safetensors files with the
mode a new file gets, and the checks that refuse, before any work, an output path that is a
file where a directory goes (or the reverse), another format, the input itself, a file
cellsynth did not write, or a link leading out of the run directory."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CellsynthError, DataError, ModelFileError, listed
from .paths import expand_user

logger = logging.getLogger("cellsynth.pipeline")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename), strict: a number that is not
    finite (NaN: a correlation of constant values) is written as null, which every JSON
    reader takes (a bare NaN is refused by jq, JavaScript and strict parsers)."""
    write_text(path, json_text(data))


def json_text(data: Any) -> str:
    """``data`` as strict JSON text (indented): numbers that are not finite as null, numpy
    arrays and scalars (an h5ad's ``uns`` read back) as lists and numbers."""
    return json.dumps(json_ready(data), indent=2, default=_default, allow_nan=False)


def json_ready(o: Any) -> Any:
    """``o`` with every float that is not finite replaced by None (dicts and lists walked)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: json_ready(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [json_ready(v) for v in o]
    return o


def _umask() -> int:
    """This process's umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: Path, suffix: str, *, folder: bool = False) -> Path:
    """A new, empty file (or ``folder``) of this process's own beside ``path``, named
    ``NAME.<pid>@<host>.<random>`` + ``suffix``, for an atomic write that is renamed to ``path``
    when done.

    Every writer gets its own name, so two writers of one output never write into (or rename)
    each other's half-written file. The name says which process writes it, so the next writer of
    ``path`` removes what a killed one left (:func:`remove_dead_temps`: a SIGKILL, a crash, a
    machine that went down). The permissions are those of a new file or folder (mkstemp and
    mkdtemp make them private).
    """
    path = Path(path)
    remove_dead_temps(path)
    prefix = ("." if folder else "") + path.name + f".{os.getpid()}@{_host()}."
    if folder:
        made = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
        made.chmod(0o777 & ~_umask())
        return made
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def _host() -> str:
    """This machine's name as it goes into a temporary file's name (letters, digits, ``.-_``)."""
    import platform

    return re.sub(r"[^A-Za-z0-9._-]", "_", platform.node())[:40] or "host"


def remove_dead_temps(path: Path) -> list[Path]:
    """Remove the temporary files and folders beside ``path`` (:func:`temp_beside`'s, any
    suffix) whose writer was a process of this machine that has ended: a command killed while
    writing ``path`` leaves them (an h5ad of gigabytes among them), and nothing else would ever
    remove them. A live writer's, another machine's and this process's own are kept. Returns
    what was removed."""
    import shutil

    path = Path(path)
    pattern = re.compile(r"\.?" + re.escape(path.name) + r"\.(\d+)@" + re.escape(_host())
                         + r"\.[a-z0-9_]{8}\.[A-Za-z]+")  # fmt: skip
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # no folder yet, or one that cannot be listed: nothing to remove
        return []
    removed = []
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or int(found[1]) == os.getpid() or process_alive(int(found[1])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # another writer removed it first, or the folder is read-only
            continue
        removed.append(entry)
        logger.info("removed %s, left by process %s, which stopped before it finished writing "
                    "%s", entry, found[1], path.name)  # fmt: skip
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's process counts; a number
    no process can have does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):  # not a pid this system has
        return False
    return True


@contextmanager
def replaced(path: Path, suffix: str) -> Iterator[Path]:
    """A file of this writer's own beside ``path`` (:func:`temp_beside`) to write into, renamed
    to ``path`` when the block ends, removed when it fails (the error goes on to the caller).
    ``path`` is never seen half-written, and the rename replaces a symlink at ``path`` rather
    than writing through it."""
    tmp = None
    try:
        tmp = temp_beside(path, suffix)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # an unwritable folder may not let it go either
                pass
        raise


#: room a write needs beyond its estimated size: HDF5's own structures, obs and var tables
_DISK_MARGIN = 1.05
_DISK_SLACK = 1 << 20  # bytes


def check_disk_space(path: Path, nbytes: int, what: str) -> None:
    """Refuse, before a byte is written, to write about ``nbytes`` into ``path``'s folder when
    its disk has less room free (with a margin): HDF5 cannot recover from a disk that fills
    under it (a file it cannot close, then a crash when the process exits), so an h5ad writer
    asks first, once its own temporary file is made (:func:`temp_beside`, which removes what
    killed writers of the output left). A folder whose free space cannot be read is let
    through."""
    import shutil

    need = int(nbytes * _DISK_MARGIN) + _DISK_SLACK
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return
    if free < need:
        raise DataError(f"cannot write {path}: about {size_text(need)} needed for {what}, and "
                        f"its disk has {size_text(free)} free; free disk space or choose another "
                        "output")


def size_text(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (``"3.2 MB"``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


#: Markdown's active characters; an ``_`` inside a word (``CD14_Mono``) is literal already
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~$]|&(?=#?\w+;)|(?<![^\W_])_|_(?![^\W_]))")


def md_text(text: Any) -> str:
    """``text`` as literal Markdown: the characters that would format (``* _ ` ~``), link
    (``[ ]``), open HTML (``< >``, ``&name;``) or split a table cell (``|``) backslash-escaped,
    so that a cell type such as ``<script>`` or ``A | B*`` reads as spelled in a rendered page."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def md_fence(lines: list[str]) -> str:
    """A code fence longer than any run of backticks in ``lines`` (3 at least), so that no
    line (a cell type spelled with backticks) closes the block early."""
    runs = [len(r) for line in lines for r in re.findall(r"`+", line)]
    return "`" * max([3, *(n + 1 for n in runs)])


def write_csv(path: Path, frame: Any, **kwargs: Any) -> None:
    """``frame.to_csv(path, **kwargs)`` written atomically (:func:`write_text`): a kill or a
    second writer mid-write never leaves half a table, or rows of two."""
    write_text(path, frame.to_csv(**kwargs))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: into ``PATH.<pid>@<host>.<random>.tmp``, then renamed
    to ``path`` (:func:`replaced`). A failure or a kill mid-write leaves ``path`` as it was."""
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, as :func:`write_text` writes text."""
    _write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into a file of this writer's own beside ``path``, renamed to ``path``; a
    full disk is a one-line error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced(path, ".tmp") as tmp:
            write(tmp)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CellsynthError(f"disk full while writing {path}; free space or choose "
                                 "another --out (the earlier file is left as it was)") from None
        raise


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return json_ready(o.tolist())
    if hasattr(o, "item"):
        return json_ready(o.item())
    return str(o)


# ---------------------------------------------------------------------------------------------
# the run directory: what --out may be

#: what a run writes at the top of its directory (an input file there would be overwritten)
RUN_ENTRIES = ("config.toml", "manifest.json", "run.log", "run.lock", "data", "features",
               "classifier", "generator", "generator_ddp", "synthetic", "classifier_synthetic",
               "metrics", "explain", "results.md", "report.html")
#: what a directory may hold before its first run (the CLI opens run.log first; cs.run writes
#: an AnnData given in memory to input.h5ad)
_BEFORE_FIRST_RUN = {"run.log", "run.lock", "config.toml", "input.h5ad"}
#: a temporary file of a write at the top of a run directory (temp_beside's, RunLock's): what a
#: run killed while writing its first files left there, never a user's file
_RUN_TEMP = re.compile("(?:" + "|".join(map(re.escape, sorted({*RUN_ENTRIES, *_BEFORE_FIRST_RUN})))
                       + r")\.(?:\d+@[A-Za-z0-9._-]+\.[a-z0-9_]{8}\.[A-Za-z]+|\d+\.tmp)")


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output path under which nothing can be written: its nearest
    existing folder is a file, or a file cannot be created there (permissions, a read-only or
    virtual file system). The path itself may be new, and so may folders above it."""
    import tempfile

    path = expand_user(path)
    place = path if path.is_dir() else path.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise CellsynthError(f"{flag} {path}: {place} is a file, so nothing can be written under "
                             "it; give a path in a directory")
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as exc:
        raise CellsynthError(f"{flag} {path}: cannot write in {place} ({exc.strerror or exc}); "
                             "give a path you can write to") from None


def check_out_dir(out: str | Path, flag: str, what: str,
                  error: type[CellsynthError] = CellsynthError) -> Path:  # fmt: skip
    """An output directory that is an existing file (the input, a model file...), or under
    which nothing can be written, is a one-line ``error`` before any work: ``flag`` names the
    argument (``--out`` on the command line, ``out`` in Python), ``what`` what the directory
    is for. The one check of every output directory (a run, a model, an evaluation). Returns
    the directory, ``~`` expanded: write there, not to the path as given. An empty path
    (``--out "$DIR"`` with ``DIR`` unset, ``out=""``) is refused: it names the current folder."""
    if isinstance(out, str) and not out.strip():
        raise error(f"{flag} is empty ({out!r}), which would name the current folder; give a "
                    f"directory for {what} (the current folder as '.')")
    out = expand_user(out, flag)
    if out.exists() and not out.is_dir():
        raise error(f"{flag} {out} is an existing file, not a directory; give a directory "
                    f"for {what}")
    check_writable(out, flag)
    return out


def enclosing_run(path: str | Path) -> Path | None:
    """The run directory ``path`` is or lies in: the nearest folder at or above it that holds a
    run's ``manifest.json`` and ``config.toml``; None outside any run."""
    path = expand_user(path).resolve()
    for place in (path, *path.parents):
        if (place / "manifest.json").is_file() and (place / "config.toml").is_file():
            return place
    return None


def check_run_dir(out: Path, flag: str = "--out") -> None:
    """A run directory that is an existing file, or under which nothing can be written, is a
    one-line error (``flag`` names it: ``--out``, or ``out`` in Python)."""
    check_out_dir(out, flag, "the run (e.g. runs/NAME)")


def check_out(out: Path, cfg: Any) -> None:
    """A run directory that is an existing file, that would overwrite the input file, or that is
    a non-empty directory of another kind is a one-line error."""
    check_run_dir(out)
    if cfg.dataset.path:
        data = expand_user(cfg.dataset.path).resolve()
        try:
            rel = data.relative_to(out.resolve())
        except ValueError:
            rel = None
        if rel is not None and rel.parts and rel.parts[0] in RUN_ENTRIES:
            raise CellsynthError(f"the input {cfg.dataset.path} lies where the run in {out} "
                                 f"writes its outputs ({rel.parts[0]}); move the input or choose "
                                 "another --out")
    if not out.is_dir() or _run_manifest(out / "manifest.json"):
        return
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")
             and p.name != "manifest.json.corrupt" and not _RUN_TEMP.fullmatch(p.name)}
    if names <= _BEFORE_FIRST_RUN | {"manifest.json"} or (
            names <= set(RUN_ENTRIES) | _BEFORE_FIRST_RUN and "config.toml" in names):
        return  # new, or a run directory whose manifest is gone or damaged (set aside: every
        # stage runs again)
    other = sorted(names - _BEFORE_FIRST_RUN)
    raise CellsynthError(
        f"--out {out} is a non-empty directory that is not a cellsynth run directory (it holds "
        f"{listed(other)}); a run writes data/, "
        "metrics/... into it: give a new or empty directory")


def _run_manifest(path: Path) -> bool:
    """Whether ``path`` is a run's ``manifest.json`` (a JSON object with its ``stages``): a
    folder's own manifest.json (a web app's, a browser extension's) does not make it a run
    directory to write into."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("stages"), dict)


def generated_h5ad(path: Path, *, simulated: bool = True) -> bool:
    """Whether ``path`` is an h5ad that cellsynth wrote: generated cells (``uns['cellsynth']``
    naming the model that drew them: a run's ``data/preprocessed.h5ad`` has a
    ``uns['cellsynth']`` without one, and is no output to replace) or, with ``simulated``, a
    simulated atlas (``uns['source']`` naming ``cellsynth.data.simulate``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "uns/cellsynth/model" in f:
                return True
            if not simulated:
                return False
            source = f.get("uns/source")
            value = source[()] if isinstance(source, h5py.Dataset) else b""
            return (value if isinstance(value, bytes) else str(value).encode()).startswith(
                b"cellsynth.data.simulate")
    except (OSError, ValueError):  # not HDF5 at all
        return False


def report_html(path: Path) -> bool:
    """Whether ``path`` is a report or an evaluation page cellsynth wrote (its HTML head names
    it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            return b"<title>cellsynth report" in head or b"<title>cellsynth evaluation" in head
    except OSError:
        return False


def check_file_out(path: str | Path, what: str, ours: Any, *, flag: str = "--out",
                   suffixes: tuple[str, ...] = (".h5ad",), say: bool = True) -> Path:  # fmt: skip
    """Refuse an output file that is a directory, one whose name says another format than
    ``suffixes`` (``cells.csv`` would hold an h5ad), or an existing file that cellsynth did not
    write as ``what`` (``ours(path)`` false): the input, a run's manifest, a model's weights or
    anyone's data would be lost. An earlier output of the same kind may be replaced (rerunning
    a command writes its output again), with a line in the log (``say`` false: the caller
    says it when it writes, after its other checks). Returns the path, ``~`` expanded: write
    there, not to the path as given."""
    path = expand_user(path, flag)
    if path.is_dir():
        raise CellsynthError(f"{flag} {path} is a directory; give the file to write, e.g. "
                             f"{path / (('report' if 'report' in what else 'cells') + suffixes[0])}")
    exists = path.exists()
    if exists and not ours(path):
        raise CellsynthError(f"{flag} {path} exists and is not {what} that cellsynth wrote: "
                             "writing would destroy it; give a new path (or remove the file "
                             "yourself)")
    if path.name == "-":  # the shell's "standard output", resolved or not
        raise CellsynthError(f"{flag} -: cellsynth writes {what} to a file, not to standard "
                             f"output; give a path ending in {suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        stem = Path(path.stem)  # z.h5ad.gz: z.h5ad, not z.h5ad.h5ad
        like = path.with_name(stem.name) if stem.suffix.lower() in suffixes else \
            path.with_name(path.name + suffixes[0]) if not path.suffix else \
            path.with_suffix(suffixes[0])
        said = f"not {path.suffix}" if path.suffix else "and its name has no suffix"
        raise CellsynthError(f"{flag} {path}: cellsynth writes {what} here, in the "
                             f"{suffixes[0]} format, {said}; give a path ending in "
                             f"{suffixes[0]}, e.g. {like}")
    check_writable(path, flag)
    if exists and say:
        logger.info("replacing %s, %s written earlier", path, what)
    return path


def check_links(out: Path) -> None:
    """A symlink in the run directory that leads outside it is refused: a run never writes
    through one (one line naming it)."""
    root = out.resolve()
    for folder, dirs, names in os.walk(out):
        for n in dirs + names:
            path = Path(folder, n)
            if not path.is_symlink():
                continue
            target = path.resolve()
            if target != root and root not in target.parents:
                raise CellsynthError(f"{path} is a symbolic link to {target}, outside the run "
                                     f"directory; a run never writes through one: remove the link "
                                     "or choose another --out")


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting, then put back at once
    os.umask(mask)
    return mask


def shareable(path: str | Path) -> None:
    """Give a written file the mode a new file gets (``0o666`` less the umask): safetensors
    writes its files readable by their owner only, so a model directory shared with a group
    could not be loaded by the others."""
    os.chmod(path, 0o666 & ~_umask())


def save_tensors(save: Callable[..., Any], tensors: Any, path: str | Path) -> None:
    """``save(tensors, path)`` with safetensors' ``save_file`` (its numpy or its torch one),
    then the file made :func:`shareable` (safetensors writes it for its owner only). A failed
    write is an :class:`OSError` with its errno (safetensors raises its own error type for
    one), which the command line says in one line (a full disk: where, and the fix)."""
    try:
        save(tensors, str(path))
    except Exception as exc:
        failed = as_os_error(exc, path)
        if failed is exc:
            raise
        raise failed from None
    shareable(path)


def as_os_error(exc: Exception, path: str | Path) -> Exception:
    """safetensors' error for a failed write (``SafetensorError``: "I/O error: No space left on
    device (os error 28)") as the :class:`OSError` it stands for, with the errno its message
    gives; any other exception as it is."""
    import re

    if type(exc).__name__ != "SafetensorError" or "I/O error" not in str(exc):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def saved_json(path: Path, fix: str) -> Any:
    """The contents of one of a saved model's JSON files (a generator's, a classifier's); a
    :class:`ModelFileError` naming one that is not JSON, with ``fix``, what to do about it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({exc}); {fix}") from None
