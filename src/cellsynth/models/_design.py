"""The design a model conditions on beyond the cell type: covariates, their levels, requests.

A :class:`Design` holds the covariate columns (donor, condition, batch...), the levels each took
in the training cells (sorted; a covariate's integer code is its level's position) and the
training composition (cells per type and combination of levels). It turns ``obs`` columns into
codes, and a request into a plan of ``(type, level codes, n)`` rows:

- ``{"B cells": 500}`` with ``where={"condition": "stim"}``: the same levels for every type;
- a table with the label column, any covariate columns and ``n``: one row per combination.

A covariate left unspecified follows the type's training composition over it (among its
training cells with the specified levels, or all of the type's cells when there are none), so
``{"B cells": 500}`` alone gives B cells in the proportions of donors and conditions that the
training B cells had. A combination of seen levels that no training cell of the type had is
allowed (each covariate has an embedding of its own) and reported as unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..data.labels import check_spaced_names, missing_labels
from ..data.levels import ANY_LEVEL, LevelLookup, level_text, model_key
from ..errors import DataError, did_you_mean, listed
from ..seeds import is_whole
from ._covariate_columns import check_columns, column, no_missing, not_a_number
from ._training import as_text, check_count, known_label, type_counts, whole_count
from .base import request as request_pairs

logger = logging.getLogger(__name__)

#: fewer training cells a level than this on average: an identifier (of cells, barcodes), not a
#: design a model can learn a level's effect from
MIN_CELLS_PER_LEVEL = 5


@dataclass
class Design:
    """Covariates, their training levels, and the training composition per type."""

    keys: list[str] = field(default_factory=list)
    levels: dict[str, list[str]] = field(default_factory=dict)
    #: per type: ``[[codes...], n]`` for every combination of levels its training cells had
    composition: dict[str, list[list[Any]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def n_levels(self) -> list[int]:
        return [len(self.levels[k]) for k in self.keys]

    # ------------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, obs: pd.DataFrame, keys: list[str], label_key: str, labels: np.ndarray,
            train: np.ndarray, used: np.ndarray) -> tuple[Design, np.ndarray | None]:  # fmt: skip
        """The design of the training cells ``train`` (positions in ``obs``), and the codes of
        every cell, ``(n_obs, k)`` (-1 for a level no training cell had); ``used`` are the
        cells training reads (checked for missing values). ``(Design(), None)`` without keys."""
        if not keys:
            return cls(), None
        levels = training_levels(obs, keys, label_key, train, used)
        for key in keys:
            _warn_uninformative(key, level_text(obs[key].iloc[train]), np.asarray(labels)[train])
        design = cls(list(keys), levels)
        codes = design.codes(obs)
        combos = pd.DataFrame(codes[train], columns=keys)
        combos["label"] = np.asarray(labels)[train]
        for label, part in combos.groupby("label", sort=True):
            counts = part.groupby(keys, sort=True).size()
            design.composition[str(label)] = [
                [[int(v) for v in np.atleast_1d(idx)], int(n)] for idx, n in counts.items()]
        return design, codes

    def codes(self, obs: pd.DataFrame) -> np.ndarray:
        """``(n, k)`` int64 codes of ``obs``'s covariate columns (-1: a level not seen in
        training); numbers match by value (:mod:`cellsynth.data.levels`: a float column's
        ``1.0`` is the level ``"1"``)."""
        out = np.empty((len(obs), len(self.keys)), dtype=np.int64)
        for i, key in enumerate(self.keys):
            out[:, i] = LevelLookup(self.levels[key]).codes(level_text(column(obs, key)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"keys": self.keys, "levels": self.levels, "composition": self.composition}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Design:
        data = data or {}
        return cls(list(data.get("keys", [])), dict(data.get("levels", {})),
                   dict(data.get("composition", {})))  # fmt: skip

    # ------------------------------------------------------------------------------------------

    def plan(self, request: dict[str, int] | pd.DataFrame, where: dict[str, Any] | None,
             labels: list[str], label_key: str) -> tuple[list[tuple[str, tuple[int, ...], int]],
                                                        list[dict[str, str]]]:  # fmt: skip
        """``[(type, level codes, n), ...]`` for a request, and the combinations in it that no
        training cell had (``{label_key: type, covariate: level, ...}``). A plan is returned as
        it is; a ``{type: n}`` request without ``where`` to a model without covariates is
        checked as a type-only request."""
        if isinstance(request, list) and request and all(
                isinstance(p, tuple) and len(p) == 3 for p in request):  # fmt: skip
            if where:  # its levels are its codes: where= would be ignored
                raise DataError(f"a plan [(type, level codes, n), ...] carries its levels in its "
                                f"codes, and where={str(where)[:60]} is not read with it: make "
                                "the plan with those levels, plan(request, where=...), or give "
                                "the {type: n} request with where=")
            return self._checked_plan(request, labels, label_key)
        if (isinstance(request, dict) and label_key in request and "n" in request
                and all(isinstance(v, list | tuple | np.ndarray | pd.Series)
                        for v in request.values())):  # a dict of columns: a table
            request = pd.DataFrame(request)
        if (isinstance(request, Mapping) and label_key in request and "n" in request
                and label_key not in labels):  # fmt: skip
            raise DataError(f"{dict(request)!r} reads as one row of a request table, not a "
                            "{type: n} dict: give it as a table, pd.DataFrame([row]), or as "
                            f"{{{str(request[label_key])!r}: {request['n']!r}}} with where= "
                            "for the covariate levels")
        request = type_counts(request)
        if isinstance(request, pd.DataFrame):
            _no_levels_in_index(request, self.keys)
        if where is not None and not isinstance(where, Mapping):
            raise DataError(f"where is a {{covariate: level}} dict (e.g. {{'condition': 'stim'}}), "
                            f"got {type(where).__name__} {str(where)[:60]!r}")
        if where and label_key in where:
            raise DataError(f"'{label_key}' is the cell-type column, not a covariate: ask for "
                            f"types in the request itself ({{type: n}}; --types \"TYPE=N\" on "
                            f"the command line) and give where= only covariates "
                            f"({', '.join(self.keys) or 'this model has none'})")
        if not isinstance(request, dict | pd.DataFrame):
            shown = " ".join(repr(request).split())  # one line, however it prints
            raise DataError(
                "a request is a {type: n} dict (e.g. {'B cells': 500}) or a table with the "
                f"columns {label_key!r}, any covariates and 'n'; got {type(request).__name__} "
                f"{shown[:60]}{'...' if len(shown) > 60 else ''}")
        if isinstance(request, dict) and not self and not where:
            return [(t, (), n) for t, n in request_pairs(request, labels)], []
        rows = _request_rows(request, where, label_key)
        plan: list[tuple[str, tuple[int, ...], int]] = []
        # built once a request, not once a row: a twin of an atlas asks for thousands of rows
        lookups = {key: LevelLookup(self.levels[key]) for key in self.keys}
        every = [(list(c), k) for rows in self.composition.values() for c, k in rows]
        asked: set[tuple] = set()  # each combination once, however its names were written
        for label, given, n in rows:
            label = known_label(label, labels)
            check_count(label, n)
            fixed = self._fixed(given, lookups)
            combo = (label, *sorted(fixed.items()))
            if combo in asked:
                levels = [f"{k}={self.levels[k][c]}" for k, c in
                          zip(self.keys, (fixed.get(j, -1) for j in range(len(self.keys))),
                              strict=True) if c >= 0]  # fmt: skip
                raise DataError(f"the request asks twice for {', '.join([label, *levels])} (names "
                                "that read alike: surrounding spaces, Unicode form, a number "
                                "written two ways); give each "
                                "combination once, with its total n")
            asked.add(combo)
            for codes, k in self._spread(label, fixed, whole_count(n), every):
                plan.append((label, codes, k))
        return plan, self._unseen(plan, label_key)

    def _checked_plan(self, plan: list[tuple[Any, Any, Any]], labels: list[str],
                      label_key: str) -> tuple[list[tuple[str, tuple[int, ...], int]],
                                               list[dict[str, str]]]:  # fmt: skip
        """A plan ``[(type, level codes, n), ...]`` given as it is (what :meth:`plan` returns,
        and ``generate`` streams): each type known, each count a whole number >= 1, each
        codes tuple one code in range per covariate (a level's name is not a code)."""
        out = []
        sizes = self.n_levels
        for label, codes, n in plan:
            label = known_label(label, labels)
            check_count(label, n)
            if not isinstance(codes, tuple) or len(codes) != len(self.keys) or not all(
                    is_whole(c) and 0 <= c < m
                    for c, m in zip(codes, sizes, strict=False)):  # fmt: skip
                raise DataError(
                    f"a plan's level codes for {label!r} are {codes!r}: one code per covariate "
                    f"({', '.join(self.keys) or 'none: the model has no covariates'}), each in "
                    "range; ask by name instead: sample({type: n}, where={covariate: level}) "
                    "or a request table")
            out.append((label, tuple(int(c) for c in codes), int(n)))
        return out, self._unseen(out, label_key, warn=False)  # warned when it was made

    def _unseen(self, plan: list[tuple[str, tuple[int, ...], int]], label_key: str,
                warn: bool = True) -> list[dict[str, str]]:  # fmt: skip
        """The combinations in ``plan`` that no training cell had (a WARNING when any and
        ``warn``)."""
        if not self.keys:
            return []
        had = {(label, tuple(c)) for label, rows in self.composition.items() for c, _ in rows}
        unseen, listed_ = [], set()  # in the plan's order, each once
        for label, codes, _ in plan:
            if (label, tuple(codes)) not in had and (label, tuple(codes)) not in listed_:
                listed_.add((label, tuple(codes)))
                unseen.append({label_key: label, **{k: self.levels[k][c] for k, c in
                                                    zip(self.keys, codes, strict=True)}})
        if unseen and warn:
            # allowed, but the cells are the model's extrapolation: said even under --quiet
            logger.warning("generating %d combination(s) no training cell had (the model's "
                           "answer for them, not learnt from their cells): %s", len(unseen),
                           listed([", ".join(f"{k}={v}" for k, v in u.items()) for u in unseen],
                                  sep="; "))
        return unseen

    def seen(self, label: str, codes: tuple[int, ...]) -> bool:
        """Whether training cells of type ``label`` had the covariate level codes ``codes``."""
        return any(tuple(c) == codes for c, _ in self.composition.get(label, []))

    def new_level(self, label: str, codes: tuple[int, ...]) -> bool:
        """Whether a level in ``codes`` is one no training cell of type ``label`` had (a new
        condition for the type, not only a new combination of its levels)."""
        had = [c for c, _ in self.composition.get(label, [])]
        return any(all(c[i] != code for c in had) for i, code in enumerate(codes))

    def obs(self, plan: list[tuple[str, tuple[int, ...], int]], label_key: str) -> pd.DataFrame:
        """``obs`` of the cells a plan generates: the type and each covariate, categorical."""
        sizes = [n for _, _, n in plan]
        obs = {label_key: pd.Categorical(np.repeat([t for t, _, _ in plan], sizes).astype(str))}
        for i, key in enumerate(self.keys):
            codes = np.repeat([c[i] for _, c, _ in plan], sizes).astype(np.int64)
            obs[key] = pd.Categorical.from_codes(codes, categories=self.levels[key])
        return pd.DataFrame(obs)

    def _fixed(self, given: dict[str, Any],
               lookups: dict[str, LevelLookup]) -> dict[int, int]:  # fmt: skip
        """Covariate position -> code of the levels a request fixes, checked (``lookups``:
        each covariate's :class:`LevelLookup`, made once a request by :meth:`plan`)."""
        fixed, named = {}, {}
        for asked, level in given.items():
            key = model_key(asked, self.keys)  # "état" in another Unicode form
            if key not in self.keys:
                have = (f"it conditions on {listed(self.keys, len(self.keys))}" if self.keys
                        else "it was trained without covariates")
                near = did_you_mean(key, self.keys) if self.keys else ""
                raise DataError(f"the model has no covariate '{key}'{near} ({have}): leave it out of "
                                f"the request, or refit with '{key}' as a covariate (--covariates "
                                f"{key}; covariate_keys=[...] in Python) to ask for it")
            if isinstance(level, np.ndarray) and level.ndim == 0:  # np.asarray of one value
                level = level.item()
            if isinstance(level, list | tuple | set | np.ndarray | pd.Series):
                if len(level) == 1:
                    one = next(iter(level))
                    one = one.item() if isinstance(one, np.generic) else one
                    raise DataError(f"where= takes one level per covariate, itself: '{key}' was "
                                    f"given a {type(level).__name__} of it; give "
                                    f"where={{{key!r}: {one!r}}}")
                raise DataError(f"where= takes one level per covariate; '{key}' was given "
                                f"{len(level)}: ask for several levels with a request table (one "
                                "row per type and level, with its n) or one call per level")
            code = lookups[key].code(level)
            if code < 0 and str(level).strip() == ANY_LEVEL:
                raise DataError(f"'{ANY_LEVEL}' (any level) is for a request table's cells; in "
                                f"where= (--where) leave '{key}' out instead: its levels then "
                                "follow each type's training composition")
            if code < 0:
                raise DataError(f"'{level}' is not a level of covariate '{key}' seen in training"
                                f"{did_you_mean(level, self.levels[key])}; seen: "
                                f"{listed(self.levels[key], 30)}")
            if key in named:  # "état" composed and decomposed: one would be dropped
                raise DataError(f"the request names the covariate '{key}' twice ({named[key]!r} "
                                f"and {asked!r}, written two ways); give it once")
            named[key] = asked
            fixed[self.keys.index(key)] = code
        return fixed

    def _spread(self, label: str, fixed: dict[int, int], n: int,
                every: list[tuple[list[int], int]]) -> list[tuple[tuple[int, ...], int]]:
        """``n`` cells over combinations: the fixed levels, the rest as in the type's training
        cells with the fixed levels; where the type has none (a level it never had), as in the
        training cells of every type with them (``every``: each type's combinations, as
        :meth:`plan` gathers them once; stim asked of a type seen only in ctrl gets the donors
        that were stimulated, not its ctrl donors); else as in the type's cells."""
        if not self.keys:
            return [((), n)]
        if len(fixed) == len(self.keys):  # every level given: that one combination, whatever
            # the compositions hold (a twin's rows each name theirs: scanning every type's
            # combinations for each row was rows x combinations)
            return [(tuple(fixed[i] for i in range(len(self.keys))), n)] if n > 0 else []

        def matching(comp: list[tuple[list[int], int]]) -> list[tuple[list[int], int]]:
            return [(c, k) for c, k in comp if all(c[i] == v for i, v in fixed.items())]

        comp = [(list(c), k) for c, k in self.composition.get(label, [])]
        weights: dict[tuple[int, ...], int] = {}
        for c, k in matching(comp) or matching(every) or comp:
            key = tuple(fixed.get(i, v) for i, v in enumerate(c))
            weights[key] = weights.get(key, 0) + k
        if not weights:  # a type without training cells cannot be asked for, but be safe
            weights = {tuple(fixed.get(i, 0) for i in range(len(self.keys))): 1}
        combos = sorted(weights)
        share = np.array([weights[c] for c in combos], dtype=np.float64)
        exact = n * share / share.sum()
        counts = np.floor(exact).astype(int)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[: n - counts.sum()]] += 1  # largest remainders
        return [(c, int(k)) for c, k in zip(combos, counts, strict=True) if k > 0]


