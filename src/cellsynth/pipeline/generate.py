"""``cellsynth generate``: cells of a saved generator, by type, by design, or like a data set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import keys as K
from ..data.labels import missing_labels
from ..data.levels import ANY_LEVEL, LevelLookup, level_text, loose_name, model_key
from ..errors import DataError, listed
from ..models.base import writable_uns
from ..models.registry import load_generator
from ..outputs import check_file_out, generated_h5ad, size_text
from ..paths import expand_user
from .output import check_disk, provenance, write_cells

logger = logging.getLogger(__name__)


def parse_where(text: str, levels: dict[str, list[str]] | None = None) -> dict[str, str]:
    """``"condition=stim,donor=D7"`` -> ``{"condition": "stim", "donor": "D7"}``. With the
    model's ``levels`` (covariate -> its trained levels), a level holding ``,`` (or ``=``) is
    read whole where it is one of them (``"condition=IFN-b, 10 ng"``), as ``--types`` reads a
    type holding a comma, and so is a covariate's name holding ``,`` (``"dose, ng=10"``); a
    level with a comma the model never saw goes in a request file."""
    items: list[str] = []
    for piece in text.split(","):
        if items and levels and _continues(items[-1], piece, levels):
            items[-1] += "," + piece  # the comma was inside the previous item's level
        else:
            items.append(piece)
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in items)):
        key, sep, level = item.partition("=")
        if not sep or not key.strip() or not level.strip():
            raise DataError(f"--where expects COVARIATE=LEVEL[,COVARIATE=LEVEL...], got {item!r}; "
                            "a covariate or level holding ',' is read whole when written as the "
                            "model has it (`cellsynth info MODEL_DIR` lists them), or give it in "
                            "a --request file")
        if key.strip() in out:
            raise DataError(f"--where names {key.strip()!r} twice; give each covariate once")
        out[key.strip()] = level.strip()
    if not out:
        raise DataError("--where is empty; give COVARIATE=LEVEL[,COVARIATE=LEVEL...] or leave "
                        "it out")
    return out


def _continues(item: str, piece: str, levels: dict[str, list[str]]) -> bool:
    """Whether ``piece``, the text after a comma, goes on the level of ``item`` (``KEY=LEVEL``
    so far): ``item``'s covariate has a level that starts with both, joined by that comma; or
    on the covariate's name of ``item`` (no ``=`` yet): a covariate's name starts with both,
    up to ``piece``'s ``=`` (``"dose, ng=10"`` names the covariate ``"dose, ng"``)."""
    key, sep, level = item.partition("=")
    if not sep:
        start = loose_name(f"{item},{piece.partition('=')[0]}")
        return any(loose_name(name).startswith(start) for name in levels)
    if key.strip() not in levels:
        return False
    start = loose_name(f"{level},{piece}")
    return any(loose_name(known).startswith(start) for known in levels[key.strip()])


