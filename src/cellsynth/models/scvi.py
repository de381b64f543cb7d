"""scvi-tools' SCVI as a cell-type generator (the ``scvi`` model; extra ``cellsynth[scvi]``).

scvi-tools has no label-conditional prior sampling (scverse/scvi-tools#676, #3278): its users
get cells of a type from the posterior of real cells of that type. :class:`ScviGenerator` does
the same without keeping the training data:

* **fit**: ``scvi.model.SCVI`` (:class:`~cellsynth.config.ScviConfig`: ``n_hidden``, ``n_latent``,
  ``n_layers``, ``gene_likelihood``, ``max_epochs``, ``batch_size``, ``early_stopping``) trained
  on the raw counts of the training rows, early-stopped on the validation rows (scvi's own
  ``external_indexing`` split). Then, per type ``t``, the aggregate posterior
  ``q_t(z) = mean_i q(z | x_i)`` over the type's training cells is matched by a Gaussian with the
  same moments: ``mean_t = mean_i(mu_i)``, ``Sigma_t = Cov_i(mu_i) + mean_i(diag(var_i))``.
* **sample**: ``z ~ N(mean_t, Sigma_t)``, a library size drawn from the type's training cells
  (scvi's ``use_observed_lib_size``), decoded with the SCVI module's ``generative`` into its
  ``px`` (ZINB, NB or Poisson); counts are drawn from ``px``'s parameters with numpy.

Training follows scvi's defaults otherwise (early stopping on ``elbo_validation`` with its
patience of 45 epochs; accelerator ``"auto"``). ``scvi.settings.seed`` is set from ``seed``,
which, as in scvi, also seeds torch's, numpy's and Python's global generators.

This is scvi's ``posterior_predictive_sample`` of randomly chosen type-``t`` cells with the
per-cell posteriors pooled into one Gaussian per type, so the generator does not replay
individual training cells.

**Covariates** (``scvi.covariates``, ``ScviGenerator(adata, covariate_keys=[...])``,
``cellsynth fit --model scvi --covariates donor,condition``) are passed as scvi-tools' own
``categorical_covariate_keys`` of ``SCVI.setup_anndata``, its users' way: each covariate is a
one-hot input of every decoder layer (scvi's defaults: ``encode_covariates=False``,
``deeply_inject_covariates=True``), with the levels of the training cells in sorted order (a
:class:`~._design.Design`, as the CVAE's and ``nb``'s); validation cells with a level no
training cell had are left out of the fit. Requests are the CVAE's (``where=``, a table with the
label, covariate columns and ``n``; a covariate not given follows the type's training
composition), and each generated cell is decoded with its requested levels as the decoder's
``cat_covs``. The latent Gaussian and the library sizes stay per type, pooled over the levels:
the encoder does not see the covariates, so scvi's latent is meant to be free of them and the
levels act through the decoder alone. That is also the answer for a combination of seen levels
no training cell of the type had (listed in ``uns['cellsynth']['unseen_combinations']``): the
type's latent decoded with those levels, which scvi's decoder takes as independent one-hot
inputs. What scvi-tools cannot give: a level never seen in training (its decoder has no input
for it; refused, as by the other generators), and covariate-dependent latent states (a
condition that moves cells along the type's manifold is learned only as far as the decoder's
covariate inputs can express it). Only the module's weights (safetensors) and the constructor
arguments (JSON) are saved: scvi's own ``model.save`` pickles and its ``load`` calls
``torch.load(weights_only=False)`` (scvi-tools 1.4.2), which a shared file must not need.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from .. import keys as K
from ..checksums import verify_checksums, write_checksums
from ..config import ScviConfig
from ..config_rules import from_dict
from ..config_rules import hints as config_hints
from ..data.csr import stack_rows
from ..data.genes import gene_annotation
from ..data.io import training_source
from ..errors import CellsynthError, ConfigError, DataError, ModelFileError, NotTrainedError
from ..options import progress_bar, settings
from ..outputs import save_tensors
from ..paths import expand_user
from ..seeds import checked_seed, derive_seed
from ._count_files import (
    draw_libraries,
    load_libraries,
    per_type_rows,
    read_meta,
    row_chunks,
    save_libraries,
    write_meta,
)
from ._design import Design, DesignRequests
from ._draws import nb_csr
from ._model_dir import read_annotation, saved_label_key, saves_whole
from ._scvi_files import build_module, import_scvi, load_design, load_module, read_module_files
from ._scvi_trainer import epoch_bar, last_batch, trainer_quiet
from .base import (
    check_library_memory,
    check_network_memory,
    fit_labels,
    generator_config,
    in_memory,
    read_rows,
    reads_cells,
    split_masks,
    synthetic_adata,
    training_counts,
    writable_uns,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: scvi-tools' registry key of the categorical covariates (``REGISTRY_KEYS.CAT_COVS_KEY``)
CAT_COVS_KEY = "extra_categorical_covs"
#: added to each type's latent covariance before its Cholesky factor
JITTER = 1e-6


class PosteriorCells(NamedTuple):
    """SCVI's posterior of each training cell, in training-row order."""

    qzm: np.ndarray  # (n, n_latent) posterior means
    qzv: np.ndarray  # (n, n_latent) posterior variances
    codes: np.ndarray  # (n,) type codes into ``labels``
    libraries: np.ndarray  # (n,) float32 library sizes (total counts)


