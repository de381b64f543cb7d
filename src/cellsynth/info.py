"""``cellsynth info PATH``: describe a run directory, a model directory, a benchmark directory
or an h5ad file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .config import PCA_SPACE_MODEL
from .errors import CellsynthError, listed
from .paths import expand_user
from .runtime import RunLock, changed_outputs, fit_checkpoint_dir


def _json(path: Path) -> Any:
    """A JSON file of a run or model directory, or an error naming it when it is corrupt."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CellsynthError(f"{path} is corrupt ({exc}); rerun what wrote it") from None


def describe(path: str | Path) -> dict[str, Any]:
    """A plain dict describing what is at ``path``; ``kind`` says which it is."""
    path = expand_user(path)
    try:
        return _describe(path)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # JSON of another shape
        raise CellsynthError(f"{path}: its files are not the ones cellsynth writes (in them: "
                             f"{type(exc).__name__}: {exc}); rerun what wrote them") from None


def _describe(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CellsynthError(_fit_underway(path) or f"{path} does not exist; give a run "
                             "directory, a model directory or an .h5ad")
    if path.is_file():
        _refuse_a_part(path)
        return _describe_h5ad(path)
    if (path / "manifest.json").is_file():
        return _describe_run(path)
    if (path / "config.json").is_file():
        return _describe_model(path)
    if (path / "model.ubj").is_file():
        labels = _json(path / "labels.json") if (path / "labels.json").is_file() else []
        if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels) or \
                len(set(labels)) < len(labels):  # as the classifier's loader refuses it
            raise CellsynthError(f"{path / 'labels.json'} is not a list of distinct type names "
                                 "as the classifier writes it; rerun what wrote it")
        return {"kind": "classifier", "path": str(path), "n_classes": len(labels), "labels": labels}
    if (path / "summary.json").is_file() or list(path.glob("*/summary.json")) or \
            (path / RunLock.BENCHMARK).is_file() or list(path.glob("*/results/*.json")):
        # `cellsynth benchmark --out` (one stopped before a data set finished included), or
        # one data set's folder of it
        return _describe_benchmark(path)
    if (path / "checkpoint").is_dir():  # a run's generator/ while it trains
        raise CellsynthError(f"{path} holds a training checkpoint and no saved model yet: its "
                             "training has not finished (a stopped run resumes from it when "
                             "rerun)")
    raise CellsynthError(
        f"{path} is neither a run directory (manifest.json), a model directory (config.json), "
        "a classifier (model.ubj) nor a benchmark directory (DATASET/summary.json)"
    )


def _refuse_a_part(path: Path) -> None:
    """Refuse a file of a run, model or classifier directory that is no h5ad (a model's
    ``config.json`` or weights), naming the directory to describe: described as an h5ad, it
    was called a table or a file to convert with scanpy."""
    import h5py

    try:
        if h5py.is_hdf5(path):
            return
    except OSError:
        return  # the h5ad reader says why it cannot be read
    for folder in list(path.parents)[:3]:
        what = ("run" if (folder / "manifest.json").is_file() else
                "classifier" if (folder / "model.ubj").is_file() else
                "saved model" if _saved_model(folder) else "")  # fmt: skip
        if what:
            raise CellsynthError(f"{path} is a file of the {what} in {folder}, not an h5ad; "
                                 f"describe the directory: cellsynth info {folder}")


