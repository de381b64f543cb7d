"""The reference ("seed") generator: a conditional VAE on PCA features, with fit / sample / save / load."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SeedVAEConfig
from ..config_rules import from_dict
from ..errors import ConfigError, DataError, ModelFileError, NotTrainedError
from ..seeds import checked_seed
from . import _checkpoint, _loop
from . import _model_dir as md
from . import _training as tr
from ._model_dir import saves_whole
from .base import check_network_memory
from .modules import SeedVAEModule

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_SECONDS = 60.0  # training checkpoints at least this many seconds apart


class SeedCVAE:
    """Conditional VAE that learns PCA features per cell type and decodes prior draws into new cells.

    Parameters
    ----------
    n_input
        Number of features (PCA components) of the data it will be fitted on.
    labels
        The cell types, in the order of the class embedding; unique strings.
    config
        Architecture and training settings; the defaults are the reference's.

    Examples
    --------
    >>> model = SeedCVAE(X_train.shape[1], sorted(set(y_train)))
    >>> history = model.fit(X_train, y_train, X_val, y_val, seed=0)
    >>> X_new, y_new = model.sample({"T cell": 100, "B cell": 50}, seed=1)
    """

    def __init__(
        self, n_input: int, labels: Sequence[str], config: SeedVAEConfig | None = None
    ) -> None:
        labels = tr.check_labels(labels)
        if int(n_input) <= 0:
            raise DataError(f"n_input must be positive, got {n_input}")
        self.n_input = int(n_input)
        self.labels = labels
        self.config = config if config is not None else SeedVAEConfig()
        self.device = tr.resolve_device(self.config.device)
        self.history: dict[str, Any] = {}
        self._codes = {label: i for i, label in enumerate(labels)}
        self.module = self._build_module()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SeedCVAE(n_input={self.n_input}, n_labels={len(self.labels)}, n_hidden={c.n_hidden}, "
            f"n_latent={c.n_latent}, device={self.device}, trained={self.is_trained})"
        )

    @property
    def is_trained(self) -> bool:
        """True after :meth:`fit` (or when loaded from a fitted model)."""
        return bool(self.history)

    def _build_module(self) -> SeedVAEModule:
        c = self.config
        check_network_memory("seed_vae", self.n_input, list(c.n_hidden), c.n_latent, c.n_embed)
        module = SeedVAEModule(
            n_input=self.n_input,
            n_labels=len(self.labels),
            n_embed=c.n_embed,
            n_hidden=list(c.n_hidden),
            n_latent=c.n_latent,
            dropout_rate=c.dropout_rate,
        )
        return module.to(self.device)

    # ------------------------------------------------------------------------------------------
    # training

    def fit(
        self,
        X_train: np.ndarray,
        y_train: Any,
        X_val: np.ndarray,
        y_val: Any,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        checkpoint_key: str = "",
    ) -> dict[str, Any]:
        """Train from freshly initialised weights; keep the weights of the best validation epoch.

        Parameters
        ----------
        X_train, X_val
            Dense features, shape ``(n_cells, n_input)``.
        y_train, y_val
            Cell type labels; training labels must all be known, unknown validation cells are dropped.
        seed
            Seeds weight initialisation, dropout, mini-batch sampling and the latent noise.
        checkpoint_dir
            Save the training state into ``checkpoint_dir/seed.safetensors`` after an epoch
            when ``CHECKPOINT_SECONDS`` passed since the last, and resume from it when it was
            written with the same settings, data, seed and ``checkpoint_key`` (as
            :meth:`CVAE.fit <cellsynth.models.cvae.CVAE.fit>`); deleted when training ends.
        checkpoint_key
            Anything else the checkpoint must match.

        Returns
        -------
        History: per-epoch ``train_loss`` and ``val_loss`` (mean per cell; validation with KL
        weight 1), ``best_epoch`` (zero-based index into them), ``epochs`` run and ``seconds``
        (and ``resumed_from`` after a resume).
        """
        c = self.config
        Xt = tr.dense_features(X_train, self.n_input, "X_train")
        yt, _ = tr.encode_labels(y_train, self.labels, "y_train", len(Xt), drop_unknown=False)
        Xv = tr.dense_features(X_val, self.n_input, "X_val")
        yv, keep = tr.encode_labels(y_val, self.labels, "y_val", len(Xv), drop_unknown=True)
        Xv = Xv[torch.from_numpy(keep)]
        if Xt.shape[0] == 0 or Xv.shape[0] == 0:
            raise DataError(
                f"fit needs training and validation cells, got {Xt.shape[0]} and {Xv.shape[0]}"
            )
        yt_t, yv_t = torch.from_numpy(yt), torch.from_numpy(yv)

        generator = tr.seed_everything(seed)
        self.module = module = self._build_module()
        batches = tr.balanced_batches(yt, c.batch_size, generator, n_samples=len(yt))
        n_steps = tr.steps_per_epoch(len(yt), c.batch_size)
        optimizer = torch.optim.AdamW(module.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=c.lr, total_steps=c.max_epochs * n_steps
        )
        checkpoint = None
        if checkpoint_dir is not None:
            key = _checkpoint.fingerprint(
                "SeedCVAE", FORMAT_VERSION, dataclasses.asdict(c), seed, self.n_input, self.labels,
                [float(Xt.double().sum()), float(Xv.double().sum()), yt, yv],
                checkpoint_key,
            )  # fmt: skip
            checkpoint = _checkpoint.Checkpoint(checkpoint_dir, key, every=1,
                                          min_seconds=CHECKPOINT_SECONDS, name="seed")  # fmt: skip
        device = self.device

        def loss(idx: list[int], beta: float) -> torch.Tensor:
            x = Xt[idx].to(device, non_blocking=True)  # (B, n_input)
            y = yt_t[idx].to(device, non_blocking=True)  # (B,)
            return module.loss(x, y, kl_weight=beta).loss

        result = _loop.train_loop(
            _loop.Steps(module, optimizer, loss, lambda: batches, len(yt), generator,
                        scheduler=scheduler),
            lambda: self._evaluate(Xv, yv_t), c,
            _loop.LoopOptions("seed CVAE", "seed_vae.lr", checkpoint=checkpoint),
        )  # fmt: skip
        if checkpoint is not None:
            checkpoint.remove()
        history = result.history
        msg = "seed CVAE: best epoch %d of %d (val loss %.4f) in %.1f s"
        logger.info(msg, history["best_epoch"], history["epochs"], result.best_loss,
                    history["seconds"])  # fmt: skip
        self.history = history
        return history

    @torch.no_grad()
    def _evaluate(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """Mean per-cell negative ELBO (KL weight 1) over ``X`` in eval mode."""
        self.module.eval()
        total = 0.0
        for sl in tr.iter_slices(X.shape[0], 4 * self.config.batch_size):
            x = X[sl].to(self.device, non_blocking=True)  # (B, n_input)
            out = self.module.loss(x, y[sl].to(self.device), kl_weight=1.0)
            total += out.loss.item() * x.shape[0]
        return total / X.shape[0]

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def sample(
        self, counts_per_type: dict[str, int], *, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generate cells by decoding prior draws ``z ~ N(0, I)`` with each type's embedding.

        Parameters
        ----------
        counts_per_type
            Cells to generate per type; rows come out grouped by type in the dict's order.
        seed
            Seed of the latent noise: the same seed gives the same cells on the same machine.

        Returns
        -------
        ``X`` (float32, ``(n, n_input)``) and the labels (object array, ``(n,)``).
        """
        counts_per_type = tr.check_counts(counts_per_type, self.labels)
        if not self.is_trained:
            raise NotTrainedError("this SeedCVAE has not been trained, so it cannot generate "
                                  "cells: call fit() first, or SeedCVAE.load(DIR) a trained one")
        self.module.eval()
        generator = torch.Generator().manual_seed(checked_seed(seed))
        chunks: list[np.ndarray] = []
        for label, n in counts_per_type.items():
            for sl in tr.iter_slices(int(n), 4 * self.config.batch_size):
                code = self._codes[label]
                y = torch.full((sl.stop - sl.start,), code, device=self.device)  # (B,)
                x = self.module.sample(y, generator)  # (B, n_input)
                chunks.append(x.float().cpu().numpy())
        X = np.concatenate(chunks, axis=0)
        labels = np.repeat(
            np.array(list(counts_per_type), dtype=object), list(counts_per_type.values())
        )
        return X, labels

    # ------------------------------------------------------------------------------------------
    # files

    @saves_whole
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``weights.safetensors``, ``labels.json`` and ``history.json``."""
        if not self.is_trained:
            raise NotTrainedError("this SeedCVAE has not been trained, so it cannot be saved: "
                                  "call fit() first")
        meta = {
            "model": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "cellsynth_version": tr.package_version(),
            "n_input": self.n_input,
            "config": dataclasses.asdict(self.config),
        }
        md.save_model_dir(directory, meta, self.module, self.labels, self.history,
                          lr_setting="seed_vae.lr")

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> SeedCVAE:
        """Load a model written by :meth:`save`, checking that its files agree.

        Parameters
        ----------
        directory
            The directory :meth:`save` wrote.
        device
            Override the saved ``config.device`` (e.g. ``"cpu"`` for a model trained on a GPU).
        """
        meta, labels, state, history = md.load_model_dir(directory, cls.__name__, FORMAT_VERSION)
        with md.saved_settings(Path(directory)):
            config = from_dict(SeedVAEConfig, md.setting(meta, "config"), "config.")
            n_input = md.setting(meta, "n_input", int)
        config = dataclasses.replace(config, device=tr.loadable_device(config.device, device,
                                                                       directory))
        n_embedded = state["embed.weight"].shape[0] if "embed.weight" in state else None
        if n_embedded != len(labels):
            raise ModelFileError(
                f"labels.json in {directory} lists {len(labels)} cell types but the weights embed "
                f"{n_embedded}; the files come from different models"
            )
        n_out = state["px_mean.weight"].shape[0] if "px_mean.weight" in state else None
        if n_out != n_input:
            raise ModelFileError(
                f"{Path(directory) / md.MODEL_FILES['config']} says n_input={n_input} but the "
                f"weights decode {n_out} features; the files come from different models"
            )
        try:
            model = cls(n_input, labels, config)
        except ConfigError as exc:
            raise ModelFileError(f"cannot load {directory}: {exc}") from None
        try:
            model.module.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFileError(md.misfit_weights(directory, exc)) from None
        model.module.eval()
        model.history = history
        return model
