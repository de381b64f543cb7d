"""Helpers shared by the generators: device, seeding, sampling, KL warm-up, early stopping.

Nothing here knows about a particular model; a count-space VAE can reuse every function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, WeightedRandomSampler

from ..data.levels import LevelLookup, loose_name
from ..errors import ConfigError, DataError, NotTrainedError, did_you_mean, listed
from ..seeds import checked_seed, is_whole

logger = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """The :class:`torch.device` for a config value: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda[:i]"``
    (or a :class:`torch.device` of them); anything else is a :class:`ConfigError`."""
    device = device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for, but CUDA is not available; use 'auto' or 'cpu'"
            )
        return torch.device(device)
    raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def device_name(device: Any) -> str:
    """A device as the settings name it: text as given, a :class:`torch.device` as its name
    (``torch.device("cpu")`` is ``"cpu"``, as a caller of ``load(..., device=)`` may give it);
    anything else (a number, None) is a :class:`ConfigError`, not an AttributeError of torch."""
    if isinstance(device, torch.device):
        return device.type if device.type == "cpu" else str(device)
    if not isinstance(device, str):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), as text or a "
                          f"torch.device, got {device!r} ({type(device).__name__})")
    return device


def warn_one_process(cfg: Any) -> None:
    """A WARNING when ``cvae.distributed`` is set on a one-process fit (``cellsynth fit``,
    ``CVAE.fit``, a benchmark): only ``cellsynth run`` starts torchrun for it, and the fit
    trained in one process without a word."""
    if getattr(cfg, "distributed", False):
        logger.warning("cvae.distributed = true: this fit trains in one process (only "
                       "`cellsynth run` starts torchrun for it); for a data-parallel fit of a "
                       "file run `torchrun --standalone --nproc_per_node=N -m "
                       "cellsynth.models.distributed --data FILE --label-key KEY --out DIR` "
                       "(docs/SCALING.md), or set cvae.distributed = false")


def loadable_device(saved: str, given: str | None, where: object) -> str:
    """The device a saved model loads on: ``given`` when the caller names one (its absence is
    an error: it was asked for), else the saved ``config.device`` where this machine has it,
    else the CPU with a WARNING: a model fitted on a GPU cluster (``device = "cuda"``) is
    read on a laptop to generate (``cellsynth generate`` has no device to pass)."""
    if given is not None:
        return device_name(given)
    try:
        resolve_device(saved)
    except ConfigError:
        logger.warning("%s was fitted with device %r, which this machine does not have: "
                       "loading it on the CPU (pass load(..., device=) to choose another)",
                       where, saved)  # fmt: skip
        return "cpu"
    return saved


def native_bfloat16(device: torch.device) -> bool:
    """True when ``device`` multiplies bfloat16 matrices in hardware (a CPU with AVX512-BF16 or
    AMX tiles; a CUDA GPU that supports bfloat16), so mixed precision is faster, not emulated."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        return any(bool(getattr(cpu, name, lambda: False)())
                   for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the dense layers compute in for a config value: ``"float32"``,
    ``"bfloat16"`` or ``"auto"`` (bfloat16 where :func:`native_bfloat16`, else float32)."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        if not native_bfloat16(device):
            logger.warning("precision 'bfloat16' asked for, but this %s has no bfloat16 matrix "
                           "units: it is emulated and slower than float32; set precision to "
                           "'auto' or 'float32'", device.type)  # fmt: skip
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    raise ConfigError(f"unknown precision {precision!r}; use 'auto', 'float32' or 'bfloat16'")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generators (CPU and CUDA) and return a CPU generator seeded alike.

    The global seed makes weight initialisation and dropout reproducible; the returned
    generator is for explicit draws (mini-batch sampling, prior samples).
    """
    seed = checked_seed(seed)  # np.int64 is a seed; -1, 2**64, None, 1.0 are said to be wrong
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def balanced_batches(
    codes: np.ndarray, batch_size: int, generator: torch.Generator, n_samples: int | None = None
) -> BatchSampler:
    """Mini-batches of row indices drawn with class-balanced weights (``1 / count`` of the class).

    Parameters
    ----------
    codes
        Integer class code of each training row, shape ``(n,)``.
    batch_size
        Rows per mini-batch (the last one may be smaller).
    generator
        Seeded CPU generator; iterating the sampler again draws a fresh epoch from it.
    n_samples
        Rows drawn per epoch (with replacement); defaults to ``len(codes)``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    counts = np.bincount(codes)
    weights = 1.0 / counts[codes]  # (n,)
    sampler = WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=int(n_samples or len(codes)),
        replacement=True,
        generator=generator,
    )
    return BatchSampler(sampler, batch_size=batch_size, drop_last=False)


