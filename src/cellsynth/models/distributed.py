"""Data-parallel training of the count-space CVAE with ``torch.distributed`` (DDP).

Started by ``torchrun``, one process per GPU (NCCL) or per CPU slot (gloo)::

    torchrun --standalone --nproc_per_node=4 -m cellsynth.models.distributed \\
        --data atlas.h5ad --label-key cell_type --out models/cvae [--config run.toml] [--set ...]

Every rank opens the h5ad lazily (h5py; ``layers/counts`` when present, else ``X``), finds the
training and validation rows exactly as :meth:`CVAE.fit <cellsynth.models.cvae.CVAE.fit>` does,
and reads only its shard: a strided slice of one seeded permutation of the training rows (the
same on every rank, padded so every rank takes the same number of steps) and a strided slice of
the validation rows. The loss, optimiser and training loop (KL warm-up, early stopping,
checkpoints: ``_loop.train_loop``) are :meth:`CVAE.fit`'s; the global batch is
``cvae.batch_size`` (``ceil(batch_size / world_size)`` rows per rank), the losses are
all-reduced, and rank 0 writes the model with :meth:`CVAE.save`, so :meth:`CVAE.load` reads it.
With one process the result equals :meth:`CVAE.fit` with the same seed, weight for weight.

Not the same as the single-process fit with several ranks: the decoder's data-based start
(``initial_decoder``) comes from rank 0's shard and is broadcast. The library-size model uses
every rank's cells; the latent mixture fitted after training is fitted on rank 0, on every
type's training cells (at most ``MIXTURE_MAX_CELLS`` per type) read again from the file, and
broadcast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from anndata.io import read_elem, sparse_dataset
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import config as config_mod
from .. import keys as K
from ..config import CVAEConfig
from ..data.csr import stack_rows
from ..data.io import unreadable
from ..errors import CellsynthError, DataError
from ..options import settings
from ..seeds import derive_seed
from . import _loop
from . import _training as tr
from ._checkpoint import Checkpoint
from ._counts import (
    MIXTURE_MAX_CELLS,
    Rows,
    epoch_batches,
    initial_decoder,
    library_model,
    mean_loss,
)
from ._ddp import (
    all_gather,
    broadcast_mixture,
    check_type_only,
    init_process_group,
    rank_device,
    weighted_sums,
)
from ._ddp import check_processes as check_processes  # the run's checks before any stage
from ._model_dir import check_save_dir
from ._torchrun import PARENT_ENV as PARENT_ENV  # for the run's launcher
from ._torchrun import die_with_parent
from .base import fit_labels, split_masks, training_counts
from .cvae import CVAE

logger = logging.getLogger("cellsynth.models.distributed")  # also when run as __main__

_READ_ROWS = 8192  # rows read from the h5ad at once
_SPARSE = ("csr_matrix", "csc_matrix")  # h5ad encodings of a sparse matrix


class _Loss(nn.Module):
    """The module's negative ELBO as ``forward``, so DDP's gradient hooks see the whole step."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, library: torch.Tensor, c: torch.Tensor | None,
        kl_weight: float,
    ) -> torch.Tensor:
        return self.module.loss(x, y, library, c, kl_weight=kl_weight).loss


# ---------------------------------------------------------------------------------------------
# reading a shard of an h5ad


def _open_counts(f: h5py.File, path: Path) -> Any:
    """The raw-count matrix of an open h5ad, indexable by sorted row arrays without loading it."""
    key = f"layers/{K.COUNTS}" if f"layers/{K.COUNTS}" in f else "X"
    node = f.get(key)
    if isinstance(node, h5py.Dataset):
        return node
    if isinstance(node, h5py.Group) and node.attrs.get("encoding-type") in _SPARSE:
        return sparse_dataset(node)
    raise DataError(f"{path} holds no count matrix in X or layers/counts that can be read lazily")


