"""Helpers shared by the count-space generators (``nb``, ``scvi``, ``reference``, the
controls): each type's training rows, the library-size tables, the model files
(``config.json``, ``labels.json``, ``genes.json``, ``var.json``) and the row blocks cells are
drawn in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..errors import DataError, ModelFileError
from ..outputs import save_tensors
from ._draws import MAX_MEAN
from ._model_dir import (
    annotation_files,
    check_format,
    check_kind,
    json_file,
    missing_file,
    model_directory,
    unreadable_file,
)
from ._training import package_version
from .base import fit_labels, split_masks

#: values (rows x genes) densified at a time while generating: 8M float64 = 64 MB per array
CHUNK_VALUES = 2**23


def per_type_rows(codes: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """Row indices of each class code, in code order."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_labels + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(n_labels)]


def training_rows(adata: ad.AnnData, label_key: str, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (``train`` of the split, else all but a random 10%) and their labels."""
    y = fit_labels(adata, label_key)
    train, _ = split_masks(adata, y, seed=seed)
    rows = np.flatnonzero(train)
    if rows.size == 0:
        raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
    return rows, y[rows]


def save_libraries(
    path: Path, libraries: list[np.ndarray], extra: dict[str, np.ndarray] | None = None
) -> None:
    """Write per-type library sizes as one array and offsets (plus ``extra`` arrays)."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in libraries])]).astype(np.int64)
    tensors = {"libraries": np.concatenate(libraries).astype(np.float32), "offsets": offsets}
    tensors.update({k: np.ascontiguousarray(v) for k, v in (extra or {}).items()})
    save_tensors(save_file, tensors, path)


def load_libraries(path: Path, n_labels: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Read :func:`save_libraries`; return the per-type arrays and every other array in the file."""
    tensors = read_tensors(path)
    lib, off = tensors.pop("libraries", None), tensors.pop("offsets", None)
    if (
        lib is None
        or off is None
        or off.shape != (n_labels + 1,)
        or off[0] != 0
        or off[-1] != lib.shape[0]
        or (np.diff(off) <= 0).any()
    ):
        raise ModelFileError(
            f"{path} does not hold library sizes for the {n_labels} cell types in labels.json; "
            "the files come from different models"
        )
    if not (np.isfinite(lib).all() and (lib >= 0).all() and (lib <= MAX_MEAN).all()):
        raise ModelFileError(f"{path} holds library sizes that are no cell's total count "
                             f"(negative, not finite or over {MAX_MEAN:.0e}): the file was damaged "
                             "or edited; restore it from the same save, or fit the model again")
    return [lib[off[k] : off[k + 1]] for k in range(n_labels)], tensors


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays; :class:`ModelFileError` when missing or corrupt."""
    if not path.is_file():
        raise missing_file(path, path.parent)
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable_file(path, path.parent, exc) from None


def write_meta(directory: Path, meta: dict[str, Any], labels: list[str], genes: list[str],
               annotation: pd.DataFrame | None = None) -> None:  # fmt: skip
    """Write ``config.json`` (model name, format and package version), labels, genes and their
    annotation (``var.json``, where the training data's var had text columns)."""
    model_directory(directory)
    meta = {"cellsynth_version": package_version(), **meta}
    (directory / "config.json").write_text(json.dumps(meta, indent=2))
    (directory / "labels.json").write_text(json.dumps(labels, indent=2))
    (directory / "genes.json").write_text(json.dumps(genes))
    for name, text in annotation_files(annotation).items():
        (directory / name).write_text(text)


def read_meta(
    directory: Path, model: str, format_version: int
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Read and check :func:`write_meta`'s files; :class:`ModelFileError` on any disagreement.
    A model saved under an older name of the generator (``seed`` for ``reference``) is read as
    well. The caller checks the directory's checksums once its own structural checks passed
    (``verify_checksums``), so those keep their messages."""
    from ..config import MODEL_ALIASES

    names = {model, *(old for old, new in MODEL_ALIASES.items() if new == model)}
    check_kind(directory, model, names)
    out = []
    for name in ("config.json", "labels.json", "genes.json"):
        path = directory / name
        if not path.is_file():
            raise missing_file(path, directory, model)
        out.append(json_file(path))
    meta, labels, genes = out
    if not isinstance(meta, dict) or meta.get("model") not in names:
        raise ModelFileError(f"{directory / 'config.json'} does not describe a {model!r} model")
    check_format(directory, meta, format_version)
    for name, values in (("labels.json", labels), ("genes.json", genes)):
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
            or len(set(values)) != len(values)
        ):
            raise ModelFileError(f"{directory / name} must hold a non-empty list of unique names")
    return meta, labels, genes


def row_chunks(n: int, n_genes: int) -> list[int]:
    """Sizes of the row blocks ``n`` generated cells are drawn in (about 64 MB per dense array)."""
    step = max(1, CHUNK_VALUES // max(n_genes, 1))
    return [min(step, n - start) for start in range(0, n, step)]


def draw_libraries(rng: np.random.Generator, libraries: np.ndarray, n: int) -> np.ndarray:
    """``n`` library sizes drawn with replacement from a type's training cells, float64."""
    return rng.choice(libraries.astype(np.float64), size=n, replace=True)
