"""The count-space conditional VAE (cellsynth's main generator): train, sample, save, load.

Learns the raw counts of every gene of a labelled AnnData. Generation draws, for each requested
cell of type ``t``, a latent ``z`` and a library size jointly (from a Gaussian mixture over
``(z, log library)`` fitted after training to the type's training cells: posterior draws beside
observed library sizes), or ``z`` from the prior ``p(z | t)`` and the library from the type's
log-normal library model; then integer counts from the decoded (zero-inflated) negative
binomial (Gaussian: log-normalised values, scaled to the library and rounded). With
``dispersion_fit = "moments"`` (the default) the network trains on a Poisson likelihood and the
NB dispersion is fitted by moments after training, with the mixture.

Mini-batches are CSR rows densified one batch at a time: cells in memory are served by
:class:`~cellsynth.data.rows.Rows` (on a GPU gathered from a device copy of the CSR arrays when
they fit, else sliced on the host); cells on disk by a :class:`~cellsynth.data.loader.BlockLoader`
(contiguous blocks shuffled, rows shuffled within a buffer; memory holds one read-ahead buffer,
one mini-batch and a few numbers per cell). ``select = "fidelity"`` needs the validation cells
in memory; cells on disk are selected by the validation ELBO. What a fit trains on is prepared
by :mod:`._prepare`, the epoch loop is :func:`._loop.train_loop`, the kept epoch's check
:mod:`._select`, generation :mod:`.sampling` and its draws :mod:`._draws`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .. import keys as K
from ..cells import Cells, for_training
from ..config import CVAEConfig
from ..config_rules import from_dict
from ..config_rules import hints as config_hints
from ..data.io import read, training_source
from ..data.labels import check_label, missing_labels
from ..data.rows import Rows
from ..errors import ConfigError, DataError, ModelFileError, NotTrainedError
from ..paths import expand_user
from ..seeds import checked_seed
from . import _checkpoint, _loop
from . import _model_dir as md
from . import _training as tr
from ._counts import (
    MIXTURE_MAX_CELLS,
    TARGET_SUM,
    decoder_from_sums,
    fit_sampler,
    library_model,
)
from ._design import Design, DesignRequests
from ._model_dir import saves_whole
from ._prepare import training_data
from .base import (
    check_genes,
    check_network_memory,
    fit_labels,
    generator_config,
    in_memory,
    read_rows,
    training_counts,
)
from .modules.cvae import CVAEModule
from .sampling import GenerationMixin

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the latent mixture is over (z, log library), full covariance
GENES_FILE = "genes.json"
CHECKPOINT_NAME = "cvae"  # the training checkpoint is CHECKPOINT_NAME.safetensors
_EVAL_VALUES = 16_000_000  # values (cells x genes) of one dense pass without gradients
#: CVAEConfig fields that change neither the training nor the model (not in the fingerprint)


def _keyword_fix(key: str) -> str:
    """A setting's fix said as a Python keyword (``cvae.lr`` -> ``lr``), for :meth:`CVAE.configure`."""
    name = key.removeprefix("cvae.").split("[")[0]
    return f"give another {name} (model.configure({name}=...) or model.train)"


# the settings that shape the trained network (CVAEModule's arguments and the design): a
# trained model refuses a change of them in configure (train and fit build the network anew)
_NETWORK_SETTINGS = ("n_hidden", "n_latent", "n_embed", "covariates", "n_covariate_embed",
                     "decode_labels", "label_dropout", "likelihood", "prior",
                     "dispersion", "dispersion_fit")
_NOT_FINGERPRINTED = ("checkpoint_every", "checkpoint_seconds", "distributed", "nproc_per_node")