def read_request(path: str | Path, label_key: str) -> pd.DataFrame:
    """A request table (TSV, or CSV by its suffix): the label column, any covariate columns
    and ``n``, one row per combination, indexed by each row's line in the file; a malformed
    row is named by its line. Lines that start with ``#`` are comments."""
    path = expand_user(path, "--request")
    if not path.exists() or path.is_dir():  # a pipe (--request <(...)) is read as a file is
        raise DataError(f"request file {path} " + ("is a folder; give the request file in it"
                        if path.is_dir() else "does not exist"))
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    header, rows = _table_rows(path, sep)
    for col in (label_key, "n"):
        if col not in header:
            fields = ("comma-separated: its name ends in .csv" if sep == "," else
                      "tab-separated, as its name does not end in .csv")
            raise DataError(f"request file {path} needs the columns '{label_key}' and 'n' "
                            f"({fields}; a header line first); it has {header}")
    # indexed by line, under a name no covariate has ("line" may be one: a cell line)
    table = pd.DataFrame([fields for _, fields in rows], columns=header, dtype=str,
                         index=pd.Index([line for line, _ in rows], name="request file line"))
    counts = []
    for (line, _), n, label in zip(rows, table["n"], table[label_key], strict=True):
        try:
            counts.append(parse_count(n))
        except ValueError:
            raise DataError(f"request file {path}, line {line}: n must be a whole number, "
                            f"got {n!r}") from None
        if counts[-1] < 0:
            raise DataError(f"request file {path}, line {line}: n must be 0 or more (a row of "
                            f"0 is left out), got {n!r}")
        if not str(label).strip():
            raise DataError(f"request file {path}, line {line}: no cell type in column "
                            f"{label_key!r}")
    covariates = [c for c in header if c not in (label_key, "n")]
    empty = np.zeros((len(rows), len(covariates)), dtype=bool)  # blank cells, each column once
    for j, c in enumerate(covariates):
        empty[:, j] = table[c].str.strip().eq("").to_numpy()
    for (line, _), flags in zip(rows, empty, strict=True):
        blank = [c for c, flag in zip(covariates, flags, strict=True) if flag]
        if blank:
            raise DataError(f"request file {path}, line {line}: no level in column(s) "
                            f"{', '.join(map(repr, blank))}; give one, or {ANY_LEVEL} for the "
                            "type's training composition over it")
    table["n"] = counts
    first_line: dict[tuple[str, ...], int] = {}  # named by line here; a table by row
    for (line, _), combo in zip(rows, table.drop(columns="n").itertuples(index=False),
                                strict=True):  # fmt: skip
        if combo in first_line:
            raise DataError(f"request file {path}, lines {first_line[combo]} and {line}: the "
                            "same combination twice; give each combination once, with its "
                            "total n")
        first_line[combo] = line
    return table


def parse_count(text: str) -> int:
    """A count as a request file or ``--types`` writes it: ``"5"``, and ``"5.0"`` as a table
    saved from a float column writes it; a ``ValueError`` for anything that is not whole."""
    try:
        return int(text)  # exact, however large: a float would echo 10**23 as 99,999...611,392
    except (TypeError, ValueError):
        pass
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(text) from None
    if not value.is_integer():  # 5.5, inf, nan
        raise ValueError(text)
    return int(value)


def _starts_hdf5(path: Path) -> bool:
    """Whether the file at ``path`` is an HDF5 file (an h5ad), read from its first bytes."""
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _table_rows(path: Path, sep: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A request file's header and its non-blank rows (a blank row: empty, spaces or separators
    alone) with their line numbers, each row with as many fields as the header (a row with one
    more is not read as holding an index); lines whose first field starts with ``#`` are
    comments, before the header too."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM (Excel's) is not a name
            lines = list(csv.reader(f, delimiter=sep))
    except UnicodeDecodeError:
        if _starts_hdf5(path):  # an h5ad of cells, not a table
            raise DataError(f"request file {path} is an HDF5 file (an h5ad of cells?), not a "
                            "request table: for as many cells of every type (and covariate "
                            f"levels) as it has, give it as --like {path}") from None
        raise DataError(f"request file {path} is not UTF-8 text (UTF-16, as some spreadsheets "
                        "save it?): save it as UTF-8 (CSV UTF-8, or tab-separated text)") from None
    except csv.Error as exc:
        raise DataError(f"request file {path} cannot be read as a table: {exc}") from None
    # a line of spaces or of separators alone (a spreadsheet's empty row: "\t\t", ",,") is
    # blank, as an empty one is
    numbered = [(i, fields) for i, fields in enumerate(lines, start=1)
                if any(f.strip() for f in fields) and not fields[0].lstrip().startswith("#")]  # fmt: skip
    if not numbered:
        raise DataError(f"request file {path} is empty; it needs a header line and one row per "
                        "combination")
    header = [name.strip() for name in numbered[0][1]]  # "n " is the column n
    unnamed = [j + 1 for j, name in enumerate(header) if not name]
    if unnamed:
        raise DataError(f"request file {path}: column {unnamed[0]} of the header (line "
                        f"{numbered[0][0]}) has no name ({', '.join(header)}); the row numbers "
                        "pandas writes unless to_csv(..., index=False), or a separator at the end "
                        "of the header? Name the column or remove it")
    if len(set(header)) != len(header):
        raise DataError(f"request file {path}: the header names a column twice ({', '.join(header)})")
    rows = numbered[1:]
    for i, fields in rows:
        if len(fields) != len(header):
            what = "tab" if sep == "\t" else "comma"
            raise DataError(f"request file {path}, line {i}: {len(fields)} fields where the "
                            f"header has {len(header)} ({', '.join(header)}); fields are "
                            f"{what}-separated")
    return header, rows


