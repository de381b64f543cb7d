"""The out-of-core stages of :func:`cellsynth.pipeline.run` (``dataset.backed``).

Cells stay on disk: QC and normalisation chunk by chunk into ``data/preprocessed.h5ad`` (a
:class:`~cellsynth.data.chunked.PreprocessedStore`), PCA fitted from row blocks and applied into
per-split ``.npy`` memmaps, the CVAE trained from a block loader, generated cells written chunk
by chunk, and the evaluation on subsamples read back from disk. :func:`run` calls these in place
of the in-memory stages; only ``generator.model = "cvae"`` and the local classifier run here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys as K
from .runtime import write_json
from .seeds import derive_seed
from .config import RunConfig
from .data.io import BACKED_BYTES
from .data.qc import QCReport, normalise_log1p
from .data.split import stratified_subsample
from .errors import ConfigError
from .features.pca import PCAModel
from .models.registry import make_generator
from .pipeline import Split, _write_fidelity, _write_umap, resolve_groups

logger = logging.getLogger(__name__)

def fit_generator(cfg: RunConfig, store: Any, progress: bool, out: Path,
                  checkpoint_key: str = "", fresh: bool = False) -> tuple[Any, dict]:
    """:func:`_fit_generator` out of core: the CVAE trains from the store (``CVAE.fit_store``)."""
    import shutil

    seed = derive_seed(cfg.seed, "generator")
    ckpt = out / "generator" / "checkpoint"
    if fresh:
        shutil.rmtree(ckpt, ignore_errors=True)
    gen = make_generator(cfg.generator.model, cfg)
    history = gen.fit_store(store, cfg.dataset.label_key, seed=seed, progress=progress,
                            checkpoint_dir=ckpt, checkpoint_key=checkpoint_key)
    return gen, history


_BACKED_GENERATORS = ("cvae",)


def out_of_core(cfg: RunConfig) -> bool:
    """Whether ``run`` takes the out-of-core path: ``dataset.backed`` true, or ``"auto"`` and
    the file larger than ``data.io.BACKED_BYTES``."""
    backed = cfg.dataset.backed
    if backed is True:
        return True
    if backed == "auto" and cfg.dataset.path:
        path = Path(cfg.dataset.path).expanduser()
        return path.is_file() and path.stat().st_size > BACKED_BYTES
    return False


def check_backed(cfg: RunConfig) -> None:
    """Settings the out-of-core path cannot run, refused before any work."""
    model = cfg.generator.model
    if model not in _BACKED_GENERATORS:
        raise ConfigError(f"generator.model = {model} needs the data in memory; use cvae or "
                             "set dataset.backed = false")
    if cfg.cvae.distributed:
        raise ConfigError("cvae.distributed needs the data in memory; set cvae.distributed = "
                             "false or dataset.backed = false")
    if cfg.classifier.backend == "dask":
        raise ConfigError("classifier.backend = dask needs the data in memory; set "
                             "classifier.backend = local or dataset.backed = false")


def _backed_source(cfg: RunConfig, out: Path, progress: bool) -> Path:
    """The h5ad to preprocess out of core: ``dataset.path``, or the demo atlas written to disk."""
    ds = cfg.dataset
    if ds.path:
        return Path(ds.path).expanduser()
    from .data.simulate import write_atlas

    path = out / "data" / "demo.h5ad"
    logger.info("no dataset.path: writing the embedded demo atlas (%d simulated cells, %d genes, "
                "%d types) to %s", ds.demo_cells, ds.demo_genes, ds.demo_types, path)
    return write_atlas(path, ds.demo_cells, ds.demo_genes, ds.demo_types,
                       seed=derive_seed(cfg.seed, "demo"), label_key=ds.label_key,
                       progress=progress)


def stage_data(cfg: RunConfig, out: Path, progress: bool) -> tuple[Any, QCReport]:
    """The data stage out of core: ``preprocess_backed`` into ``data/preprocessed.h5ad``."""
    from .data.chunked import PreprocessedStore, preprocess_backed
    from .data.store import H5adFile

    d = out / "data"
    source = _backed_source(cfg, out, progress)
    with H5adFile(source) as h5:
        groups = {} if cfg.dataset.groups == "auto" else resolve_groups(cfg, h5, [])
    _, report = preprocess_backed(source, cfg.dataset, cfg.qc, cfg.split, groups=groups,
                                  seed=derive_seed(cfg.seed, "split"),
                                  out_path=d / "preprocessed.h5ad", progress=progress)
    store = PreprocessedStore(d / "preprocessed.h5ad")
    write_json(d / "qc.json", {
        "steps": report.steps, "dropped_types": report.dropped_types,
        "cells_per_type_before": report.cells_per_type_before,
        "cells_per_type_after": report.cells_per_type_after,
        "n_cells": store.n_obs, "n_genes": store.n_vars, "has_counts": store.has_counts,
    })
    pd.DataFrame(report.steps).to_csv(d / "qc_steps.csv", index=False)
    cols = [cfg.dataset.label_key, K.SPLIT] + ([K.GROUP] if K.GROUP in store.obs else [])
    store.obs[cols].to_csv(d / "cells.csv", index_label="cell")
    write_json(d / "groups.json", groups)
    return store, report


def split_rows(store: Any) -> dict[str, np.ndarray]:
    split = store.split()
    return {s: np.flatnonzero(split == s) for s in K.SPLITS}


def splits(store: Any, pca: PCAModel, label_key: str, directory: Path, chunk: int,
           progress: bool, reuse: bool) -> dict[str, Split]:
    """Each split's PCA features in its own ``.npy`` memmap in ``directory`` (``{split}.npy``),
    transformed chunk by chunk from the store; ``reuse`` reopens files of the right shape."""
    y = store.obs[label_key].astype(str).to_numpy()
    out = {}
    for s, rows in split_rows(store).items():
        path, shape = directory / f"{s}.npy", (len(rows), pca.n_components)
        if not len(rows):
            out[s] = Split(np.zeros(shape, dtype=np.float32), y[rows])
            continue
        if reuse and path.is_file():
            try:
                mm = np.load(path, mmap_mode="r")
                if mm.shape == shape and mm.dtype == np.float32:
                    out[s] = Split(mm, y[rows])
                    continue
            except ValueError:
                pass
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        pca.transform(store.normalised.subset(rows), chunk_size=chunk, out=mm, progress=progress)
        mm.flush()
        del mm
        out[s] = Split(np.load(path, mmap_mode="r"), y[rows])
    return out


def centroids(split: Split, types: list[str], chunk: int) -> np.ndarray:
    """Mean features of each type, read ``chunk`` rows at a time (a memmap stays on disk)."""
    codes = pd.Categorical(split.y, categories=types).codes
    sums = np.zeros((len(types), split.x.shape[1]))
    for start in range(0, len(codes), chunk):
        c = codes[start:start + chunk]
        np.add.at(sums, c[c >= 0], np.asarray(split.x[start:start + chunk], np.float64)[c >= 0])
    return sums / np.maximum(np.bincount(codes[codes >= 0], minlength=len(types)), 1)[:, None]


def _write_synthetic_h5ad(path: Path, writer_rows, labels: np.ndarray, genes: list[str],
                          label_key: str, uns: dict) -> None:
    """Write generated CSR chunks (an iterable) as an h5ad, one chunk in memory at a time."""
    from anndata.io import write_elem

    from .data.store import CSRWriter, h5ad_file

    with h5ad_file(path) as f:
        writer = CSRWriter(f, "X", len(genes))
        for x in writer_rows:
            writer.append(x)
        obs = pd.DataFrame({label_key: pd.Categorical(np.asarray(labels, dtype=str))},
                           index=[f"synthetic_{i}" for i in range(len(labels))])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index(genes, dtype=str)))
        write_elem(f, "uns", {K.UNS: uns})


def generate(gen: Any, cfg: RunConfig, pca: PCAModel, counts: dict[str, int], seed: int,
             path: Path | None, features: Path, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_generate` one chunk at a time: each generated chunk is written (when ``path``),
    normalised and projected into the ``features`` memmap; only the features are kept."""
    import dataclasses

    from .models.base import package_version, request

    pairs = request(counts, gen.labels)
    y = np.repeat(np.array([t for t, _ in pairs], dtype=object), [n for _, n in pairs])
    features.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(y), pca.n_components)
    z = (np.lib.format.open_memmap(features, mode="w+", dtype=np.float32, shape=shape)
         if len(y) else np.zeros(shape, dtype=np.float32))
    pos = 0

    def chunks():
        nonlocal pos
        for _, x in gen.sample_chunks(counts, seed=seed, progress=progress):
            n = x.shape[0]
            pca.transform(normalise_log1p(x, cfg.qc.target_sum), chunk_size=cfg.qc.chunk_size,
                          out=z[pos:pos + n])
            pos += n
            yield x

    if path is not None:
        uns = {"version": package_version(), "model": gen.name, "seed": int(seed),
               "label_key": cfg.dataset.label_key,
               "config": {**dataclasses.asdict(gen.config), "latent_sampler": "mixture"}}
        _write_synthetic_h5ad(path, chunks(), y, gen.genes, cfg.dataset.label_key, uns)
    else:
        for _ in chunks():
            pass
    if isinstance(z, np.memmap):
        z.flush()
        z = np.load(features, mmap_mode="r")
    return z, y.astype(str)


