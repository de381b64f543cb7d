"""The count-space conditional VAE (cellsynth's main generator): train, sample, save, load.

Learns the raw counts of every gene of a labelled AnnData. Generation draws, for each requested
cell of type ``t``, a latent ``z`` (from a Gaussian mixture fitted after training to the type's
training-cell posteriors, or from the prior ``p(z | t)``), a library size from the type's
log-normal library model, and integer counts from the decoded (zero-inflated) negative
binomial (Gaussian: log-normalised values, scaled to the library and rounded).

Mini-batches are CSR rows densified one batch at a time: on a GPU gathered from a device copy of
the CSR arrays when they fit (no host densifying or dense copies), else sliced on the host.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..config import CVAEConfig, _from_dict
from ..errors import ConfigError, DataError, ModelFileError
from . import _training as tr
from .base import check_genes, fit_labels, request, split_masks, synthetic_adata, training_counts
from .modules.cvae import CVAEModule, NegativeBinomial

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENES_FILE = "genes.json"
TARGET_SUM = 1e4  # counts per cell before log1p (encoder input, Gaussian likelihood)
_SAMPLE_VALUES = 4_000_000  # generated values (cells x genes) held densely at once
_MIXTURE_COMPONENTS = 5  # most components of a type's latent mixture
_MIXTURE_MIN_CELLS = 20  # training cells per mixture component at least
_MIXTURE_MAX_CELLS = 5_000  # training cells per type the mixture is fitted on at most


class CVAE:
    """Conditional VAE on raw counts that generates integer-count cells of requested types.

    Parameters
    ----------
    adata
        Labelled AnnData with raw counts (``X`` or ``layers['counts']``) to :meth:`train` on;
        rows with ``obs['cellsynth_split']`` of ``"test"`` are never used. ``None`` for a model
        to :meth:`fit` later.
    label_key
        ``obs`` column holding the cell type.
    config
        Architecture and training settings.

    Examples
    --------
    >>> model = CVAE(adata, label_key="cell_type")
    >>> history = model.train(seed=0)
    >>> synthetic = model.sample({"B cells": 500, "CD8 T cells": 200}, seed=1)
    """

    name: ClassVar[str] = "cvae"

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        label_key: str = "cell_type",
        config: CVAEConfig | None = None,
    ) -> None:
        self.config = config if config is not None else CVAEConfig()
        self.device = tr.resolve_device(self.config.device)
        self.label_key = label_key
        self.labels: list[str] = []
        self.genes: list[str] = []
        self.history: dict[str, Any] = {}
        self.module: CVAEModule | None = None
        self.adata = adata
        if adata is not None:
            train, _ = split_masks(adata, seed=0)
            self.labels = sorted(set(fit_labels(adata, label_key)[train]))
            self.genes = list(map(str, adata.var_names))
            self.module = self._build_module()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CVAE(n_genes={len(self.genes)}, n_labels={len(self.labels)}, "
            f"likelihood={c.likelihood!r}, prior={c.prior!r}, n_hidden={c.n_hidden}, "
            f"n_latent={c.n_latent}, device={self.device}, trained={self.is_trained})"
        )

    @property
    def is_trained(self) -> bool:
        """True after :meth:`train` / :meth:`fit` (or when loaded from a fitted model)."""
        return bool(self.history)

    def _build_module(self) -> CVAEModule:
        c = self.config
        module = CVAEModule(
            n_input=len(self.genes),
            n_labels=len(self.labels),
            n_embed=c.n_embed,
            n_hidden=list(c.n_hidden),
            n_latent=c.n_latent,
            dropout_rate=c.dropout_rate,
            likelihood=c.likelihood,
            prior=c.prior,
            # a CVAEConfig without this field (older configs) means one dispersion per gene
            dispersion=getattr(c, "dispersion", "gene"),
            target_sum=TARGET_SUM,
        )
        return module.to(self.device)

    def _module(self) -> CVAEModule:
        if self.module is None:
            raise DataError("this CVAE has no data yet; call fit(adata, label_key) or load() first")
        return self.module

    # ------------------------------------------------------------------------------------------
    # training

    def train(self, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """Fit on the AnnData given at construction; see :meth:`fit`."""
        if self.adata is None:
            raise DataError(
                "CVAE() was built without data; use CVAE(adata).train() or fit(adata, ...)"
            )
        return self.fit(self.adata, self.label_key, seed=seed, progress=progress)

    def fit(
        self, adata: ad.AnnData, label_key: str, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        """Train from freshly initialised weights; keep the weights of the best validation epoch.

        Parameters
        ----------
        adata
            Raw counts and labels; training and validation rows come from
            ``obs['cellsynth_split']`` when present, else a seeded 10% validation cut.
        label_key
            ``obs`` column holding the cell type; the model's labels are the sorted types of the
            training rows (validation cells of other types are dropped).
        seed
            Seeds weight initialisation, dropout, mini-batch order and the latent noise.
        progress
            Show a progress bar over epochs.

        Returns
        -------
        History: per-epoch ``train_loss`` and ``val_loss`` (mean per cell; validation with KL
        weight 1), ``best_epoch``, ``epochs``, ``seconds`` and ``cells_per_second`` (training).
        """
        c = self.config
        counts = training_counts(adata)  # (n_cells, n_genes) CSR float32
        y_all = fit_labels(adata, label_key)
        train_mask, val_mask = split_masks(adata, seed=seed)
        if not train_mask.any():
            raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
        self.label_key = label_key
        self.labels = sorted(set(y_all[train_mask]))
        self.genes = list(map(str, adata.var_names))
        yt, _ = tr.encode_labels(
            y_all[train_mask], self.labels, "training", int(train_mask.sum()), drop_unknown=False
        )
        yv, keep = tr.encode_labels(
            y_all[val_mask], self.labels, "validation", int(val_mask.sum()), drop_unknown=True
        )
        train = _Rows(counts[np.flatnonzero(train_mask)], yt, self.device)
        val = _Rows(counts[np.flatnonzero(val_mask)[keep]], yv, self.device)
        if len(val) == 0:
            logger.warning("no validation cells; early stopping monitors the training loss")
        logger.info(
            "CVAE: %d training and %d validation cells, %d genes, %d types on %s (%s batches)",
            len(train),
            len(val),
            len(self.genes),
            len(self.labels),
            self.device,
            "GPU-gathered" if train.on_device else "host-densified",
        )

        generator = tr.seed_everything(seed)
        self.module = module = self._build_module()
        module.set_library_model(*_library_model(train.library_np, yt, len(self.labels)))
        module.init_from_data(*_initial_decoder(train.counts, yt, train.library_np, module))
        optimizer = _optimizer(module, c)
        stopper = tr.EarlyStopping(patience=c.patience)
        history: dict[str, Any] = {"train_loss": [], "val_loss": []}
        start, n_seen = time.perf_counter(), 0
        bar = tqdm(range(c.max_epochs), desc="CVAE", unit="epoch", disable=not progress)
        for epoch in bar:
            beta = tr.kl_weight(epoch, c.kl_start, c.kl_anneal_epochs)
            module.train()
            total = torch.zeros((), device=self.device)  # summed on the device: no sync per step
            for idx in self._epoch_batches(yt, generator):
                out = module.loss(*train.batch(idx), kl_weight=beta)  # x (B, n_genes), y, library
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                total += out.loss.detach() * len(idx)
            n_seen += len(train)
            train_loss = total.item() / len(train)
            val_loss = self._evaluate(val) if len(val) else train_loss
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            bar.set_postfix(train=f"{train_loss:.5g}", val=f"{val_loss:.5g}", beta=f"{beta:.2f}")
            logger.debug(
                "epoch %d: train %.4f, val %.4f, kl weight %.2f", epoch, train_loss, val_loss, beta
            )
            if stopper.step(val_loss, epoch, module):
                logger.info(
                    "early stopping after epoch %d (no improvement for %d)", epoch, c.patience
                )
                break
        bar.close()
        if not stopper.restore(module):
            raise RuntimeError("the validation loss was never finite; lower cvae.lr")
        module.eval()
        seconds = time.perf_counter() - start
        self._fit_latent_mixture(train, yt, seed)
        history.update(
            best_epoch=stopper.best_epoch,
            epochs=len(history["train_loss"]),
            seconds=seconds,
            cells_per_second=n_seen / max(seconds, 1e-9),
        )
        logger.info(
            "CVAE: best epoch %d of %d (val loss %.4f) in %.1f s, %.0f cells/s",
            stopper.best_epoch,
            history["epochs"],
            stopper.best_loss,
            seconds,
            history["cells_per_second"],
        )
        self.history = history
        return history

    def _epoch_batches(self, codes: np.ndarray, generator: torch.Generator) -> Iterator[np.ndarray]:
        """Row indices of one epoch's mini-batches: class-balanced draws or a seeded shuffle."""
        bs = self.config.batch_size
        if self.config.balanced_sampling:
            for idx in tr.balanced_batches(codes, bs, generator, n_samples=len(codes)):
                yield np.asarray(idx, dtype=np.int64)
            return
        order = torch.randperm(len(codes), generator=generator).numpy()
        for sl in tr.iter_slices(len(codes), bs):
            yield order[sl]

    @torch.no_grad()
    def _evaluate(self, rows: _Rows) -> float:
        """Mean per-cell negative ELBO (KL weight 1) in eval mode."""
        module = self._module()
        module.eval()
        total = torch.zeros((), device=self.device)
        for sl in tr.iter_slices(len(rows), 4 * self.config.batch_size):
            out = module.loss(*rows.batch(np.arange(sl.start, sl.stop)), kl_weight=1.0)
            total += out.loss * (sl.stop - sl.start)
        return total.item() / len(rows)

    @torch.no_grad()
    def _fit_latent_mixture(self, rows: _Rows, codes: np.ndarray, seed: int) -> None:
        """Fit each type's latent mixture to one posterior draw per training cell.

        Types with at least ``2 * _MIXTURE_MIN_CELLS`` cells get a diagonal Gaussian mixture of
        up to ``_MIXTURE_COMPONENTS`` components (one per ``_MIXTURE_MIN_CELLS`` cells), smaller
        ones keep their cells' posteriors as the components (the exact aggregate posterior).
        """
        from sklearn.mixture import GaussianMixture  # only needed here

        module = self._module()
        module.eval()
        start = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        parts = []
        for t in range(len(self.labels)):
            idx = np.flatnonzero(codes == t)
            if len(idx) > _MIXTURE_MAX_CELLS:
                idx = np.sort(rng.choice(idx, _MIXTURE_MAX_CELLS, replace=False))
            mean, std = [], []
            for sl in tr.iter_slices(len(idx), 4 * self.config.batch_size):
                qz, _ = module.inference(*rows.batch(idx[sl]))
                mean.append(qz.loc.double().cpu().numpy())
                std.append(qz.scale.double().cpu().numpy())
            mu, sd = np.concatenate(mean), np.concatenate(std)  # (n_t, n_latent)
            k = min(_MIXTURE_COMPONENTS, len(idx) // _MIXTURE_MIN_CELLS)
            if k < 2:
                parts.append((np.full(len(idx), 1.0 / len(idx)), mu, sd))
                continue
            draws = mu + sd * rng.standard_normal(mu.shape)
            gm = GaussianMixture(
                k, covariance_type="diag", reg_covar=1e-4, random_state=int(rng.integers(2**31))
            ).fit(draws)
            parts.append((gm.weights_, gm.means_, np.sqrt(gm.covariances_)))
        k_max = max(len(w) for w, _, _ in parts)
        weight = np.zeros((len(parts), k_max))
        mean = np.zeros((len(parts), k_max, module.n_latent))
        std = np.ones((len(parts), k_max, module.n_latent))
        for t, (w, m, s) in enumerate(parts):
            weight[t, : len(w)], mean[t, : len(w)], std[t, : len(w)] = w / w.sum(), m, s
        module.set_latent_mixture(torch.tensor(weight), torch.tensor(mean), torch.tensor(std))
        logger.info(
            "CVAE: latent mixtures (up to %d components per type) in %.1f s",
            k_max,
            time.perf_counter() - start,
        )

    @torch.no_grad()
    def get_latent(self, adata: ad.AnnData) -> np.ndarray:
        """Posterior means ``E[q(z | x, y)]`` of every cell, shape ``(n_cells, n_latent)``.

        ``adata`` needs the model's genes (in order), raw counts and the label column with
        known types.
        """
        module = self._module()
        check_genes(self.genes, adata)
        counts = training_counts(adata)
        y, _ = tr.encode_labels(
            fit_labels(adata, self.label_key), self.labels, "adata", adata.n_obs, drop_unknown=False
        )
        rows = _Rows(counts, y, self.device)
        module.eval()
        out = []
        for sl in tr.iter_slices(len(rows), 4 * self.config.batch_size):
            qz, _ = module.inference(*rows.batch(np.arange(sl.start, sl.stop)))
            out.append(qz.loc.float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, module.n_latent), np.float32)

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def sample(
        self,
        counts_per_type: dict[str, int],
        *,
        seed: int = 0,
        latent: Literal["mixture", "prior"] = "mixture",
    ) -> ad.AnnData:
        """Generate integer-count cells; rows come out grouped by type in the dict's order.

        Parameters
        ----------
        counts_per_type
            Cells to generate per type, e.g. ``{"B cells": 100}``.
        seed
            All noise (latents, library sizes, counts) is drawn from
            ``numpy.random.default_rng(seed)``: the same seed gives byte-identical counts.
        latent
            Where ``z`` comes from: ``"mixture"``, the per-type Gaussian mixture fitted to the
            training cells' posteriors after training (keeps multi-modal types, e.g. treated
            and control cells, apart); ``"prior"``, the model's prior ``p(z | type)``.

        Returns
        -------
        AnnData with CSR float32 whole-number counts in ``X``, the types in
        ``obs[label_key]``, the model's genes in ``var`` and provenance in ``uns['cellsynth']``.
        """
        pairs = request(counts_per_type, self.labels)
        if latent not in ("mixture", "prior"):
            raise DataError(f"latent must be 'mixture' or 'prior', got {latent!r}")
        module = self._module()
        if not self.is_trained:
            logger.warning("sampling from an untrained CVAE; call train()/fit() or load() first")
        module.eval()
        rng = np.random.default_rng(seed)
        codes = {label: i for i, label in enumerate(self.labels)}
        rows = max(1, min(4 * self.config.batch_size, _SAMPLE_VALUES // max(1, len(self.genes))))
        chunks: list[sp.csr_matrix] = []
        for label, n in pairs:
            for sl in tr.iter_slices(n, rows):
                chunks.append(self._sample_chunk(codes[label], sl.stop - sl.start, rng, latent))
        labels = np.repeat(np.array([t for t, _ in pairs], dtype=object), [n for _, n in pairs])
        return synthetic_adata(
            sp.vstack(chunks, format="csr"),
            labels,
            self.genes,
            label_key=self.label_key,
            model=self.name,
            seed=seed,
            config={**dataclasses.asdict(self.config), "latent_sampler": latent},
        )

    def _sample_chunk(
        self, code: int, n: int, rng: np.random.Generator, latent: str
    ) -> sp.csr_matrix:
        """``n`` cells of type ``code`` as CSR counts; all noise from ``rng``."""
        module = self._module()
        y = torch.full((n,), code, dtype=torch.long, device=self.device)  # (n,)
        u = torch.from_numpy(rng.random(n, dtype=np.float32))
        eps_z = torch.from_numpy(rng.standard_normal((n, module.n_latent), dtype=np.float32))
        eps_l = torch.from_numpy(rng.standard_normal(n, dtype=np.float32))
        if latent == "mixture":
            z = module.mixture_from_noise(u.to(self.device), eps_z.to(self.device), y)
        else:
            z = module.latent_from_noise(eps_z.to(self.device), y)  # (n, n_latent)
        library = module.library_from_noise(eps_l.to(self.device), y)  # (n,)
        px = module.generative(z, y, library)
        if isinstance(px, NegativeBinomial):
            mu = px.mu.double().cpu().numpy()  # (n, n_genes)
            theta = px.theta.double().cpu().numpy()
            x = rng.poisson(rng.gamma(theta, mu / theta))
            if px.zi_logits is not None:
                pi = torch.sigmoid(px.zi_logits).double().cpu().numpy()
                x[rng.random(x.shape) < pi] = 0
        else:  # Gaussian on log1p(x / library * target_sum)
            loc = px.loc.double().cpu().numpy()
            scale = px.scale.double().cpu().numpy()
            v = np.maximum(rng.normal(loc, scale), 0.0)
            lib = library.double().cpu().numpy()[:, None]
            x = np.rint(np.expm1(v) * (lib / TARGET_SUM))
        return sp.csr_matrix(x.astype(np.float32))

    # ------------------------------------------------------------------------------------------
    # files

    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``weights.safetensors`` (library model included), ``labels.json``,
        ``genes.json`` and ``history.json``."""
        module = self._module()
        meta = {
            "model": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "cellsynth_version": tr.package_version(),
            "n_genes": len(self.genes),
            "label_key": self.label_key,
            "config": dataclasses.asdict(self.config),
        }
        path = tr.save_model_dir(directory, meta, module, self.labels, self.history)
        (path / GENES_FILE).write_text(json.dumps(self.genes))
        logger.info("saved CVAE to %s", path)

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
        directory = Path(directory)
        meta, labels, state, history = tr.load_model_dir(directory, cls.__name__, FORMAT_VERSION)
        config_path = directory / tr.MODEL_FILES["config"]
        genes_path = directory / GENES_FILE
        if not genes_path.is_file():
            raise ModelFileError(
                f"{genes_path} is missing; {directory} is not a complete CVAE save"
            )
        try:
            genes = json.loads(genes_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{genes_path} is corrupt: {exc}") from None
        if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
            raise ModelFileError(f"{genes_path} must hold a list of gene names")
        try:
            if not isinstance(meta.get("config"), dict):
                raise ValueError("'config' must be a table of settings")
            config = _from_dict(CVAEConfig, meta["config"])
            label_key = str(meta["label_key"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{config_path} is invalid: {exc}") from None
        if device is not None:
            config = dataclasses.replace(config, device=device)
        n_embedded = state["embed.weight"].shape[0] if "embed.weight" in state else None
        if n_embedded != len(labels):
            raise ModelFileError(
                f"labels.json in {directory} lists {len(labels)} cell types but the weights embed "
                f"{n_embedded}; the files come from different models"
            )
        key = "px_scale_decoder.weight"
        n_out = state[key].shape[0] if key in state else None
        if n_out != len(genes):
            raise ModelFileError(
                f"{genes_path} lists {len(genes)} genes but the weights decode {n_out}; "
                "the files come from different models"
            )
        try:
            model = cls(None, label_key=label_key, config=config)
        except ConfigError as exc:
            raise ModelFileError(
                f"cannot load {directory}: {exc}; or pass load(..., device='cpu')"
            ) from None
        model.labels, model.genes = list(labels), list(genes)
        model.module = model._build_module()
        try:
            model.module.set_latent_mixture(
                state["mixture_weight"], state["mixture_mean"], state["mixture_std"]
            )
            model.module.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"weights in {directory} do not fit the saved config: {exc}"
            ) from None
        model.module.eval()
        model.history = history
        return model


def _optimizer(module: torch.nn.Module, config: CVAEConfig) -> torch.optim.Optimizer:
    """The training optimiser (shared with the distributed fit, so both take the same steps).

    Fused AdamW: one kernel (CUDA) or loop (CPU) for all parameters, about 3x faster steps
    than the default multi-tensor version.
    """
    return torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )


class _Rows:
    """Cells (CSR counts, type codes, library sizes) served as dense mini-batches on a device.

    On CUDA, when the CSR arrays fit in a quarter of the free GPU memory, they are copied there
    once and every mini-batch is gathered and densified on the GPU; otherwise (and on the CPU)
    the rows are sliced with scipy, densified on the host and copied over.

    Parameters
    ----------
    counts
        Raw counts, CSR ``(n, n_genes)``.
    codes
        Integer type code per row, ``(n,)``.
    device
        Where the batches go.
    gather
        Force (True) or forbid (False) gathering from device-resident CSR; ``None`` decides.
    """

    def __init__(
        self,
        counts: sp.csr_matrix,
        codes: np.ndarray,
        device: torch.device,
        gather: bool | None = None,
    ) -> None:
        self.counts = counts
        self.n_genes = counts.shape[1]
        self.device = device
        self.library_np = _library(counts)  # (n,)
        self.codes = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)
        self.library = torch.from_numpy(self.library_np).to(device)
        if gather is None:
            gather = device.type == "cuda" and _fits_on_device(counts, device)
        self.on_device = bool(gather)
        if self.on_device:
            self.indptr = torch.from_numpy(counts.indptr.astype(np.int64)).to(device)
            self.indices = torch.from_numpy(counts.indices.astype(np.int32)).to(device)
            self.data = torch.from_numpy(counts.data.astype(np.float32)).to(device)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Counts ``(B, n_genes)``, codes ``(B,)`` and libraries ``(B,)`` of rows ``idx``."""
        idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(self.device)
        if self.on_device:
            total = int((self.counts.indptr[idx + 1] - self.counts.indptr[idx]).sum())
            x = _gather_rows(self.indptr, self.indices, self.data, idx_t, total, self.n_genes)
        else:
            x = torch.from_numpy(self.counts[idx].toarray())
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
        return x, self.codes[idx_t], self.library[idx_t]


def _gather_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    idx: torch.Tensor,
    total: int,
    n_cols: int,
) -> torch.Tensor:
    """Rows ``idx`` of a CSR matrix (its three arrays, on one device) as a dense ``(B, n_cols)``.

    ``total`` is the number of stored values in those rows (known on the host, so the GPU is
    never synchronised).
    """
    start = indptr[idx]  # (B,)
    length = indptr[idx + 1] - start  # (B,)
    row = torch.repeat_interleave(
        torch.arange(len(idx), device=idx.device), length, output_size=total
    )  # (total,)
    first = torch.cumsum(length, 0) - length  # (B,) position of each row's first value
    pos = torch.arange(total, device=idx.device) + torch.repeat_interleave(
        start - first, length, output_size=total
    )  # (total,) positions in indices/data
    out = torch.zeros((len(idx), n_cols), dtype=data.dtype, device=data.device)
    out[row, indices[pos]] = data[pos]
    return out


def _fits_on_device(counts: sp.csr_matrix, device: torch.device) -> bool:
    """Whether the CSR arrays take under a quarter of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return counts.nnz * 8 + counts.shape[0] * 8 < free // 4


def _library(counts: sp.csr_matrix) -> np.ndarray:
    """Total counts per row as float32, at least 1 (``log`` stays finite for empty cells)."""
    return np.maximum(np.asarray(counts.sum(axis=1), dtype=np.float32).ravel(), 1.0)


def _initial_decoder(
    counts: sp.csr_matrix, codes: np.ndarray, library: np.ndarray, module: CVAEModule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-based start for the decoder's output bias and ``px_r`` (see ``init_from_data``).

    With few optimiser steps (small atlases) a dispersion started at 1 barely moves, and
    generated cells get the wrong share of zeros. NB: the bias is the log expression share
    and ``theta`` the method-of-moments estimate within types (``Var = mu + mu^2 / theta``
    around ``library * share_type``). Gaussian: the mean and within-type sd of
    ``log1p(x / library * 1e4)``.
    """
    n_labels, n_genes = module.n_labels, module.n_input
    if module.likelihood == "gaussian":
        x = sp.csr_matrix(sp.diags(TARGET_SUM / library) @ counts, dtype=np.float64)
        x.data = np.log1p(x.data)
    else:
        x = sp.csr_matrix(counts, dtype=np.float64)
    lib = library.astype(np.float64)
    s1 = np.zeros((n_labels, n_genes))  # per type: sum x, sum x^2, sum l x
    s2 = np.zeros((n_labels, n_genes))
    slx = np.zeros((n_labels, n_genes))
    n = np.bincount(codes, minlength=n_labels).astype(np.float64)
    sl = np.bincount(codes, weights=lib, minlength=n_labels)
    sl2 = np.bincount(codes, weights=lib**2, minlength=n_labels)
    for t in range(n_labels):
        rows = x[np.flatnonzero(codes == t)]
        s1[t] = np.asarray(rows.sum(axis=0)).ravel()
        s2[t] = np.asarray(rows.multiply(rows).sum(axis=0)).ravel()
        slx[t] = rows.T @ lib[codes == t]
    if module.likelihood == "gaussian":
        mean = s1 / np.maximum(n, 1)[:, None]
        within = s2 - n[:, None] * mean**2  # per type sum of squared deviations
        sd_pooled = np.sqrt(within.sum(0) / max(n.sum() - n_labels, 1))  # (n_genes,)
        sd = np.sqrt(within / np.maximum(n - 1, 1)[:, None])
        sd = np.where(n[:, None] >= 2, sd, sd_pooled)
        bias = s1.sum(0) / max(n.sum(), 1)
        log_r = np.log(np.maximum(sd_pooled if module.dispersion == "gene" else sd, 1e-2))
    else:
        share = s1 / np.maximum(sl, 1)[:, None]  # (n_labels, n_genes) expression share per type
        # per type: sum (l p)^2 and sum (x - l p)^2 - l p
        mu2 = sl2[:, None] * share**2
        excess = s2 - 2 * share * slx + mu2 - sl[:, None] * share
        theta = mu2 / np.maximum(excess, 1e-12)
        theta_pooled = mu2.sum(0) / np.maximum(excess.sum(0), 1e-12)
        theta = np.where(excess > 0, theta, 1e4) if module.dispersion != "gene" else theta_pooled
        theta = np.where(np.isfinite(theta) & (theta > 0), theta, 1e4)
        log_r = np.log(np.clip(theta, 1e-2, 1e4))
        bias = np.log(np.maximum(s1.sum(0) / max(lib.sum(), 1.0), 1e-9))
    return torch.tensor(bias, dtype=torch.float32), torch.tensor(log_r, dtype=torch.float32)


def _library_model(
    library: np.ndarray, codes: np.ndarray, n_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-type mean and sd of ``log(library)``; types with one cell take the pooled sd."""
    log_lib = np.log(library.astype(np.float64))
    n = np.bincount(codes, minlength=n_labels).astype(np.float64)
    mean = np.bincount(codes, weights=log_lib, minlength=n_labels) / np.maximum(n, 1)
    sq = np.bincount(codes, weights=(log_lib - mean[codes]) ** 2, minlength=n_labels)
    std = np.sqrt(sq / np.maximum(n - 1, 1))
    pooled = float(np.std(log_lib, ddof=1)) if len(log_lib) > 1 else 0.0
    std = np.where(n >= 2, std, pooled)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