def training_levels(obs: pd.DataFrame, keys: list[str], label_key: str, train: np.ndarray,
                    used: np.ndarray) -> dict[str, list[str]]:  # fmt: skip
    """Each covariate's levels in the training cells ``train`` (positions in ``obs``), sorted,
    and every refusal of :meth:`Design.fit` (a missing value among the cells training reads,
    ``used``; a number of many values; too many levels for the cells; levels that differ by
    spaces; a level ``*``, a request's any level) without its warnings: a run checks this once its cells are split, before the
    classifier trains."""
    check_columns(obs, keys, label_key)
    levels = {}
    for key in keys:
        col = obs[key]
        no_missing(col, used, key)
        values = col.iloc[train]
        not_a_number(values, key)
        levels[key] = sorted({str(v) for v in level_text(values)})
        if len(levels[key]) > 1 and len(values) < MIN_CELLS_PER_LEVEL * len(levels[key]):
            numbers = pd.to_numeric(pd.Series(levels[key]), errors="coerce").notna().all()
            fix = (f"bin it first, e.g. adata.obs['{key}_bin'] = pd.cut(pd.to_numeric("
                   f"adata.obs['{key}']), 5).astype(str), and condition on '{key}_bin'"
                   if numbers else "condition on a column with a few levels (donor, "
                   "condition, batch)")  # fmt: skip
            raise DataError(
                f"covariate '{key}' has {len(levels[key])} levels in {len(values)} training "
                f"cells ({len(values) / len(levels[key]):.1f} a level): too many to learn "
                f"each level's effect (at least {MIN_CELLS_PER_LEVEL} cells a level on "
                f"average; an identifier of cells or a number?); {fix}")
        check_spaced_names(levels[key], key, "covariate levels")
        star = [lv for lv in levels[key] if lv.strip() == ANY_LEVEL]
        if star:  # a request's "*" is any level: this one could never be asked for by name
            raise DataError(f"covariate '{key}' has the level {star[0]!r}, which a request reads "
                            f"as any level (the type's training composition over '{key}'), so "
                            "it could never be asked for: rename it, e.g. adata.obs["
                            f"'{key}'] = adata.obs['{key}'].astype(str).str.strip().replace("
                            "'*', 'other')")
    return levels