class ScviGenerator(DesignRequests):
    """SCVI fitted on counts; cells of a type decoded from that type's aggregate posterior.

    Parameters
    ----------
    adata
        Labelled AnnData with raw counts (``X``, ``layers['counts']`` or ``raw.X``), or the
        path of an h5ad file, to :meth:`train` on, as ``scvi.model.SCVI(adata)`` and
        ``CVAE(adata)`` take it; ``None`` for a model to :meth:`fit` later. (A
        :class:`~cellsynth.config.ScviConfig` here is taken as ``config``, the earlier form
        ``ScviGenerator(ScviConfig(...))``.)
    label_key
        ``obs`` column holding the cell type.
    config
        Architecture and training settings of ``scvi.model.SCVI``; ``config.covariates``: the
        ``obs`` columns passed as ``categorical_covariate_keys`` (see the module docstring).
    covariate_keys
        ``obs`` columns to condition on besides the type (default ``config.covariates``), as
        the CVAE's and ``NegBinBaseline``'s; one column may be given as a string.

    Examples
    --------
    >>> model = ScviGenerator(adata, "cell_type", covariate_keys=["condition"])
    >>> model.train(max_epochs=50, seed=0)
    >>> stim = model.sample({"B cells": 100}, where={"condition": "stim"}, seed=1)
    """

    name: ClassVar[str] = "scvi"

    def __init__(
        self,
        adata: ad.AnnData | str | Path | None = None,
        label_key: str = "cell_type",
        config: ScviConfig | None = None,
        covariate_keys: list[str] | str | None = None,
    ) -> None:
        if isinstance(adata, ScviConfig) and config is None:  # ScviGenerator(ScviConfig(...))
            adata, config = None, adata
        config = generator_config(
            config, ScviConfig, covariate_keys, "e.g. ScviGenerator(adata, config=ScviConfig("
            "max_epochs=50))), or the settings to train(max_epochs=...")
        self.config = config
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.gene_annotation: pd.DataFrame | None = None  # text columns of the training var
        self.label_key = label_key
        self.module: torch.nn.Module | None = None  # scvi.module.VAE, on the CPU, eval mode
        self.module_kwargs: dict[str, Any] = {}
        self.latent_mean = np.zeros((0, 0), dtype=np.float32)  # (T, n_latent)
        self.latent_cov = np.zeros((0, 0, 0), dtype=np.float32)  # (T, n_latent, n_latent)
        self.libraries: list[np.ndarray] = []
        self.design = Design()  # the covariates and their training levels (none: type only)
        self.history: dict[str, Any] = {}
        if adata is not None and not isinstance(adata, ad.AnnData | str | Path):
            raise DataError(f"ScviGenerator takes an AnnData or the path of an h5ad file, got "
                            f"{type(adata).__name__}; give the settings as "
                            "config=ScviConfig(...)")
        self.adata = None if adata is None else in_memory(adata)
        if self.adata is not None:  # the label, counts and covariates checked now, as the CVAE's
            y = fit_labels(self.adata, label_key)
            training_source(self.adata)  # no raw counts (a log-normalised X alone): said now
            rows = read_rows(self.adata.obs, label_key)  # not the test cells
            self.design, _ = Design.fit(self.adata.obs, list(config.covariates), label_key, y,
                                        rows, rows)  # fmt: skip
            self.labels, self.genes = sorted(set(y)), list(map(str, self.adata.var_names))

    def __repr__(self) -> str:
        c = self.config
        covs = f", covariates={self.design.keys}" if self.design else ""
        return (
            f"ScviGenerator(n_labels={len(self.labels)}, n_genes={len(self.genes)}, "
            f"n_latent={c.n_latent}, gene_likelihood={c.gene_likelihood!r}{covs})"
        )

    def train(self, max_epochs: int | None = None, batch_size: int | None = None, *,
              seed: int = 0, **settings: Any) -> dict[str, Any]:  # fmt: skip
        """Train on the AnnData given at construction (scvi-tools' habit); see :meth:`fit`.

        Parameters
        ----------
        max_epochs
            Most epochs of SCVI's training.
        batch_size
            Cells per mini-batch.
        seed
            Seeds scvi-tools (weights, mini-batches) and the validation cut.
        **settings
            Any other :class:`~cellsynth.config.ScviConfig` field, e.g. ``n_latent=10``.

        Returns
        -------
        The training history (see :meth:`fit`).
        """
        if self.adata is None:
            raise DataError("ScviGenerator() was built without data; use "
                            "ScviGenerator(adata).train() or fit(adata, label_key)")
        given = {"max_epochs": max_epochs, "batch_size": batch_size, **settings}
        names = {f.name for f in dataclasses.fields(ScviConfig)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ConfigError(f"unknown scvi setting(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(names))}")  # fmt: skip
        with config_hints(lambda key: f"give another {key.removeprefix('scvi.')} to train()"):
            self.config = from_dict(ScviConfig, {**dataclasses.asdict(self.config),
                                                 **{k: v for k, v in given.items() if v is not None}})
        return self.fit(self.adata, self.label_key, seed=seed)

    @reads_cells
    def fit(
        self, adata: ad.AnnData, label_key: str, *, seed: int = 0
    ) -> dict[str, Any]:
        """Train SCVI on the training rows (validation rows for early stopping); fit the latents."""
        cells = self._train(adata, label_key, seed=checked_seed(seed))
        means, covs, libs = [], [], []
        for idx in per_type_rows(cells.codes, len(self.labels)):
            m, v = cells.qzm[idx].astype(np.float64), cells.qzv[idx].astype(np.float64)  # (n_t, d)
            spread = np.cov(m, rowvar=False) if len(idx) > 1 else np.zeros((m.shape[1],) * 2)
            means.append(m.mean(axis=0))
            covs.append(spread + np.diag(v.mean(axis=0)))
            libs.append(cells.libraries[idx])
        self.latent_mean = np.stack(means).astype(np.float32)
        self.latent_cov = np.stack(covs).astype(np.float32)
        self.libraries = libs
        return self.history

    def _train(self, adata: ad.AnnData, label_key: str, *, seed: int) -> PosteriorCells:
        """Train SCVI; set the module, labels, genes and history; return the training cells'
        posteriors (what :meth:`fit` pools per type, and ``scvi-pp`` keeps per cell)."""
        scvi = import_scvi()
        start = time.perf_counter()
        c = self.config
        y = fit_labels(adata, label_key)
        train, val = split_masks(adata, y, seed=seed)
        rows = np.flatnonzero(train | val)
        if not train.any():
            raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
        design, rows, obs = _design_obs(adata, list(c.covariates), label_key, y, train, rows)
        # scvi-tools' VAE: n_layers hidden layers of n_hidden, encoder and mirrored decoder
        check_network_memory("scvi", adata.n_vars, [c.n_hidden] * c.n_layers, c.n_latent,
                             settings=f"scvi.n_hidden = {c.n_hidden}, scvi.n_layers = "
                                      f"{c.n_layers}, scvi.n_latent = {c.n_latent}")
        counts = training_counts(adata)[rows]
        genes = list(map(str, adata.var_names))
        sub = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
        is_train = train[rows]
        train_idx, val_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)

        with trainer_quiet(not settings.show_progress()):
            scvi.settings.seed = int(derive_seed(seed, "scvi") % 2**31)
            scvi.model.SCVI.setup_anndata(sub, categorical_covariate_keys=design.keys or None)
            model = scvi.model.SCVI(
                sub,
                n_hidden=c.n_hidden,
                n_latent=c.n_latent,
                n_layers=c.n_layers,
                gene_likelihood=c.gene_likelihood,
            )
            model.train(
                max_epochs=c.max_epochs,
                batch_size=c.batch_size,
                early_stopping=c.early_stopping and val_idx.size > 0,
                datasplitter_kwargs={"external_indexing": [train_idx, val_idx],
                                     **last_batch(train_idx.size, c.batch_size)},
                # scvi's own bar (and Lightning's) write to stdout: ours is one bar on stderr,
                # and where cs.settings hides progress bars (no terminal) a log line every
                # options.LOG_SECONDS instead: a long fit is not silent in a log file
                enable_progress_bar=True,
                simple_progress_bar=False,
                callbacks=[epoch_bar()],
            )
        qzm, qzv = model.get_latent_representation(sub, indices=train_idx, return_dist=True)
        labels = sorted(set(y[rows[train_idx]]))
        codes = np.searchsorted(np.array(labels), y[rows[train_idx]])
        libs = np.asarray(counts[train_idx].sum(axis=1)).ravel().astype(np.float32)  # (n,)

        kwargs = {
            "n_input": len(genes),
            "n_batch": int(model.summary_stats.n_batch),
            "n_labels": int(model.summary_stats.n_labels),
            "n_hidden": c.n_hidden,
            "n_latent": c.n_latent,
            "n_layers": c.n_layers,
            "gene_likelihood": c.gene_likelihood,
        }
        if design:
            kwargs["n_cats_per_cov"] = _registered_levels(model, design)
        state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
        self.module = build_module(scvi, kwargs, state)
        self.module_kwargs = kwargs
        self.labels, self.genes, self.label_key = labels, genes, label_key
        self.gene_annotation = gene_annotation(adata.var)
        self.design = design
        hist = model.history
        self.history = {
            key: [float(v) for v in hist[key].iloc[:, 0].to_numpy()]
            for key in ("elbo_train", "elbo_validation")
            if key in hist
        }
        self.history.update(
            epochs=len(self.history.get("elbo_train", [])),
            n_cells=int(train_idx.size),
            scvi_version=str(scvi.__version__),
            seconds=time.perf_counter() - start,
            seed=seed,  # the fit's provenance, saved with the model
        )
        logger.info(
            "scvi: %d epochs on %d cells in %.1f s",
            self.history["epochs"],
            train_idx.size,
            self.history["seconds"],
        )
        return PosteriorCells(qzm, qzv, codes, libs)

    @torch.no_grad()
    def sample(
        self,
        request: dict[str, int] | pd.DataFrame,
        *,
        where: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> ad.AnnData:
        """Decode draws of each type's latent Gaussian; rows grouped as requested, in its order.

        Parameters
        ----------
        request
            Cells per type, e.g. ``{"B cells": 100}``; or, for a model with covariates, a table
            with the label column, any covariate columns and ``n`` (one row per combination).
        where
            Covariate levels for every type of a dict request, e.g. ``{"condition": "stim"}``.
            A covariate not given follows the type's training composition over it. A
            combination of seen levels that no training cell had is allowed: the type's latent
            decoded with those levels, listed in ``uns['cellsynth']['unseen_combinations']``.
        seed
            Seeds all draws (latents, library sizes, counts).

        Returns
        -------
        AnnData with whole counts in ``X`` (CSR float32), the type (categorical, the types
        generated) and every covariate (categorical, with its training levels) in ``obs`` and
        provenance in ``uns['cellsynth']``.
        """
        if self.module is None:
            raise NotTrainedError("this scvi model has not been fitted, so it cannot generate: "
                                  "call train() or fit(adata, label_key) first, or load a "
                                  "fitted one")
        plan, unseen = self.plan(request, where)
        check_library_memory(self.libraries, self.labels, [(t, n) for t, _, n in plan],
                             len(self.genes))
        rng = np.random.default_rng(checked_seed(seed))
        blocks = []
        bar = progress_bar(total=sum(n for _, _, n in plan), desc="SCVI sample", unit="cell")
        for label, levels, n in plan:
            k = self.labels.index(label)
            d = self.latent_mean.shape[1]
            chol = np.linalg.cholesky(self.latent_cov[k].astype(np.float64) + JITTER * np.eye(d))
            for m in row_chunks(n, len(self.genes)):
                z = self.latent_mean[k] + rng.standard_normal((m, d)) @ chol.T  # (m, d)
                lib = draw_libraries(rng, self.libraries[k], m)
                blocks.append(self._decode_sample(z, lib, rng, levels))
                bar.update(m)
        bar.close()
        obs = self.plan_obs(plan)
        out = synthetic_adata(stack_rows(blocks), obs[self.label_key].to_numpy(),
                              self.genes, label_key=self.label_key, model=self.name, seed=seed,
                              config=dataclasses.asdict(self.config),
                              annotation=self.gene_annotation)  # fmt: skip
        for key in self.design.keys:
            out.obs[key] = obs[key].values  # categorical, with the training levels
        if self.design:
            out.uns[K.UNS].update(writable_uns({"unseen_combinations": unseen}))
        return out

    def _decode_sample(
        self, z: np.ndarray, lib: np.ndarray, rng: np.random.Generator,
        levels: tuple[int, ...] = (),
    ) -> sp.csr_matrix:
        """Counts drawn from the decoder's ``px`` at latents ``z`` (m, d), libraries (m,) and
        covariate level codes ``levels`` (the same for every row; scvi's ``cat_covs``)."""
        m = z.shape[0]
        zeros = torch.zeros((m, 1))
        library = torch.from_numpy(np.log(np.maximum(lib, 1.0))).float()[:, None]  # (m, 1)
        cats = torch.tensor([levels], dtype=torch.long).expand(m, -1) if levels else None  # (m, k)
        px = self.module.generative(torch.from_numpy(z).float(), library, zeros, cat_covs=cats,
                                    y=zeros)["px"]  # fmt: skip
        if self.module_kwargs["gene_likelihood"] == "poisson":
            return sp.csr_matrix(rng.poisson(px.rate.double().numpy()).astype(np.float32))
        zinb = self.module_kwargs["gene_likelihood"] == "zinb"
        return nb_csr(rng, px.mu, px.theta, px.zi_probs if zinb else None)

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, labels, genes, ``module`` and ``latent`` safetensors."""
        if self.module is None:
            raise NotTrainedError("this scvi model has not been fitted, so it cannot be "
                                  "saved: call train() or fit(adata, label_key) first")
        directory = Path(directory)
        meta = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "label_key": self.label_key,
            "config": dataclasses.asdict(self.config),
            "module_kwargs": self.module_kwargs,
            "history": self.history,
        }
        if self.design:
            meta["design"] = self.design.to_json()
        write_meta(directory, meta, self.labels, self.genes, self.gene_annotation)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_tensors(save_file, state, directory / "module.safetensors")
        save_libraries(
            directory / "latent.safetensors",
            self.libraries,
            {"mean": self.latent_mean, "cov": self.latent_cov},
        )
        write_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> ScviGenerator:
        """Rebuild the SCVI module from ``config.json`` and load its weights (no pickle)."""
        scvi = import_scvi()
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, genes = read_meta(directory, cls.name, FORMAT_VERSION)
        config, kwargs, state = read_module_files(directory, meta, genes)
        libraries, latent = load_libraries(directory / "latent.safetensors", len(labels))
        d = kwargs["n_latent"]
        if latent.get("mean", np.empty(0)).shape != (len(labels), d) or latent.get(
            "cov", np.empty(0)
        ).shape != (len(labels), d, d):
            raise ModelFileError(
                f"{directory / 'latent.safetensors'} does not match {len(labels)} "
                f"types and n_latent={d}; the files come from different models"
            )
        for k, cov in enumerate(latent["cov"].astype(np.float64)):  # sampling factors each one
            try:
                np.linalg.cholesky(cov + JITTER * np.eye(d))
            except np.linalg.LinAlgError:
                raise ModelFileError(f"{directory / 'latent.safetensors'} holds a latent "
                                     f"covariance of {labels[k]!r} that is no covariance (not "
                                     "positive definite): the file was damaged or edited; "
                                     "restore it from the same save, or fit the model "
                                     "again") from None
        model = cls(config=config)
        model.module = load_module(scvi, kwargs, state, directory)
        model.module_kwargs, model.labels, model.genes = kwargs, labels, genes
        model.gene_annotation = read_annotation(directory, genes)
        model.label_key = saved_label_key(directory, meta, config.covariates)
        model.latent_mean, model.latent_cov, model.libraries = (
            latent["mean"],
            latent["cov"],
            libraries,
        )
        model.history = meta.get("history") or {}
        model.design = load_design(directory, meta, config, kwargs)
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model


def _design_obs(adata: ad.AnnData, keys: list[str], label_key: str, y: np.ndarray,
                train: np.ndarray, rows: np.ndarray) -> tuple[Design, np.ndarray, pd.DataFrame]:  # fmt: skip
    """The design of the training cells, the rows SCVI reads (``rows`` less validation cells
    with a level no training cell had) and their ``obs``: each covariate categorical with the
    training levels, so scvi's codes are the design's."""
    design, cov = Design.fit(adata.obs, keys, label_key, y, np.flatnonzero(train), rows)
    if not design:
        return design, rows, pd.DataFrame(index=[str(i) for i in rows])
    known = (cov[rows] >= 0).all(axis=1)
    if not known.all():
        logger.info("scvi: %d validation cells have a covariate level no training cell had; "
                    "left out of early stopping", int((~known).sum()))
        rows = rows[known]
    obs = pd.DataFrame({key: pd.Categorical.from_codes(cov[rows, i], design.levels[key])
                        for i, key in enumerate(design.keys)}, index=[str(i) for i in rows])  # fmt: skip
    return design, rows, obs


def _registered_levels(model: Any, design: Design) -> list[int]:
    """The levels per covariate scvi-tools registered (``n_cats_per_cov``), checked to be the
    design's in its order (else the decoder's inputs would not be the requested levels)."""
    state = model.adata_manager.get_state_registry(CAT_COVS_KEY)
    got = {str(k): [str(v) for v in state.mappings[k]] for k in state.mappings}
    if got != {k: design.levels[k] for k in design.keys}:
        raise CellsynthError(f"scvi-tools registered the covariate levels {got}, not the "
                             f"training levels {design.levels}; report this with the "
                             "scvi-tools version")
    return [int(n) for n in state.n_cats_per_key]