def _warn_few_genes(h5: Any, path: str | Path, genes: list[str]) -> None:
    """A warning when the genes of the counts of ``h5`` (the open ``--like`` file; raw.X's
    under a normalised X, as ``cellsynth evaluate`` reads them) hold fewer than half the model's
    ``genes``, naming the var column that names them as the model does, where one does."""
    from ..data.genes import counts_naming_hint
    from ..data.io import find_counts

    try:
        where = find_counts(h5).counts
    except DataError:  # values evaluate refuses, said there: --like reads only obs
        where = None
    names = h5.raw.var_names if where == "raw.X" else h5.var_names
    theirs = set(map(str, names))
    shared = sum(g in theirs for g in genes)
    if shared < 0.5 * len(genes):
        logger.warning("%s shares %d of the model's %d genes: the generated twin has the "
                       "model's genes, so it cannot be compared with %s gene for gene%s",
                       path, shared, len(genes), path,
                       counts_naming_hint(h5, where, names, genes, "--like", "model"))


def like_request(path: str | Path, label_key: str, keys: list[str],
                 genes: list[str] | None = None) -> pd.DataFrame:  # fmt: skip
    """As many cells of every (type x covariate levels) combination as the h5ad ``path`` has,
    read from its ``obs`` alone. With the model's ``genes``, a warning when ``path`` shares
    few of them: the twin has the model's genes, and comparing it with ``path`` needs both."""
    from ..data.store import H5adFile

    _not_a_request_table(path, label_key)
    with H5adFile(path) as h5:
        obs = h5.obs
        if genes and len(obs):
            _warn_few_genes(h5, path, genes)
    if not len(obs):
        raise DataError(f"{path} has no cells: --like asks for as many cells of every type (and "
                        "covariate levels) as it has; give a file with cells, or the counts as "
                        "--types or a --request table")
    cols = [label_key, *keys]
    if label_key == "n" and keys:  # a model saved before its fit refused this
        raise DataError("the model's label column is called 'n', the count column of the table "
                        "--like makes: refit it with the label column renamed (e.g. "
                        "adata.obs.rename(columns={'n': 'cell_type'})), or ask with --types")
    if label_key not in obs.columns:
        raise DataError(f"{path} has no obs column '{label_key}', the cell types the model "
                        f"was fitted on; its columns are {list(obs.columns)}: rename its label "
                        f"column to '{label_key}'")
    missing = [c for c in keys if c not in obs.columns]
    if missing:
        raise DataError(f"{path} has no obs column(s) {missing} that the model conditions on; "
                        f"its columns are {list(obs.columns)}: add the level its cells have "
                        f"(adata.obs['{missing[0]}'] = 'LEVEL'), or write the composition as a "
                        f"--request table with {ANY_LEVEL} in that column for the types' training "
                        "composition over it")
    # a cell without a label (missing, or written as text: "", "nan") or a covariate level is
    # left out, as a fit leaves it out, and said
    lost = missing_labels(obs[label_key])
    for key in keys:  # "", "nan" and NaN alike, as for the label
        lost = lost | missing_labels(obs[key])
    if lost.any():
        logger.warning("%d of the %d cells of %s have no %s or no level of a covariate: the "
                       "twin leaves them out", int(lost.sum()), len(obs), path, label_key)
    obs = obs.loc[~lost, cols]
    # a covariate's levels named as the model names them (a float column's 1.0 is "1")
    obs = pd.DataFrame({c: obs[c].astype(str) if c == label_key else level_text(obs[c])
                        for c in cols})
    table = obs.groupby(cols, sort=False).size().reset_index(name="n")
    return table[table["n"] > 0]


