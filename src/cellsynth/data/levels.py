"""Covariate levels as names, and a requested level matched to a trained one.

A covariate's levels are names (text). A numeric column's values are named as numbers are
read: a whole number without a decimal part (``12.0`` is the level ``"12"``), so the same donor
or age is one level whether a file stores it as an integer or a float (an h5ad written from R,
a column with a missing value somewhere, a request table read by pandas). A requested level
matches a trained one by name or, when both are numbers, by value: ``12``, ``12.0`` and
``"12"`` all ask for the level ``"12"`` (and for ``"12.0"`` of a model that named it so); a
text level written otherwise than a number is (``"01"``) and a value that several levels share
match by name only, so ``donor=1`` never asks for the donor ``"01"``. Failing those, a
name matches the one level equal to it but for surrounding spaces (a command line strips them;
an atlas may keep them), as a cell type's name does.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: whole numbers larger than this are not written as integers (a float cannot hold them exactly)
_EXACT = 2**53


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (text that is not a number, NaN, infinities)."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def level_name(value: Any) -> str:
    """The level name of one value: a whole number without its decimal part (``1.0`` ->
    ``"1"``), anything else as ``str`` writes it."""
    if isinstance(value, str):
        return value
    x = _number(value)
    if x is not None and x.is_integer() and abs(x) < _EXACT:
        return str(int(x))
    return str(value)


#: a request table's level meaning "any": the type's training composition over that covariate,
#: as when the table has no column for it (a blank cell is refused: a blank left by mistake)
ANY_LEVEL = "*"


def level_text(values: pd.Series) -> np.ndarray:
    """The level name of every value of an ``obs`` column, as a str array: a numeric column's
    (or numeric categories') values by :func:`level_name`, other columns as ``astype(str)``
    writes them (a missing value is ``"nan"``), but for the numbers of a column that mixes them
    with text (``'1'`` and ``1.0`` after ``ad.concat``), named as a numeric column's are."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype  # categories of numbers are numbers
    if not _numeric(dtype):
        text = values.astype(str).to_numpy()
        kinds = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else values
        if pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(
                kinds, skipna=True) not in ("string", "bytes", "empty"):  # fmt: skip
            _name_numbers(values.to_numpy(dtype=object), text)
        return text
    codes, uniq = pd.factorize(values)  # missing: -1
    names = np.array([*(level_name(v) for v in uniq), "nan"], dtype=object)
    return names[codes].astype(str)


def _name_numbers(cells: np.ndarray, text: np.ndarray) -> None:
    """Name each number (not a bool) among ``cells`` by :func:`level_name` in ``text``, in
    place: the donor ``1.0`` beside the donor ``'1'`` is one level, ``"1"``."""
    number = np.fromiter((isinstance(v, numbers.Number) and not isinstance(v, bool | np.bool_)
                          for v in cells), dtype=bool, count=len(cells))  # fmt: skip
    text[number] = [level_name(v) for v in cells[number]]


def _numeric(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def loose_name(name: Any) -> str:
    """A name as a match by hand reads it: Unicode composed the one way (NFC: "naïve" typed
    with a combining diaeresis is the same word) and without surrounding spaces."""
    return unicodedata.normalize("NFC", str(name)).strip()


class LevelLookup:
    """Requested values to the codes (positions) of a covariate's trained ``levels``.

    Examples
    --------
    >>> look = LevelLookup(["12.0", "16.0", "ctrl"])
    >>> look.code("12"), look.code(16), look.code("ctrl"), look.code("stim")
    (0, 1, 2, -1)
    """

    def __init__(self, levels: Sequence[str]) -> None:
        self.levels = list(levels)
        self._by_name = {name: i for i, name in enumerate(self.levels)}
        self._by_value = _unique_keys([_number(name) if _as_number(name) else None
                                       for name in self.levels])
        self._by_stripped = _unique_keys([loose_name(name) for name in self.levels])

    def code(self, value: Any) -> int:
        """The code of the level ``value`` names, -1 where it names none."""
        name = level_name(value)
        if name in self._by_name:
            return self._by_name[name]
        x = _number(name)
        if x is not None and x in self._by_value:
            return self._by_value[x]
        return self._by_stripped.get(loose_name(name), -1)

    def codes(self, names: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 codes of an array of level names (:func:`level_text`)."""
        idx, uniq = pd.factorize(np.asarray(names, dtype=object))
        table = np.array([self.code(u) for u in uniq] + [-1], dtype=np.int64)
        return table[np.where(idx < 0, len(uniq), idx)]  # a missing value (-1) names none


def _as_number(name: str) -> bool:
    """Whether a level's name is a number as a numeric column's value is written (``"12"``,
    ``"12.5"``, or ``"12.0"`` as ``str`` writes a float): such a level may be asked for by value.
    A text level that reads as a number only once parsed (``"01"``, ``"007"``) is matched by its
    name alone: ``donor=1`` is not the donor ``"01"``."""
    x = _number(name)
    return x is not None and name in (level_name(x), str(x))


def _unique_keys(keys: list[Any]) -> dict[Any, int]:
    """Key -> position, for the keys (not None) that one position alone has."""
    where: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            where.setdefault(key, []).append(i)
    return {key: pos[0] for key, pos in where.items() if len(pos) == 1}


def model_key(key: str, keys: list[str]) -> str:
    """The covariate of ``keys`` that a request's ``key`` names: itself, else the one equal to
    it but for its Unicode form (NFC: a name typed or copied with a decomposed accent prints
    as the model's), as a level or a type is matched; ``key`` itself where none is. Spaces
    are not forgiven here: ``'condition '`` gets a did-you-mean."""
    if key in keys:
        return key
    same = [k for k in keys if unicodedata.normalize("NFC", str(k))
            == unicodedata.normalize("NFC", str(key))]  # fmt: skip
    return same[0] if len(same) == 1 else key
