"""Fine-to-coarse cell-type mappings: a TSV/JSON file, or one shipped with the package."""

from __future__ import annotations

import csv
import json
from importlib import resources

from ..errors import DataError
from ..paths import expand_user

#: mappings shipped as package data (``cellsynth/data/groups/<name>.tsv``)
PACKAGED = ("e-annd-5",)


def load_groups(spec: str) -> dict[str, str]:
    """Load a fine -> coarse mapping.

    Parameters
    ----------
    spec
        ``""`` for none, a packaged name (``"e-annd-5"``), or the path of a TSV (two columns,
        fine then coarse, a header line allowed) or JSON (``{"fine": "coarse"}``) file.
    """
    if not spec:
        return {}
    if spec in PACKAGED:
        text = resources.files("cellsynth.data").joinpath(f"groups/{spec}.tsv").read_text()
        return _parse_tsv(text, spec)
    path = expand_user(spec)
    if not path.is_file():
        raise DataError(
            f"cell-type groups '{spec}' is neither a packaged mapping ({', '.join(PACKAGED)}) "
            "nor an existing TSV/JSON file; fix dataset.groups"
        )
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DataError(f"{path} must hold one JSON object mapping fine label -> coarse group")
        return {str(k): v for k, v in data.items()}
    return _parse_tsv(text, str(path))


def _parse_tsv(text: str, name: str) -> dict[str, str]:
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t") if r and any(r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["fine_label", "group"], ["fine", "coarse"]):
        rows = rows[1:]
    mapping: dict[str, str] = {}
    for i, row in enumerate(rows, 1):
        if len(row) < 2:
            raise DataError(f"{name}: line {i} has {len(row)} column(s); expected fine<TAB>coarse")
        mapping[row[0].strip()] = row[1].strip()
    return mapping