def _not_a_request_table(path: str | Path, label_key: str) -> None:
    """Refuse a request table given as ``--like``: a text file whose first line names the
    label column and ``n`` (it would be called a text file to convert to an h5ad)."""
    path = Path(path).expanduser()
    if not path.is_file() or _starts_hdf5(path):
        return
    try:
        with path.open(encoding="utf-8-sig") as f:
            first = f.readline(10_000)
    except (OSError, UnicodeDecodeError):
        return
    names = {name.strip().strip('"') for name in first.replace(",", "\t").split("\t")}
    if {label_key, "n"} <= names:
        raise DataError(f"{path} is a request table (its header names '{label_key}' and 'n'), "
                        f"not an h5ad of cells: give it as --request {path}")


def generate_to_file(model_dir: str | Path, out: str | Path, *, seed: int = 0, **ask: Any) -> int:
    """Generate from the model in ``model_dir`` into the h5ad ``out``: ``ask`` is one of
    ``n_per_type`` (of every type), ``types`` (``{type: n}``), ``request`` (a table file) or
    ``like`` (an h5ad whose composition to copy), with ``where`` covariate levels
    (``"condition=stim"``) for the first two.

    A CVAE's and an nb model's cells stream to the file one chunk at a time (memory independent of the request's
    size; on a GPU the next chunk is drawn while one is written), after the output's size is estimated and checked against the free disk space; a
    file is written under a temporary name and renamed when complete. Returns the cells.
    """

    from ..data.store import write_h5ad

    out = expand_user(out, "--out")  # checked and written alike: '~/x.h5ad' is never ./~/x.h5ad
    check_output(out, model_dir, ask.get("like"), ask.get("request"))
    gen = load_generator(model_dir)
    req, kwargs = _request(gen, ask.get("n_per_type"), ask.get("types"), ask.get("where"),
                           ask.get("request"), ask.get("like"))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    made_by = model_identity(model_dir)
    if not hasattr(gen, "sample_chunks"):
        syn = gen.sample(req, seed=seed, **kwargs)
        syn.uns[K.UNS] = writable_uns({**syn.uns[K.UNS], **made_by})  # combinations as tables
        _replacing(out)
        write_h5ad(syn, out)
        return syn.n_obs
    plan, unseen = gen.plan(req, kwargs.get("where"))
    n = sum(k for _, _, k in plan)
    chunks = (x for _, x in gen.sample_chunks(plan, seed=seed))
    need, chunks = check_disk(gen, plan, out.parent, chunks)
    _replacing(out)  # once the disk can hold the cells: a refused request leaves it as it was
    logger.info("generating %s cells (at most about %s) into %s, one chunk at a time",
                f"{n:,}", size_text(need), out)  # fmt: skip
    write_cells(out, chunks, gen.plan_obs(plan), gen.genes,
                {**provenance(gen, seed, unseen, plan), **made_by},
                annotation=getattr(gen, "gene_annotation", None), overlap=getattr(gen, "device", None) is not None and gen.device.type == "cuda")
    return n


def model_identity(model_dir: str | Path) -> dict[str, str]:
    """Which model made the cells, for their ``uns['cellsynth']``: its folder and the sha256 of
    its ``checksums.json`` (so of every file it saved: two models never share it; "" for a
    save without checksums)."""
    import hashlib

    folder = Path(model_dir).expanduser().resolve()
    try:
        digest = hashlib.sha256((folder / "checksums.json").read_bytes()).hexdigest()
    except OSError:
        digest = ""
    return {"model_path": str(folder), "model_sha256": digest}


