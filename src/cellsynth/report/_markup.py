"""The report's HTML pieces: escaping, notes, numbers, tables, figures, and read access to a
run directory (each file read is None when missing or unreadable)."""

from __future__ import annotations

import html
import json
import math
import numbers
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def _e(x: Any) -> str:
    return html.escape(str(x))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _missing(*rel: str) -> str:
    return _note("Not available in this run: " + ", ".join(rel) + " not found.")


def _left_out(why: str) -> str:
    """A line saying why a panel or table is left out (nothing to show)."""
    return f'<p class="muted">Left out: {_e(why)}.</p>'


def _img(uri: str, alt: str) -> str:
    return f'<img src="{_e(uri)}" alt="{_e(alt)}">'


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fmt(v: Any, digits: int = 3) -> str:
    if not _is_num(v):
        return "–" if v is None else str(v)
    if math.isnan(float(v)):
        return "–"
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    v = float(v)
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"


def _table(header: Sequence[str] | None, rows: Any, digits: Sequence[int] = ()) -> str:
    """An HTML table (no header row when ``header`` is None); numbers are formatted (``digits``
    per column, default 3) and right-aligned, all text escaped."""
    out = ["<table>"]
    if header is not None:
        out += ["<thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        cells = [f'<td class="n">{_e(_fmt(v, (list(digits) + [3] * len(row))[i]))}</td>'
                 if _is_num(v) else f"<td>{_e(_fmt(v))}</td>" for i, v in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class _Run:
    """Read access to a run directory: ``None`` for a missing or unreadable file."""

    def __init__(self, root: Path):
        self.root = root
        self._json: dict[str, Any] = {}  # each JSON file read once (the manifest by every section)

    def json(self, rel: str) -> Any:
        if rel not in self._json:
            try:
                self._json[rel] = json.loads((self.root / rel).read_text())
            except (OSError, ValueError):
                self._json[rel] = None
        return self._json[rel]

    def csv(self, rel: str, text: tuple = (), index_col: int | None = None
            ) -> pd.DataFrame | None:
        """A CSV table of the run; the columns ``text`` (names or positions: the cell types)
        as written, where pandas' guess read types "01" and "1.10" as the numbers 1 and 1.1
        and "NA" as missing; ``index_col`` the column (position) made the index."""
        try:
            df = pd.read_csv(self.root / rel, converters=dict.fromkeys(text, str))
        except (OSError, ValueError):
            return None
        if index_col is None:
            return df
        df = df.set_index(df.columns[index_col])
        if str(df.index.name).startswith("Unnamed: "):  # a blank header, as index_col leaves it
            df.index.name = None
        return df

    def config(self) -> dict:
        manifest = self.json("manifest.json") or {}
        if isinstance(manifest.get("config"), dict):
            return manifest["config"]
        try:
            return tomllib.loads((self.root / "config.toml").read_text())
        except (OSError, ValueError):
            return {}
