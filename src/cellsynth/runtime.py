"""Timing, memory, the run manifest and the run lock: shared by the pipeline stages (which
stages a run may skip: :mod:`cellsynth.resume`; what a run writes, and where it may:
:mod:`cellsynth.outputs`)."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .heartbeat import heartbeat
from .outputs import RUN_ENTRIES, process_alive, write_json

logger = logging.getLogger("cellsynth.pipeline")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 1024**2


def cpu_threads() -> int:
    """Threads a computation here may use: ``OMP_NUM_THREADS`` when it is set (as torch and
    OpenMP libraries read it), else the cores this process may run on (a cluster job's or a
    ``taskset``'s, not the whole node's), else every core. Two processes each spinning one
    OpenMP thread per core on the same cores slow each other many times over."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return cpu_cores()


def cpu_cores() -> int:
    """The cores this process may run on (a cluster job's or a ``taskset``'s, not the whole
    node's), else every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def available_memory() -> float | None:
    """Bytes of memory available to a new allocation without swapping (``MemAvailable`` of
    ``/proc/meminfo``, else free physical pages), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


class Manifest:
    """``manifest.json``: per stage its status, wall time and peak memory."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"stages": {}}
        if path.is_file():
            self.data = _read_manifest(path)

    def set_meta(self, **meta: Any) -> None:
        self.data.update(meta)
        write_json(self.path, self.data)

    def is_done(self, name: str, config_hash: str) -> bool:
        entry = self.data["stages"].get(name, {})
        return entry.get("status") == "done" and entry.get("config_hash") == config_hash

    def changed_outputs(self, name: str) -> list[str]:
        """The files stage ``name`` wrote that are gone or changed now (:func:`changed_outputs`)."""
        return changed_outputs(self.path.parent, self.data["stages"].get(name, {}))

    @contextmanager
    def stage(self, name: str, config_hash: str = ""):
        """Run a stage: log its start and its wall time and peak memory at the end.

        The stage is marked done (with ``config_hash``) only after its body, which writes its
        outputs, has finished: a killed run leaves it ``running`` and a resume redoes it.
        """
        logger.info("stage %s: start", name)
        t0 = time.perf_counter()
        before_entry = self.data["stages"].get(name)
        earlier = before_entry.get("outputs", []) if isinstance(before_entry, dict) else []
        earlier = [f for f in earlier if _stage_file(f)] if isinstance(earlier, list) else []
        entry: dict[str, Any] = {"status": "running", "config_hash": config_hash}
        if earlier:  # kept while it runs: a stopped or killed run leaves them to the next one
            entry["outputs"] = earlier  # to remove if it does not write them again
        self.data["stages"][name] = entry
        write_json(self.path, self.data)
        before = _files(self.path.parent)
        try:
            with heartbeat(f"stage {name}"):
                yield entry
        except BaseException as exc:
            entry.update(status="failed", reason=why_stopped(exc),
                         seconds=round(time.perf_counter() - t0, 3),
                         peak_rss_mb=round(peak_rss_mb(), 1))
            with suppress(Exception):  # and what it wrote before it stopped
                entry["outputs"] = sorted(set(earlier).union(
                    f for f, stat in _files(self.path.parent).items() if before.get(f) != stat))
            _log_failed(name, entry["seconds"], entry["peak_rss_mb"], exc)
            try:
                write_json(self.path, self.data)
            except Exception:  # e.g. the disk is full: the stage's own error is the one to raise
                logger.warning("stage %s: could not mark it failed in %s", name, self.path)
            raise
        after = _files(self.path.parent)
        outputs = sorted(f for f, stat in after.items() if before.get(f) != stat)
        entry.update(status="done", seconds=round(time.perf_counter() - t0, 3),
                     peak_rss_mb=round(peak_rss_mb(), 1), outputs=outputs,
                     sizes={f: after[f][0] for f in outputs})
        self._remove_stale(name, earlier)
        write_json(self.path, self.data)
        _log_done(name, entry["seconds"], entry["peak_rss_mb"])

    def _remove_stale(self, name: str, earlier: Any) -> None:
        """Remove the files an earlier run of stage ``name`` wrote that this run did not write
        again and no other stage claims: left, they would be read as this run's (a per-type
        table of another generator beside this one's results)."""
        root = self.path.parent
        claimed = {f for entry in self.data["stages"].values()
                   for f in (entry.get("outputs", []) if isinstance(entry, dict) else [])}
        for f in earlier if isinstance(earlier, list) else []:
            if not _stage_file(f) or f in claimed:
                continue
            path = root / f
            inside = path.resolve().is_relative_to(root.resolve()) and not path.is_symlink()
            if inside and path.is_file():  # never a file outside the run (an edited manifest)
                path.unlink()
                logger.info("stage %s: removed %s, which its earlier run wrote and this one "
                            "did not", name, f)