def _replacing(out: Path) -> None:
    """Say that ``out``, cells written earlier, is replaced: once the request is known good."""
    if out.exists():
        logger.info("replacing %s, an h5ad of cells written earlier", out)


def check_output(out: str | Path, model_dir: str | Path, *inputs: str | Path | None) -> None:
    """Refuse an output that would replace what generation reads: the model's own files, or an
    input (``--like``, ``--request``); that is a directory; or that is an existing file other
    than cells cellsynth generated or simulated (``outputs.check_file_out``). Before anything
    is loaded."""
    path = expand_user(out, "--out").resolve()
    model = expand_user(model_dir, "the model directory").resolve()
    inside = path == model or model in path.parents
    if path.is_dir() and not inside:
        from ..models.base import is_model_dir

        # never into a saved model's folder: a later fit or save there refuses its extra files
        like = (path.parent / f"{path.name}_synthetic.h5ad" if is_model_dir(path)
                else Path(out) / "synthetic.h5ad")
        raise DataError(f"--out {out} is a directory; give the .h5ad file to write, e.g. "
                        f"{like}")
    if inside:
        raise DataError(f"--out {out} is inside the model directory {model_dir}: it would "
                        "replace or mix with the model's files; write the cells elsewhere")
    for given in inputs:
        if given is not None and Path(given).expanduser().resolve() == path:
            raise DataError(f"--out {out} is the input file {given}: writing would replace it; "
                            "give another output path")
    check_file_out(path, "an h5ad of cells", generated_h5ad, say=False)  # said when written


def _known_rows(ask: pd.DataFrame, known: dict[str, list[str]], label_key: str,
                like: str | Path) -> pd.DataFrame:  # fmt: skip
    """A ``--like`` table without the rows whose type or covariate level the model does not
    know (read as a request reads them: spaces, Unicode form, 1 and "1.0"), said in a WARNING
    per column with the cells left out; an error when no row is left. Each value is named as
    the model names it, and rows naming one combination are summed."""
    unknown = np.zeros(len(ask), dtype=bool)
    named = {}  # each value as the model names it: "B " and "B", 1 and "1.0" are one
    for key, levels in known.items():
        values = ask[key].to_numpy(dtype=object)
        codes = LevelLookup(levels).codes(values)
        bad = codes < 0
        named[key] = np.asarray(levels, dtype=object)[np.maximum(codes, 0)]
        if not bad.any():
            continue
        gone = pd.Series(ask["n"].to_numpy()[bad], index=values[bad].astype(str))
        gone = gone.groupby(level=0).sum()
        what, why = f"level(s) of '{key}' the model never saw", ""
        if key == label_key:  # the types QC removed before training, say: a twin of the atlas
            what = "cell type(s) the model does not know"
            why = "; removed by QC before training, or not in its training data"
        logger.warning("%s has %d %s, left out of the twin (%d cells%s): %s; the model's: %s",
                       like, len(gone), what, int(gone.sum()), why,
                       listed([f"{t} ({n})" for t, n in gone.items()], 10), listed(levels, 10))
        unknown |= bad
    if unknown.all():
        raise DataError(f"{like} has no cells of the types and covariate levels the model knows "
                        f"(its {', '.join(known)} against the model's; the model's types: "
                        f"{listed(known[label_key], 20)}): is it data of the same design, with the "
                        "label column the model was fitted on?")
    # rows that name one combination alike are one row: the file's cells, not a table a user
    # wrote twice (which a request refuses)
    ask = pd.DataFrame({**{k: v[~unknown] for k, v in named.items()},
                        "n": ask["n"].to_numpy()[~unknown]})
    return ask.groupby(list(known), sort=False).sum().reset_index()