def _warn_uninformative(key: str, values: pd.Series, labels: np.ndarray) -> None:
    """A WARNING for a covariate its training cells cannot teach: one level only, levels that
    are the cell types again (each type one level, each level one type), or levels of fewer
    than ``MIN_CELLS_PER_LEVEL`` cells (their effect is a guess). Allowed: the fit runs."""
    levels = pd.Series(np.asarray(values, dtype=object))
    counts = levels.value_counts()
    if len(counts) == 1:
        logger.warning("covariate '%s' has one level in the training cells (%s): it tells the "
                       "model nothing; leave it out", key, counts.index[0])
        return
    pairs = pd.DataFrame({"level": levels.to_numpy(), "type": labels}).drop_duplicates()
    if pairs["level"].is_unique and pairs["type"].is_unique:
        logger.warning("covariate '%s' is the cell type again (each type has one level, each "
                       "level one type): its effect cannot be told from the type's; leave it out",
                       key)  # fmt: skip
    few = counts[counts < MIN_CELLS_PER_LEVEL]
    if len(few):
        logger.warning("covariate '%s': %d level(s) with fewer than %d training cells (%s): "
                       "their effect is learnt from those cells alone", key, len(few),
                       MIN_CELLS_PER_LEVEL, listed([f"{k} ({v})" for k, v in few.items()]))