def iter_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` in chunks of ``batch_size`` (for evaluation)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Mini-batches per epoch when the last, smaller batch is kept."""
    return max(1, math.ceil(n_samples / batch_size))


def kl_weight(epoch: int, kl_start: float = 0.1, n_epochs_kl_warmup: int = 10) -> float:
    """Linear KL warm-up: ``kl_start`` at epoch 0, rising to 1 at ``n_epochs_kl_warmup`` and after.

    Parameters
    ----------
    epoch
        Zero-based epoch index.
    kl_start
        Weight during the first epoch.
    n_epochs_kl_warmup
        Epochs over which the weight rises; 0 means no warm-up (always 1).
    """
    if n_epochs_kl_warmup <= 0:
        return 1.0
    frac = min(1.0, max(0.0, epoch / n_epochs_kl_warmup))
    return float(kl_start + (1.0 - kl_start) * frac)


class EarlyStopping:
    """Stop when the monitored loss has not improved for ``patience`` epochs; keep the best weights.

    Parameters
    ----------
    patience
        Epochs without improvement tolerated before :meth:`step` returns True.
    min_delta
        Smallest decrease that counts as an improvement.
    rel_delta
        ...plus this fraction of the best loss (on big data the loss creeps down for many
        epochs by a few hundredths of a percent; 0.001 stops that after ``patience`` epochs).
    tolerance
        A later epoch whose loss is within this of the lowest so far replaces the kept weights
        (0: only an improvement does). For a noisy check: of the epochs it cannot tell apart,
        the most trained is kept (the CVAE's two-sample check on a few hundred validation cells
        is flat over dozens of epochs while the generated cells still improve;
        ``cvae.select_tolerance``). Patience still counts from the lowest loss.

    Notes
    -----
    The kept weights are a CPU copy of the module's ``state_dict`` held in memory; a
    non-finite loss never counts as an improvement. ``best_loss`` is the lowest loss,
    ``best_epoch`` and ``kept_loss`` the kept epoch and its loss (the same without
    ``tolerance``).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, rel_delta: float = 0.0,
                 tolerance: float = 0.0) -> None:  # fmt: skip
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.rel_delta = float(rel_delta)
        self.tolerance = float(tolerance)
        self.best_loss = self.kept_loss = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.wait = 0

    def step(self, loss: float, epoch: int, module: torch.nn.Module) -> bool:
        """Record the loss of ``epoch``; return True when training should stop."""
        margin = self.min_delta
        if math.isfinite(self.best_loss):
            margin += self.rel_delta * abs(self.best_loss)
        if math.isfinite(loss) and loss < self.best_loss - margin:
            self.best_loss = float(loss)
            self._keep(loss, epoch, module)
            self.wait = 0
            return False
        if self.tolerance > 0 and math.isfinite(loss) and loss <= self.best_loss + self.tolerance:
            self._keep(loss, epoch, module)  # as good as the best within the check's noise
        self.wait += 1
        return self.wait >= max(self.patience, 1)

    def _keep(self, loss: float, epoch: int, module: torch.nn.Module) -> None:
        self.kept_loss, self.best_epoch = float(loss), int(epoch)
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def restore(self, module: torch.nn.Module) -> bool:
        """Load the best weights into ``module``; return False when none were recorded."""
        if self.best_state is None:
            return False
        module.load_state_dict(self.best_state)
        return True


def package_version() -> str:
    """The installed cellsynth version, written into every saved model."""
    try:
        return metadata.version("cellsynth")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# ---------------------------------------------------------------------------------------------
# data, labels and requested counts


def dense_features(X: np.ndarray, n_input: int, name: str) -> torch.Tensor:
    """``X`` as a float32 CPU tensor of shape ``(n, n_input)``; :class:`DataError` if not finite."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != n_input:
        raise DataError(f"{name} must have shape (n_cells, {n_input}), got {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"{name} holds NaN or infinite values; impute or drop those cells first")
    return torch.from_numpy(X)


def check_labels(labels: Sequence[Any]) -> list[str]:
    """The class names as a list of unique strings; raise :class:`DataError` otherwise."""
    labels = [str(label) for label in labels]
    if not labels:
        raise DataError("a generator needs at least one cell type label")
    if len(set(labels)) != len(labels):
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        raise DataError(f"cell type labels must be unique; repeated: {dupes}")
    return labels


def encode_labels(
    y: Any, labels: list[str], name: str, n: int, *, drop_unknown: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (positions in ``labels``) of the known entries of ``y``, and the mask kept.

    Unknown labels raise :class:`DataError`, or are dropped with a warning when ``drop_unknown``.
    """
    y = np.asarray(y, dtype=object).astype(str)
    if y.shape != (n,):
        raise DataError(f"{name} must hold one label per cell ({n}), got shape {y.shape}")
    known = np.isin(y, labels)
    if not known.all():
        unknown = listed(sorted({str(v) for v in y[~known]}), 10, quote=True)
        if not drop_unknown:
            raise DataError(f"{name} has labels the model does not know: {unknown}; known: "
                            f"{listed(labels, 20, quote=True)}")
        logger.warning("dropping %d %s cells with unknown labels %s", (~known).sum(), name, unknown)
    index = {label: i for i, label in enumerate(labels)}
    codes = np.array([index[v] for v in y[known]], dtype=np.int64)  # (n_known,)
    return codes, known


def known_label(label: Any, labels: list[str]) -> str:
    """The model's type ``label`` names: itself, or the one type equal to it but for surrounding
    spaces (a command line strips them; an atlas may keep them) and the Unicode form of its
    letters (:func:`~cellsynth.data.levels.loose_name`); else a :class:`DataError` naming the
    closest types."""
    if label in labels:
        return label
    same = [t for t in labels if loose_name(t) == loose_name(label)]
    if len(same) == 1:
        return same[0]
    code = LevelLookup(labels).code(label)  # a number as covariate levels match one: 1, "1.0"
    if code >= 0:
        return labels[code]
    raise DataError(f"unknown cell type {label!r}{did_you_mean(label, labels)}; known types: "
                    f"{labels}")


#: the most cells one request may ask of a type: beyond it the counts overflow int64 arithmetic
#: long before anything is drawn (and no disk holds them)
MAX_REQUEST = 10**12


def whole_count(n: Any) -> Any:
    """``n`` as an int where it is a whole number, a float one included (``5.0``: a table's
    column of counts is float as soon as one is missing); anything else as it is."""
    if isinstance(n, float | np.floating) and math.isfinite(n) and float(n).is_integer():
        return int(n)
    return int(n) if is_whole(n) else n


def as_text(n: Any, table: str = "") -> str:
    """For a count message: where ``n`` is text (``"2"``: a table read as text), that counts are
    numbers, and how to make a ``table``'s column of them numbers; else ``""``."""
    if not isinstance(n, str):
        return ""
    fix = f"{table}['n'] = pd.to_numeric({table}['n'])" if table else "int(n)"
    return f", text: counts are numbers ({fix})"


def check_count(label: Any, n: Any) -> None:
    """:class:`DataError` unless ``n`` cells of ``label`` is a count one can ask for: a whole
    number (``5.0`` too) from 1 to :data:`MAX_REQUEST`."""
    n = whole_count(n)
    if not is_whole(n) or n <= 0:
        raise DataError(f"the count for {label!r} must be a positive integer, got {n!r}"
                        f"{as_text(n)}")
    if n > MAX_REQUEST:
        raise DataError(f"the count for {label!r} is {n:,} cells, more than one request can "
                        f"hold ({MAX_REQUEST:,}); ask for fewer cells")


def type_counts(request: Any) -> Any:
    """A ``{type: n}`` request given as a pandas Series (``adata.obs[key].value_counts()``) or
    another mapping, as a dict, its zero counts left out (``value_counts`` lists a category no
    cell has with 0; a table's zero rows are left out alike). A Series indexed by several
    columns (``obs[[type, covariate]].value_counts()``) is a request table with ``n``.
    Anything else as it is."""
    if isinstance(request, pd.Series) and isinstance(request.index, pd.MultiIndex):
        names = list(request.index.names)
        twice = [n for n in dict.fromkeys(names)
                 if n is not None and (names.count(n) > 1 or n == "n")]
        if twice:  # reset_index's "cannot insert cell_type, already exists"
            raise DataError(f"the request's index names {twice[0]!r} "
                            f"{'twice' if names.count(twice[0]) > 1 else 'as the count column n'}"
                            f" (its levels: {names}): a request table has each column once, "
                            "the counts in 'n'; count the label and covariate columns once "
                            "each, e.g. adata.obs[[label, covariate]].value_counts()")
        return request.rename("n").reset_index()
    if isinstance(request, Mapping | pd.Series):
        return {k: v for k, v in request.items() if not (is_whole(whole_count(v)) and v == 0)}
    return request


def check_counts(counts_per_type: dict[str, int], labels: list[str]) -> dict[str, int]:
    """The request with each type as the model names it (:func:`known_label`); a
    :class:`DataError` for an empty request, an unknown type or a count that is not >= 1."""
    counts_per_type = type_counts(counts_per_type)
    if not labels:  # a generator that knows no type has not been fitted
        raise NotTrainedError("this model has not been fitted, so it cannot generate: call "
                              "fit(adata, label_key) first, or load a fitted one")
    if not isinstance(counts_per_type, Mapping):  # a list, a number, a table: no .items()
        shown = " ".join(repr(counts_per_type).split())  # one line, however it prints
        raise DataError(
            "a request is a {type: n} dict (e.g. {'B cells': 500}); got "
            f"{type(counts_per_type).__name__} {shown[:60]}{'...' if len(shown) > 60 else ''}")
    if not counts_per_type:
        raise DataError(f"no cells requested; ask for cells of some of {labels}")
    out: dict[str, int] = {}
    for label, n in counts_per_type.items():
        name = known_label(label, labels)
        check_count(label, n)
        if name in out:
            raise DataError(f"cell type {name!r} is requested twice; give it once with the "
                            "total you want")
        out[name] = whole_count(n)
    return out


def optimizer(module: torch.nn.Module, config: Any) -> torch.optim.Optimizer:
    """The training optimiser (shared with the distributed fit, so both take the same steps).

    Fused AdamW: one kernel (CUDA) or loop (CPU) for all parameters, about 3x faster steps
    than the default multi-tensor version.
    """
    return torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