def _read_rows(matrix: Any, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of a lazy matrix as CSR float32, checked to be counts."""
    blocks = [
        sp.csr_matrix(matrix[rows[i : i + _READ_ROWS]], dtype=np.float32)
        for i in range(0, len(rows), _READ_ROWS)
    ]
    if not blocks:
        return sp.csr_matrix((0, matrix.shape[1]), dtype=np.float32)
    return training_counts(ad.AnnData(X=stack_rows(blocks)))


def _shard(n: int, rank: int, world: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's positions in ``range(n)`` (sorted) and which are not padding.

    One seeded permutation, the same on every rank, padded by wrapping around to a multiple of
    ``world`` (as :class:`torch.utils.data.DistributedSampler` does) and dealt out strided.
    With ``world == 1`` the positions are ``0..n-1`` in order.
    """
    perm = np.random.default_rng(derive_seed(seed, "ddp-shard")).permutation(n)
    padded = np.resize(perm, world * math.ceil(n / world))  # repeats perm cyclically
    idx = np.arange(rank, len(padded), world)
    pos, real = padded[idx], idx < n
    order = np.argsort(pos, kind="stable")
    return pos[order], real[order]


def _mixture_rows(
    path: Path, rows: np.ndarray, codes: np.ndarray, seed: int, device: torch.device
) -> tuple[Rows, np.ndarray]:
    """The training cells the latent mixture is fitted on: every type's, at most as many per
    type as :meth:`CVAE._fit_sampler` uses (a seeded choice), read from the file."""
    rng = np.random.default_rng(derive_seed(seed, "ddp-mixture"))
    pick = []
    for t in np.unique(codes):
        idx = np.flatnonzero(codes == t)
        if len(idx) > MIXTURE_MAX_CELLS:
            idx = rng.choice(idx, MIXTURE_MAX_CELLS, replace=False)
        pick.append(idx)
    keep = np.sort(np.concatenate(pick))
    with h5py.File(path, "r") as f:
        counts = _read_rows(_open_counts(f, path), rows[keep])
    return Rows(counts, codes[keep], device), codes[keep]


# ---------------------------------------------------------------------------------------------
# training


def fit_distributed(
    data: str | Path,
    label_key: str = "cell_type",
    out: str | Path | None = None,
    *,
    config: CVAEConfig | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_key: str = "",
) -> CVAE:
    """Train a :class:`CVAE` data-parallel over the ranks of the process group.

    Parameters
    ----------
    data
        h5ad file with raw counts (``X`` or ``layers['counts']``) and the label column; rows
        with ``obs['cellsynth_split'] == 'test'`` are never read. Every rank reads its shard.
    label_key
        ``obs`` column holding the cell type.
    out
        Model directory rank 0 writes with :meth:`CVAE.save`; ``None`` writes nothing.
    config
        Architecture and training settings; ``batch_size`` is the global batch. Its
        ``covariates`` are refused: this fit conditions on the cell type only.
    seed
        As :meth:`CVAE.fit`'s; with one process the result equals ``CVAE.fit`` exactly.
    checkpoint_dir
        As :meth:`CVAE.fit`'s: every rank saves its training state there
        (``cvae-rank{r}.safetensors``, at the same epochs) and resumes from it when every
        rank's matches and all were written after the same epoch; else training starts over.
    checkpoint_key
        Anything else the checkpoints must match.

    Returns
    -------
    The trained model (the same weights on every rank). Its ``history`` holds
    :meth:`CVAE.fit`'s keys and ``world_size``.

    Notes
    -----
    Run under ``torchrun`` for several processes; without it a one-process group is formed.
    The group is destroyed afterwards only when this call created it.
    """
    cfg = config if config is not None else CVAEConfig()
    check_type_only(cfg)
    if out is not None:  # before the training, not at rank 0's save after it
        check_save_dir(Path(out).expanduser())
    device = rank_device(cfg)
    own_group = init_process_group(device)
    ckpt = (checkpoint_dir, checkpoint_key)
    try:
        return _fit(Path(data), label_key, out, cfg, device, seed, ckpt)
    except RuntimeError as exc:
        if dist.get_world_size() == 1 or not _peer_lost(exc):
            raise
        raise CellsynthError(
            f"rank {dist.get_rank()} lost the other ranks during training "
            f"({(str(exc).splitlines() or [''])[0][:160]}): another rank ended (its own "
            "line says why: killed for memory, an error); a rerun resumes from the last "
            "training checkpoint where one was saved (cellsynth run, --checkpoint-dir)") from None
    finally:
        if own_group:
            dist.destroy_process_group()


def _peer_lost(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank went away: torch's ``DistError``s
    (NCCL), gloo's plain ``RuntimeError`` ("Connection reset by peer") otherwise a traceback
    of the ranks that outlived the one that ended."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "by peer" in text


def _fit(
    path: Path,
    label_key: str,
    out: str | Path | None,
    cfg: CVAEConfig,
    device: torch.device,
    seed: int,
    ckpt: tuple[str | Path | None, str],
) -> CVAE:
    rank, world = dist.get_rank(), dist.get_world_size()
    if not path.is_file() or not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an h5ad file; give --data the path of an .h5ad")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # locked by a writer, unreadable: one line, not a rank's traceback
        raise unreadable(path, exc) from None
    with f:
        meta = ad.AnnData(obs=read_elem(f["obs"]), var=read_elem(f["var"]))
        y_all = fit_labels(meta, label_key)
        train_mask, val_mask = split_masks(meta, y_all, seed=seed)
        if not train_mask.any():
            raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
        labels = sorted(set(y_all[train_mask]))
        yt, _ = tr.encode_labels(
            y_all[train_mask], labels, "training", int(train_mask.sum()), drop_unknown=False
        )
        yv, keep = tr.encode_labels(
            y_all[val_mask], labels, "validation", int(val_mask.sum()), drop_unknown=True
        )
        train_rows, val_rows = np.flatnonzero(train_mask), np.flatnonzero(val_mask)[keep]
        pos, real = _shard(len(train_rows), rank, world, seed)
        matrix = _open_counts(f, path)
        counts = _read_rows(matrix, train_rows[pos])  # (n_local, n_genes)
        val_counts = _read_rows(matrix, val_rows[rank::world])
    codes = yt[pos]
    train = Rows(counts, codes, device)
    val = Rows(val_counts, yv[rank::world], device)
    n_train, n_val = len(train_rows), len(val_rows)
    local_batch = math.ceil(cfg.batch_size / world)
    if rank == 0:
        logger.info(
            "CVAE on %d ranks (%s, %s): %d training and %d validation cells, %d genes, %d types; "
            "%d training cells and %d rows per batch on each rank",
            world, dist.get_backend(), device, n_train, n_val, meta.n_vars, len(labels),
            len(train), local_batch,
        )  # fmt: skip
    if n_val == 0 and rank == 0:
        logger.warning("no validation cells; early stopping monitors the training loss")
    elif cfg.select == "fidelity" and rank == 0:
        logger.info("data-parallel CVAE: early stopping monitors the validation ELBO "
                    "(cvae.select = \"fidelity\" is a one-process fit's; --set cvae.select=elbo "
                    "says so)")  # fmt: skip

    model = CVAE(None, label_key=label_key, config=cfg)
    model.device, model.labels, model.genes = device, labels, list(map(str, meta.var_names))
    lib_all = all_gather(torch.from_numpy(train.library_np[real]), device).numpy()
    codes_all = all_gather(torch.from_numpy(codes[real]), device).numpy()

    generator = tr.seed_everything(seed)
    model.module = module = model._build_module()
    module.set_library_model(*library_model(lib_all, codes_all, len(labels)))
    if rank == 0:  # DDP broadcasts rank 0's weights, this start included
        own = counts if real.all() else counts[np.flatnonzero(real)]
        module.init_from_data(*initial_decoder(own, codes[real], train.library_np[real], module))
    else:  # other dropout masks and latent draws than rank 0's
        torch.manual_seed(derive_seed(seed, f"ddp-rank-{rank}"))
    ddp = DistributedDataParallel(
        _Loss(module),
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,  # synced once here; the library model is fixed
    )
    checkpoint = _checkpoint(model, train, val, seed, world, device, *ckpt)
    eval_rows = 4 * cfg.batch_size

    def local_val() -> float:  # this rank's mean weighted by its share: exact with one rank
        return mean_loss(module, val, eval_rows) * (len(val) / n_val) if len(val) else 0.0

    def reduce(train_loss: float, val_loss: float) -> tuple[float, float]:
        t, v = weighted_sums([train_loss / world, 0.0 if n_val == 0 else val_loss], device)
        return t, v

    steps = _loop.Steps(
        module, tr.optimizer(module, cfg),
        lambda idx, beta: ddp(*train.batch(idx), beta),  # x, y, library, covariates (None)
        lambda: epoch_batches(codes, local_batch, cfg.balanced_sampling, generator),
        len(train), generator, train_module=ddp,
    )  # fmt: skip
    result = _loop.train_loop(
        steps, local_val if n_val else None,
        dataclasses.replace(cfg, max_epochs=_loop.epoch_budget(cfg.max_epochs, n_train,
                                                               cfg.batch_size)),
        _loop.LoopOptions("CVAE", "cvae.lr", checkpoint=checkpoint, reduce=reduce,
                          verbose=rank == 0),
    )  # fmt: skip
    history = result.history
    if rank == 0:  # as CVAE.fit; with several ranks on rows read again, capped per type
        mix = (train, codes) if world == 1 else _mixture_rows(path, train_rows, yt, seed, device)
        model._fit_sampler(*mix, seed)
    broadcast_mixture(module, device)
    if checkpoint is not None:
        checkpoint.remove()
    seconds = history["seconds"]
    history.update(
        cells_per_second=n_train * history["epochs"] / max(seconds, 1e-9), world_size=world,
        select="elbo", precision=str(module.compute_dtype).removeprefix("torch."), seed=seed,
    )  # the keys of CVAE.fit's history
    model.history = history
    if rank == 0:
        msg = "CVAE: best epoch %d of %d (val loss %.4f) in %.1f s on %d ranks, %.0f cells/s"
        logger.info(msg, history["best_epoch"], history["epochs"], result.best_loss, seconds,
                    world, history["cells_per_second"])  # fmt: skip
        if out is not None:
            model.save(out)
    dist.barrier()  # the saved model exists when any rank returns
    return model


def _checkpoint(
    model: CVAE,
    train: Rows,
    val: Rows,
    seed: int,
    world: int,
    device: torch.device,
    directory: str | Path | None,
    key: str,
) -> Checkpoint | None:
    """This rank's checkpoint; every rank writes at the same epochs (rank 0's clock decides),
    and a resume needs every rank's file, all from the same epoch (else all are removed)."""
    if directory is None:
        return None
    rank, c = dist.get_rank(), model.config
    key = model._fingerprint(train, val, seed, f"{key}|ddp-{rank}-of-{world}")
    checkpoint = Checkpoint(directory, key, every=c.checkpoint_every,
                                  min_seconds=c.checkpoint_seconds, name=f"cvae-rank{rank}",
                                  agree=lambda due: _from_rank0(due, device))  # fmt: skip
    low, high = _extremes(checkpoint.epoch(), device)
    if low != high or low == 0:
        checkpoint.remove()
    return checkpoint


def _extremes(value: int, device: torch.device) -> tuple[int, int]:
    """The smallest and the largest ``value`` over the ranks."""
    t = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(-t[1].item()), int(t[0].item())


def _from_rank0(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------
# the torchrun entry point


def torchrun_command(
    data: str | Path,
    label_key: str,
    out: str | Path,
    *,
    nproc_per_node: int = 2,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    torchrun_args: Sequence[str] = ("--standalone",),
    checkpoint_dir: str | Path | None = None,
    checkpoint_key: str = "",
    launcher: str = "torch.distributed.run",
) -> list[str]:
    """The command that trains with ``nproc_per_node`` processes under this Python's torchrun.

    ``torchrun_args`` replace ``--standalone`` for several nodes, e.g.
    ``["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=host:29400"]``. ``launcher`` is
    the module run as torchrun (``cellsynth run`` gives ``cellsynth.models._torchrun``: torch's,
    its stops and failures said in one line, ended with its parent).
    """
    cmd = [sys.executable, "-m", launcher, *torchrun_args,
           f"--nproc_per_node={nproc_per_node}", "-m", __name__,
           "--data", str(data), "--label-key", label_key, "--out", str(out), "--seed", str(seed)]  # fmt: skip
    if config is not None:
        cmd += ["--config", str(config)]
    for item in overrides:
        cmd += ["--set", item]
    if checkpoint_dir is not None:
        cmd += ["--checkpoint-dir", str(checkpoint_dir), "--checkpoint-key", checkpoint_key]
    return cmd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun ... -m cellsynth.models.distributed",
        description="Train the count-space CVAE data-parallel; start it with torchrun.",
    )
    p.add_argument("--data", required=True, help="h5ad with raw counts and the label column")
    p.add_argument("--label-key", default=None, help="obs column (default: dataset.label_key)")
    p.add_argument("--out", required=True, help="model directory (written by rank 0)")
    p.add_argument("--config", default=None, help="TOML run config; its [cvae] table is used")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set cvae.max_epochs=50")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None,
                   help="save training checkpoints here and resume from them")  # fmt: skip
    p.add_argument("--checkpoint-key", default="", help="what the checkpoints must also match")
    p.add_argument("--quiet", action="store_true", help="warnings only, no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train, and return the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank of torchrun's: ends with it
        die_with_parent()
    logging.basicConfig(
        level=logging.WARNING if args.quiet or rank else logging.INFO,
        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        run = config_mod.load(args.config, args.set)
        with settings.override(progress=False if args.quiet else "auto"):
            fit_distributed(
                args.data,
                args.label_key or run.dataset.label_key,
                args.out,
                config=run.cvae,
                seed=args.seed,
                checkpoint_dir=args.checkpoint_dir,
                checkpoint_key=args.checkpoint_key,
            )
    except CellsynthError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
