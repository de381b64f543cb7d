"""The training loop's resumable checkpoint: :class:`Checkpoint` (where, how often, and the
:func:`fingerprint` of the fit it belongs to) and the whole training state captured into, and
restored from, one safetensors file: weights, optimiser and learning-rate schedule, epoch,
history, early-stopping state (best weights included) and the torch (CPU and CUDA), numpy and
Python random states, the data-order generator included; the tensors as tensors and everything
else as JSON in the file's header (nothing pickled), written to a temporary file and renamed
(:func:`~cellsynth.outputs.replaced`). :func:`~cellsynth.models._loop.train_loop` writes and
reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..outputs import replaced, save_tensors
from . import _training as tr

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_META_KEY = "cellsynth_checkpoint"  # safetensors header entry holding the JSON state


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
                # as a model's files: an OSError for a failed write, readable as a new file is
                save_tensors(lambda t, path: save_file(t, path, metadata={
                    _META_KEY: json.dumps(meta)}), tensors, tmp)
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


# ---------------------------------------------------------------------------------------------
# the training state as tensors and JSON


@dataclass
class TrainingState:
    """The objects a training checkpoint saves and restores: the module, its optimiser and
    learning-rate schedule (None without one), the data order's generator, the early stopping
    and the loss history (``train_loss``, ``val_loss``)."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    stopper: tr.EarlyStopping
    history: dict[str, Any]

    def capture(self, epoch: int, seconds: float, key: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
        """The state after ``epoch`` epochs: tensors for safetensors, the rest JSON-able."""
        tensors = {f"model.{k}": v for k, v in self.module.state_dict().items()}
        best_is_model = self.stopper.best_epoch == epoch - 1  # improved just now: same tensors
        if self.stopper.best_state is not None and not best_is_model:
            tensors.update({f"best.{k}": v for k, v in self.stopper.best_state.items()})
        opt = self.optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for i, state in opt["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{i}.{k}"] = v
                else:
                    scalars[f"{i}.{k}"] = v
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = self.generator.get_state()
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
            "history": {k: list(self.history[k]) for k in ("train_loss", "val_loss")},
            "stopper": {
                "best_loss": self.stopper.best_loss,
                "kept_loss": self.stopper.kept_loss,
                "best_epoch": self.stopper.best_epoch,
                "wait": self.stopper.wait,
                "best_is_model": best_is_model,
            },
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python_rng": [py_version, list(py_state), py_gauss],
        }
        return tensors, meta

    def restore(self, found: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> tuple[int, float]:
        """Load a captured state into the training objects; return (epochs done, seconds
        so far)."""
        tensors, meta = found

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        model = part("model.")
        self.module.load_state_dict(model)
        best = model if meta["stopper"]["best_is_model"] else part("best.")
        self.stopper.best_state = best or None  # loaded tensors: copied into the module, not shared
        self.stopper.best_loss = float(meta["stopper"]["best_loss"])
        self.stopper.kept_loss = float(meta["stopper"].get("kept_loss", self.stopper.best_loss))
        self.stopper.best_epoch = int(meta["stopper"]["best_epoch"])
        self.stopper.wait = int(meta["stopper"]["wait"])
        state: dict[int, dict[str, Any]] = {}
        for k, v in part("optim.").items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        for k, v in meta["optimizer"]["scalars"].items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
                  for g in meta["optimizer"]["param_groups"]]  # fmt: skip
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        if self.scheduler is not None and meta["scheduler"] is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        self.history["train_loss"] = list(meta["history"]["train_loss"])
        self.history["val_loss"] = list(meta["history"]["val_loss"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.data"])
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
