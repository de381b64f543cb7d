"""Positive controls for the results page: generators that leak their training cells on purpose.

* :class:`CopyGenerator` (``copy``) returns training cells themselves: perfect fidelity by
  construction and a certain privacy failure, the reference a results page reads every other
  generator against. The privacy audit must flag it.
* :class:`ScviPosteriorGenerator` (``scvi-pp``) is scvi-tools' posterior predictive sample: each
  generated cell re-draws one training cell of the type, ``z ~ N(qzm_i, diag(qzv_i))`` decoded
  with that cell's own library size into counts, as ``SCVI.posterior_predictive_sample`` does.
  It is what scvi users do to get cells of a type, and it leaks: each cell stays nearer its source
  than chance. The audit flags it only when SCVI is trained well on enough cells: 934 Kang PBMC
  training cells x 500 genes, scvi's defaults (200 epochs), distance AUC 0.570 and density 0.577
  over a threshold of 0.557; at 40-60 epochs (0.53-0.55), or on a few hundred cells, it does not,
  as the re-drawn counts are noisier than real cells.

Both follow the :class:`~cellsynth.models.base.Generator` protocol; they are benchmark controls,
not models for ``cellsynth run``. Both keep per-cell data of the training cells, so their saves
hold (or determine) the training cells; never share them where the training data may not go.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.numpy import save_file

from ..checksums import verify_checksums, write_checksums
from ..config import ScviConfig
from ..data.csr import stack_rows
from ..data.genes import gene_annotation
from ..errors import DataError, ModelFileError
from ..options import progress_bar
from ..outputs import save_tensors
from ..paths import expand_user
from ..seeds import checked_seed, derive_seed
from ._count_files import (
    load_libraries,
    per_type_rows,
    read_meta,
    read_tensors,
    row_chunks,
    save_libraries,
    training_rows,
    write_meta,
)
from ._model_dir import read_annotation, saves_whole
from ._scvi_files import import_scvi, load_module, read_module_files
from .base import (
    check_library_memory,
    check_request_memory,
    reads_cells,
    request,
    synthetic_adata,
    training_counts,
)
from .scvi import ScviGenerator

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def draw_rows(rng: np.random.Generator, n_cells: int, n: int) -> np.ndarray:
    """``n`` of ``n_cells`` rows: without replacement while they last, then with replacement."""
    if n <= n_cells:
        return rng.choice(n_cells, size=n, replace=False)
    return np.concatenate([rng.permutation(n_cells), rng.integers(0, n_cells, n - n_cells)])


class CopyGenerator:
    """A "generator" that returns its training cells (``copy``): a privacy negative control.

    ``fit`` keeps the counts of the training rows (``obs['cellsynth_split'] == 'train'``, else all
    but a random 10%), grouped by type; ``sample`` returns, per type, training cells of that type
    drawn without replacement while they last, then with replacement.

    Examples
    --------
    >>> model = CopyGenerator()
    >>> model.fit(adata, "cell_type", seed=0)
    >>> copies = model.sample({"B cells": 100}, seed=1)
    """

    name: ClassVar[str] = "copy"

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.gene_annotation: pd.DataFrame | None = None  # text columns of the training var
        self.label_key = "cell_type"
        self.counts = sp.csr_matrix((0, 0), dtype=np.float32)  # (n, G) training cells by type
        self.offsets = np.zeros(1, dtype=np.int64)  # (T + 1,) type k is rows offsets[k]:[k+1]
        self.history: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"CopyGenerator(n_labels={len(self.labels)}, n_cells={self.counts.shape[0]})"

    @reads_cells
    def fit(self, adata: ad.AnnData, label_key: str, *, seed: int = 0) -> dict[str, Any]:
        """Keep the training rows' counts, grouped by type; return a short history."""
        start = time.perf_counter()
        rows, y = training_rows(adata, label_key, seed=seed)
        labels = sorted(set(y))
        groups = per_type_rows(np.searchsorted(np.array(labels), y), len(labels))
        self.counts = training_counts(adata)[rows][np.concatenate(groups)]
        self.offsets = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)
        self.labels, self.genes, self.label_key = labels, list(map(str, adata.var_names)), label_key
        self.gene_annotation = gene_annotation(adata.var)
        self.history = {
            "n_cells": len(rows),
            "cells_per_type": {t: len(g) for t, g in zip(labels, groups, strict=True)},
            "seconds": time.perf_counter() - start,
            "seed": int(seed),  # the fit's provenance, saved with the model
        }
        logger.info("copy control: %d training cells of %d types", len(rows), len(labels))
        return self.history

    def sample(self, counts_per_type: dict[str, int], *, seed: int = 0) -> ad.AnnData:
        """Training cells of each requested type; rows grouped by type in the request's order."""
        pairs = request(counts_per_type, self.labels)
        stored = np.diff(self.counts.indptr)  # values each training cell holds
        check_request_memory([(float(np.mean(stored[self.offsets[k]:self.offsets[k + 1]])), n)
                              for k, n in ((self.labels.index(t), n) for t, n in pairs)],
                             len(self.genes))  # fmt: skip
        rng = np.random.default_rng(checked_seed(seed))
        picks = []
        for label, n in pairs:
            k = self.labels.index(label)
            first, stop = self.offsets[k], self.offsets[k + 1]
            picks.append(first + draw_rows(rng, int(stop - first), n))
        y = np.repeat([t for t, _ in pairs], [n for _, n in pairs])
        return synthetic_adata(self.counts[np.concatenate(picks)], y, self.genes,
                               label_key=self.label_key, model=self.name, seed=seed,
                               annotation=self.gene_annotation)  # fmt: skip

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, labels, genes and ``cells.safetensors`` (the CSR and offsets)."""
        directory = Path(directory)
        meta = {"model": self.name, "format_version": FORMAT_VERSION,
                "label_key": self.label_key, "history": self.history}  # fmt: skip
        write_meta(directory, meta, self.labels, self.genes, self.gene_annotation)
        x = self.counts
        tensors = {"data": x.data, "indices": x.indices, "indptr": x.indptr, "offsets": self.offsets}
        save_tensors(save_file, {k: np.ascontiguousarray(v) for k, v in tensors.items()},
                     directory / "cells.safetensors")
        write_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> CopyGenerator:
        """Read a directory written by :meth:`save`, checking that its files agree."""
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, genes = read_meta(directory, cls.name, FORMAT_VERSION)
        path = directory / "cells.safetensors"
        t = read_tensors(path)
        try:
            off, n = t["offsets"], t["indptr"].shape[0] - 1
            if off.shape != (len(labels) + 1,) or off[0] != 0 or off[-1] != n or (np.diff(off) <= 0).any():
                raise ValueError(f"offsets do not split {n} cells into the {len(labels)} types")
            x = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=(n, len(genes)))
            x.check_format(full_check=True)
            if not (np.isfinite(x.data).all() and (x.data >= 0).all()):
                raise ValueError("the counts hold negative or non-finite values")
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelFileError(f"{path} is invalid ({exc}); the files come from different "
                                 "models or were changed") from None  # fmt: skip
        model = cls()
        model.labels, model.genes, model.counts, model.offsets = labels, genes, x, off
        model.gene_annotation = read_annotation(directory, genes)
        model.label_key = str(meta.get("label_key", "cell_type"))
        model.history = meta.get("history") or {}
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model


class ScviPosteriorGenerator(ScviGenerator):
    """scvi-tools' posterior predictive (``scvi-pp``): each generated cell re-draws a training cell.

    ``fit`` trains SCVI exactly as :class:`~cellsynth.models.scvi.ScviGenerator` does and keeps,
    per training cell, its posterior mean and variance, library size and type. ``sample`` picks
    training cells of each type (a seeded permutation, cycled when more cells are asked for than
    the type has; :meth:`sources` says which), draws ``z ~ N(qzm_i, diag(qzv_i))``, decodes it
    with the cell's own library size and draws counts as ``ScviGenerator`` does.

    Parameters
    ----------
    config
        Architecture and training settings of ``scvi.model.SCVI``; its ``covariates`` are not
        used (a re-drawn cell keeps its type; the control has no requests by covariate).
    """

    name: ClassVar[str] = "scvi-pp"

    def __init__(self, config: ScviConfig | None = None) -> None:
        if config is not None and config.covariates:  # it re-draws cells, not combinations
            logger.info("scvi-pp re-draws training cells and does not condition on covariates; "
                        "scvi.covariates %s are not used", config.covariates)
            config = dataclasses.replace(config, covariates=[])
        super().__init__(config=config)
        self.design = None  # no requests by covariate (`cellsynth generate` refuses --where)
        self.qzm: list[np.ndarray] = []  # per type, (n_t, n_latent) posterior means
        self.qzv: list[np.ndarray] = []  # per type, (n_t, n_latent) posterior variances
        # self.libraries: per type, (n_t,) library sizes, row-aligned with qzm and qzv

    def __repr__(self) -> str:
        return (f"ScviPosteriorGenerator(n_labels={len(self.labels)}, n_genes={len(self.genes)}, "
                f"n_cells={sum(len(v) for v in self.libraries)})")  # fmt: skip

    @reads_cells
    def fit(self, adata: ad.AnnData, label_key: str, *, seed: int = 0) -> dict[str, Any]:
        """Train SCVI (as ``scvi``); keep each training cell's posterior and library size."""
        cells = self._train(adata, label_key, seed=seed)
        self.design = None
        groups = per_type_rows(cells.codes, len(self.labels))
        self.qzm = [cells.qzm[g].astype(np.float32) for g in groups]
        self.qzv = [cells.qzv[g].astype(np.float32) for g in groups]
        self.libraries = [cells.libraries[g] for g in groups]
        return self.history

    def sources(self, counts_per_type: dict[str, int], *, seed: int = 0) -> np.ndarray:
        """The training cell each row of ``sample(counts_per_type, seed=seed)`` re-draws.

        Returns
        -------
        For each generated row, the index of its source among the training cells of its type,
        in the order those cells had in the AnnData given to :meth:`fit`.
        """
        pairs = request(counts_per_type, self.labels)
        rng = np.random.default_rng(derive_seed(seed, "scvi-pp-sources"))
        out = []
        for label, n in pairs:
            n_t = len(self.libraries[self.labels.index(label)])
            out.append(rng.permutation(n_t)[np.arange(n) % n_t])
        return np.concatenate(out)

    @torch.no_grad()
    def sample(self, counts_per_type: dict[str, int], *, seed: int = 0) -> ad.AnnData:
        """Re-draw training cells of each type; rows grouped by type in the request's order."""
        pairs = request(counts_per_type, self.labels)
        if self.module is None:
            raise DataError("the scvi-pp model is not fitted; call fit() or load() first")
        check_library_memory(self.libraries, self.labels, pairs, len(self.genes))
        source = self.sources(counts_per_type, seed=seed)
        rng = np.random.default_rng(checked_seed(seed))
        blocks, start = [], 0
        bar = progress_bar(total=len(source), desc="scvi-pp sample", unit="cell")
        for label, n in pairs:
            k = self.labels.index(label)
            for m in row_chunks(n, len(self.genes)):
                i = source[start : start + m]
                sd = np.sqrt(self.qzv[k][i].astype(np.float64))
                z = self.qzm[k][i] + sd * rng.standard_normal(sd.shape)  # (m, n_latent)
                blocks.append(self._decode_sample(z, self.libraries[k][i].astype(np.float64), rng))
                start += m
                bar.update(m)
        bar.close()
        y = np.repeat([t for t, _ in pairs], [n for _, n in pairs])
        return synthetic_adata(stack_rows(blocks), y, self.genes,
                               label_key=self.label_key, model=self.name, seed=seed,
                               config=dataclasses.asdict(self.config),
                               annotation=self.gene_annotation)  # fmt: skip

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, labels, genes, ``module`` and ``cells`` safetensors."""
        if self.module is None:
            raise DataError("the scvi-pp model is not fitted; call fit() before save()")
        directory = Path(directory)
        meta = {"model": self.name, "format_version": FORMAT_VERSION, "label_key": self.label_key,
                "config": dataclasses.asdict(self.config), "module_kwargs": self.module_kwargs,
                "history": self.history}  # fmt: skip
        write_meta(directory, meta, self.labels, self.genes, self.gene_annotation)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_tensors(save_file, {k: v.numpy() for k, v in state.items()},
                     directory / "module.safetensors")
        save_libraries(directory / "cells.safetensors", self.libraries,
                       {"qzm": np.concatenate(self.qzm), "qzv": np.concatenate(self.qzv)})  # fmt: skip
        write_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> ScviPosteriorGenerator:
        """Rebuild the SCVI module and read the per-cell posteriors (no pickle)."""
        scvi = import_scvi()
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, genes = read_meta(directory, cls.name, FORMAT_VERSION)
        config, kwargs, state = read_module_files(directory, meta, genes)
        libraries, cells = load_libraries(directory / "cells.safetensors", len(labels))
        n, d = sum(len(v) for v in libraries), kwargs["n_latent"]
        if any(cells.get(k, np.empty(0)).shape != (n, d) for k in ("qzm", "qzv")) or not (
            cells["qzv"] >= 0
        ).all():
            raise ModelFileError(f"{directory / 'cells.safetensors'} does not hold qzm and qzv "
                                 f"of {n} cells x n_latent={d}; the files come from different "
                                 "models")  # fmt: skip
        model = cls(config=config)
        model.module = load_module(scvi, kwargs, state, directory)
        bounds = np.cumsum([len(v) for v in libraries])[:-1]
        model.qzm, model.qzv = np.split(cells["qzm"], bounds), np.split(cells["qzv"], bounds)
        model.module_kwargs, model.labels, model.genes, model.libraries = kwargs, labels, genes, libraries
        model.gene_annotation = read_annotation(directory, genes)
        model.label_key = str(meta.get("label_key", "cell_type"))
        model.history = meta.get("history") or {}
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model
