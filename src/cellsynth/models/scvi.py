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
individual training cells. Only the module's weights (safetensors) and the constructor
arguments (JSON) are saved: scvi's own ``model.save`` pickles and its ``load`` calls
``torch.load(weights_only=False)`` (scvi-tools 1.4.2), which a shared file must not need.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from ..config import ScviConfig, from_dict
from ..errors import CellsynthError, ConfigError, DataError, ModelFileError
from ..options import progress_bar, settings
from ..seeds import derive_seed
from ._draws import nb_csr
from ._training import verify_checksums, write_checksums
from .base import fit_labels, request, split_masks, synthetic_adata, training_counts
from .nb import (
    draw_libraries,
    load_libraries,
    per_type_rows,
    read_meta,
    read_tensors,
    row_chunks,
    save_libraries,
    write_meta,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: added to each type's latent covariance before its Cholesky factor
JITTER = 1e-6


def import_scvi() -> Any:
    """The ``scvi`` package, or a :class:`CellsynthError` saying how to install it."""
    try:
        import scvi
    except ImportError as exc:
        raise CellsynthError(
            f"the scvi generator needs scvi-tools ({exc}); install the extra: "
            "pip install 'cellsynth[scvi]'"
        ) from None
    return scvi


class PosteriorCells(NamedTuple):
    """SCVI's posterior of each training cell, in training-row order."""

    qzm: np.ndarray  # (n, n_latent) posterior means
    qzv: np.ndarray  # (n, n_latent) posterior variances
    codes: np.ndarray  # (n,) type codes into ``labels``
    libraries: np.ndarray  # (n,) float32 library sizes (total counts)


class ScviGenerator:
    """SCVI fitted on counts; cells of a type decoded from that type's aggregate posterior.

    Parameters
    ----------
    config
        Architecture and training settings of ``scvi.model.SCVI``.
    """

    name: ClassVar[str] = "scvi"

    def __init__(self, config: ScviConfig | None = None) -> None:
        self.config = config if config is not None else ScviConfig()
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.label_key = "cell_type"
        self.module: torch.nn.Module | None = None  # scvi.module.VAE, on the CPU, eval mode
        self.module_kwargs: dict[str, Any] = {}
        self.latent_mean = np.zeros((0, 0), dtype=np.float32)  # (T, n_latent)
        self.latent_cov = np.zeros((0, 0, 0), dtype=np.float32)  # (T, n_latent, n_latent)
        self.libraries: list[np.ndarray] = []
        self.history: dict[str, Any] = {}

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ScviGenerator(n_labels={len(self.labels)}, n_genes={len(self.genes)}, "
            f"n_latent={c.n_latent}, gene_likelihood={c.gene_likelihood!r})"
        )

    def fit(
        self, adata: ad.AnnData, label_key: str, *, seed: int = 0
    ) -> dict[str, Any]:
        """Train SCVI on the training rows (validation rows for early stopping); fit the latents."""
        cells = self._train(adata, label_key, seed=seed)
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
        train, val = split_masks(adata, seed=seed)
        rows = np.flatnonzero(train | val)
        if not train.any():
            raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
        counts = training_counts(adata)[rows]
        genes = list(map(str, adata.var_names))
        sub = ad.AnnData(
            X=counts,
            obs=pd.DataFrame(index=[str(i) for i in rows]),
            var=pd.DataFrame(index=pd.Index(genes, dtype=str)),
        )
        is_train = train[rows]
        train_idx, val_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)

        scvi.settings.seed = int(derive_seed(seed, "scvi") % 2**31)
        scvi.model.SCVI.setup_anndata(sub)
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
            datasplitter_kwargs={"external_indexing": [train_idx, val_idx]},
            # scvi's own bar (and Lightning's) write to stdout: ours is one bar on stderr, and
            # none at all when cs.settings hides progress bars
            enable_progress_bar=settings.show_progress(),
            simple_progress_bar=False,
            callbacks=[_epoch_bar()] if settings.show_progress() else [],
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
        state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
        self.module = _build_module(scvi, kwargs, state)
        self.module_kwargs = kwargs
        self.labels, self.genes, self.label_key = labels, genes, label_key
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
        self, counts_per_type: dict[str, int], *, seed: int = 0
    ) -> ad.AnnData:
        """Decode draws of each type's latent Gaussian; rows grouped by type as requested.
        """
        pairs = request(counts_per_type, self.labels)
        if self.module is None:
            raise DataError("the scvi model is not fitted; call fit() or load() first")
        rng = np.random.default_rng(seed)
        blocks = []
        bar = progress_bar(total=sum(n for _, n in pairs), desc="SCVI sample", unit="cell")  # fmt: skip
        for label, n in pairs:
            k = self.labels.index(label)
            d = self.latent_mean.shape[1]
            chol = np.linalg.cholesky(self.latent_cov[k].astype(np.float64) + JITTER * np.eye(d))
            for m in row_chunks(n, len(self.genes)):
                z = self.latent_mean[k] + rng.standard_normal((m, d)) @ chol.T  # (m, d)
                lib = draw_libraries(rng, self.libraries[k], m)
                blocks.append(self._decode_sample(z, lib, rng))
                bar.update(m)
        bar.close()
        y = np.repeat([t for t, _ in pairs], [n for _, n in pairs])
        return synthetic_adata(
            sp.vstack(blocks, format="csr"),
            y,
            self.genes,
            label_key=self.label_key,
            model=self.name,
            seed=seed,
            config=dataclasses.asdict(self.config),
        )

    def _decode_sample(
        self, z: np.ndarray, lib: np.ndarray, rng: np.random.Generator
    ) -> sp.csr_matrix:
        """Counts drawn from the decoder's ``px`` at latents ``z`` (m, d) and libraries (m,)."""
        m = z.shape[0]
        zeros = torch.zeros((m, 1))
        library = torch.from_numpy(np.log(np.maximum(lib, 1.0))).float()[:, None]  # (m, 1)
        px = self.module.generative(torch.from_numpy(z).float(), library, zeros, y=zeros)["px"]
        if self.module_kwargs["gene_likelihood"] == "poisson":
            return sp.csr_matrix(rng.poisson(px.rate.double().numpy()).astype(np.float32))
        zinb = self.module_kwargs["gene_likelihood"] == "zinb"
        return nb_csr(rng, px.mu, px.theta, px.zi_probs if zinb else None)

    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, labels, genes, ``module`` and ``latent`` safetensors."""
        if self.module is None:
            raise DataError("the scvi model is not fitted; call fit() before save()")
        directory = Path(directory)
        meta = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "label_key": self.label_key,
            "config": dataclasses.asdict(self.config),
            "module_kwargs": self.module_kwargs,
            "history": self.history,
        }
        write_meta(directory, meta, self.labels, self.genes)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(directory / "module.safetensors"))
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
        directory = Path(directory)
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
        model = cls(config)
        try:
            model.module = _build_module(scvi, kwargs, state)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ModelFileError(f"weights in {directory} do not fit its config: {exc}") from None
        model.module_kwargs, model.labels, model.genes = kwargs, labels, genes
        model.label_key = str(meta.get("label_key", "cell_type"))
        model.latent_mean, model.latent_cov, model.libraries = (
            latent["mean"],
            latent["cov"],
            libraries,
        )
        model.history = meta.get("history") or {}
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model


def read_module_files(
    directory: Path, meta: dict[str, Any], genes: list[str]
) -> tuple[ScviConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The config, module arguments and weights :meth:`ScviGenerator.save` wrote (checked)."""
    try:
        config = from_dict(ScviConfig, meta["config"])
        kwargs = dict(meta["module_kwargs"])
        if kwargs["n_input"] != len(genes) or kwargs["gene_likelihood"] != config.gene_likelihood:
            raise ValueError("module_kwargs disagree with genes.json or the config")
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{directory / 'config.json'} is invalid: {exc}") from None
    state = {
        k: torch.from_numpy(v) for k, v in read_tensors(directory / "module.safetensors").items()
    }
    return config, kwargs, state


