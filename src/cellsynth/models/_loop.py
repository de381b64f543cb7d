"""The one epoch loop the torch generators train with, and its resumable checkpoint.

:func:`train_loop` runs epochs of mini-batch steps with the KL warm-up, early stopping on the
validation loss (the best weights restored at the end), a progress bar and per-epoch log lines;
:class:`~cellsynth.models.cvae.CVAE`, the distributed CVAE fit and
:class:`~cellsynth.models.seed.SeedCVAE` all call it. Given a :class:`Checkpoint`, it writes the
whole training state every few epochs: weights, optimiser and learning-rate schedule, epoch,
history, early-stopping state (best weights included) and the torch (CPU and CUDA), numpy and
Python random states, the data-order generator included. One safetensors file holds it, the
tensors as tensors and everything else as JSON in the file's header (nothing pickled), written
to a temporary file and renamed. A later fit with the same fingerprint resumes from it and
takes exactly the steps the uninterrupted fit would have taken.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CellsynthError
from ..options import LOG_SECONDS, progress_bar
from ..outputs import replaced
from . import _training as tr

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_META_KEY = "cellsynth_checkpoint"  # safetensors header entry holding the JSON state


AUTO_EPOCHS = 400  # max_epochs = "auto": at most this many epochs...
AUTO_STEPS = 10_000  # ...and about this many optimiser steps


def epoch_budget(max_epochs: int | str, n_cells: int, batch_size: int) -> int:
    """``max_epochs``, or for ``"auto"`` ``min(400, round(10,000 * batch_size / n_cells))``, at
    least 1: about 10,000 optimiser steps.

    Training converges in steps, not epochs: the epochs kept for docs/RESULTS.md (the
    ``history`` in ``benchmarks/results/DATASET/cvae.json``) lie far inside this budget; at
    E-ANND-5's size (533k training cells, 2,083 steps an epoch) 5 epochs ended 0.5% below
    2 epochs' validation loss. Up to 6,400 cells at batch 256 this is 400 epochs; at 533k
    cells, 5. scvi-tools' rule (``400 * 20,000 / n_cells``, 8 million cells seen) would be 15
    epochs there, over 3 hours on 2 cores.
    """
    if max_epochs == "auto":
        steps = AUTO_STEPS * batch_size / max(n_cells, 1)
        return max(1, min(AUTO_EPOCHS, round(steps)))
    return int(max_epochs)


class LoopSettings(Protocol):
    """The config fields the loop reads (``CVAEConfig`` and ``SeedVAEConfig`` have them);
    ``max_epochs`` is a number here (:func:`epoch_budget` resolves ``"auto"``)."""

    max_epochs: int
    patience: int  # epochs without improvement before stopping (see ``min_steps``)
    kl_start: float
    kl_anneal_epochs: int


@dataclass
class LoopResult:
    """What :func:`train_loop` returns; the module holds the best weights."""

    history: dict[str, Any]  # train_loss, val_loss (per epoch), best_epoch, epochs, seconds
    best_loss: float  # validation loss of the kept epoch (the best, or within the tolerance)
    epochs_run: int  # epochs this call ran (fewer than history["epochs"] after a resume)


def fingerprint(*parts: Any) -> str:
    """A short hash of ``parts`` (JSON-able values, numpy arrays by their bytes): what a
    checkpoint belongs to."""
    blob = json.dumps(parts, sort_keys=True, default=_digest)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _digest(value: Any) -> str:
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return f"{data.dtype}{data.shape}:{hashlib.sha256(data.tobytes()).hexdigest()}"
    return str(value)


class Checkpoint:
    """Where and how often :func:`train_loop` saves its state, and the fingerprint it must match.

    Parameters
    ----------
    directory
        Folder of the checkpoint file (created when first written).
    key
        Fingerprint of the settings, data and seed (:func:`fingerprint`); a file with another
        one is ignored (and overwritten by the next write).
    every
        Write after every ``every``-th epoch; 0 never writes.
    min_seconds
        ...and only when at least this many seconds passed since the last write (or the start).
    name
        File name stem: ``directory / f"{name}.safetensors"``.
    agree
        Turns this process's "write now" into the one every process of a data-parallel fit
        takes (rank 0's); None for one process.
    """

    def __init__(
        self,
        directory: str | Path,
        key: str,
        *,
        every: int = 1,
        min_seconds: float = 0.0,
        name: str = "training",
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        self.path = Path(directory) / f"{name}.safetensors"
        self.key = str(key)
        self.every = int(every)
        self.min_seconds = float(min_seconds)
        self.writes = 0  # files written by this object
        self.seconds = 0.0  # time spent writing them
        self.agree = agree
        self._last = time.monotonic()
        self._broken = False

    def due(self, epochs_done: int) -> bool:
        """Whether to write after ``epochs_done`` epochs."""
        due = (
            not self._broken
            and self.every > 0
            and epochs_done % self.every == 0
            and time.monotonic() - self._last >= self.min_seconds
        )
        return self.agree(due) if self.agree is not None else due

    def write(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write atomically (temporary file, then rename); a failure only stops checkpointing."""
        start = time.perf_counter()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with replaced(self.path, ".tmp") as tmp:  # this writer's own (two ranks, two runs)
                save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
        except OSError as exc:
            self._broken = True
            logger.warning(
                "cannot write the training checkpoint %s (%s); training goes on without "
                "checkpoints, so a killed run starts it again",
                self.path,
                exc.strerror or exc,
            )
            return
        self._last = time.monotonic()
        self.writes += 1
        self.seconds += time.perf_counter() - start

    def read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The saved tensors and JSON state, or None (no file, unreadable, other fingerprint)."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_META_KEY])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            logger.warning("cannot read the training checkpoint %s (%s); training from the "
                           "start", self.path, exc)  # fmt: skip
            return None
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("key") != self.key:
            logger.info("the training checkpoint %s was written with other settings, data or "
                        "seed; training from the start", self.path)  # fmt: skip
            return None
        return tensors, meta

    def epoch(self) -> int:
        """Epochs done in the matching checkpoint on disk (0 when there is none)."""
        found = self.read()
        return int(found[1]["epoch"]) if found else 0

    def remove(self) -> None:
        """Delete the checkpoint (and its folder when left empty)."""
        self.path.unlink(missing_ok=True)
        for tmp in self.path.parent.glob(self.path.name + ".*.tmp"):  # left by a kill
            tmp.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass  # not empty, or already gone