def changed_outputs(root: Path, entry: Any) -> list[str]:
    """The files a stage wrote (``entry``: its manifest entry, its files recorded when it
    finished) that are gone from the run directory ``root`` now or whose size is not the one
    recorded (a truncated or replaced file), each with why."""
    entry = entry if isinstance(entry, dict) else {}
    sizes = entry.get("sizes") if isinstance(entry.get("sizes"), dict) else {}
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), list) else []
    changed = []
    for f in outputs:
        if not _stage_file(f):  # a user's file an earlier version recorded: not the stage's
            continue
        try:
            size = (root / f).stat().st_size if (root / f).is_file() else None
        except OSError:
            size = None
        if size is None:
            changed.append(f"{f} is missing")
        elif isinstance(sizes.get(f), int) and sizes[f] != size:
            changed.append(f"{f} changed since it was written ({size} bytes, was {sizes[f]})")
    return changed


#: the folders of a run directory that its stages write: a stage's outputs are files there
#: (the files at its top are the run's or the report's; a folder of another name, the user's)
STAGE_FOLDERS = tuple(e for e in RUN_ENTRIES if "." not in e)


def _stage_file(rel: Any) -> bool:
    """Whether ``rel`` (a path relative to the run directory) is in a stage's folder: only such
    a file is a stage's output, checked on resume and removed when a rerun no longer writes it
    (never a file the user put beside a run, such as notes or a figure, while a stage ran)."""
    return isinstance(rel, str) and "/" in rel and rel.split("/", 1)[0] in STAGE_FOLDERS


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file in the stage folders of the run directory ``root`` (links not followed) ->
    (size, modification time in ns)."""
    out: dict[str, tuple[int, int]] = {}
    for folder, _dirs, names in (w for top in STAGE_FOLDERS for w in os.walk(root / top)):
        for n in names:
            path = Path(folder, n)
            rel = path.relative_to(root).as_posix()
            if rel.endswith((".tmp", ".part")):
                continue
            try:
                st = path.lstat()
            except OSError:  # removed while walking
                continue
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json``'s contents; a corrupt one is set aside (``manifest.json.corrupt``) with
    a warning and a new one started, so every stage runs again: nothing is trusted from it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        # a JSON object without 'stages' is another program's manifest.json, not a run's
        why = "" if isinstance(data, dict) and isinstance(data.get("stages"), dict) else \
            "not a JSON object with a 'stages' object"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        data, why = None, f"not valid JSON: {exc}"
    if why:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        logger.warning("%s is corrupt (%s); starting a new manifest, so every stage runs "
                       "again (the old file is kept as %s)", path, why, aside.name)
        return {"stages": {}}
    data.setdefault("stages", {})
    data["stages"] = {k: v for k, v in data["stages"].items() if isinstance(v, dict)}
    for entry in data["stages"].values():  # a field of another type (edited by hand): unknown
        for key, kind in _ENTRY_FIELDS.items():
            if key in entry and not isinstance(entry[key], kind):
                del entry[key]
    if not isinstance(data.get("config"), dict):
        data.pop("config", None)
    return data


#: the fields of a stage's manifest entry that are read back, and their types
_ENTRY_FIELDS = {"status": str, "config_hash": str, "input": dict, "outputs": list, "sizes": dict}


def _log_done(name: str, seconds: float, rss: float) -> None:
    logger.info("stage %s: done in %.1f s (peak RSS %.0f MB)", name, seconds, rss)


def _log_failed(name: str, seconds: float, rss: float, exc: BaseException) -> None:
    # INFO, like the done line: run.log always gets it, and a user error stays one line on a
    # --quiet console (the CLI prints the error itself)
    logger.info("stage %s: failed after %.1f s (peak RSS %.0f MB): %s", name, seconds, rss,
                why_stopped(exc))


def why_stopped(exc: BaseException) -> str:
    """What stopped a stage, in words: the error's kind, or the signal that stopped it (the
    command line's SIGTERM is a KeyboardInterrupt carrying ``signum``)."""
    signum = getattr(exc, "signum", None)
    if isinstance(exc, KeyboardInterrupt):
        import signal

        return f"terminated by {signal.Signals(signum).name}" if signum else "interrupted (Ctrl-C)"
    return type(exc).__name__


@contextmanager
def timed(name: str):
    """A step outside the manifest (writing ``results.md`` and ``report.html``) timed like a stage:
    ``stage NAME: done in S s (peak RSS M MB)``, or ``failed after`` (then re-raised)."""
    logger.info("stage %s: start", name)
    t0 = time.perf_counter()
    try:
        with heartbeat(f"stage {name}"):
            yield
    except BaseException as exc:
        _log_failed(name, time.perf_counter() - t0, peak_rss_mb(), exc)
        raise
    _log_done(name, time.perf_counter() - t0, peak_rss_mb())


