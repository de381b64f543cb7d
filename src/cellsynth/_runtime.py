"""Timing, memory and the run manifest: shared by the pipeline stages."""

from __future__ import annotations

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_default))
    os.replace(tmp, path)


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

    @contextmanager
    def stage(self, name: str):
        """Run a stage: log its start and its wall time and peak memory at the end."""
        logger.info("stage %s: start", name)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"status": "running"}
        self.data["stages"][name] = entry
        write_json(self.path, self.data)
        try:
            yield entry
        except BaseException:
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 3))
            write_json(self.path, self.data)
            raise
        entry.update(status="done", seconds=round(time.perf_counter() - t0, 3),
                     peak_rss_mb=round(peak_rss_mb(), 1))
        write_json(self.path, self.data)
        logger.info("stage %s: done in %.1f s (peak RSS %.0f MB)", name, entry["seconds"],
                    entry["peak_rss_mb"])


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