class CVAE(GenerationMixin, DesignRequests):
    """Conditional VAE on raw counts that generates integer-count cells of requested types.

    Parameters
    ----------
    adata
        Labelled AnnData with raw counts (``X``, ``layers['counts']`` or ``raw.X``), or the
        path of an h5ad file, to :meth:`train` on; rows with ``obs['cellsynth_split']`` of
        ``"test"`` are never used. ``None`` for a model to :meth:`fit` later.
    label_key
        ``obs`` column holding the cell type.
    config
        Architecture and training settings.
    covariate_keys
        ``obs`` columns to condition on besides the type (donor, condition, batch...; default
        ``config.covariates``). Each is categorical with an embedding of its own, so any
        combination of levels seen in training can be generated, also one no training cell had.
        One column may be given as a string.

    Examples
    --------
    >>> model = CVAE(adata, label_key="cell_type", covariate_keys=["condition"])
    >>> history = model.train(max_epochs=50)
    >>> stim = model.sample({"B cells": 500}, where={"condition": "stim"}, seed=1)
    """

    name: ClassVar[str] = "cvae"

    def __init__(
        self,
        adata: ad.AnnData | str | Path | None = None,
        label_key: str = "cell_type",
        config: CVAEConfig | None = None,
        covariate_keys: list[str] | None = None,
    ) -> None:
        config = generator_config(config, CVAEConfig, covariate_keys,
                                  "e.g. CVAEConfig(max_epochs=50)), or set the settings with "
                                  "model.configure(...) or train(max_epochs=...")
        self.config = config.validate()
        self.design = Design()
        self.device = tr.resolve_device(self.config.device)
        self.label_key = label_key
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.gene_annotation: pd.DataFrame | None = None  # text columns of the training var
        self.history: dict[str, Any] = {}
        self.module: CVAEModule | None = None
        if isinstance(adata, str | Path):  # as fit and cs.evaluate take them
            adata = read(adata)
        elif adata is not None and not isinstance(adata, ad.AnnData):
            raise DataError(f"CVAE takes an AnnData or the path of an h5ad file, got "
                            f"{type(adata).__name__}")
        self.adata = adata
        if adata is not None:
            check_label(adata, label_key)
            _, genes = training_source(adata)  # no raw counts (a log-normalised X alone): said now
            labels = adata.obs[label_key]
            labelled = ~missing_labels(labels)
            if K.SPLIT in adata.obs:
                labelled &= (adata.obs[K.SPLIT].astype(str) == "train").to_numpy()
            self.labels = sorted(set(labels[labelled].astype(str)))
            self.genes = list(map(str, genes))  # raw's genes when the counts are in raw.X
            known = read_rows(adata.obs, label_key)  # not the test cells
            self.design, _ = Design.fit(adata.obs, list(self.config.covariates), label_key,
                                        adata.obs[label_key].astype(str).to_numpy(), known, known)
            self.module = self._build_module()

    def __repr__(self) -> str:
        c = self.config
        # before training, the covariates the next fit conditions on (configure may change them)
        covariates = self.design.keys if self.is_trained else list(c.covariates)
        return (
            f"CVAE(n_genes={len(self.genes)}, n_labels={len(self.labels)}, "
            f"likelihood={c.likelihood!r}, prior={c.prior!r}, n_hidden={c.n_hidden}, "
            f"n_latent={c.n_latent}, covariates={covariates}, device={self.device}, "
            f"trained={self.is_trained})"
        )

    @property
    def is_trained(self) -> bool:
        """True after :meth:`train` / :meth:`fit` (or when loaded from a fitted model)."""
        return bool(self.history)

    def _build_module(self) -> CVAEModule:
        c = self.config
        check_network_memory("cvae", len(self.genes), list(c.n_hidden), c.n_latent, c.n_embed)
        module = CVAEModule(
            n_input=len(self.genes),
            n_labels=len(self.labels),
            n_embed=c.n_embed,
            n_hidden=list(c.n_hidden),
            n_latent=c.n_latent,
            dropout_rate=c.dropout_rate,
            likelihood=c.likelihood,
            prior=c.prior,
            dispersion=c.dispersion,
            dispersion_fit=c.dispersion_fit,
            target_sum=TARGET_SUM,
            n_covariate_levels=self.design.n_levels,
            n_covariate_embed=c.n_covariate_embed,
            decode_labels=c.decode_labels,
            label_dropout=c.label_dropout if self.design.keys else 0.0,
        )
        module.compute_dtype = tr.resolve_precision(c.precision, self.device)
        return module.to(self.device)

    def eval_rows(self) -> int:
        """Cells per pass without gradients (validation, the sampler's fit, latents): four
        mini-batches, fewer when the genes are many, so that a dense pass holds at most
        ``_EVAL_VALUES`` values (a 33,538-gene atlas: 477 cells)."""
        return max(1, min(4 * self.config.batch_size, _EVAL_VALUES // max(1, len(self.genes))))

    def _module(self) -> CVAEModule:
        if self.module is None:
            raise DataError("this CVAE has no data yet; call fit(adata, label_key) or load() first")
        return self.module

    # ------------------------------------------------------------------------------------------
    # training

    def train(
        self,
        max_epochs: int | Literal["auto"] | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        *,
        seed: int = 0,
        **settings: Any,
    ) -> dict[str, Any]:
        """Train on the AnnData given at construction (scvi-tools' habit); see :meth:`fit`.

        Unlike scvi-tools' ``train``, a second call does not go on from the current weights: it
        fits anew from ``seed`` (the same seed, the same model). A fit stopped part-way goes on
        from its checkpoint instead (:meth:`fit` with ``checkpoint_dir``, as ``cellsynth run`` resumes).

        Parameters
        ----------
        max_epochs
            Most epochs (``"auto"``: about 10,000 optimiser steps, at most 400 epochs); the
            kept epoch is chosen by ``config.select``.
        batch_size
            Cells per mini-batch.
        lr
            AdamW learning rate.
        seed
            Seeds weight initialisation, dropout, mini-batch order and the latent noise.
        **settings
            Any other :class:`~cellsynth.config.CVAEConfig` field, e.g. ``patience=5``,
            ``select="elbo"``, ``device="cuda"``.

        Returns
        -------
        The training history (see :meth:`fit`).
        """
        if self.adata is None:
            raise DataError(
                "CVAE() was built without data; use CVAE(adata).train() or fit(adata, ...)"
            )
        given = {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, **settings}
        self._configure({k: v for k, v in given.items() if v is not None})  # fits anew below
        return self.fit(self.adata, self.label_key, seed=seed)

    def configure(self, **settings: Any) -> CVAE:
        """Change settings of :attr:`config` (checked as a config file's are); returns self.

        A trained model keeps the network it was trained with: a setting that shapes it
        (``n_hidden``, ``n_latent``, ``likelihood``, ``covariates``, ...) is refused there, as
        it would take effect only with a new fit (``model.train(n_hidden=[...])`` fits anew).
        """
        return self._configure(settings, refit=False)

    def _configure(self, settings: dict[str, Any], refit: bool = True) -> CVAE:
        """:meth:`configure`; ``refit``: a new fit follows, so the network may change."""
        names = {f.name for f in dataclasses.fields(CVAEConfig)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ConfigError(f"unknown CVAE setting(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(names))}")  # fmt: skip
        with config_hints(_keyword_fix):  # in Python: the keyword, not the command line's --set
            config = from_dict(CVAEConfig, {**dataclasses.asdict(self.config), **settings})
            config.validate()
        changed = [k for k in _NETWORK_SETTINGS if getattr(config, k) != getattr(self.config, k)]
        if changed and self.is_trained and not refit:
            now = ", ".join(f"{k}={getattr(self.config, k)!r}" for k in changed)
            raise ConfigError(
                f"{', '.join(changed)} shape{'s' if len(changed) == 1 else ''} the trained "
                f"network (trained with {now}): changed alone, the settings would no longer "
                f"fit the weights (nor load once saved); fit anew with the new value: "
                f"model.train({changed[0]}=...) on the data the model was built with, or "
                f"CVAE(adata, ...).configure({changed[0]}=...) then train()")
        self.config = config
        self.device = tr.resolve_device(self.config.device)
        if self.module is not None:  # a trained network goes where it will now run
            self.module.to(self.device)
        return self

    def fit(
        self,
        data: ad.AnnData | Cells | str | Path,
        label_key: str | None = None,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        checkpoint_key: str = "",
    ) -> dict[str, Any]:
        """Train from freshly initialised weights; keep the weights of the chosen epoch.

        Parameters
        ----------
        data
            Raw counts and labels: an AnnData, an h5ad path (read from disk when larger than
            2 GB), or :class:`~cellsynth.cells.Cells` (in memory or on disk: the pipeline's
            cells). Training and validation cells come from ``obs['cellsynth_split']`` when
            present, else a seeded 10% validation cut; test cells are never read.
        label_key
            ``obs`` column holding the cell type (default: the model's, or the cells'); the
            model's labels are the sorted types of the training cells (validation cells of
            other types are dropped).
        seed
            Seeds weight initialisation, dropout, mini-batch order and the latent noise.
        checkpoint_dir
            Save the training state into ``checkpoint_dir/cvae.safetensors`` (every
            ``config.checkpoint_every`` epochs, at least ``config.checkpoint_seconds`` apart),
            and resume from it when it was written by a fit with the same settings, data, seed
            and ``checkpoint_key``; the resumed fit ends with the weights the uninterrupted
            one would have. The file is deleted when training ends. None: no checkpoints.
        checkpoint_key
            Anything else the checkpoint must match (the pipeline gives the hash of its data and
            features stages).

        Returns
        -------
        History: per-epoch ``train_loss`` and ``val_loss`` (what early stopping watched: the
        validation loss per cell with KL weight 1 or, with ``select = "fidelity"``, the
        two-sample AUC at checked epochs and None between), ``select``, ``best_epoch``,
        ``epochs``, ``seconds`` and ``cells_per_second`` (training), ``seed`` (saved with the
        model: its provenance), and ``resumed_from`` (the epoch training went on from) after a
        resume.

        """
        seed = checked_seed(seed)  # before any generator sees it: one message for every bad seed
        c = self.config
        tr.warn_one_process(c)
        if not isinstance(data, Cells):
            data = for_training(data, label_key or self.label_key, seed=seed)
        d = training_data(data, c, self.device, seed)
        self.label_key, self.labels, self.genes, self.design = d.label_key, d.labels, d.genes, d.design
        self.gene_annotation = data.annotation
        train, val, yt = d.train, d.val, d.yt

        generator = tr.seed_everything(seed)
        self.module = module = self._build_module()
        module.set_library_model(*library_model(train.library_np, yt, len(self.labels)))
        target = TARGET_SUM if module.likelihood == "gaussian" else None
        module.init_from_data(*decoder_from_sums(train.type_sums(len(self.labels),
                                                                 target_sum=target), module))
        key = self._fingerprint(train, val, seed, checkpoint_key) if checkpoint_dir else ""
        batches, step = d.steps(module, c.balanced_sampling, generator)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = _checkpoint.Checkpoint(checkpoint_dir, key, every=c.checkpoint_every,
                                          min_seconds=c.checkpoint_seconds, name=CHECKPOINT_NAME)  # fmt: skip
        max_epochs = _loop.epoch_budget(c.max_epochs, len(train), c.batch_size)
        # imported here: the check's metrics (scikit-learn, xgboost) are for training only, and
        # loading them made every `cellsynth generate` start 0.7 s later
        from ._select import FidelityCheck, monitor

        evaluate, every = monitor(self, train, val, yt, seed, max_epochs)
        fidelity = isinstance(evaluate, FidelityCheck)
        result = _loop.train_loop(
            _loop.Steps(module, tr.optimizer(module, c), step, batches, len(train), generator),
            # min_steps is for the ELBO, which plateaus on few steps an epoch; the fidelity
            # check is spaced in steps already, so patience alone bounds it
            evaluate, dataclasses.replace(c, max_epochs=max_epochs,
                                          min_steps=0 if fidelity else c.min_steps),
            _loop.LoopOptions("CVAE", "cvae.lr", every, checkpoint,
                              tolerance=c.select_tolerance if fidelity else 0.0),
        )
        history = result.history
        self._fit_sampler(train, yt, seed)
        if checkpoint is not None:
            checkpoint.remove()
        seconds = history["seconds"]
        history["cells_per_second"] = history["epochs"] * len(train) / max(seconds, 1e-9)
        history["select"] = "fidelity" if fidelity else "elbo"
        history["seed"] = seed  # the fit's provenance: history.json beside the weights
        history["precision"] = str(module.compute_dtype).removeprefix("torch.")
        watched = ("validation two-sample AUC" if fidelity else "val loss" if len(val)
                   else "training loss: no validation cells")  # fmt: skip
        logger.info("CVAE: best epoch %d of %d (%s %.4f) in %.1f s, %.0f cells/s",
                    history["best_epoch"], history["epochs"], watched, result.best_loss,
                    seconds, history["cells_per_second"])  # fmt: skip
        self.history = history
        return history

    def _fingerprint(self, train: Any, val: Any, seed: int, key: str) -> str:
        """What a training checkpoint must match: settings, seed, genes, types and the cells
        (per row: stored values, library size and type)."""
        config = {k: v for k, v in dataclasses.asdict(self.config).items()
                  if k not in _NOT_FINGERPRINTED}  # fmt: skip
        cells = [loader.digest() for loader in (train, val)]
        return _checkpoint.fingerprint(
            "CVAE", FORMAT_VERSION, config, seed, self.genes, self.labels, cells, key
        )

    def _fit_sampler(self, rows: Any, codes: np.ndarray, seed: int, *, quiet: bool = False,
                     max_cells: int = MIXTURE_MAX_CELLS, budget: int | None = None
                     ) -> None:  # fmt: skip
        """After training, set on the module: each type's mixture over ``(z, log library)``, its
        gene scale (NB likelihoods) and, with ``dispersion_fit = "moments"``, the NB dispersion,
        from one posterior draw and the library size of each training cell (``rows``: in-memory
        :class:`Rows` or an on-disk loader); see :func:`~cellsynth.models._counts.fit_sampler`."""
        fit_sampler(self._module(), rows, codes, self.eval_rows(), seed, quiet=quiet,
                    max_cells=max_cells, budget=budget)  # fmt: skip

    @torch.no_grad()
    def get_latent(self, adata: ad.AnnData) -> np.ndarray:
        """Posterior means ``E[q(z | x, y)]`` of every cell, shape ``(n_cells, n_latent)``.

        ``adata`` needs the model's genes (in order), raw counts and the label column with
        known types.
        """
        self._check_trained("give latent representations")
        module = self._module()
        adata = in_memory(adata)
        check_genes(self.genes, adata)
        counts = training_counts(adata)
        y, _ = tr.encode_labels(
            fit_labels(adata, self.label_key, fitting=False), self.labels, "adata", adata.n_obs,
            drop_unknown=False,
        )
        cov = self.design.codes(adata.obs) if self.design else None
        if cov is not None and (cov < 0).any():
            raise DataError("adata has covariate levels the model never saw in training; keep "
                            f"the cells with levels in {self.design.levels}")
        rows = Rows(counts, y, self.device, covariates=cov)
        module.eval()
        out = []
        for sl in tr.iter_slices(len(rows), self.eval_rows()):
            qz, _ = module.inference(*rows.batch(np.arange(sl.start, sl.stop)))
            out.append(qz.loc.float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, module.n_latent), np.float32)

    # ------------------------------------------------------------------------------------------
    # files

    def _check_trained(self, what: str) -> None:
        """Refuse to ``what`` with random weights: its cells would be noise, its files a model."""
        if not self.is_trained:
            raise NotTrainedError(f"this CVAE has not been trained, so it cannot {what}: call "
                                  "model.train() (or fit(adata)) first, or CVAE.load(DIR) a "
                                  "trained one")

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``weights.safetensors`` (library model included), ``labels.json``,
        ``genes.json``, ``history.json`` and, where the training data's var had text columns
        (gene symbols), ``var.json``."""
        self._check_trained("be saved")
        module = self._module()
        meta = {
            "model": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "cellsynth_version": tr.package_version(),
            "n_genes": len(self.genes),
            "label_key": self.label_key,
            "config": dataclasses.asdict(self.config),
        }
        if self.design:
            meta["design"] = self.design.to_json()
        md.save_model_dir(directory, meta, module, self.labels, self.history,
                          extra_files={GENES_FILE: json.dumps(self.genes),
                                       **md.annotation_files(self.gene_annotation)})

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> CVAE:
        """Load a model written by :meth:`save`, checking that its files agree.

        Parameters
        ----------
        directory
            The directory :meth:`save` wrote.
        device
            Override the saved ``config.device`` (e.g. ``"cpu"`` for a model trained on a GPU).
        """
        directory = expand_user(directory, "the model directory")  # ~/models/cvae
        meta, labels, state, history = md.load_model_dir(directory, cls.__name__, FORMAT_VERSION)
        genes = md.read_genes(directory / GENES_FILE, directory)
        if meta.get("n_genes", len(genes)) != len(genes):
            raise ModelFileError(f"{directory / 'config.json'} says n_genes = "
                                 f"{meta.get('n_genes')!r} but {GENES_FILE} lists {len(genes)} "
                                 "genes: the files come from different saves; save it again")
        if not history.get("epochs"):  # a save records its training: is_trained reads it
            raise ModelFileError(f"{directory / md.HISTORY_FILE} is missing or holds no "
                                 "training record (epochs); a trained CVAE's save writes one: "
                                 "save or fit the model again")
        config = md.read_config(directory, meta, CVAEConfig)
        label_key = md.saved_label_key(directory, meta, config.covariates)
        config = dataclasses.replace(config, device=tr.loadable_device(config.device, device,
                                                                       directory))
        md.check_sizes(directory, state, {"embed.weight": (len(labels), "labels.json", "cell types"),
                                          "px_scale_decoder.weight": (len(genes), GENES_FILE,
                                                                      "genes")})  # fmt: skip
        try:
            model = cls(None, label_key=label_key, config=config)
        except ConfigError as exc:
            raise ModelFileError(f"cannot load {directory}: {exc}") from None
        model.labels, model.genes = list(labels), list(genes)
        model.gene_annotation = md.read_annotation(directory, model.genes)
        model.design = md.read_design(directory, meta)
        if model.design.keys != list(config.covariates):
            raise ModelFileError(f"{directory}: config.json's covariates and design disagree; "
                                 "the file was edited: save the model again")
        model.module = model._build_module()
        md.load_state(model.module, state, directory)
        model.history = history
        return model
