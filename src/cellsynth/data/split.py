"""Stratified train / validation / test split from one seed."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .. import keys as K
from ..errors import DataError, listed
from ..seeds import derive_seed
from .labels import MISSING_TEXT

logger = logging.getLogger(__name__)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], *, seed: int,
    donors: np.ndarray | None = None, heldout_donors: int = 0,
) -> np.ndarray:
    """Assign each cell to ``train``, ``val`` or ``test``, stratified by label.

    Within each label the cells are shuffled and cut by the fractions (rounded), so every
    split holds each type in about the same proportion. A type with few cells keeps at least
    one training cell; validation, then test, get theirs only when the type has enough.

    With ``donors`` and ``heldout_donors = k``, ``k`` donors drawn from the seed are test
    cells whole (donors absent from training, for the privacy audit's donor level); the
    other donors' cells are split as above.

    Returns
    -------
    An object array of ``"train"``/``"val"``/``"test"`` aligned with ``labels``.

    Raises
    ------
    DataError
        ``heldout_donors`` leaves fewer than one donor for training.
    """
    labels = np.asarray(labels)
    _, val_frac, test_frac = fractions
    rng = np.random.default_rng(seed)
    out = np.empty(labels.shape[0], dtype=object)
    held = np.zeros(labels.shape[0], dtype=bool)
    if heldout_donors:
        held = _heldout_donors(np.asarray(donors).astype(str), heldout_donors, seed)
        out[held] = "test"
    codes, uniques = _codes(labels)
    for code in range(len(uniques)):
        idx = np.flatnonzero((codes == code) & ~held)
        idx = idx[rng.permutation(idx.size)]
        n = idx.size
        n_val = round(n * val_frac)
        n_test = round(n * test_frac)
        while n_val + n_test > n - 1 and (n_val or n_test):  # keep one training cell
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        out[idx[:n_val]] = "val"
        out[idx[n_val : n_val + n_test]] = "test"
        out[idx[n_val + n_test :]] = "train"
    return out


def split_column(obs: pd.DataFrame) -> np.ndarray | None:
    """The split ``obs['cellsynth_split']`` gives each cell, as text (a missing value as
    ``"nan"``: in no split); None without the column.

    Raises
    ------
    DataError
        Values other than ``train``, ``val``, ``test`` (and ``none``): "Train", "validation",
        "train " would leave their cells out of every split unsaid.
    """
    if K.SPLIT not in obs:
        return None
    split = obs[K.SPLIT].astype(str).to_numpy().copy()
    odd = sorted(set(np.unique(split)) - {*K.SPLITS, "none", *MISSING_TEXT})
    if odd:
        raise DataError(f"obs['{K.SPLIT}'] holds {listed(odd, quote=True)}; its values are "
                        "'train', 'val' (fitted on) and 'test' (left out): rename them, or "
                        f"drop the column for a seeded split (del adata.obs['{K.SPLIT}'])")
    return split


def _heldout_donors(donors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Mask of the cells of ``k`` donors drawn from ``seed`` (among the sorted donor names)."""
    names = np.unique(donors)
    if k >= len(names):
        raise DataError(f"split.heldout_donors = {k} but the data have {len(names)} donor(s): "
                        "at least one must be left for training; hold out fewer "
                        f"(--set split.heldout_donors={max(len(names) - 1, 0)}) or none (0)")
    picked = np.random.default_rng(derive_seed(seed, "heldout-donors")).choice(
        names, size=k, replace=False)
    logger.info("split: %d held-out donor(s), every cell a test cell: %s", k,
                listed(sorted(map(str, picked)), 10))
    return np.isin(donors, picked)


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes, uniques


def balanced_subsample(labels: np.ndarray, max_per_class: int, *, seed: int) -> np.ndarray:
    """Indices of at most ``max_per_class`` cells of each label (all of the smaller ones), sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    codes, uniques = _codes(labels)
    keep = []
    for code in range(len(uniques)):
        idx = np.flatnonzero(codes == code)
        if idx.size > max_per_class:
            idx = rng.choice(idx, size=max_per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=int)


def stratified_subsample(labels: np.ndarray, cap: int, *, seed: int,
                         floor: int = 0) -> np.ndarray:  # fmt: skip
    """At most ``cap`` sorted indices, each type keeping its share (every type at least one
    cell); every index when there are no more than ``cap``.

    ``floor``: every type keeps at least ``min(its cells, floor)``, beyond ``cap`` where its
    share is less (the others keep theirs). An evaluation of an atlas of a hundred types at a few
    thousand cells would otherwise give most types too few cells for a verdict of their own
    (``metrics.verdict.MIN_TYPE_CELLS``); ``0``: the share alone.
    """
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    types, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes, minlength=len(types))
    if cap < len(types) and floor <= 0:  # not one cell of every type: cap cells at random
        return np.sort(rng.choice(len(labels), size=max(cap, 0), replace=False))
    take = np.minimum(np.maximum(1, np.round(cap * sizes / len(labels)).astype(np.int64)), sizes)
    for _ in range(int(take.sum()) - cap):  # the rounding up and the one-cell floor overshot
        take[np.argmax(take)] -= 1
    take = np.maximum(take, np.minimum(sizes, floor))
    keep = [rng.choice(np.flatnonzero(codes == t), size=int(k), replace=False)
            for t, k in enumerate(take)]
    return np.sort(np.concatenate(keep))