def _name_bad_line(gen: Any, table: pd.DataFrame, path: str | Path) -> None:
    """Refuse a request file's first row whose type, or a covariate level, the model does not
    know, and two rows that name one combination as the model reads names (surrounding spaces,
    Unicode form, a number written two ways), naming their lines: the model's plan names the
    values alone, and a twin's table has thousands of rows. An unknown value gets the plan's
    message for its row."""
    label_key = getattr(gen, "label_key", "cell_type")
    known = {label_key: gen.labels, **{k: v for k, v in gen.design.levels.items()
                                       if k in table.columns}}  # fmt: skip
    codes = np.empty((len(table), len(known)), dtype=np.int64)
    for j, (key, levels) in enumerate(known.items()):
        values = table[key].str.strip()
        codes[:, j] = LevelLookup(levels).codes(values.to_numpy(dtype=object))
        if key != label_key:
            codes[(values == ANY_LEVEL).to_numpy(), j] = len(levels)  # any: a code of its own
    bad = (codes < 0).any(axis=1) & (table["n"] > 0).to_numpy()  # a row of 0 is left out
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        try:
            gen.plan(table.iloc[[row]])
        except DataError as err:
            raise DataError(f"request file {path}, line {table.index[row]}: {err}") from None
    first: dict[tuple[int, ...], Any] = {}
    for line, combo, n in zip(table.index, map(tuple, codes), table["n"], strict=True):
        if n > 0 and combo in first:
            raise DataError(f"request file {path}, lines {first[combo]} and {line} ask for one "
                            "combination, written two ways (surrounding spaces, Unicode form, "
                            "a number written two ways); give each combination once, with its "
                            "total n")
        first.setdefault(combo, line)


def _request(gen: Any, n_per_type: int | None, types: dict[str, int] | None, where: str | None,
             request: str | Path | None, like: str | Path | None) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The request (``{type: n}`` or a table) and ``sample``'s keyword arguments."""
    given = [x is not None for x in (n_per_type, types, request, like)]
    if sum(given) != 1:
        raise DataError("give exactly one of --n-per-type, --types, --request or --like")
    design = getattr(gen, "design", None)
    if where is not None and design is None:
        raise DataError(f"the {gen.name} generator does not condition on covariates; --where "
                        "needs a cvae, nb or scvi fitted with --covariates")
    if request is not None and design is None:  # a type-only cvae or nb reads one: not this
        raise DataError(f"the {gen.name} generator does not condition on covariates and takes "
                        "no --request table: give the cells per type with --types "
                        "'TYPE=N,...' (or --n-per-type, --like)")
    if where is not None and (request is not None or like is not None):
        keys = ", ".join(repr(k) for k in parse_where(where, design.levels))
        raise DataError(f"--request {request} takes the covariate levels from its columns: add "
                        f"the column(s) {keys} to {request} with the level on each row, or drop "
                        "--where" if request is not None else
                        "--like takes the covariate levels from its cells: drop --where (or "
                        "give --like only the cells of the levels wanted)")
    label_key = getattr(gen, "label_key", "cell_type")
    if like is not None:
        ask: Any = like_request(like, label_key, list(design.keys) if design else [],
                                getattr(gen, "genes", None))
        ask = _known_rows(ask, {label_key: gen.labels, **(design.levels if design else {})},
                          label_key, like)
        if not design:
            ask = dict(zip(ask[label_key], ask["n"].astype(int), strict=True))
    elif request is not None:
        ask = read_request(request, label_key)
        # a header naming a covariate as the model does but for its Unicode form: read as the
        # model's, so its rows are checked and named by their lines too
        ask = ask.rename(columns={c: model_key(c, design.keys) for c in ask.columns})
        _name_bad_line(gen, ask, request)
    else:
        if n_per_type is not None and (isinstance(n_per_type, bool) or n_per_type < 1):
            raise DataError(f"--n-per-type must be at least 1, got {n_per_type!r}")
        ask = dict.fromkeys(gen.labels, n_per_type) if n_per_type is not None else types
    kwargs: dict[str, Any] = {}
    if design is not None:
        kwargs.update(where=parse_where(where, design.levels) if where is not None else None)
    return ask, kwargs
