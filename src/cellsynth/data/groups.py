"""Fine-to-coarse cell-type mappings: a TSV/JSON file, or one shipped with the package.

:func:`load_groups` reads a mapping and refuses a malformed one (not UTF-8, empty, a blank
name, a type given two groups, a group named as a type of another group); :func:`check_groups`
holds it against the data's cell types (refuses one that names none of them or has its columns
swapped; warns for unused entries, with near misses, and for a single group);
:func:`merges_types` says whether the coarse level differs from the fine one (the report's and
``results.md``'s one rule).
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import numbers
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from ..config import AUTO_GROUPS, PACKAGED_GROUPS, groups_is_file
from ..errors import DataError, listed
from ..paths import expand_user

logger = logging.getLogger(__name__)

#: mappings shipped as package data; ``dataset.groups`` value grouping types by features
PACKAGED, AUTO = PACKAGED_GROUPS, AUTO_GROUPS

#: header lines recognised (lower-cased): fine first, or coarse first (columns swapped)
_HEADERS = {("fine", "coarse"): False, ("fine_label", "group"): False,
            ("coarse", "fine"): True, ("group", "fine_label"): True}

_FORMAT = ("one fine type<TAB>coarse group per line (a header line 'fine<TAB>coarse' allowed) "
           "or a JSON object {\"fine type\": \"coarse group\"}")


def groups_file(spec: str) -> Path | None:
    """The file ``spec`` names (None for ``""``, ``"auto"`` or a packaged name)."""
    if not groups_is_file(spec):
        return None
    return expand_user(spec, "dataset.groups")


def load_groups(spec: str) -> dict[str, str]:
    """Load a fine -> coarse mapping.

    Parameters
    ----------
    spec
        ``""`` for none, a packaged name (``"e-annd-5"``), or the path of a TSV (two columns,
        fine then coarse; a header line ``fine<TAB>coarse``, or ``coarse<TAB>fine`` for the
        other order) or JSON (``{"fine": "coarse"}``) file, UTF-8 (a byte-order mark allowed).

    Raises
    ------
    DataError
        A missing file, one that is not UTF-8 or not valid JSON, an empty one, a blank type or
        group name, or a type given two different groups.
    """
    if not spec:
        return {}
    if spec in PACKAGED:
        raw = resources.files("cellsynth.data").joinpath(f"groups/{spec}.tsv").read_bytes()
        return _parse_tsv(raw.decode("utf-8-sig"), spec)
    path = groups_file(spec)
    if path is None or not path.is_file():
        raise DataError(
            f"cell-type groups '{spec}' is neither a packaged mapping ({', '.join(PACKAGED)}), "
            f"\"{AUTO}\" nor an existing TSV/JSON file (looked for {Path(spec).expanduser().absolute()}); "
            "fix dataset.groups")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1].hex()
        raise DataError(f"{path} is not UTF-8 text (byte 0x{bad} at offset {exc.start}: "
                        f"{exc.reason}); save it as UTF-8") from None
    if path.suffix.lower() == ".json":
        return _parse_json(text, path)
    return _parse_tsv(text, str(path))


def _parse_json(text: str, path: Path) -> dict[str, str]:
    pairs: list[tuple[str, str]] = []

    def keep(items: list[tuple[str, object]]) -> dict:
        if not pairs:  # the outer object only (a nested one is refused below)
            pairs.extend(items)  # type: ignore[arg-type]
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=keep)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError(f"{path} must hold one JSON object mapping fine type -> coarse group "
                        "(each value one string), e.g. {\"B cells\": \"Lymphoid\"}")
    return _mapping([(f"entry {i}", k, v) for i, (k, v) in enumerate(pairs, 1)], str(path))


_WIDE_WARNED: set[tuple[str, str]] = set()


def _parse_tsv(text: str, name: str) -> dict[str, str]:
    rows = [(i, line, next(csv.reader([line], delimiter="\t")))
            for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    swapped = False
    if rows:
        head = tuple(c.strip().lower() for c in rows[0][2][:2])
        if head in _HEADERS:
            swapped = _HEADERS[head]
            rows = rows[1:]
    extra = [i for i, _, row in rows if any(c.strip() for c in row[2:])]
    if extra and (name, text) not in _WIDE_WARNED:  # fine, mid, coarse: the mid level read
        _WIDE_WARNED.add((name, text))  # once: a run reads the file before any stage and after
        logger.warning("%s: %d line(s) have more than two columns (line %d first); only the "
                       "first two are read, fine type then coarse group: if the groups are in "
                       "another column, keep two columns", name, len(extra), extra[0])
    entries = []
    for i, line, row in rows:
        if len(row) < 2:
            hint = " (a comma-separated file? separate the columns with a TAB)" if "," in line \
                else ""
            raise DataError(f"{name}: line {i} has {len(row)} column(s); expected fine<TAB>coarse"
                            f"{hint}")
        fine, coarse = (row[1], row[0]) if swapped else (row[0], row[1])
        entries.append((f"line {i}", fine, coarse))
    return _mapping(entries, name)


def _mapping(entries: list[tuple[str, str, str]], name: str) -> dict[str, str]:
    """``{fine: coarse}`` of ``(where, fine, coarse)`` entries, names stripped; refuses none, a
    blank name and a type given two groups."""
    if not entries:
        raise DataError(f"{name} holds no mapping; expected {_FORMAT} (or set dataset.groups "
                        "= \"\" for no coarse groups)")
    mapping: dict[str, str] = {}
    where_of: dict[str, str] = {}
    for where, fine, coarse in entries:
        fine, coarse = fine.strip(), coarse.strip()
        if not fine or not coarse:
            blank = "cell type" if not fine else f"coarse group of {fine!r}"
            raise DataError(f"{name}: {where} has a blank {blank}; give every entry a type and "
                            "a group name (a type left out stands as its own group)")
        if fine in mapping and mapping[fine] != coarse:
            raise DataError(f"{name}: {fine!r} is given two coarse groups, {mapping[fine]!r} "
                            f"({where_of[fine]}) and {coarse!r} ({where}); keep one")
        mapping[fine] = coarse
        where_of.setdefault(fine, where)
    check_group_names(mapping, name)
    return mapping


def check_group_names(groups: Mapping[str, str], source: str) -> None:
    """Refuse a group named as a type that the mapping puts in another group
    (``{"A": "B", "B": "C"}``): the coarse tables' row ``B`` would hold type ``A``'s cells and
    none of type ``B``'s, which are scored in ``C``; a mapping is applied once, not followed."""
    clash = [(k, v) for k, v in groups.items() if v in groups and groups[v] != v]
    if clash:
        fine, group = clash[0]
        raise DataError(
            f"{source}: the coarse group {group!r} of {fine!r} is also a cell type, which it "
            f"puts in the group {groups[group]!r}: the coarse row {group!r} would hold the "
            f"cells of {fine!r} and none of those of {group!r} (a mapping is applied once, not "
            f"followed); map {fine!r} to {groups[group]!r}, or give the group {group!r} "
            f"another name ({len(clash)} such entr{'y' if len(clash) == 1 else 'ies'})")


