"""What :func:`cellsynth.evaluate` returns: :class:`Evaluation`, and how an evaluation reads.

:class:`Evaluation` wraps :func:`cellsynth.evaluation.compare`'s JSON-ready dict: a read-only
mapping (``result["synthetic_vs_real"]`` as before, so ``cs.pl.fidelity(result)`` works) with
``.verdict``, ``.per_type`` (a DataFrame), ``.privacy``, ``.genes``, ``.to_dict()`` and
``.to_html(path)``. :func:`markdown` gives the verdict, per-type, gene-level and privacy
sections of ``fidelity.md``; :func:`html_page` the same as one self-contained HTML page.
"""

from __future__ import annotations

import copy
import html
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..metrics.verdict import COLUMNS
from ..metrics.verdict_text import verdict_lines
from ..outputs import check_file_out, md_text, report_html, write_text

#: the per-type table as shown: (header, value column, floor column or None, digits)
_SHOWN = (("two-sample AUC ↓", "c2st_auc", "c2st_auc_floor", 2),
          ("gene AUC ↓", "gene_auc", "gene_auc_floor", 2),
          ("genes at depth (1)", "genes_at_depth", "genes_at_depth_floor", 2),
          ("kNN precision ↑", "knn_precision", "knn_precision_floor", 2),
          ("kNN recall ↑", "knn_recall", "knn_recall_floor", 2),
          ("DE logFC r ↑", "de_logfc_r", "de_logfc_r_floor", 2),
          ("markers ↑", "marker_overlap", "marker_overlap_floor", 2),
          ("TRTS F1 (TRTR)", "trts_f1", "trtr_f1", 2))


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pair(row: Mapping, value: str, floor: str | None, digits: int) -> str:
    """``"0.62 (0.50)"``: a value beside its floor, ``–`` for a missing number."""
    v = _number(row.get(value))
    if v is None:
        return "–"
    f = _number(row.get(floor)) if floor else None
    return f"{v:.{digits}f}" + (f" ({f:.{digits}f})" if f is not None else "")


def _cells(row: Mapping) -> str:
    def side(k: str) -> str:
        used, total = row.get(f"n_{k}_scored"), row.get(f"n_{k}")
        used = "–" if _number(used) is None else int(used)
        total = "–" if _number(total) is None else int(total)
        return f"{used}" if used == total else f"{used}/{total}"

    return f"{side('real')} · {side('synthetic')}"


def table_rows(per_type: pd.DataFrame | list[dict]) -> tuple[list[str], list[list[str]]]:
    """The per-type table as text cells: a header and one row per type (values beside their
    floor in brackets; cells scored/in the input, real · synthetic)."""
    rows = per_type.reset_index().to_dict(orient="records") if isinstance(per_type, pd.DataFrame) \
        else list(per_type)
    header = ["type", "cells real · synthetic", "verdict", *(h for h, *_ in _SHOWN), "note"]
    body = [[str(r.get("type")), _cells(r), str(r.get("verdict")),
             *(_pair(r, v, f, d) for _, v, f, d in _SHOWN), str(r.get("note") or "")]
            for r in rows]
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    esc = [[md_text(c) for c in row] for row in body]  # a type's <, |, * read as spelled
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in esc)]


def _privacy_md(priv: Mapping | None, esc: Any = md_text) -> list[str]:
    """The privacy section's Markdown lines (``esc``: how its free text is escaped; ``str``
    for the HTML page, which escapes for HTML)."""
    if priv is None:
        return []
    lines = ["## Privacy", ""]
    if "skipped" in priv:
        return [*lines, f"Not audited: {esc(priv['skipped'])}", ""]
    lines.append("**Flagged**: " + esc("; ".join(priv.get("reasons") or []))
                 if priv.get("flagged")
                 else "Not flagged: no attack tells the training cells from held-out real "
                      "cells better than chance allows (no proof of privacy, only that these "
                      "attacks fail).")
    lines += [f"\n**Caution**: {esc(c)}" for c in priv.get("caveats") or []]
    lines += ["", "| attack | level | AUC (0.5 = no leak) | flagged above | members |",
              "|---|---|---:|---:|---:|"]
    for level, block in (("cell", priv.get("attacks")), ("donor", priv.get("donor_attacks"))):
        for name, a in (block or {}).items():
            lines.append(f"| {name} | {level} | {a['auc']:.3f} | {a['threshold']:.3f} | "
                         f"{a['n_members']} |")
    if priv.get("donor_skipped"):
        lines += ["", f"Donor level skipped: {esc(priv['donor_skipped'])}."]
    dcr = priv.get("dcr") or {}
    if dcr:
        lines += ["", f"Distance to the closest training cell (median): generated "
                      f"{dcr['median_synthetic']:.3f}, held-out real {dcr['median_heldout']:.3f}; "
                      f"{dcr['exact_duplicates']} exact copies of training cells."]
    return [*lines, ""]