@dataclass
class Steps:
    """What the loop's optimiser steps need.

    Attributes
    ----------
    module
        The network whose weights are trained, kept for early stopping and checkpointed.
    optimizer
        Its optimiser; stepped once per mini-batch (``scheduler`` too, when given).
    loss
        ``loss(batch, kl_weight)``: the mean loss of one mini-batch, a scalar with a graph.
    batches
        One epoch's mini-batches (anything with a ``len``: row indices or a ``Batch``), drawn
        from ``generator``; called per epoch.
    n_rows
        Rows one epoch draws (the training loss is the sum over batches divided by it).
    generator
        The data-order generator (checkpointed with the global random states).
    scheduler
        A learning-rate schedule stepped after every optimiser step.
    train_module
        The module put in training mode each epoch (a ``DistributedDataParallel`` wrapper);
        ``module`` when None.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[Any, float], torch.Tensor]
    batches: Callable[[], Iterable[Any]]
    n_rows: int
    generator: torch.Generator
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    train_module: nn.Module | None = None


@dataclass
class LoopOptions:
    """How the loop reports, checkpoints and checks (everything but the steps and settings).

    Attributes
    ----------
    name
        The model's name in the progress bar and log lines (``"CVAE"``).
    lr_setting
        The learning-rate setting the error for a loss that is never finite names.
    evaluate_every
        Call ``evaluate`` only every this many epochs (and at the last): an expensive check,
        such as the generated cells' distance to the validation cells. ``patience`` then counts
        checks, and the epochs between them have ``None`` as validation loss in the history.
    checkpoint
        Save the training state there and resume from it when it matches.
    reduce
        ``reduce(train_loss, val_loss)`` -> the losses every process agrees on (data-parallel
        training); identity when None.
    tolerance
        A later check within this of the lowest so far is kept instead
        (:class:`~cellsynth.models._training.EarlyStopping`); 0: the lowest is kept.
    verbose
        Log the early stop, the resume and signs of life, and show the progress bar (False on
        every process but the first).
    """

    name: str = "model"
    lr_setting: str = "lr"
    evaluate_every: int = 1
    checkpoint: Checkpoint | None = None
    reduce: Callable[[float, float], tuple[float, float]] | None = None
    verbose: bool = True
    tolerance: float = 0.0


def train_loop(steps: Steps, evaluate: Callable[[], float] | None, settings: LoopSettings,
               options: LoopOptions | None = None) -> LoopResult:  # fmt: skip
    """Train ``steps.module`` epoch by epoch; keep the weights of the best validation epoch.

    Parameters
    ----------
    steps
        The module, optimiser, mini-batch loss and batches (:class:`Steps`).
    evaluate
        The validation loss (eval mode, KL weight 1), or another check where lower is better;
        None when there are no validation cells, then early stopping monitors the training loss.
    settings
        ``max_epochs``, ``patience``, ``kl_start``, ``kl_anneal_epochs`` and, when they have
        them, ``kl_weight`` (the warm-up's end value, default 1), ``min_improvement`` (the
        fraction of the best validation loss an epoch must beat it by, default 0) and
        ``min_steps``: early stopping waits until that many optimiser steps are done (on a few
        hundred cells an epoch is a few steps, and the validation loss sits on a plateau for
        many epochs while the generator still improves); the best epoch's weights are kept.
    options
        Name, checkpoint, check interval and logging (:class:`LoopOptions`); progress bars
        follow :data:`cellsynth.options.settings`.

    Returns
    -------
    :class:`LoopResult`; ``history`` holds ``train_loss``, ``val_loss``, ``best_epoch``,
    ``epochs``, ``seconds`` (training only, over every resumed part) and, after a resume,
    ``resumed_from`` (the epoch it went on from).
    """
    o = options or LoopOptions()
    module, optimizer, loss, batches = steps.module, steps.optimizer, steps.loss, steps.batches
    n_rows, generator, scheduler = steps.n_rows, steps.generator, steps.scheduler
    name, checkpoint, verbose = o.name, o.checkpoint, o.verbose
    stopper = tr.EarlyStopping(patience=settings.patience,
                               rel_delta=float(getattr(settings, "min_improvement", 0.0)),
                               tolerance=o.tolerance)  # fmt: skip
    min_steps = int(getattr(settings, "min_steps", 0))
    history: dict[str, Any] = {"train_loss": [], "val_loss": []}
    first, elapsed = 0, 0.0
    found = checkpoint.read() if checkpoint is not None else None
    if found is not None:
        try:
            first, elapsed = _restore(found, module, optimizer, scheduler, generator, stopper,
                                      history)  # fmt: skip
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            why = " ".join(str(exc).split())[:200]  # one line
            raise CellsynthError(f"the training checkpoint {checkpoint.path} does not fit this "
                                 f"{name} ({why}); delete it and run again") from None
        if verbose:
            logger.info("resuming %s training from epoch %d (%s)", name, first, checkpoint.path)
    start = time.perf_counter()
    device = next(module.parameters()).device
    bar = progress_bar(total=settings.max_epochs, initial=first, desc=name, unit="epoch", here=verbose,
                       log=False)  # fmt: skip  # _SignsOfLife logs, with the loss
    epoch = first - 1
    life = _SignsOfLife(history)
    for epoch in range(first, settings.max_epochs):
        beta = tr.kl_weight(epoch, settings.kl_start, settings.kl_anneal_epochs)
        beta *= float(getattr(settings, "kl_weight", 1.0))
        (steps.train_module or module).train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # no sync per step
        n_steps = seen = 0
        for idx in batches():
            n_steps += 1
            batch_loss = loss(idx, beta)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += batch_loss.detach().double() * len(idx)
            seen += len(idx)
            if verbose and time.perf_counter() - life.last >= LOG_SECONDS:
                life.log(name, epoch, settings.max_epochs, seen, n_rows,
                         total.item() / max(seen, 1), (epoch - first) * n_rows + seen,
                         time.perf_counter() - start)
        train_loss = total.item() / n_rows
        check = (evaluate is None or (epoch + 1) % max(o.evaluate_every, 1) == 0
                 or epoch + 1 == settings.max_epochs)  # fmt: skip
        val_loss = evaluate() if evaluate is not None and check else math.nan
        if o.reduce is not None:
            train_loss, val_loss = o.reduce(train_loss, val_loss)
        if evaluate is None:
            val_loss = train_loss
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss if check else None)  # JSON null between checks
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.5g}", val=f"{val_loss:.5g}", beta=f"{beta:.2f}",
                        refresh=False)  # fmt: skip
        logger.debug("epoch %d: train %.4f, val %.4f, kl weight %.2f", epoch, train_loss,
                     val_loss, beta)  # fmt: skip
        # every epoch draws the same number of batches, so steps so far = epochs x n_steps
        if check and stopper.step(val_loss, epoch, module) and (epoch + 1) * n_steps >= min_steps:
            if verbose:
                logger.info("%s: early stopping after epoch %d (no improvement for %d)", name,
                            epoch, settings.patience)  # fmt: skip
            break
        last = epoch + 1 == settings.max_epochs
        if checkpoint is not None and not last and checkpoint.due(epoch + 1):
            seconds = elapsed + time.perf_counter() - start
            checkpoint.write(*_capture(epoch + 1, seconds, module, optimizer, scheduler,
                                       generator, stopper, history, checkpoint.key))  # fmt: skip
    bar.close()
    if not stopper.restore(module):
        raise CellsynthError(f"the {name} validation loss was never finite; lower {o.lr_setting} "
                             "(e.g. by 10x) and run again")  # fmt: skip
    module.eval()
    history.update(best_epoch=stopper.best_epoch, epochs=len(history["train_loss"]),
                   seconds=elapsed + time.perf_counter() - start)  # fmt: skip
    if first:
        history["resumed_from"] = first
    if checkpoint is not None and checkpoint.writes:
        logger.info("%s: %d training checkpoints written in %.2f s (%.1f ms each)", name,
                    checkpoint.writes, checkpoint.seconds,
                    1000 * checkpoint.seconds / checkpoint.writes)  # fmt: skip
    return LoopResult(history, stopper.kept_loss, epoch + 1 - first)




class _SignsOfLife:
    """A log line at most every :data:`LOG_SECONDS` inside long epochs: where training is, the
    loss so far, the last check, cells a second and the time left in the epoch budget.

    The rate is over the whole run so far, checks included (``done`` cells in ``seconds``): a
    rate within one epoch reads thousands of cells a second at its first batch, and the time
    left it gives leaves out the checks, which are most of a small data set's fit."""

    def __init__(self, history: dict[str, Any]) -> None:
        self.history, self.last = history, time.perf_counter()

    def log(self, name: str, epoch: int, max_epochs: int, seen: int, n_rows: int, loss: float,
            done: int, seconds: float) -> None:  # fmt: skip
        rate = done / max(seconds, 1e-9)
        left = (n_rows - seen) / rate + (max_epochs - epoch - 1) * n_rows / rate
        checks = [v for v in self.history["val_loss"] if v is not None]
        last = f", last check {checks[-1]:.4g}" if checks else ""
        logger.info("%s: epoch %d/%d, %d of %d cells, loss %.4g%s, %.0f cells/s, at most %s "
                    "left", name, epoch + 1, max_epochs, seen, n_rows, loss, last, rate,
                    _duration(left))  # fmt: skip
        self.last = time.perf_counter()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, m = seconds // 3600, seconds % 3600 // 60
    return f"{h} h {m:02d} min" if h else f"{m} min {seconds % 60:02d} s"


