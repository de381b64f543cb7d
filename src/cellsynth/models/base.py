"""The one interface every count-space generator follows, and what they share.

A generator learns from an AnnData with raw counts and a label column, and returns generated
cells as an AnnData: integer counts in ``X`` (CSR), the label in ``obs``, the model's genes in
``var``, and the model, version, seed and config in ``uns["cellsynth"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import keys as K
from ..data.csr import canonical
from ..data.genes import annotated_var, gene_difference
from ..data.io import check_gene_names, check_shape, training_source
from ..data.labels import MISSING_TEXT, check_label, missing_labels, warn_unannotated
from ..data.split import split_column, stratified_split
from ..data.values import check_libraries, check_values, check_whole
from ..errors import ConfigError, DataError, listed
from ..seeds import checked_seed
from ._model_dir import check_save_dir as check_save_dir  # re-exported: cellsynth fit's checks
from ._model_dir import is_model_dir as is_model_dir  # re-exported: cellsynth fit's checks
from ._training import check_counts, package_version

logger = logging.getLogger(__name__)


@runtime_checkable
class Generator(Protocol):
    """``fit`` on counts, ``sample`` cells of chosen types, ``save``/``load`` a plain directory."""

    name: ClassVar[str]
    labels: list[str]  # cell types the model knows, in code order
    genes: list[str]  # the genes it generates, in order

    def fit(self, adata: ad.AnnData, label_key: str, *, seed: int = 0) -> dict[str, Any]: ...

    def sample(self, counts_per_type: dict[str, int], *, seed: int = 0) -> ad.AnnData: ...

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path) -> Self: ...


def training_counts(adata: ad.AnnData) -> sp.csr_matrix:
    """Raw counts of ``adata`` as CSR float32: ``layers['counts']`` if present, else ``X``, or
    ``raw.X`` where ``X`` is normalised and ``raw`` has the same genes (scanpy's layout).

    Raises :class:`DataError` when they are not counts (negative, fractional, NaN).
    """
    x, genes = training_source(adata)
    if not genes.equals(adata.var_names):  # raw.X over other genes
        raise DataError(
            f"X holds normalised values and raw.X the counts, but over "
            f"{gene_difference(genes, adata.var_names, 'raw.X', 'X')}; train on "
            "adata.raw.to_adata() (the counts over raw's genes, with the same obs) or put the "
            "counts in layers['counts']")
    check_gene_names(genes)
    x = canonical(sp.csr_matrix(x, dtype=np.float32))  # a gene stored twice in a cell: summed
    check_values(x.data, "the counts")
    check_whole(x)  # every value: a sample would miss a few corrected cells
    check_libraries(np.asarray(x.sum(axis=1)).ravel())
    return x


#: bytes a stored count takes, in memory or in an h5ad (float32 value and int32 column index)
BYTES_PER_VALUE = 8


def request_bytes(parts: list[tuple[float, int]], n_genes: int) -> float:
    """An upper estimate of the stored counts of generated cells: ``parts`` are ``(mean library
    size, cells)``; a cell holds at most as many non-zero genes as counts, or all genes."""
    return float(sum(n * min(float(lib), n_genes) for lib, n in parts) * BYTES_PER_VALUE)


def check_request_memory(parts: list[tuple[float, int]], n_genes: int, hint: str = "") -> None:
    """:func:`check_memory` of generated cells, ``parts`` as :func:`request_bytes` reads them."""
    check_memory(request_bytes(parts, n_genes), sum(n for _, n in parts), hint)


def check_library_memory(libraries: list[np.ndarray], labels: list[str],
                         pairs: list[tuple[str, int]], n_genes: int) -> None:  # fmt: skip
    """:func:`check_request_memory` of ``(type, cells)`` pairs from each type's training
    library sizes (``libraries``, in ``labels``' order)."""
    check_request_memory([(float(np.mean(libraries[labels.index(t)])), n) for t, n in pairs],
                         n_genes)


def check_memory(need: float, n_cells: int, hint: str = "") -> None:
    """Refuse, before anything is drawn, cells whose counts (``need`` bytes) would not fit in
    the memory available now: a :class:`DataError` saying how much, and ``hint``."""
    from ..runtime import available_memory

    free = available_memory()
    if free is not None and need > free:
        raise DataError(f"{n_cells:,} cells would take up to {need / 1e9:,.1f} GB in memory, but "
                        f"{free / 1e9:,.1f} GB is available: ask for fewer cells{hint}")


def check_network_memory(section: str, n_input: int, n_hidden: list[int], n_latent: int,
                         n_embed: int = 0, *, settings: str | None = None) -> None:
    """Refuse, before any weight is allocated, a network whose training state (weights, their
    gradients and two optimiser moments, float32; encoder and mirrored decoder) would not fit in
    the memory available now: a :class:`ConfigError` naming ``section``'s width settings
    (``cvae.n_hidden = [1000000000]`` stopped a fit with the allocator's traceback);
    ``settings``: how the message names the width settings, where they are not a list of layers
    and ``n_latent`` (scvi's ``n_hidden`` and ``n_layers``)."""
    from ..config_rules import fix_hint
    from ..runtime import available_memory

    widths = [int(n_input), *map(int, n_hidden), int(n_latent)]
    weights = 2.0 * sum(a * b for a, b in itertools.pairwise(widths))
    weights += 2.0 * int(n_embed) * (int(n_hidden[0]) if n_hidden else int(n_latent))
    need, free = weights * 4 * 4, available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"{settings or f'{section}.n_hidden = {list(n_hidden)}, {section}.n_latent = {n_latent}'} over "
            f"{n_input:,} inputs make a network whose training needs about {need / 1e9:,.1f} GB, "
            f"but {free / 1e9:,.1f} GB is available: give narrower layers (the default is "
            f"{_default_widths(section)}); {fix_hint(f'{section}.n_hidden')}")


def _default_widths(section: str) -> str:
    from .. import config

    cls = {"cvae": config.CVAEConfig, "seed_vae": config.SeedVAEConfig,
           "scvi": config.ScviConfig}[section]
    layers = f", n_layers = {cls().n_layers}" if hasattr(cls(), "n_layers") else ""
    return f"n_hidden = {cls().n_hidden}{layers}, n_latent = {cls().n_latent}"


def split_masks(adata: ad.AnnData, labels: np.ndarray, *, seed: int,
                val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Training and validation rows: ``obs['cellsynth_split']`` when present, else a random cut
    stratified by the type ``labels`` (:func:`~cellsynth.data.split.stratified_split`: every type
    keeps its training cells, a type of a few cells all of them)."""
    split = split_column(adata.obs)  # odd values ("Train", "validation") refused
    if split is not None:
        return split == "train", split == "val"
    split = stratified_split(np.asarray(labels).astype(str), (1 - val_fraction, val_fraction, 0.0),
                             seed=checked_seed(seed))  # fmt: skip
    return split == "train", split == "val"


def generator_config(config: Any, kind: type, covariate_keys: list[str] | str | None,
                     fix: str) -> Any:  # fmt: skip
    """A generator's settings as its constructor takes them: ``config`` (``kind()`` when None),
    refused unless a ``kind`` (``fix``: how to give one), with ``covariate_keys`` (one column
    may be a string, as scanpy takes a key) as its ``covariates`` when given; other covariates
    in ``config`` too are refused (one of the two would be dropped), as the command line
    refuses ``--covariates`` beside another ``cvae.covariates``."""
    config = config if config is not None else kind()
    if not isinstance(config, kind):
        raise ConfigError(f"config is a {type(config).__name__}; give a {kind.__name__} ({fix})")
    if covariate_keys is not None:
        keys = key_list(covariate_keys)
        if config.covariates and list(config.covariates) != keys:
            raise ConfigError(f"the covariates are given twice: covariate_keys={keys} and "
                              f"{kind.__name__}(covariates={list(config.covariates)}); give "
                              "one, e.g. leave covariate_keys out to condition on the config's")
        config = dataclasses.replace(config, covariates=keys)
    return config


def key_list(keys: Any) -> list[str]:
    """Covariate columns as a generator takes them: one column as a string (as scanpy takes a
    key), None for none, or any sequence of them (a list, ``adata.obs.columns[2:4]``, an
    array), each named as text."""
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    if not isinstance(keys, Iterable):
        raise ConfigError(f"covariate_keys are obs column names: a list of them, or one as "
                          f"text (covariate_keys=['donor']); got {type(keys).__name__} {keys!r}")
    return [str(k) for k in keys]


def in_memory(data: ad.AnnData | str | Path) -> ad.AnnData:
    """The cells a generator that trains in memory reads: an AnnData as it is, a backed one
    read into memory, an h5ad path read (:func:`~cellsynth.data.io.read`'s checks); anything
    else a :class:`DataError` naming what was given. An AnnData gets the checks a file gets
    (:func:`~cellsynth.data.io.check_shape`: no cells or genes, duplicate cell or gene names)."""
    if isinstance(data, str | Path):
        from ..data.io import read

        data = read(data, backed=False)
    if not isinstance(data, ad.AnnData):
        raise DataError(f"expected an AnnData or the path of an .h5ad file, got "
                        f"{type(data).__name__}")
    if data.isbacked:
        logger.info("reading the %d backed cells into memory", data.n_obs)
        data = data.to_memory()
    check_shape(data)
    return data


def reads_cells(fit: Callable[..., Any]) -> Callable[..., Any]:
    """A generator's ``fit(adata, ...)`` that also takes a path or backed data
    (:func:`in_memory`), as the CVAE's does."""
    @functools.wraps(fit)
    def wrapper(self: Any, adata: Any, *args: Any, **kwargs: Any) -> Any:
        label_key = args[0] if args else kwargs.get("label_key")
        return fit(self, without_empty_cells(in_memory(adata), label_key), *args, **kwargs)
    return wrapper


def without_empty_cells(adata: ad.AnnData, label_key: Any) -> ad.AnnData:
    """``adata`` without its cells that hold no count (a warning naming the types that had
    only such cells), as ``cellsynth fit`` and the CVAE leave them out: a cell without a
    library is nothing to learn from, and its type's generated cells would come out empty."""
    from ..cells import warn_empty_cells

    x, _ = training_source(adata, say=K.UNS not in adata.uns)  # cellsynth's copy: said
    empty = np.asarray(x.sum(axis=1)).ravel() == 0
    if not empty.any():
        return adata
    if empty.all():
        raise DataError(f"no cell to learn from: all {adata.n_obs} cells have no count at all; "
                        "give cells with counts")
    known = isinstance(label_key, str) and label_key in adata.obs
    warn_empty_cells(adata.obs[label_key].to_numpy() if known else np.zeros(adata.n_obs), empty)
    return adata[~empty].copy()


def read_rows(obs: pd.DataFrame, label_key: str) -> np.ndarray:
    """The rows of ``obs`` a fit reads: the labelled cells, and where a split column is, its
    training and validation cells (never the test ones): what a generator built on the data
    checks its covariates in before the fit."""
    rows = ~missing_labels(obs[label_key])
    split = split_column(obs)
    if split is not None:
        rows &= np.isin(split, ["train", "val"])
    return np.flatnonzero(rows)


def fit_labels(adata: ad.AnnData, label_key: str, *, fitting: bool = True) -> np.ndarray:
    """The label column as strings, checked to exist, to hold names and to leave no cell
    without one (a missing label would become a type called "nan"); ``fitting``: a WARNING
    for names of cells without a type ("Unknown"), which a fit learns as a type."""
    check_label(adata, label_key)
    missing = missing_labels(adata.obs[label_key])
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} cells have no label in obs['{label_key}'] (missing, or "
            f"written as text: {', '.join(map(repr, MISSING_TEXT))}); leave them out first "
            f"(adata = adata[adata.obs['{label_key}'].notna()].copy(), text such as 'nan' "
            "made missing first) or give them a type; cellsynth fit leaves them out itself")
    labels = adata.obs[label_key].astype(str).to_numpy()
    if fitting:
        warn_unannotated(labels, label_key)
    return labels


def check_genes(model_genes: list[str], adata: ad.AnnData) -> None:
    """Refuse data whose genes differ from the model's."""
    genes = list(map(str, adata.var_names))
    if genes != model_genes and sorted(genes) == sorted(model_genes):
        raise DataError("the data hold the model's genes in another order; put them in the "
                        "model's order with adata[:, model.genes]")
    if genes != model_genes:
        have = set(genes)
        missing = [g for g in model_genes if g not in have]
        what = (f"missing: {listed(missing, quote=True)}" if missing else
                f"extra: {listed(sorted(have - set(model_genes)), quote=True)}")
        raise DataError(
            f"the data's {len(genes)} genes differ from the model's {len(model_genes)} "
            f"({what}); subset the data to the model's genes "
            "(adata[:, model.genes]) or fit a model on this gene set"
        )


def cell_names(n: int, seed: int) -> pd.Index:
    """Names of ``n`` generated cells drawn with ``seed``: ``synthetic_SEED_I``, so that the
    cells of draws with other seeds can be concatenated without clashing names."""
    return pd.Index([f"synthetic_{int(seed)}_{i}" for i in range(n)])


def synthetic_adata(
    counts: sp.csr_matrix | np.ndarray,
    labels: np.ndarray,
    genes: list[str],
    *,
    label_key: str,
    model: str,
    seed: int,
    config: dict[str, Any] | None = None,
    annotation: pd.DataFrame | None = None,
) -> ad.AnnData:
    """Package generated counts as an AnnData with provenance in ``uns['cellsynth']`` and the
    training data's gene ``annotation`` in ``var``
    (:func:`~cellsynth.data.genes.annotated_var`)."""
    x = sp.csr_matrix(counts, dtype=np.float32)
    obs = pd.DataFrame({label_key: pd.Categorical(np.asarray(labels, dtype=str))},
                       index=cell_names(x.shape[0], seed))
    a = ad.AnnData(X=x, obs=obs, var=annotated_var(genes, annotation))
    a.uns[K.UNS] = {"version": package_version(), "model": model, "seed": int(seed),
                    "label_key": label_key, "config": config or {}}
    return a


def request(counts_per_type: dict[str, int], labels: list[str]) -> list[tuple[str, int]]:
    """Validate a ``{type: n}`` request against the model's labels; return it as pairs."""
    return [(str(t), int(n)) for t, n in check_counts(counts_per_type, labels).items()]


def writable_uns(uns: dict[str, Any]) -> dict[str, Any]:
    """``uns['cellsynth']`` as an h5ad can hold it: each list of combinations
    (``unseen_combinations``, ``fallback_combinations``: ``[{label_key: type, covariate:
    level}, ...]``, which anndata cannot write) becomes a table, one list per column
    (``{label_key: [...], covariate: [...]}``; ``{}`` when empty)."""
    out = dict(uns)
    for key, value in uns.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(c for v in value for c in v))
            out[key] = {c: [str(v.get(c, "")) for v in value] for c in cols}
        elif isinstance(value, list) and not value and key.endswith("_combinations"):
            out[key] = {}
    return out