def _near(name: str, types: list[str]) -> str | None:
    """The data's type ``name`` was likely meant as: the same but for case and spacing, or
    close in spelling."""
    key = " ".join(name.split()).casefold()
    same = [t for t in types if " ".join(t.split()).casefold() == key]
    if same:
        return same[0]
    close = difflib.get_close_matches(name, types, n=1, cutoff=0.85)
    return close[0] if close else None


def check_groups(groups: Mapping[str, str], types: Iterable[str], source: str,
                 dropped: Iterable[str] = ()) -> dict[str, str]:
    """``groups`` held against the data's cell types ``types``; returns the entries used.

    Refuses a mapping that names none of the types (and says so when its second column holds
    them: columns swapped); warns for entries naming no type (with the types they likely
    meant), for types with no group, and for a mapping that puts every type in one group.
    Entries naming ``dropped`` types (the data's, removed by QC, which warned) are only logged.
    """
    types = sorted({str(t) for t in types})
    known = set(types)
    if not groups:
        return {}
    # a file's names are read stripped: its "B cells" is the data's "B cells " (names that
    # differ only by surrounding spaces are refused, so at most one type matches)
    spaced = {t.strip(): t for t in types if t != t.strip()}
    groups = {(spaced[k] if k not in known and k in spaced else k): v for k, v in groups.items()}
    gone = [k for k in groups if k not in known and k in {str(t) for t in dropped}]
    if gone:
        logger.info("dataset.groups (%s): %d entries name types QC dropped, not scored: %s",
                    source, len(gone), listed(gone))
        groups = {k: v for k, v in groups.items() if k not in gone}
    used = {k: v for k, v in groups.items() if k in known}
    check_group_names(used, f"dataset.groups ({source})")
    if not used:
        if known & set(groups.values()):
            raise DataError(
                f"dataset.groups ({source}): its columns look swapped: the coarse groups "
                f"({listed(sorted(set(groups.values())), quote=True)}) are the data's cell types "
                "and the fine types are not; put the fine type first (fine<TAB>coarse), or "
                "start the file with the header line coarse<TAB>fine")
        near = [f"{k!r} (the data's {n!r}?)" for k in groups if (n := _near(k, types))]
        raise DataError(
            f"dataset.groups ({source}) names none of the data's cell types"
            + (f"; near misses: {listed(near)}" if near else "")
            + f"; expected {_FORMAT}, fine types spelled as in the data. Its fine types: "
            f"{listed(sorted(groups), quote=True)}; the data's: {listed(types, quote=True)}")
    unused = [k for k in groups if k not in known]
    if unused:
        shown = [f"{k!r} (did you mean {n!r}?)" if (n := _near(k, types)) else repr(k)
                 for k in unused]
        logger.warning("dataset.groups (%s): %d of %d entries name no cell type of the data and "
                       "are not used: %s", source, len(unused), len(groups), listed(shown))
    names = set(used.values())
    unmapped = [t for t in types if t not in used and t not in names]
    if unmapped:
        logger.warning("%d cell type(s) have no coarse group and stand as their own: %s",
                       len(unmapped), listed(unmapped))
    members = {t: sorted(k for k, v in used.items() if v == t and k != t) for t in types
               if t not in used and t in names}
    joined = [f"{t!r} (with {listed(m, 4, quote=True)})" for t, m in members.items()]
    if joined:  # {"CD4 T": "T cells"} and a type "T cells": one group, as likely meant
        logger.info("dataset.groups (%s): %d type(s) left out of the mapping are the name of a "
                    "group and are scored in it: %s", source, len(joined), listed(joined))
    coarse = {used.get(t, t) for t in types}
    if len(coarse) == 1 and len(types) > 1:
        logger.warning("dataset.groups (%s) puts all %d cell types into the one group %r: every "
                       "prediction falls in the right group, so the coarse scores are 1 and say "
                       "nothing; give two or more groups", source, len(types), coarse.pop())
    return used


