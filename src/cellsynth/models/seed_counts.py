"""The reference generator carried into gene space, so that it is comparable with the others.

The reference trained its conditional VAE (:class:`~cellsynth.models.seed.SeedCVAE`) on PCA
features of log-normalised expression and only ever produced PCA points. To score it with the
same count-space metrics and classifiers as ``nb``, ``cvae`` and ``scvi``, :class:`SeedGenerator`
wraps it end to end:

* **fit**: ``normalise_log1p(counts, target_sum)`` on the training rows -> :func:`fit_pca` on
  them -> :class:`SeedCVAE` fitted on the PCA features of the training and validation rows; the
  training cells' library sizes are kept per type.
* **sample**: ``SeedCVAE.sample`` -> ``PCAModel.inverse_transform`` (log-normalised values) ->
  clip at 0 -> ``expm1`` -> rows normalised to proportions -> ``counts ~ Poisson(L * proportion)``
  with ``L`` drawn from the type's training library sizes.

The Poisson step adds only sampling noise: whatever the reference's PCA points encode is what
the counts carry; genes the PCA cannot express come out at their (clipped) mean.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import time
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..checksums import verify_checksums, write_checksums
from ..config import FeaturesConfig, SeedVAEConfig
from ..config_rules import check_ranges, from_dict
from ..data.csr import stack_rows
from ..data.genes import gene_annotation
from ..data.qc import normalise_log1p
from ..errors import CellsynthError, ConfigError, DataError, ModelFileError
from ..features.pca import PCAModel, fit_pca
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
from ._design import Design
from ._model_dir import (
    missing_file,
    read_annotation,
    saved_label_key,
    saved_settings,
    saves_whole,
    setting,
)
from .base import (
    check_library_memory,
    fit_labels,
    reads_cells,
    split_masks,
    synthetic_adata,
    training_counts,
)
from .seed import SeedCVAE

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: PCA components when no features config is given (clamped to what the data allow)
DEFAULT_COMPONENTS = 100
CHECK_DRAWS = 64  # cells of each type a fit decodes to check that its counts are finite


def _proportions(logn: np.ndarray) -> np.ndarray:
    """Each cell's expression shares from its decoded log-normalised values ``(m, G)``: the
    Poisson rates over its library size; :class:`CellsynthError` where they overflow (a seed
    CVAE whose training diverged decodes points far outside the PCA's cells)."""
    with np.errstate(over="ignore", invalid="ignore"):  # refused below
        expr = np.expm1(np.clip(logn.astype(np.float64), 0.0, None))
        total = expr.sum(axis=1, keepdims=True)
        prop = np.divide(expr, total, out=np.zeros_like(expr), where=total > 0)
    if not (np.isfinite(total).all() and np.isfinite(prop).all()):
        raise CellsynthError("the reference model's training diverged: the expression it "
                             "decodes is not finite (it overflows), and no counts can be drawn "
                             "from it; lower seed_vae.lr (e.g. by 10x; and seed_vae.weight_decay, "
                             "if raised) and fit again")
    return prop


def _check_settings(config: Any, features: Any, target_sum: Any) -> None:
    """:class:`SeedGenerator`'s settings, each of its type and range, or a one-line error: the
    data given to the constructor (as ``cs.CVAE(adata)`` takes them) or a dict of settings had
    been kept as its settings, and the fit failed after its PCA with an AttributeError."""
    if isinstance(config, ad.AnnData | Path) or (isinstance(config, str)
                                                  and config.endswith(".h5ad")):
        raise DataError(f"ReferenceGenerator(...) takes its settings, not the data (got "
                        f"{type(config).__name__}): fit it with "
                        "cs.ReferenceGenerator().fit(adata, 'cell_type')")
    for name, value, kind in (("config", config, SeedVAEConfig),
                              ("features", features, FeaturesConfig)):
        if value is None:
            continue
        if not isinstance(value, kind):
            example = "{'max_epochs': 20}" if kind is SeedVAEConfig else "{'n_components': 50}"
            dict_fix = (f" (a dict of settings: {name}={kind.__name__}(**settings), e.g. "
                        f"{kind.__name__}(**{example}))" if isinstance(value, dict) else "")
            raise ConfigError(f"{name} is a {type(value).__name__}; give a "
                              f"cellsynth.config.{kind.__name__} or None{dict_fix}")
        check_ranges(value, "seed_vae." if kind is SeedVAEConfig else "features.")
    if (isinstance(target_sum, bool) or not isinstance(target_sum, numbers.Real)
            or not 0 < target_sum < float("inf")):
        raise ConfigError(f"target_sum must be a positive number (counts per cell before log1p), "
                          f"got {target_sum!r}; the default is 1e4")


class SeedGenerator:
    """The reference PCA-space CVAE, fitted on counts and generating counts (the ``seed`` model).

    Parameters
    ----------
    config
        The CVAE's settings; the defaults are the reference's.
    features
        The PCA settings; defaults to ``FeaturesConfig(n_components=100)``.
    target_sum
        Counts per cell before ``log1p`` (the QC stage's ``qc.target_sum``).
    """

    name: ClassVar[str] = "reference"

    def __init__(
        self,
        config: SeedVAEConfig | None = None,
        features: FeaturesConfig | None = None,
        *,
        target_sum: float = 1e4,
    ) -> None:
        _check_settings(config, features, target_sum)
        self.config = config if config is not None else SeedVAEConfig()
        self.features = (
            features if features is not None else FeaturesConfig(n_components=DEFAULT_COMPONENTS)
        )
        self.target_sum = float(target_sum)
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.gene_annotation: pd.DataFrame | None = None  # text columns of the training var
        self.label_key = "cell_type"
        self.vae: SeedCVAE | None = None
        self.pca: PCAModel | None = None
        self.libraries: list[np.ndarray] = []
        self.history: dict[str, Any] = {}

    def __repr__(self) -> str:
        k = self.pca.n_components if self.pca is not None else self.features.n_components
        n_labels, n_genes = len(self.labels), len(self.genes)
        return f"SeedGenerator(n_labels={n_labels}, n_genes={n_genes}, n_components={k})"

    def _settings(self) -> dict[str, Any]:
        return {
            "seed_vae": dataclasses.asdict(self.config),
            "features": dataclasses.asdict(self.features),
            "target_sum": self.target_sum,
        }

    @reads_cells
    def fit(
        self, adata: ad.AnnData, label_key: str, *, seed: int = 0
    ) -> dict[str, Any]:
        """Fit the PCA on the training rows and the CVAE on training and validation rows."""
        start = time.perf_counter()
        y = fit_labels(adata, label_key)
        train, val = split_masks(adata, y, seed=seed)
        if not train.any() or not val.any():
            raise DataError(
                f"the seed model needs training and validation cells, got {train.sum()} and "
                f"{val.sum()}; give obs['cellsynth_split'] both 'train' and 'val' rows"
            )
        counts = training_counts(adata)
        genes = list(map(str, adata.var_names))
        labels = sorted(set(y[train]))
        codes = np.searchsorted(np.array(labels), y[train])
        libs = [
            np.asarray(counts[np.flatnonzero(train)[idx]].sum(axis=1)).ravel().astype(np.float32)
            for idx in per_type_rows(codes, len(labels))
        ]
        x_train = normalise_log1p(counts[train], self.target_sum)
        pca = fit_pca(x_train, y[train], genes, self.features, seed=derive_seed(seed, "pca"))
        z_train = pca.transform(x_train)  # (n_train, k)
        z_val = pca.transform(normalise_log1p(counts[val], self.target_sum))
        vae = SeedCVAE(pca.n_components, labels, self.config)
        history = vae.fit(
            z_train, y[train], z_val, y[val], seed=derive_seed(seed, "vae")
        )
        # a few draws of each type through the path sample() takes: a diverged fit is refused
        # here, not kept to fail (or draw garbage) at generation
        check, _ = vae.sample(dict.fromkeys(labels, CHECK_DRAWS), seed=derive_seed(seed, "check"))
        _proportions(pca.inverse_transform(check))
        self.labels, self.genes, self.label_key = labels, genes, label_key
        self.gene_annotation = gene_annotation(adata.var)  # symbols beside IDs, in sample()'s var
        self.pca, self.vae, self.libraries = pca, vae, libs
        self.history = {
            **history,
            "n_components": pca.n_components,
            "explained_variance": float(pca.explained_variance_ratio.sum()),
            "seconds_total": time.perf_counter() - start,
            "seed": int(seed),  # the fit's provenance, saved with the model
        }
        return self.history

    def sample(self, counts_per_type: dict[str, int] | pd.DataFrame, *,
               where: dict[str, Any] | None = None, seed: int = 0) -> ad.AnnData:  # fmt: skip
        """Decode prior draws into PCA points, carry them to genes and draw Poisson counts.

        The request is read as the other generators read it (a ``{type: n}`` dict or Series,
        or a table with the label column and ``n``); ``where`` is refused, as the model
        conditions on the type alone."""
        seed = checked_seed(seed)  # numpy's own message for -1, 1.5 truncated to 1 otherwise
        if where:
            raise DataError(f"the reference generator conditions on the cell type alone, not on "
                            f"covariates (where={str(where)[:60]!r} given): leave "
                            "out where=, or fit a cvae, nb or scvi with covariate_keys=[...] to "
                            "ask for covariate levels")
        plan, _ = Design().plan(counts_per_type, None, self.labels, self.label_key)
        pairs = [(label, n) for label, _, n in plan]
        if self.vae is None or self.pca is None:
            raise DataError("the seed model is not fitted; call fit() or load() first")
        check_library_memory(self.libraries, self.labels, pairs, len(self.genes))
        points, y = self.vae.sample(dict(pairs), seed=derive_seed(seed, "latent"))  # (n, k)
        rng = np.random.default_rng(derive_seed(seed, "counts"))
        blocks, row = [], 0
        for label, n in pairs:
            k = self.labels.index(label)
            for m in row_chunks(n, len(self.genes)):
                prop = _proportions(self.pca.inverse_transform(points[row : row + m]))
                lib = draw_libraries(rng, self.libraries[k], m)
                blocks.append(sp.csr_matrix(rng.poisson(prop * lib[:, None]).astype(np.float32)))
                row += m
        return synthetic_adata(
            stack_rows(blocks),
            y,
            self.genes,
            label_key=self.label_key,
            model=self.name,
            seed=seed,
            config=self._settings(),
            annotation=self.gene_annotation,
        )

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, labels, genes, library sizes, ``vae/`` and ``pca/``."""
        if self.vae is None or self.pca is None:
            raise DataError("the seed model is not fitted; call fit() before save()")
        directory = Path(directory)
        meta = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "label_key": self.label_key,
            "config": self._settings(),
            "history": self.history,
        }
        write_meta(directory, meta, self.labels, self.genes, self.gene_annotation)
        save_libraries(directory / "libraries.safetensors", self.libraries)
        self.vae.save(directory / "vae")
        self.pca.save(directory / "pca")
        write_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> SeedGenerator:
        """Read a directory written by :meth:`save`, checking that its parts agree.

        ``device`` overrides the CVAE's saved device (e.g. ``"cpu"`` for a GPU-trained model).
        """
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, genes = read_meta(directory, cls.name, FORMAT_VERSION)
        with saved_settings(directory):
            # validated; vae/ holds the one used
            from_dict(SeedVAEConfig, setting(meta, "config.seed_vae"), "config.seed_vae.")
            features = from_dict(FeaturesConfig, setting(meta, "config.features"),
                                 "config.features.")  # fmt: skip
            target_sum = float(setting(meta, "config.target_sum", float))
            _check_settings(None, features, target_sum)
        libraries, _ = load_libraries(directory / "libraries.safetensors", len(labels))
        if not (directory / "vae").is_dir():  # a part of this save, not a folder given
            raise missing_file(directory / "vae", directory, "reference")
        vae = SeedCVAE.load(directory / "vae", device=device)
        pca = PCAModel.load(directory / "pca", fix=f"{directory} is not a complete reference "
                            "save: copy the whole directory from the same save, or fit the model again")
        if vae.labels != labels or pca.genes != genes or vae.n_input != pca.n_components:
            raise ModelFileError(
                f"the parts of {directory} disagree (labels, genes or PCA size differ between "
                "labels.json/genes.json, vae/ and pca/); they come from different models"
            )
        model = cls(vae.config, features, target_sum=target_sum)
        model.labels, model.genes, model.label_key = (
            labels,
            genes,
            saved_label_key(directory, meta),
        )
        model.gene_annotation = read_annotation(directory, genes)
        model.vae, model.pca, model.libraries = vae, pca, libraries
        model.history = meta.get("history") or {}
        verify_checksums(directory)  # after the checks above, which name what is wrong
        return model
