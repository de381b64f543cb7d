"""The simplest count generator: an independent negative binomial per gene and cell type.

For a type ``t`` with training cells ``i`` (library sizes ``L_i``) and gene ``g`` the model is
``x_ig ~ NB(mean = L_i p_tg, dispersion theta_tg)``. Both are fitted by moments, sparse:

* ``p_tg = sum_i x_ig / sum_i L_i`` (the pooled proportion);
* ``E[(x - L p)^2 - x] = (L p)^2 / theta`` gives
  ``1 / theta = (S2 - 2 p SLx + p^2 SL2 - S1) / (p^2 SL2)`` with ``S1 = sum x``, ``S2 = sum x^2``,
  ``SLx = sum L x`` and ``SL2 = sum L^2``; a non-positive value (no over-dispersion) is the
  Poisson limit and is stored as :data:`MAX_THETA`.

New cells draw a library size from the type's training cells (with replacement); the gene means
are ``mu_tg * L / mean(L_t)`` with ``mu_tg = p_tg mean(L_t)``, and counts come from a gamma-Poisson
mixture drawn with numpy. Genes are independent given the library size: the baseline keeps
each type's mean and variance and nothing of the gene-gene structure.

With ``covariate_keys`` (donor, condition...) the same fit is made per type and combination of
levels (a :class:`~._design.Design`, as the CVAE's) for every combination with at least
``min_cells`` training cells; a smaller combination, or one no training cell had, is generated
from the type's fit (pooled over the levels), and the combinations that fell back are recorded.

The helpers for library sizes, sampling and model directories are shared by the other
count-space generators (``seed``, ``scvi``).
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.numpy import save_file

from .. import keys as K
from ..checksums import verify_checksums, write_checksums
from ..data.csr import stack_rows
from ..data.genes import gene_annotation
from ..data.labels import check_label
from ..errors import ConfigError, DataError, ModelFileError, listed
from ..options import progress_bar
from ..outputs import save_tensors
from ..paths import expand_user
from ..seeds import checked_seed
from ._count_files import (
    draw_libraries,
    load_libraries,
    per_type_rows,
    read_meta,
    read_tensors,
    row_chunks,
    save_libraries,
    training_rows,
    write_meta,
)
from ._design import Design, DesignRequests
from ._draws import nb_csr
from ._model_dir import (
    read_annotation,
    read_design,
    saved_label_key,
    saved_settings,
    saves_whole,
    setting,
)
from ._training import package_version
from .base import (
    check_memory,
    fit_labels,
    in_memory,
    key_list,
    reads_cells,
    request_bytes,
    synthetic_adata,
    training_counts,
    writable_uns,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: dispersion of genes without over-dispersion (the Poisson limit) or without counts
MAX_THETA = 1e4
#: smallest dispersion kept (a few outlier cells can make the moment estimate tiny)
MIN_THETA = 1e-3
#: fewest training cells a combination of covariate levels is fitted on (else: the type's fit)
MIN_CELLS = 20


def nb_moments(
    x: sp.csr_matrix, *, max_theta: float = MAX_THETA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gene proportion ``p``, dispersion ``theta`` and the library sizes of the rows of ``x``.

    ``x`` is one cell type's counts (CSR); nothing is densified. See the module docstring.
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()  # (n,)
    s1 = np.asarray(x.sum(axis=0)).ravel()  # (G,)
    s2 = np.asarray(x.multiply(x).sum(axis=0)).ravel()
    slx = np.asarray(x.T @ lib).ravel()  # sum_i L_i x_ig
    sl, sl2 = lib.sum(), (lib**2).sum()
    p = s1 / sl if sl > 0 else np.zeros_like(s1)
    excess = s2 - 2 * p * slx + p**2 * sl2 - s1
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_theta = excess / (p**2 * sl2)
        theta = np.where(inv_theta > 0, 1.0 / inv_theta, max_theta)
    theta = np.clip(np.nan_to_num(theta, nan=max_theta), MIN_THETA, max_theta)
    return p, theta, lib


class NegBinBaseline(DesignRequests):
    """Independent negative binomial per gene and cell type, fitted by moments (``nb``).

    Parameters
    ----------
    adata
        Data to fit by :meth:`train` (an AnnData or the path of an h5ad file), as
        ``CVAE(adata, label_key)`` takes it; or None, and :meth:`fit` is given the data.
    label_key
        ``obs`` column of the cell types in ``adata``.
    max_theta
        Dispersion stored for genes without over-dispersion (the Poisson limit).
    covariate_keys
        ``obs`` columns (donor, condition...) to fit per combination of levels besides the
        type; ``None``: per type only. In a run or ``cellsynth fit``: ``nb.covariates``
        (``--covariates``), and ``nb.min_cells``.
    min_cells
        Fewest training cells of a combination fitted on its own; smaller combinations are
        generated from the type's fit (and listed in ``history["fallbacks"]``).

    Examples
    --------
    >>> model = NegBinBaseline(covariate_keys=["condition"])
    >>> model.fit(adata, "cell_type", seed=0)  # or NegBinBaseline(adata, "cell_type", ...).train()
    >>> stim = model.sample({"B cells": 100}, where={"condition": "stim"}, seed=1)
    """

    name: ClassVar[str] = "nb"

    def __init__(self, adata: ad.AnnData | str | Path | None = None, label_key: str = "cell_type",
                 *, max_theta: float = MAX_THETA, covariate_keys: list[str] | None = None,
                 min_cells: int = MIN_CELLS) -> None:  # fmt: skip
        if isinstance(min_cells, bool) or not isinstance(min_cells, int) or min_cells < 2:
            raise ConfigError(f"min_cells must be an integer >= 2, got {min_cells!r}")
        if (isinstance(max_theta, bool) or not isinstance(max_theta, numbers.Real)
                or not MIN_THETA <= max_theta < float("inf")):  # below MIN_THETA: a hang
            raise ConfigError(f"max_theta must be a finite number of at least {MIN_THETA}, got "
                              f"{max_theta!r}; the default is {MAX_THETA:g}")
        self.max_theta = float(max_theta)
        self.covariate_keys = key_list(covariate_keys)
        self.min_cells = min_cells
        self.design = Design()
        #: per fitted combination: its type and level codes, mean, dispersion, libraries
        self.combinations: list[tuple[str, tuple[int, ...]]] = []
        self.combo_mu = np.zeros((0, 0), dtype=np.float32)  # (F, G)
        self.combo_theta = np.zeros((0, 0), dtype=np.float32)  # (F, G)
        self.combo_libraries: list[np.ndarray] = []
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.gene_annotation: pd.DataFrame | None = None  # text columns of the training var
        self.label_key = label_key
        if adata is not None:  # as fit reads it: an AnnData, or an h5ad's path read
            adata = in_memory(adata)
            check_label(adata, label_key)
        self.adata = adata
        self.mu = np.zeros((0, 0), dtype=np.float32)  # (T, G) mean at the type's mean library
        self.theta = np.zeros((0, 0), dtype=np.float32)  # (T, G)
        self.libraries: list[np.ndarray] = []  # per type, training library sizes
        self.history: dict[str, Any] = {}

    def __repr__(self) -> str:
        covs = f", covariates={self.design.keys}" if self.design else ""
        return f"NegBinBaseline(n_labels={len(self.labels)}, n_genes={len(self.genes)}{covs})"

    @property
    def config(self) -> dict[str, Any]:
        """The settings (saved in ``config.json`` and in generated cells' provenance)."""
        extra = {"covariate_keys": self.covariate_keys, "min_cells": self.min_cells}
        return {"max_theta": self.max_theta, **(extra if self.covariate_keys else {})}

    def train(self, *, seed: int = 0) -> dict[str, Any]:
        """Fit on the AnnData given at construction (as ``CVAE(adata).train()``); see :meth:`fit`."""
        if self.adata is None:
            raise DataError("NegBinBaseline() was built without data; use "
                            "NegBinBaseline(adata, label_key).train() or fit(adata, label_key)")
        return self.fit(self.adata, self.label_key, seed=seed)

    @reads_cells
    def fit(
        self, adata: ad.AnnData, label_key: str, *, seed: int = 0
    ) -> dict[str, Any]:
        """Fit ``mu`` and ``theta`` of every type (and, with covariates, of every combination of
        levels with at least ``min_cells`` training cells) on the training rows.

        Parameters
        ----------
        adata
            Raw counts (``X`` or ``layers['counts']``), the label column and the covariate
            columns; ``obs['cellsynth_split']`` chooses the training rows when present.
        label_key
            ``obs`` column holding the cell type.
        seed
            Seeds the 10% validation cut when there is no split column.

        Returns
        -------
        The history: cells, cells per type, the seed, seconds and, with covariates, the
        combinations fitted and those that fell back to the type's fit (``fallbacks``).
        """
        seed = checked_seed(seed)  # before any generator sees it: one message for every bad seed
        start = time.perf_counter()
        rows, y = training_rows(adata, label_key, seed=seed)
        design, cov = Design.fit(adata.obs, self.covariate_keys, label_key,
                                 fit_labels(adata, label_key), rows, rows)  # fmt: skip
        x = training_counts(adata)[rows]
        labels = sorted(set(y))
        codes = np.searchsorted(np.array(labels), y)
        mu, theta, libs = [], [], []
        rows_by_type = per_type_rows(codes, len(labels))
        for idx in progress_bar(rows_by_type, desc="nb fit", unit="type"):
            p, th, lib = nb_moments(x[idx], max_theta=self.max_theta)
            mu.append(p * lib.mean())
            theta.append(th)
            libs.append(lib.astype(np.float32))
        self.labels, self.genes, self.label_key = labels, list(map(str, adata.var_names)), label_key
        self.gene_annotation = gene_annotation(adata.var)
        self.mu = np.stack(mu).astype(np.float32)
        self.theta = np.stack(theta).astype(np.float32)
        self.libraries = libs
        self.design = design
        self.history = {
            "n_cells": len(rows),
            "cells_per_type": {t: len(v) for t, v in zip(labels, libs, strict=True)},
            "seed": seed,  # the fit's provenance, saved with the model
        }
        if design:
            self._fit_combinations(x, codes, cov[rows])
        self.history["seconds"] = time.perf_counter() - start
        logger.info(
            "nb baseline: %d types x %d genes from %d cells in %.1f s",
            len(labels),
            len(self.genes),
            len(rows),
            self.history["seconds"],
        )
        return self.history

    def _fit_combinations(self, x: sp.csr_matrix, types: np.ndarray, cov: np.ndarray) -> None:
        """Fit every (type, levels) of the training cells with ``min_cells`` cells or more."""
        keys = np.column_stack([types, cov])  # (n_train, 1 + k)
        combos, inverse = np.unique(keys, axis=0, return_inverse=True)
        rows = per_type_rows(inverse.ravel(), len(combos))
        mu, theta, libs, fitted, fallbacks = [], [], [], [], []
        bar = progress_bar(combos, desc="nb fit by combination", unit="combination")
        for combo, idx in zip(bar, rows, strict=True):
            label, levels = self.labels[combo[0]], tuple(int(c) for c in combo[1:])
            if len(idx) < self.min_cells:
                fallbacks.append({**self._describe(label, levels), "n_cells": len(idx)})
                continue
            p, th, lib = nb_moments(x[idx], max_theta=self.max_theta)
            mu.append(p * lib.mean())
            theta.append(th)
            libs.append(lib.astype(np.float32))
            fitted.append((label, levels))
        empty = np.zeros((0, len(self.genes)), np.float32)
        self.combinations, self.combo_libraries = fitted, libs
        self.combo_mu = np.stack(mu).astype(np.float32) if mu else empty
        self.combo_theta = np.stack(theta).astype(np.float32) if theta else empty
        self.history.update({"covariates": self.design.keys, "combinations_fitted": len(fitted),
                             "fallbacks": fallbacks})  # fmt: skip
        if fallbacks:
            logger.info("nb: %d of %d combinations have fewer than %d training cells and use "
                        "their type's fit", len(fallbacks), len(combos), self.min_cells)

    def _describe(self, label: str, levels: tuple[int, ...]) -> dict[str, str]:
        """``{label_key: type, covariate: level, ...}`` of a combination."""
        named = zip(self.design.keys, levels, strict=True)
        return {self.label_key: label, **{k: self.design.levels[k][c] for k, c in named}}

    def _params(self, label: str, levels: tuple[int, ...], index: dict[tuple[str, tuple[int, ...]],
                int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:  # fmt: skip
        """Mean, dispersion and training libraries of a combination (``index``: its position in
        ``combinations``), or of its type when the combination was not fitted (too few or no
        training cells); whether it fell back."""
        if (f := index.get((label, levels))) is not None:
            return self.combo_mu[f], self.combo_theta[f], self.combo_libraries[f], False
        k = self.labels.index(label)
        return self.mu[k], self.theta[k], self.libraries[k], bool(self.design)

    def sample(
        self,
        request: dict[str, int] | pd.DataFrame,
        *,
        where: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> ad.AnnData:
        """Generate cells; rows come out grouped as requested, in its order.

        Parameters
        ----------
        request
            Cells per type, e.g. ``{"B cells": 100}``; or, for a model with covariates, a table
            with the label column, any covariate columns and ``n`` (one row per combination).
        where
            Covariate levels for every type of a dict request, e.g. ``{"condition": "stim"}``.
            A covariate not given follows the type's training composition over it. A
            combination of seen levels that no training cell had is allowed: it comes from the
            type's fit and is listed in ``uns['cellsynth']['unseen_combinations']``.
        seed
            Seeds all draws (library sizes, counts).

        Returns
        -------
        AnnData with whole counts in ``X`` (CSR float32), the type (categorical, the types
        generated) and every covariate (categorical, with its training levels) in ``obs`` and
        provenance in ``uns['cellsynth']``
        (with covariates also ``unseen_combinations`` and ``fallback_combinations``: those
        generated from their type's fit).
        """
        plan, unseen = self.plan(request, where)
        rng = np.random.default_rng(checked_seed(seed))
        check_memory(self.plan_bytes(plan), sum(n for _, _, n in plan),
                     ", or stream them to a file chunk by chunk (NegBinBaseline.sample_chunks, "
                     "or cellsynth generate)")  # fmt: skip
        blocks = [x for _, x in self._drawn(plan, rng)]
        obs = self.plan_obs(plan)
        out = synthetic_adata(stack_rows(blocks), obs[self.label_key].to_numpy(),
                              self.genes, label_key=self.label_key, model=self.name, seed=seed,
                              config=self.config, annotation=self.gene_annotation)  # fmt: skip
        for key in self.design.keys:
            out.obs[key] = obs[key].values  # categorical, with the training levels
        out.uns[K.UNS] = self.provenance(seed, unseen, plan)
        return out

    def sample_chunks(self, request: dict[str, int] | pd.DataFrame | list, *,
                      where: dict[str, Any] | None = None,
                      seed: int = 0) -> Iterator[tuple[str, sp.csr_matrix]]:  # fmt: skip
        """The cells :meth:`sample` returns (the same seed, the same counts), as ``(type, CSR
        counts)`` chunks in the same order, one chunk in memory at a time (``cellsynth
        generate`` streams them to its file); ``request`` may also be a :meth:`plan`. The
        request and ``seed`` are checked when it is called."""
        plan, _ = self.plan(request, where)
        return self._drawn(plan, np.random.default_rng(checked_seed(seed)))

    def plan_bytes(self, plan: list[tuple[str, tuple[int, ...], int]]) -> float:
        """An upper estimate of the stored counts of a plan's cells
        (:func:`~.base.request_bytes`)."""
        index = {combo: f for f, combo in enumerate(self.combinations)}
        return request_bytes([(float(np.mean(self._params(label, levels, index)[2])), n)
                              for label, levels, n in plan], len(self.genes))  # fmt: skip

    def provenance(self, seed: int, unseen: list[dict[str, str]], plan: Any) -> dict[str, Any]:
        """``uns['cellsynth']`` of ``plan``'s cells, in memory (:meth:`sample`) or written chunk
        by chunk: version, model, seed, label key, settings and, with covariates, the
        combinations no training cell had and those drawn from their type's fit."""
        uns = {"version": package_version(), "model": self.name, "seed": int(seed),
               "label_key": self.label_key, "config": self.config or {}}
        if self.design:
            uns.update(writable_uns({"unseen_combinations": unseen,
                                     "fallback_combinations": self._fell_back(plan)}))
        return uns

    def _drawn(self, plan: list[tuple[str, tuple[int, ...], int]],
               rng: np.random.Generator) -> Iterator[tuple[str, sp.csr_matrix]]:  # fmt: skip
        """``(type, CSR counts)`` blocks of a checked plan, all noise from ``rng`` in the plan's
        order, behind a progress bar; the combinations drawn from their type's fit said."""
        index = {combo: f for f, combo in enumerate(self.combinations)}
        self._said_fallbacks(plan)
        bar = progress_bar(total=sum(n for _, _, n in plan), desc="nb sample", unit="cell")
        try:
            for label, levels, n in plan:
                mu_k, theta_k, libraries, _ = self._params(label, levels, index)
                scale = 1.0 / float(libraries.mean()) if libraries.mean() > 0 else 0.0
                mu, theta = torch.from_numpy(mu_k), torch.from_numpy(theta_k)  # float32
                for m in row_chunks(n, len(self.genes)):
                    lib = draw_libraries(rng, libraries, m)  # (m,)
                    factor = torch.from_numpy((lib * scale).astype(np.float32))
                    yield label, nb_csr(rng, factor[:, None] * mu[None, :], theta)  # mean (m, G)
                    bar.update(m)
        finally:
            bar.close()

    def _fell_back(self, plan: list[tuple[str, tuple[int, ...], int]] | Any,
                   ) -> list[dict[str, str]]:  # fmt: skip
        """The combinations of ``plan`` drawn from their type's fit, each once, in order."""
        index = {combo: f for f, combo in enumerate(self.combinations)}
        out: list[dict[str, str]] = []
        for label, levels, _ in plan:
            if self._params(label, levels, index)[3] and (
                    combo := self._describe(label, levels)) not in out:  # fmt: skip
                out.append(combo)
        return out

    def _said_fallbacks(self, plan: list[tuple[str, tuple[int, ...], int]]) -> None:
        """Log the combinations of ``plan`` drawn from their type's fit: a WARNING the first
        time a model draws them, INFO after."""
        fell_back = self._fell_back(plan)
        said = self.__dict__.setdefault("_fallbacks_said", set())  # each once a model
        shown = [", ".join(f"{k}={v}" for k, v in c.items()) for c in fell_back]
        if fell_back:  # the cells carry the asked levels in obs, but not their effect
            log = logger.info if said.issuperset(shown) else logger.warning
            said.update(shown)
            log("nb: %d combination(s) had too few training cells (under nb.min_cells = %d) "
                "for a fit of their own and are drawn from their type's fit, whatever their "
                "covariate levels (their obs names the levels asked for; "
                "uns['cellsynth']['fallback_combinations'] lists them): %s", len(fell_back),
                self.min_cells, listed(shown, sep="; "))

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``labels.json``, ``genes.json``, ``params`` and ``libraries``.

        The arrays are ``params.safetensors`` (``mu``, ``theta``; with covariates also
        ``combo_mu``, ``combo_theta`` of the fitted combinations, listed with the design in
        ``config.json``) and ``libraries.safetensors``.
        """
        directory = Path(directory)
        meta = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "label_key": self.label_key,
            "config": self.config,
            "history": self.history,
        }
        params = {"mu": self.mu, "theta": self.theta}
        extra = {}
        if self.design:
            meta["design"] = self.design.to_json()
            meta["combinations"] = [[t, list(c)] for t, c in self.combinations]
            params.update(combo_mu=self.combo_mu, combo_theta=self.combo_theta)
            sizes = [len(v) for v in self.combo_libraries]
            extra = {"combo_libraries": np.concatenate([np.zeros(0, np.float32),
                                                        *self.combo_libraries]),
                     "combo_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)}
        write_meta(directory, meta, self.labels, self.genes, self.gene_annotation)
        save_tensors(save_file, params, directory / "params.safetensors")
        save_libraries(directory / "libraries.safetensors", self.libraries, extra)
        write_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> NegBinBaseline:
        """Read a directory written by :meth:`save`, checking that its files agree."""
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, genes = read_meta(directory, cls.name, FORMAT_VERSION)
        params = read_tensors(directory / "params.safetensors")
        shape = (len(labels), len(genes))
        if any(params.get(k) is None or params[k].shape != shape for k in ("mu", "theta")):
            raise ModelFileError(
                f"{directory / 'params.safetensors'} must hold mu and theta of shape {shape} "
                "(types x genes in labels.json and genes.json); the files come from different "
                "models"
            )
        means = [params[k] for k in ("mu", "combo_mu") if k in params]
        thetas = [params[k] for k in ("theta", "combo_theta") if k in params]
        if not (all(np.isfinite(m).all() and (m >= 0).all() for m in means)
                and all((t > 0).all() for t in thetas)):  # fmt: skip
            raise ModelFileError(f"{directory / 'params.safetensors'} holds invalid values (means "
                                 "negative or not finite, or dispersions not above 0): the file "
                                 "was damaged or edited; restore it from the same save, or fit "
                                 "the model again")
        libraries, extra = load_libraries(directory / "libraries.safetensors", len(labels))
        with saved_settings(directory):  # its own checks: true is no max_theta
            config = setting(meta, "config") if meta.get("config") is not None else {}
            model = cls(max_theta=config.get("max_theta", MAX_THETA),
                        covariate_keys=config.get("covariate_keys"),
                        min_cells=config.get("min_cells", MIN_CELLS))  # fmt: skip
        model.labels, model.genes = labels, genes
        model.gene_annotation = read_annotation(directory, genes)
        model.label_key = saved_label_key(directory, meta, model.covariate_keys)
        model.mu, model.theta, model.libraries = params["mu"], params["theta"], libraries
        model.history = meta.get("history") or {}
        if model.covariate_keys:
            model._load_combinations(directory, meta, params, extra)
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model

    def _load_combinations(self, directory: Path, meta: dict[str, Any],
                           params: dict[str, np.ndarray],
                           extra: dict[str, np.ndarray]) -> None:  # fmt: skip
        """Read the design and the fitted combinations, checked against each other."""
        self.design = read_design(directory, meta)
        combos = meta.get("combinations")
        mu, theta = params.get("combo_mu"), params.get("combo_theta")
        lib, off = extra.get("combo_libraries"), extra.get("combo_offsets")
        try:
            self.combinations = [(str(t), tuple(int(c) for c in codes)) for t, codes in combos]
            ok = (self.design.keys == self.covariate_keys
                  and all(t in self.labels and len(c) == len(self.design.keys)
                          and all(0 <= v < n for v, n in zip(c, self.design.n_levels, strict=True))
                          for t, c in self.combinations))  # fmt: skip
        except (TypeError, ValueError, KeyError):
            ok = False
        shape = (len(self.combinations), len(self.genes))
        if not ok or mu is None or theta is None or mu.shape != shape or theta.shape != shape:
            raise ModelFileError(f"{directory}: the covariate design, the combinations in "
                                 "config.json and combo_mu/combo_theta in params.safetensors "
                                 "disagree; the files come from different models")
        if (lib is None or off is None or off.shape != (shape[0] + 1,) or off[0] != 0
                or off[-1] != lib.shape[0] or (np.diff(off) <= 0).any()):  # fmt: skip
            raise ModelFileError(f"{directory / 'libraries.safetensors'} does not hold library "
                                 f"sizes for the {shape[0]} combinations in config.json")
        self.combo_mu, self.combo_theta = mu, theta
        self.combo_libraries = [lib[off[f] : off[f + 1]] for f in range(shape[0])]