def evaluate(cfg: RunConfig, store: Any, pca: PCAModel, out: Path,
             progress: bool = False) -> None:
    """:func:`_evaluate` on subsamples read from disk: at most ``report.max_cells`` test and
    generated cells; the fidelity space on a class-balanced training subsample
    (``features.max_cells_per_class`` a type, read a chunk at a time) and the real-vs-real floor
    on the test subsample."""
    from .data.split import balanced_subsample
    from .data.store import H5adFile

    label_key = cfg.dataset.label_key
    rows = split_rows(store)
    y = store.obs[label_key].astype(str).to_numpy()
    cap = cfg.report.max_cells
    test_rows = rows["test"]
    ir = stratified_subsample(y[test_rows], cap, seed=derive_seed(cfg.seed, "eval-real"))
    test = store.to_memory(test_rows[ir])
    y_real = y[test_rows][ir]
    with H5adFile(out / "synthetic" / "eval.h5ad") as syn:
        y_syn = syn.obs[label_key].astype(str).to_numpy()
        is_ = stratified_subsample(y_syn, cap, seed=derive_seed(cfg.seed, "eval-synthetic"))
        syn_x = syn.X.take(is_)
        syn_names = syn.obs_names[is_]
    if cfg.report.umap:
        z_real = pca.transform(test.X)
        z_syn = pca.transform(normalise_log1p(syn_x, cfg.qc.target_sum))
        _write_umap(cfg, out, z_real, z_syn, [*test.obs_names, *syn_names],
                    [*y_real, *y_syn[is_]])
    if cfg.report.fidelity and store.has_counts:
        from .metrics.space import fit_space

        train = rows["train"]
        sub = train[balanced_subsample(y[train], cfg.features.max_cells_per_class,
                                       seed=derive_seed(cfg.seed, "eval-space-cells"))]
        space = fit_space(store.x, y[sub], list(store.genes), rows=sub,
                          seed=derive_seed(cfg.seed, "eval-space"), progress=progress)
        _write_fidelity(cfg, out, space, sp.csr_matrix(test.layers[K.COUNTS]), y_real,
                        syn_x, y_syn[is_], progress)