def _saved_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model cellsynth saved (its config.json names the model)."""
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "model" in meta and "format_version" in meta


def _has_x(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return "X" in f


def _x_counts(adata: Any) -> bool:
    """Whether ``X`` holds whole numbers, as counts: where ``layers['counts']`` (or ``raw.X``)
    holds counts too, those are read, and X was described as "normalised values", also when
    it holds the same counts."""
    from .data.io import _probe
    from .data.values import is_counts

    try:
        return is_counts(_probe(adata.X))
    except Exception:  # an X that cannot be read: described as before
        return False


def _describe_h5ad(path: Path) -> dict[str, Any]:
    from .data.io import find_counts, read
    from .data.labels import is_bool_labels
    from .errors import DataError

    adata = read(path, backed=True)
    try:
        expr = find_counts(adata)
        what = ("raw counts" if expr.counts == "X" else
                f"not counts: {expr.note}" if expr.note else
                f"raw counts too (cellsynth reads those in {expr.counts})"
                if expr.counts and _x_counts(adata) else "normalised values")
        if not _has_x(path):  # counts kept in a layer or raw alone
            what = "none (the file has no X)"
        counts = expr.counts or "none found"
    except DataError as exc:  # e.g. PCA coordinates: describe, do not refuse
        what, counts = f"not expression values ({exc})", "none found"
    labels = {}
    for col in adata.obs.columns:
        s = adata.obs[col]
        if (isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object) \
                and not is_bool_labels(s):  # True/False: refused as a label column
            n = int(s.nunique())
            if 1 < n <= max(1000, adata.n_obs // 2):
                labels[str(col)] = {"dtype": str(s.dtype), "n_values": n}
    out = {
        "kind": "h5ad",
        "path": str(path),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "X": what,
        "counts": counts,
        "label_columns": labels,
        "layers": list(adata.layers.keys()),
        "has_raw": adata.raw is not None,
    }
    if "cellsynth" in adata.uns:
        made = adata.uns["cellsynth"]  # a generated file's provenance; another program's value
        out["cellsynth"] = ({k: v for k, v in made.items() if k != "config"}
                            if isinstance(made, Mapping) else f"not cellsynth's provenance: {made!r}")
    adata.file.close()
    return out


def _describe_run(path: Path) -> dict[str, Any]:
    manifest = _json(path / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
        raise CellsynthError(f"{path / 'manifest.json'} holds no run's stages: its files are "
                             "not the ones cellsynth writes (another program's manifest.json); "
                             "give a run directory written by cellsynth run, or rerun the run "
                             "into it")
    stages = {k: {"status": v.get("status"), "seconds": v.get("seconds")}
              for k, v in manifest.get("stages", {}).items()}
    for name, stage in stages.items():  # done, but a file it wrote deleted or replaced since
        changed = changed_outputs(path, manifest["stages"][name]) \
            if stage["status"] == "done" else []
        if changed:
            more = f" (and {len(changed) - 1} more of its files)" if len(changed) > 1 else ""
            stage["status"] = (f"done, but its output {changed[0]}{more}: the next run "
                               "redoes it and the stages that use it")
    if not RunLock(path).held_by_a_live_process():  # killed: no process runs those stages
        for stage in stages.values():
            if stage["status"] == "running":
                stage["status"] = "interrupted (its process is gone; run again to go on)"

    out = {"kind": "run", "path": str(path), "stages": stages,
           "cellsynth": manifest.get("environment", {}).get("cellsynth")}
    read = manifest["stages"].get("data", {}).get("input")
    if isinstance(read, dict) and isinstance(read.get("path"), str):
        out["data"] = read["path"] + _data_changed(Path(read["path"]), read)
    summary = path / "metrics" / "summary.json"
    if summary.is_file():
        s = _json(summary)
        out["f1_macro"] = {k: v["fine"]["f1_macro"] for k, v in s.items() if "fine" in v}
        unfinished = [k for k, v in stages.items() if not str(v["status"]).startswith("done")]
        if unfinished:  # a rerun stopped: the results on disk are an earlier run's
            out["f1_macro_note"] = (f"from an earlier run: stage(s) {', '.join(unfinished)} "
                                    "not done since; run again to bring them up to date")
    if (path / "results.md").is_file():
        out["results"] = str(path / "results.md")
    return out


def _data_changed(data: Path, read: dict[str, Any]) -> str:
    """How the data file a run's data stage read differs now, in words ("" when its size and
    modification time are the ones recorded)."""
    try:
        st = data.stat()
    except OSError:
        return (" (not there now: to rerun, give the file from where it is now; the run knows "
                "it by its content)")
    if st.st_size != read.get("size") or st.st_mtime_ns != read.get("mtime_ns"):
        return (" (changed since the run read it: a rerun checks its content and, if it "
                "differs, redoes every stage)")
    return ""


def _describe_benchmark(path: Path) -> dict[str, Any]:
    """A benchmark directory (a folder per data set, each with its ``summary.json``) or one
    data set's folder of it: each data set's shape after QC and its generators' verdicts."""
    one = (path / "summary.json").is_file()
    folders = [path] if one else sorted({p.parent for p in path.glob("*/summary.json")} |
                                        {p.parent.parent for p in path.glob("*/results/*.json")})
    running = RunLock.of_benchmark(path).held_by_a_live_process()
    datasets = {}
    for folder in folders:
        if not (folder / "summary.json").is_file():  # stopped (or still going) before its end
            kept = sorted(p.stem for p in (folder / "results").glob("*.json")
                          if p.stem != "floor")
            datasets[folder.name] = {"status": "not finished" + (
                " (the benchmark is running)" if running else
                " (the benchmark was stopped; the same command reuses the results kept of "
                + (", ".join(kept) if kept else "none of its generators") + " and fits the rest)")}
            continue
        s = _json(folder / "summary.json")
        datasets[folder.name] = {**s.get("shape", {}), "generators": ", ".join(
            name for name in s.get("rows", {}) if name != "real vs real"),
            "verdicts": s.get("verdicts", []), **({"seed": s["seed"]} if "seed" in s else {}),
            **({"failed": s["failed"]} if s.get("failed") else {})}  # named, as on the page
    page = path.parent / "RESULTS.md" if one else path / "RESULTS.md"
    out: dict[str, Any] = {"kind": "benchmark data set" if one else "benchmark",
                           "path": str(path), "datasets": datasets}
    if running:
        out["status"] = "running: another process is writing it"
    if page.is_file():
        out["results"] = str(page)
    return out