def _request_rows(request: dict[str, int] | pd.DataFrame, where: dict[str, Any] | None,
                  label_key: str) -> list[tuple[str, dict[str, Any], Any]]:  # fmt: skip
    """``(type, {covariate: level}, n)`` rows of a dict request with ``where``, or of a table."""
    if isinstance(request, pd.DataFrame):
        if where:
            raise DataError("a request table takes its covariate levels from its columns, not "
                            f"from where=: add the column(s) {', '.join(map(repr, where))} with "
                            "the level on each row (request[name] = level) and leave out where=")
        if request.columns.has_duplicates:  # one of them read, or pandas' error
            raise DataError(f"the request table names the column "
                            f"{request.columns[request.columns.duplicated()][0]!r} twice "
                            f"({list(request.columns)}): give each column once, e.g. "
                            "request.loc[:, ~request.columns.duplicated()] keeps the first")
        missing = [c for c in (label_key, "n") if c not in request.columns]
        if missing:
            index = [c for c in missing if c in request.index.names]
            hint = (f" (its index is {index[0]!r}: request.reset_index())" if index else "")
            raise DataError(f"the request table needs the columns {label_key!r} and 'n'; "
                            f"missing {missing}; it has {list(request.columns)}{hint}")
        unnamed = [c for c in request.columns
                   if not str(c).strip() or str(c).startswith("Unnamed: ")]  # fmt: skip
        if unnamed:
            raise DataError(f"the request table has a column without a name ({unnamed[0]!r}): "
                            "the row numbers of a file written by to_csv with its index? Read "
                            "it with pd.read_csv(..., index_col=0) or drop the column")
        if request.empty:
            raise DataError("the request table has no rows; ask for cells of some types")
        covs = [c for c in request.columns if c not in (label_key, "n")]
        rows, first_row, zeros = [], {}, 0
        missing = {c: missing_labels(request[c]) for c in covs}  # NaN, "", "nan": no level
        for i, r in enumerate(request.to_dict("records")):
            n = whole_count(r["n"])
            given = {c: r[c] for c in covs if str(r[c]).strip() != ANY_LEVEL}
            shown = ", ".join([str(r[label_key]), *(f"{c}={v}" for c, v in given.items())])
            several = [c for c, v in given.items()
                       if isinstance(v, list | tuple | set | np.ndarray | pd.Series)]  # fmt: skip
            if several:
                raise DataError(f"request row {i + 1} ({r[label_key]}): one level a cell, but "
                                f"'{several[0]}' holds {given[several[0]]!r}; give one row per "
                                "level, each with its n")
            blank = [c for c in given if missing[c][i]]
            if blank:
                raise DataError(f"request row {i + 1} ({r[label_key]}): no level of "
                                f"{', '.join(map(repr, blank))} ({given[blank[0]]!r}); give "
                                f"one, or {ANY_LEVEL} for the type's training composition over "
                                "it")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise DataError(f"request row {i + 1} ({shown}): n must be a positive integer, "
                                f"got {n!r}{as_text(n, 'request')}")
            if pd.isna(r[label_key]) or not str(r[label_key]).strip():
                raise DataError(f"request row {i + 1}: no cell type in column {label_key!r}")
            if n == 0:  # a table of counts lists combinations no cell had with 0
                zeros += 1
                continue
            combo = (str(r[label_key]).strip(), *sorted((c, str(v)) for c, v in given.items()))
            if combo in first_row:  # as --types refuses a type named twice
                shown = ", ".join([combo[0], *(f"{c}={v}" for c, v in combo[1:])])
                raise DataError(f"request rows {first_row[combo] + 1} and {i + 1} both ask for "
                                f"{shown}; give each combination once, with its total n")
            first_row[combo] = i
            rows.append((str(r[label_key]), given, n))
        if zeros:
            logger.info("%d request row(s) with n = 0 left out", zeros)
        if not rows:
            raise DataError("every request row has n = 0; ask for cells of some types")
        return rows
    if not request:
        raise DataError("no cells requested; ask for cells of some types")
    return [(str(t), dict(where or {}), n) for t, n in request.items()]