def _build_module(
    scvi: Any, kwargs: dict[str, Any], state: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """``scvi.module.VAE`` as ``scvi.model.SCVI`` builds it, ``state`` loaded, CPU, eval mode."""
    module = scvi.module.VAE(**kwargs, use_observed_lib_size=True)
    module.load_state_dict(state, strict=True)
    return module.cpu().eval()


def _epoch_bar() -> Any:
    """A Lightning progress bar: one tqdm bar over SCVI's epochs, on stderr.

    scvi's ``ProgressBar`` and Lightning's ``TQDMProgressBar`` both write to stdout, which
    cellsynth keeps for its results; Lightning disables this one on ranks other than 0.
    """
    from lightning.pytorch.callbacks import ProgressBar

    class EpochBar(ProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._enabled = True
            self.bar: Any = None

        @property
        def is_enabled(self) -> bool:
            return self._enabled

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer, pl_module) -> None:
            super().on_train_start(trainer, pl_module)
            self.bar = progress_bar(total=trainer.max_epochs, desc="SCVI", unit="epoch", file=sys.stderr,
                                    here=self._enabled)  # fmt: skip

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            if self.bar is not None:
                metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()
                           if k != "v_num"}  # fmt: skip
                self.bar.set_postfix(metrics, refresh=False)
                self.bar.update()

        def on_train_end(self, trainer, pl_module) -> None:
            super().on_train_end(trainer, pl_module)
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return EpochBar()