def _fit_underway(path: Path) -> str:
    """Why the model directory ``path`` is not there yet, in words, when ``cellsynth fit --out
    PATH`` left something beside it ("" when it did not): the lock of a fit still writing it,
    or a stopped fit's training checkpoint (:meth:`RunLock.of_fit`,
    :func:`~cellsynth.runtime.fit_checkpoint_dir`)."""
    lock = RunLock.of_fit(path)
    if lock.path.is_file() and lock.held_by_a_live_process():
        return (f"{path} does not exist yet: a `cellsynth fit` writing it is still running; "
                "wait for it to end")
    if fit_checkpoint_dir(path).is_dir():
        return (f"{path} does not exist: a stopped `cellsynth fit --out {path}` left its "
                f"training checkpoint in .{path.name}.checkpoint beside it; rerun that fit to "
                "resume it")
    return ""


def _describe_model(path: Path) -> dict[str, Any]:
    from .checksums import verify_checksums

    verify_checksums(path)  # a changed or missing file is named, as generate would refuse it
    meta = _json(path / "config.json")
    labels = _json(path / "labels.json") if (path / "labels.json").is_file() else []
    genes = _json(path / "genes.json") if (path / "genes.json").is_file() else None
    history = _json(path / "history.json") if (path / "history.json").is_file() else \
        meta.get("history")
    fitted = history.get("seed") if isinstance(history, dict) else None  # older fits: none
    return {
        "kind": "model",
        "path": str(path),
        "model": meta.get("model"),
        "format_version": meta.get("format_version"),
        "cellsynth_version": meta.get("cellsynth_version"),
        "n_types": len(labels),
        "types": labels,
        # a run's reference CVAE (PCA_SPACE_MODEL) models the run's PCA: its inputs are PCs
        **({"n_components": meta.get("n_input"), "note": "a model of a run's PCA, not a "
            "generator of cells: the run's generated points are in its synthetic/"}
           if meta.get("model") == PCA_SPACE_MODEL else
           {"n_genes": len(genes) if genes is not None else meta.get("n_input")}),
        # what the model conditions on besides the type, and the levels it can generate
        "covariates": {k: _levels_text(v) for k, v in
                       (meta.get("design") or {}).get("levels", {}).items()} or "none",
        **({"seed": fitted} if fitted is not None else {}),  # the fit's: how to refit it alike
    }


def _levels_text(levels: list[Any]) -> str:
    """A covariate's levels on one line: ``"ctrl, stim"``, or ``"ctrl; IFN-b, 10 ng"`` where a
    level holds a comma (joined by commas, it would read as more levels than there are)."""
    return listed(levels, len(levels))


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {v}" for k, v in value.items()]
        elif isinstance(value, list) and len(value) > 12:
            lines.append(f"{key}: {', '.join(map(str, value[:12]))}, ... ({len(value)} in all)")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