def _no_levels_in_index(request: pd.DataFrame, keys: list[str]) -> None:
    """Refuse a request table whose index holds a covariate of the model (``keys``) that its
    columns do not (``set_index('condition')``, a groupby's ``reset_index(level=...)``): the
    rows are read from the columns, so its levels would be ignored."""
    held = [str(n) for n in request.index.names if n is not None and n not in request.columns
            and model_key(str(n), keys) in keys]  # fmt: skip
    if held:
        raise DataError(f"the request table's index holds the covariate {held[0]!r}, which "
                        "is read from the columns only (its levels would be ignored): make it a "
                        f"column, request.reset_index({held[0]!r}), and ask again")


#: a checked request: ``[(type, covariate level codes, cells), ...]``
Plan = list[tuple[str, tuple[int, ...], int]]


class DesignRequests:
    """``plan`` and ``plan_obs`` of a generator with a :class:`Design` (``self.design``),
    ``self.labels`` and ``self.label_key``: the one way ``cvae``, ``nb`` and ``scvi`` read a
    request."""

    design: Design
    labels: list[str]
    label_key: str

    def plan(self, request: dict[str, int] | pd.DataFrame | Plan,
             where: dict[str, Any] | None = None) -> tuple[Plan, list[dict[str, str]]]:  # fmt: skip
        """A request as ``[(type, covariate codes, n), ...]``, checked, and the combinations in
        it that no training cell had (see the generator's ``sample``)."""
        return self.design.plan(request, where, self.labels, self.label_key)

    def plan_obs(self, plan: Plan) -> pd.DataFrame:
        """``obs`` of the cells a plan generates: the type and each covariate, categorical."""
        return self.design.obs(plan, self.label_key)