# ---------------------------------------------------------------------------------------------
# the training state as tensors and JSON


def _capture(
    epoch: int,
    seconds: float,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    stopper: tr.EarlyStopping,
    history: dict[str, Any],
    key: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state after ``epoch`` epochs: tensors for safetensors, the rest JSON-able."""
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    best_is_model = stopper.best_epoch == epoch - 1  # improved just now: the same tensors
    if stopper.best_state is not None and not best_is_model:
        tensors.update({f"best.{k}": v for k, v in stopper.best_state.items()})
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for i, state in opt["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{i}.{k}"] = v
            else:
                scalars[f"{i}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state, saved as is
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "epoch": epoch,
        "seconds": seconds,
        "history": {k: list(history[k]) for k in ("train_loss", "val_loss")},
        "stopper": {
            "best_loss": stopper.best_loss,
            "kept_loss": stopper.kept_loss,
            "best_epoch": stopper.best_epoch,
            "wait": stopper.wait,
            "best_is_model": best_is_model,
        },
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python_rng": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def _restore(
    found: tuple[dict[str, torch.Tensor], dict[str, Any]],
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    stopper: tr.EarlyStopping,
    history: dict[str, Any],
) -> tuple[int, float]:
    """Load a captured state into the training objects; return (epochs done, seconds so far)."""
    tensors, meta = found

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model = part("model.")
    module.load_state_dict(model)
    best = model if meta["stopper"]["best_is_model"] else part("best.")
    stopper.best_state = best or None  # loaded tensors: copied into the module, not shared
    stopper.best_loss = float(meta["stopper"]["best_loss"])
    stopper.kept_loss = float(meta["stopper"].get("kept_loss", stopper.best_loss))
    stopper.best_epoch = int(meta["stopper"]["best_epoch"])
    stopper.wait = int(meta["stopper"]["wait"])
    state: dict[int, dict[str, Any]] = {}
    for k, v in part("optim.").items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    for k, v in meta["optimizer"]["scalars"].items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in meta["optimizer"]["param_groups"]]  # fmt: skip
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    history["train_loss"] = list(meta["history"]["train_loss"])
    history["val_loss"] = list(meta["history"]["val_loss"])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    cuda = part("rng.cuda.")
    if cuda and torch.cuda.is_available():
        for i, s in cuda.items():
            if int(i) < torch.cuda.device_count():
                torch.cuda.set_rng_state(s, int(i))
    name, keys, *rest = meta["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    version, py_state, gauss = meta["python_rng"]
    random.setstate((version, tuple(py_state), gauss))
    return int(meta["epoch"]), float(meta["seconds"])