def _genes_md(genes: Mapping | None) -> list[str]:
    if not genes:
        return []
    if "overall" not in genes:
        return ["## Gene level", "", f"Not computed: {md_text(genes.get('skipped'))}", ""]
    o = genes["overall"]
    text = (f"A classifier on {o['n_genes']} genes (log-normalised values and detection) tells "
            f"generated from real cells with AUC {o['auc']:.3f}; two halves of the real cells: "
            f"{o['floor_auc']:.3f} ({o['n_cells']} cells a side). Per type in the table above.")
    d = (genes.get("depth") or {}).get("overall")
    if d:
        text += (f" At the same library size, generated cells detect {d['ratio']:.3f}x the genes "
                 f"real cells do (two halves of the real cells: {d['floor_ratio']:.3f}x; rank "
                 f"AUC {d['auc']:.3f}, floor {d['floor_auc']:.3f}).")
    return ["## Gene level", "", text, ""]


def markdown(result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``fidelity.md``'s sections from :func:`~cellsynth.evaluation.compare`'s result: the
    verdict (to go first) and the per-type, gene-level and privacy sections (to go after the
    headline table). Either is empty when the result lacks it."""
    v = result.get("verdict")
    head: list[str] = []
    if v:
        lines = verdict_lines(v)
        head = [f"**Verdict: {v['overall']['verdict']}.** {md_text(v['overall']['reason'])}",
                "", *(f"- {md_text(line.strip())}" for line in lines[1:]), ""]
    tail: list[str] = []
    if result.get("per_type"):
        tail += ["## Per type", "",
                 "Each number beside its floor (two halves of the real cells, in brackets); "
                 "DE r, markers and kNN from equal-sized halves (`typewise`), TRTS beside TRTR. "
                 "Also in `per_type.csv`.", "", *_md_table(*table_rows(result["per_type"])), ""]
    return head, [*tail, *_genes_md(result.get("genes")), *_privacy_md(result.get("privacy"))]


def call_args(result: Mapping[str, Any]) -> list[str]:
    """The ``cellsynth evaluate`` options that give ``result`` again (``fidelity.md`` shows
    them as a command).

    Parameters
    ----------
    result
        :func:`cellsynth.evaluation.compare`'s result, with paths as ``real`` and
        ``synthetic``.

    Returns
    -------
    list of str
        The inputs, the label and donor columns, and the seed, ``--max-cells`` and
        ``--gene-repeats`` the result was read with: without them, the defaults score other
        cells, and a donor-level audit is not run.
    """
    args = ["--real", str(result["real"]), "--synthetic", str(result["synthetic"]),
            "--label-key", str(result["label_key"])]
    if result.get("heldout"):
        args += ["--heldout", str(result["heldout"])]
        if result.get("donor_key") is not None:
            args += ["--donor-key", str(result["donor_key"])]
    for flag, key in (("--seed", "seed"), ("--max-cells", "max_cells"),
                      ("--gene-repeats", "gene_repeats")):
        if result.get(key) is not None:  # a result of an earlier version may lack one
            args += [flag, str(result[key])]
    return args


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:0 auto;padding:1em 2em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.muted{color:#666;font-size:.9em}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _cell(v: Any) -> str:
    x = _number(v)
    if x is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "–" if v is None or (isinstance(v, float) and x is None) else str(v)
    return f"{int(x):,}" if isinstance(v, int) else f"{x:.3f}"


def _html_table(header: list[str], rows: Any) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _privacy_html(priv: Mapping) -> str:
    head = "<h2>Privacy</h2>"
    if "skipped" in priv:
        return head + f"<p class='note'>Not audited: {_e(priv['skipped'])}</p>"
    lines = [line for line in _privacy_md(priv, esc=str)[2:] if line]
    verdict = lines[0].replace("**", "")
    rows = [(name, level, a["auc"], a["threshold"], a["n_members"])
            for level, block in (("cell", priv.get("attacks")),
                                 ("donor", priv.get("donor_attacks")))
            for name, a in (block or {}).items()]
    rest = [x for x in lines[1:] if not x.startswith("|")]
    return (head + (f"<p class='note'>{_e(verdict)}</p>" if priv.get("flagged")
                    else f"<p>{_e(verdict)}</p>")
            + _html_table(["attack", "level", "AUC (0.5 = no leak)", "flagged above", "members"],
                          rows) + "".join(f"<p>{_e(x)}</p>" for x in rest))


def html_page(result: Mapping[str, Any]) -> str:
    """One self-contained HTML page: the verdict first, the per-type table, the headline
    metrics beside their floor, the gene-level test and the privacy audit."""
    from ..benchmark import COLUMNS as HEADLINE
    from ..benchmark import flat_report

    v = result.get("verdict") or {}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cellsynth evaluation"
             f"</title><style>{_CSS}</style></head><body><h1>Evaluation</h1>"]
    if v:
        lines = verdict_lines(v)
        good = v["overall"]["verdict"] == "indistinguishable" and not v.get("warning")
        parts += [f"<h2>Verdict: {_e(v['overall']['verdict'])}</h2>",
                  f"<p{'' if good else ' class=note'}>{_e(v['overall']['reason'])}</p>",
                  "<ul>" + "".join(f"<li>{_e(x.strip())}</li>" for x in lines[1:]) + "</ul>"]
    if result.get("per_type"):
        parts += ["<h2>Per type</h2><p class='muted'>Each number beside its floor (two halves of "
                  "the real cells) in brackets.</p>", _html_table(*table_rows(result["per_type"]))]
    if "synthetic_vs_real" in result and "real_vs_real" in result:
        s, f = flat_report(result["synthetic_vs_real"]), flat_report(result["real_vs_real"])
        rows = [(label, f.get(k), s.get(k)) for k, label, _ in HEADLINE if k in s]
        parts += ["<h2>Headline metrics</h2>",
                  _html_table(["metric", "real vs real (floor)", "synthetic vs real"], rows)]
    genes = result.get("genes") or {}
    if genes.get("overall"):
        o = genes["overall"]
        parts += ["<h2>Gene level</h2>",
                  _html_table(["", "AUC", "floor", "cells a side", "genes"],
                              [("overall", o["auc"], o["floor_auc"], o["n_cells"], o["n_genes"])])]
    if result.get("privacy") is not None:
        parts.append(_privacy_html(result["privacy"]))
    n = result.get("n_cells") or {}
    if n:
        parts.append(f"<p class='muted'>{_e(n['real']['used'])} real and "
                     f"{_e(n['synthetic']['used'])} synthetic cells scored, "
                     f"{_e(result.get('n_genes'))} genes, seed {_e(result.get('seed'))}.</p>")
    return "".join(parts) + "</body></html>"


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for JSON-ready values, with NaN equal to NaN (``nan != nan`` in Python)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


class Evaluation(Mapping[str, Any]):
    """The result of :func:`cellsynth.evaluate`: the verdict, the per-type table, privacy.

    A read-only mapping over :func:`cellsynth.evaluation.compare`'s JSON-ready dict, so
    ``result["synthetic_vs_real"]`` and :func:`cellsynth.pl.fidelity` work as with the dict.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluation.compare` returned.

    Examples
    --------
    >>> import cellsynth as cs  # doctest: +SKIP
    >>> ev = cs.evaluate(real, synthetic, label_key="cell_type")  # doctest: +SKIP
    >>> ev.verdict["overall"]["verdict"], ev.per_type  # doctest: +SKIP
    """

    def __init__(self, result: Mapping[str, Any]):
        self._result = dict(result)

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._result[key])  # read-only: a caller's edit stays its own

    def __iter__(self) -> Iterator[str]:
        return iter(self._result)

    def __len__(self) -> int:
        return len(self._result)

    @property
    def verdict(self) -> dict[str, Any]:
        """:func:`~cellsynth.metrics.verdict.fidelity_verdict`: ``overall`` and ``per_type`` verdicts
        (``verdict``, ``decided_by``, ``reason``), ``too_few``, ``absent``, ``extra``."""
        return copy.deepcopy(self._result["verdict"])

    @property
    def summary(self) -> str:
        """The verdict in a few lines, as ``cellsynth evaluate`` prints it."""
        return "\n".join(verdict_lines(self.verdict, privacy=self.privacy))

    @property
    def per_type(self) -> pd.DataFrame:
        """One row per type (:data:`~cellsynth.metrics.verdict.COLUMNS`), indexed by type."""
        rows = self._result.get("per_type") or []
        return pd.DataFrame(rows, columns=["type", *COLUMNS]).set_index("type")

    @property
    def privacy(self) -> dict[str, Any] | None:
        """The privacy audit (:class:`~cellsynth.metrics.privacy.PrivacyResult` as a dict), or
        None without held-out cells."""
        return copy.deepcopy(self._result.get("privacy"))

    @property
    def genes(self) -> dict[str, Any] | None:
        """The gene-level test (:func:`~cellsynth.metrics.genes.gene_fidelity`; types it left
        out under ``skipped``), or ``{"skipped": why}`` (no ``overall``) when it could not run."""
        return copy.deepcopy(self._result.get("genes"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (what ``fidelity.json`` holds).

        Returns
        -------
        dict
            :func:`cellsynth.evaluation.compare`'s result.
        """
        return copy.deepcopy(self._result)  # the result stays as it was computed

    def to_html(self, path: str | Path) -> Path:
        """Write the evaluation as one self-contained HTML page (verdict first).

        Parameters
        ----------
        path
            The ``.html`` file to write (its directory is created); an existing file that is
            not a page cellsynth wrote is refused.

        Returns
        -------
        The path written.
        """
        path = check_file_out(path, "an HTML report", report_html, flag="to_html:",
                              suffixes=(".html", ".htm"))  # never over data or another file
        write_text(path, html_page(self._result))
        return path

    def __eq__(self, other: object) -> bool:
        """Equal to an evaluation (or its dict) of the same numbers: a metric that is NaN on
        both sides (a type too small to score) is equal, as two runs of one evaluation are."""
        if not isinstance(other, Mapping):
            return NotImplemented
        theirs = other._result if isinstance(other, Evaluation) else dict(other)
        return _same(self._result, theirs)

    __hash__ = None  # type: ignore[assignment]  # a mapping: unhashable, as a dict

    def __repr__(self) -> str:
        types = len(self._result.get("per_type") or [])
        return f"Evaluation of {types} types\n{self.summary}"