class RunLock:
    """One run per directory: ``run.lock`` holds the process id, host and start time.

    :meth:`acquire` creates it atomically (a hard link of a written file, so a reader never
    sees it half written); a lock of a process that is still running (on this host), or of
    another host, stops with a one-line :class:`~cellsynth.errors.CellsynthError` naming it;
    a stale one (its process is gone) is taken over with a warning. :meth:`release` removes
    it if it is still this process's.

    Parameters
    ----------
    directory
        The output the lock guards (a run directory; a model directory, a benchmark's).
    path
        The lock file (default ``directory / "run.lock"``); ``cellsynth fit`` keeps it beside
        the model directory, which a save replaces whole.
    what
        The command that holds it, in the message of a second one (``"cellsynth fit"``).
    """

    NAME = "run.lock"
    BENCHMARK = "benchmark.lock"  # in a benchmark's --out

    def __init__(self, directory: str | Path, *, path: str | Path | None = None,
                 what: str = "cellsynth run") -> None:  # fmt: skip
        self.target = Path(directory)
        self.path = Path(path) if path is not None else self.target / self.NAME
        self.what = what
        self.held = False

    @classmethod
    def of_fit(cls, out: Path) -> RunLock:
        """The lock of ``cellsynth fit --out OUT``: beside ``OUT`` (a save replaces it whole),
        ``.OUT.lock``."""
        return cls(out, path=out.parent / f".{out.name}.lock", what="cellsynth fit")

    @classmethod
    def of_benchmark(cls, out: Path) -> RunLock:
        """The lock of ``cellsynth benchmark --out OUT``: ``OUT/benchmark.lock``."""
        return cls(out, path=out / cls.BENCHMARK, what="cellsynth benchmark")

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": platform.node(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              # which process that pid is: after a reboot or once the pid is reused by another
              # process, the lock of a killed run is stale although its pid runs
              "boot": _boot_id(), "process_start": _process_start(os.getpid())}  # fmt: skip
        for _attempt in range(5):
            if self._create(me):
                self.held = True
                return
            other = self._read()
            if other is None:
                logger.warning("%s is unreadable or empty (a run killed while taking it?); "
                               "taking it over", self.path)
            elif self._alive(other):
                raise self._in_use(other)
            else:
                logger.warning("taking over the stale lock %s of process %s (no longer "
                               "running)", self.path, other.get("pid"))
            self.path.unlink(missing_ok=True)
        from .errors import CellsynthError

        raise CellsynthError(f"cannot take {self.path}: other commands keep taking it; "
                             "choose another --out")

    def check_free(self) -> None:
        """Refuse, as :meth:`acquire` would, when a running process holds the lock, without
        taking it: before anything is written into the directory (the command line opens its
        ``run.log`` first, and a refused second run wrote its lines into the first one's)."""
        other = self._read() if self.path.exists() else None
        if other is not None and self._alive(other):
            raise self._in_use(other)

    def _in_use(self, other: dict[str, Any]) -> Exception:
        from .errors import CellsynthError

        host = other.get("host")
        where = "" if host == platform.node() else f" on host {host}"
        return CellsynthError(
            f"{self.target} is in use by another {self.what} (process "
            f"{other.get('pid')}{where}, started {other.get('started', '?')}); wait for it "
            f"to end or choose another --out (if no such {self.what.split()[-1]} is going on, "
            f"delete {self.path})")

    def _create(self, me: dict[str, Any]) -> bool:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def held_by_a_live_process(self) -> bool:
        """Whether a process that is still running (or one on another host) holds the lock."""
        other = self._read()
        return other is not None and self._alive(other)

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    @staticmethod
    def _alive(other: dict[str, Any]) -> bool:
        if other.get("host") != platform.node():
            return True  # cannot tell: never take another machine's lock
        if other["pid"] == os.getpid():
            return False  # this process's own lock, left by a run that did not release it
        boot = _boot_id()
        if other.get("boot") and boot and other["boot"] != boot:
            return False  # taken before the machine restarted: that process is gone
        if not process_alive(other["pid"]):
            return False
        start = _process_start(other["pid"])
        # the pid is another process's now (started after the lock was taken)
        return not (other.get("process_start") and start and other["process_start"] != start)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        other = self._read()
        if other is not None and other.get("pid") == os.getpid() and \
                other.get("host") == platform.node():
            self.path.unlink(missing_ok=True)


def fit_checkpoint_dir(out: Path) -> Path:
    """Where ``cellsynth fit --out OUT`` keeps the CVAE's training checkpoint: beside ``OUT``
    (which a save replaces whole), ``.OUT.checkpoint``, removed when training ends."""
    return out.parent / f".{out.name}.checkpoint"


def _boot_id() -> str | None:
    """This boot of the machine (Linux's ``boot_id``), None where it cannot be read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat``'s 22nd
    field): with the pid, which process it is. None where it cannot be read."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]  # fields after the name: state is 3rd
    except (OSError, ValueError, IndexError):
        return None


def environment() -> dict[str, str]:
    """Versions that produced an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("cellsynth", "numpy", "scipy", "anndata", "torch", "xgboost"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
