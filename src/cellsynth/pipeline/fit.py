"""``cellsynth fit``: one generator trained on an h5ad of raw counts, outside a run directory."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from ..cells import for_training
from ..config import RunConfig, toml_text
from ..errors import DataError
from ..models.base import check_save_dir, is_model_dir
from ..models.registry import make_generator
from ..outputs import enclosing_run
from ..runtime import RunLock
from ..runtime import fit_checkpoint_dir as checkpoint_dir

logger = logging.getLogger(__name__)


def fit_model(cfg: RunConfig, data: str | Path | ad.AnnData, label_key: str, out: str | Path, *,
              model: str = "cvae", seed: int | None = None) -> tuple[Any, dict]:  # fmt: skip
    """Train generator ``model`` on ``data`` and save it into ``out``.

    The cells are read as ``dataset.backed`` says (``"auto"``: from disk for files over 2 GB),
    every count value is checked chunk by chunk, cells without a label are left out, genes
    with no count in the training cells are left out (``dataset.drop_undetected_genes``), and
    a seeded 10% of the cells (or ``obs['cellsynth_split']``) is held out for validation. The
    CVAE trains from disk in bounded memory; the other generators read their cells into
    memory; the CVAE checkpoints its training beside ``out`` (:func:`checkpoint_dir`), so the
    same call after a stop resumes it. ``seed`` (default: ``cfg.seed``) seeds all of it. ``out``
    also receives
    ``run_config.toml``, the settings used: the seed, the data file and label column included.

    Returns
    -------
    The trained generator and its training history.
    """
    out = Path(out).expanduser()
    check_model_out(out, data)  # before the fit: no training is lost to a bad --out
    # one fit per model directory: two at once would share one training checkpoint and mix
    # their saves (one's run_config.toml beside the other's weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock.of_fit(out)
    lock.acquire()
    try:
        return _fit(cfg, data, label_key, out, model=model, seed=seed)
    finally:
        lock.release()


def _fit(cfg: RunConfig, data: str | Path | ad.AnnData, label_key: str, out: Path, *,
         model: str, seed: int | None) -> tuple[Any, dict]:  # fmt: skip
    """:func:`fit_model` once ``out`` is checked and its lock taken."""
    seed = cfg.seed if seed is None else seed
    used = dataclasses.replace(cfg, seed=seed, dataset=dataclasses.replace(
        cfg.dataset, label_key=label_key,
        path=str(Path(data).resolve()) if isinstance(data, str | Path) else cfg.dataset.path))
    cells = for_training(data, label_key, seed=seed, backed=cfg.dataset.backed,
                         drop_undetected=cfg.dataset.drop_undetected_genes,
                         chunk_size=cfg.qc.chunk_size)  # fmt: skip
    try:
        gen = make_generator(model, cfg)
        if model == "cvae":  # a stopped fit resumes from its checkpoint (same data, settings)
            key = str(Path(data).resolve()) if isinstance(data, str | Path) else ""
            history = gen.fit(cells, seed=seed, checkpoint_dir=checkpoint_dir(out),
                              checkpoint_key=f"{key}|{label_key}")
        else:
            rows = cells.split_rows()
            fit_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
            if cells.on_disk:
                logger.warning("generator %s trains in memory: reading its %d cells", model,
                               len(fit_rows))  # fmt: skip
            history = gen.fit(cells.to_memory(fit_rows), label_key, seed=seed)
    finally:
        cells.close()
    # written beside out, settings included, then put in its place whole (saves_whole): a kill
    # never leaves a model without the settings it was fitted with
    gen.save(out, beside={"run_config.toml": toml_text(used)})
    return gen, history




def check_model_out(out: Path, data: Any = None) -> None:
    """Refuse a model directory that is a file, the input, or a non-empty directory that is not
    a saved model (a run directory, anyone's files): the model would mix with them, and a
    refit replaces the directory whole (:func:`~cellsynth.models._model_dir.check_save_dir`)."""
    if isinstance(data, str | Path) and Path(data).expanduser().resolve().is_relative_to(
            out.resolve()):
        raise DataError(f"--out {out} holds the input {data}; a refit replaces the directory "
                        "whole: give another --out")
    if out.suffix.lower() == ".h5ad" and not is_model_dir(out):  # a file's name, for a folder
        raise DataError(f"--out {out} names an .h5ad file, but fit writes a model directory "
                        f"(config.json, weights, ...): give a folder such as "
                        f"{out.with_suffix('')}; `cellsynth generate MODEL_DIR --out "
                        f"{out.name}` then writes cells to an .h5ad")
    run = enclosing_run(out)
    if run is not None:
        raise DataError(f"--out {out} is in the run directory {run}: the run's own model is "
                        "its generator/, which `cellsynth run` trains and checks; give a "
                        "directory outside the run")
    above = next((p for p in out.expanduser().resolve().parents if is_model_dir(p)), None)
    if above is not None:
        raise DataError(f"--out {out} is inside the model directory {above}: a refit of that "
                        "model would delete it; give a directory of its own")
    check_save_dir(out, "--out")
