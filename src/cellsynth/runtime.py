"""Timing, memory and the run manifest: shared by the pipeline stages."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger("cellsynth.pipeline")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 1024**2


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(path, json.dumps(data, indent=2, default=_default))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: into ``PATH.tmp``, then renamed to ``path``.

    A failure or a kill mid-write leaves ``path`` as it was (the temporary file is removed on
    error); the rename replaces a symlink at ``path`` rather than writing through it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # never write through a link left at the temporary name
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            from .errors import CellsynthError

            raise CellsynthError(f"disk full while writing {path}; free space or choose "
                                 "another --out (the earlier file is left as it was)") from None
        raise


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


class Manifest:
    """``manifest.json``: per stage its status, wall time and peak memory."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"stages": {}}
        if path.is_file():
            self.data = json.loads(path.read_text())

    def set_meta(self, **meta: Any) -> None:
        self.data.update(meta)
        write_json(self.path, self.data)

    def is_done(self, name: str, config_hash: str) -> bool:
        entry = self.data["stages"].get(name, {})
        return entry.get("status") == "done" and entry.get("config_hash") == config_hash

    @contextmanager
    def stage(self, name: str, config_hash: str = ""):
        """Run a stage: log its start and its wall time and peak memory at the end.

        The stage is marked done (with ``config_hash``) only after its body, which writes its
        outputs, has finished: a killed run leaves it ``running`` and a resume redoes it.
        """
        logger.info("stage %s: start", name)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"status": "running", "config_hash": config_hash}
        self.data["stages"][name] = entry
        write_json(self.path, self.data)
        try:
            yield entry
        except BaseException as exc:
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 3),
                         peak_rss_mb=round(peak_rss_mb(), 1))
            _log_failed(name, entry["seconds"], entry["peak_rss_mb"], exc)
            try:
                write_json(self.path, self.data)
            except Exception:  # e.g. the disk is full: the stage's own error is the one to raise
                logger.warning("stage %s: could not mark it failed in %s", name, self.path)
            raise
        entry.update(status="done", seconds=round(time.perf_counter() - t0, 3),
                     peak_rss_mb=round(peak_rss_mb(), 1))
        write_json(self.path, self.data)
        _log_done(name, entry["seconds"], entry["peak_rss_mb"])


def _log_done(name: str, seconds: float, rss: float) -> None:
    logger.info("stage %s: done in %.1f s (peak RSS %.0f MB)", name, seconds, rss)


def _log_failed(name: str, seconds: float, rss: float, exc: BaseException) -> None:
    # INFO, like the done line: run.log always gets it, and a user error stays one line on a
    # --quiet console (the CLI prints the error itself)
    logger.info("stage %s: failed after %.1f s (peak RSS %.0f MB): %s", name, seconds, rss,
                type(exc).__name__)


@contextmanager
def timed(name: str):
    """A step outside the manifest (writing ``results.md`` and ``report.html``) timed like a stage:
    ``stage NAME: done in S s (peak RSS M MB)``, or ``failed after`` (then re-raised)."""
    logger.info("stage %s: start", name)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        _log_failed(name, time.perf_counter() - t0, peak_rss_mb(), exc)
        raise
    _log_done(name, time.perf_counter() - t0, peak_rss_mb())


#: the pipeline's stages in order: the config sections each reads, and the stages it uses
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data": (("seed", "dataset", "qc", "split"), ()),
    "features": (("features",), ("data",)),
    "classifier": (("classifier",), ("features",)),
    "generator": (("generator", "seed_vae", "cvae", "scvi"), ("features",)),
    "experiments": (("generator", "classifier"), ("classifier", "generator")),
    "explain": (("explain",), ("classifier",)),
    "evaluation": (("report",), ("experiments",)),
}

#: settings that change how a stage runs, not what it produces: left out of the stage hashes, so
#: changing them does not redo a finished stage (how often training checkpoints are written)
UNHASHED: dict[str, tuple[str, ...]] = {"cvae": ("checkpoint_every", "checkpoint_seconds"),
                                      "dataset": ("drop_undetected_genes",)}  # fit only

#: settings added after results were kept, with the value that does what the code did before
#: them: hashed only when set to something else, so adding one keeps every kept result valid
ADDED: dict[str, dict[str, Any]] = {
    "cvae": {"kl_weight": 1.0, "min_improvement": 0.0, "dispersion_fit": "learned",
             "select": "elbo"}
}


def hashed_settings(cfg: Any) -> dict[str, Any]:
    """The config as a dict without the :data:`UNHASHED` settings, nor the :data:`ADDED` ones
    at their earlier behaviour's value: what results depend on."""
    config = dataclasses.asdict(cfg)
    for section, keys in UNHASHED.items():
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k not in keys}
    for section, before in ADDED.items():
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items()
                               if k not in before or v != before[k]}  # fmt: skip
    return config


class ResumePlan:
    """Which stages of a run directory can be skipped: done before with the same settings.

    A stage's hash covers its own config sections and the hashes of the stages it uses, so a
    QC change redoes everything, while a classifier change keeps the trained generator. A stage
    runs when forced, when its hash changed, or when a stage it uses ran.
    """

    def __init__(self, manifest: Manifest, cfg: Any, force: set[str]):
        unknown = set(force) - set(STAGES)
        if unknown:
            from .errors import ConfigError

            raise ConfigError(f"--force: unknown stage(s) {sorted(unknown)}; stages are: "
                              f"{', '.join(STAGES)}")
        self.manifest, self.force, self.ran = manifest, set(force), set()
        config = hashed_settings(cfg)
        self.hashes: dict[str, str] = {}
        for name, (sections, uses) in STAGES.items():
            blob = json.dumps({"config": {k: config[k] for k in sections},
                               "uses": [self.hashes[u] for u in uses]}, sort_keys=True, default=str)
            self.hashes[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def hash(self, name: str) -> str:
        return self.hashes[name]

    def runs(self, name: str) -> bool:
        """Whether ``name`` must run; logs the skip otherwise."""
        uses = STAGES[name][1]
        if (name in self.force or self.ran.intersection(uses)
                or not self.manifest.is_done(name, self.hashes[name])):
            self.ran.add(name)
            return True
        logger.info("stage %s: done before with the same settings, skipped", name)
        return False


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