def uns_groups(value: object) -> dict[str, str]:
    """The data's own fine -> coarse mapping from ``uns["celltype_groups"]`` (``value``;
    ``{}`` for none). An h5ad stores a dict as an HDF5 group, where ``/`` separates levels:
    ``{"B/plasma": "Lymphoid"}`` is read back as ``{"B": {"plasma": "Lymphoid"}}``, so nested
    names are joined by ``/`` again. A value of another form (a table, a list of a group's
    types) is not used, with a warning saying the form expected (nothing asked for it)."""
    if value is None:
        return {}
    where = 'the data\'s uns["celltype_groups"]'
    fix = ("give a dict {fine type: coarse group}, each value one name, or set dataset.groups "
           "to a TSV file (fine<TAB>coarse)")
    if not isinstance(value, Mapping):
        logger.warning("%s is a %s, not a mapping of fine type to coarse group; it is not used: "
                       "%s", where, type(value).__name__, fix)
        return {}
    out: dict[str, str] = {}

    def walk(node: Mapping, prefix: str) -> bool:
        for key, item in node.items():
            name = f"{prefix}{key}"
            if isinstance(item, Mapping):
                if not walk(item, f"{name}/"):
                    return False
            elif isinstance(item, bytes):
                out[name] = item.decode("utf-8", "replace")
            elif isinstance(item, str | numbers.Number) and not isinstance(item, bool):
                out[name] = str(item)  # numpy's str_ is a str; a group numbered 3 is "3"
            else:
                logger.warning("%s maps %r to %s %r, not to the name of a coarse group; the "
                               "mapping is not used: %s", where, name, type(item).__name__,
                               item, fix)
                return False
        return True

    return out if walk(value, "") else {}


def merges_types(groups: object) -> bool:
    """Whether a fine -> coarse mapping puts two or more types into one group (else the coarse
    level repeats the fine one)."""
    if not isinstance(groups, Mapping) or not groups:
        return False
    return len(set(groups.values())) < len(groups)


def one_group_note(groups: object, types: Iterable[str]) -> str | None:
    """The sentence a results table of coarse scores needs when ``groups`` puts every one of
    ``types`` into one group (each prediction then falls in the right group: scores of 1 that
    say nothing, shown without a word in ``results.md`` and the report), else None."""
    if not isinstance(groups, Mapping) or not merges_types(groups):
        return None
    coarse = {str(groups.get(t, t)) for t in types}
    if len(coarse) != 1:
        return None
    return (f"Every cell type is in the one coarse group {next(iter(coarse))!r} "
            "(`dataset.groups`): every prediction falls in the right group, so these scores "
            "are 1 and say nothing; give two or more groups.")
