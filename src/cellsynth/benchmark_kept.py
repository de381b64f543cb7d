"""What a benchmark keeps of each generator and reads back: its results (``DATASET/results/
NAME.json``, read back while :func:`model_key` and the data file's sha256 are unchanged:
:func:`reusable`), the real-vs-real floor (``floor.json``) and a fit saved before it was scored
(``DATASET/models/NAME`` with ``NAME.fit.json``). Files that do not read are said and not used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .config import MODEL_SECTIONS, RunConfig
from .outputs import write_json
from .resume import hashed_settings

logger = logging.getLogger(__name__)

#: bumped when the metrics a kept result holds change, so that --reuse reruns it
METRICS_VERSION = 5  # 4: gene-level AUCs averaged over halvings; 5: privacy audit too


def model_key(cfg: RunConfig, name: str, fits: int = 1) -> str:
    """What one generator's benchmark results depend on (``fits``: how many fits they are the
    mean of), as a short hash."""
    import hashlib
    from importlib.metadata import version

    d = hashed_settings(cfg)  # without the settings that do not change results
    keep = {k: d[k] for k in ("seed", "dataset", "qc", "split", "classifier")}
    section = MODEL_SECTIONS.get(name)
    if section and d[section]:  # nb's section is empty at its defaults: the keys kept before
        keep[section] = d[section]
    if fits > 1:  # one fit: the keys kept before
        keep["fits"] = fits
    blob = json.dumps({"model": name, "settings": keep, "version": version("cellsynth"),
                       "metrics": METRICS_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reusable(saved: dict[str, Any], cfg: RunConfig, name: str, fits: int, data: str | None,
             kept: Path, say: bool = True) -> bool:  # fmt: skip
    """Whether generator ``name``'s results ``saved`` in ``kept`` are read back for these
    settings and ``fits`` (kept over more fits: as good) and data file (sha256 ``data``)."""
    key = model_key(cfg, name, fits)
    more = int((saved.get("row") or {}).get("fits", 1))
    return saved.get("key") in (key, model_key(cfg, name, more) if more > fits else key) and \
        not other_data(saved, data, name, kept, say)


def is_kept(results: Path, name: str, cfg: RunConfig, fits: int, data: str | None) -> bool:
    """Whether a benchmark that reuses results reads ``name``'s back from ``results`` (the
    data set's kept results), fitting nothing for it. Nothing logged: the benchmark says it."""
    kept = results / f"{name}.json"
    return kept.is_file() and reusable(read_kept(kept, say=False), cfg, name, fits, data, kept,
                                       say=False)  # fmt: skip


def read_kept(path: Path, say: bool = True) -> dict[str, Any]:
    """A generator's results kept in ``path``, or {} where they do not read as such (a file cut
    short, edited, or left with a merge's conflict markers): said, and the generator is run
    again (left out where only kept results are read)."""
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved, dict) and isinstance(saved.get("row"), dict) and \
                isinstance(saved.get("details"), dict) and int(saved["row"].get("fits", 1)):
            return saved
        why = "not a generator's kept results"
    except (OSError, ValueError, TypeError) as err:
        why = str(err)
    (logger.warning if say else logger.debug)(
        "benchmark: the kept results in %s do not read (%s): not used (the generator is run "
        "again and the file rewritten; a page of kept results leaves it out)", path, why)
    return {}


def kept_floor(path: Path, key: str, data: str | None = None) -> dict[str, Any] | None:
    """The real-vs-real floor kept in ``path`` by an earlier benchmark with the same data, QC,
    split and seed (``key``; ``data``: the file's sha256, where both know it), or None: a page
    rebuilt from kept results computes nothing."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        return None
    return kept.get("floor") if kept.get("data") in (None, data) or data is None else None


def save_fit(gen: Any, models: Path, name: str, record: dict[str, Any]) -> None:
    """Save ``gen`` into ``models/NAME`` and, once it is saved, ``models/NAME.fit.json``: the
    key and data it was fitted with, its history and fit time (:func:`saved_fit`). The record
    is removed first, so a save stopped half way is never read back under an older record."""
    record_path = models / f"{name}.fit.json"
    record_path.unlink(missing_ok=True)
    gen.save(models / name)
    write_json(record_path, record)


def saved_fit(models: Path, name: str, fit_key: dict[str, Any]) -> tuple[Any, dict, float] | None:
    """The generator a stopped benchmark saved in ``models/NAME`` with the same settings and
    data (``fit_key``), its history and fit seconds, or None (no record, another key, or a
    model that does not load: fitted again). A benchmark stopped while scoring a fitted
    generator (privacy, TSTR) then scores it again without refitting it."""
    from .models.registry import load_generator

    try:
        record = json.loads((models / f"{name}.fit.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in fit_key.items()):
        return None
    try:
        gen = load_generator(models / name)
    except Exception as err:  # any save that does not load is fitted again
        logger.info("benchmark %s: its saved fit in %s does not load (%s); fitting it again",
                    name, models / name, err)  # fmt: skip
        return None
    logger.info("benchmark %s: reusing its fit saved in %s (a stopped benchmark's)", name,
                models / name)
    return gen, record.get("history") or {}, float(record.get("fit_seconds") or 0.0)


def other_data(saved: dict[str, Any], data: str | None, name: str, kept: Path,
                say: bool = True) -> bool:  # fmt: skip
    """Whether the results ``saved`` in ``kept`` were made from another version of the data
    file than the one of sha256 ``data`` (a file replaced under the same name: its settings,
    hence its key, unchanged); said in the log. Unknown on either side: not another."""
    if data is None or saved.get("data") in (None, data):
        return False
    (logger.info if say else logger.debug)(
        "benchmark %s: the results kept in %s were made from another version of the data "
        "file: not read back", name, kept)
    return True
