"""The outputs a user reads (fidelity.md, results.md, report.html, ``cellsynth info``) under odd
cell type names, many types, missing metrics and runs read from another folder."""

from __future__ import annotations

import html
import json
import re
from types import SimpleNamespace

import pytest

from cellsynth import config
from cellsynth.evaluation.result import markdown
from cellsynth.outputs import md_text
from cellsynth.report import results

#: names a biologist's atlas may hold: HTML, Markdown emphasis and tables, code, unicode
ODD = ["<script>alert(1)</script>", "A & B | c*d*", "`tick`,\"q\" _x_", "CD4+ <naive> [1]",
       "T cell 🧬 é", "```fence", "~strike~ &amp;"]


def _rendered(text: str) -> str:
    """``text`` rendered as a Markdown viewer would (CommonMark with tables)."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").render(text)


def _verdict(names: list[str]) -> dict:
    return {"overall": {"verdict": "close", "reason": f"few cells of {', '.join(names)}"},
            "per_type": {}, "too_few": {n: "3 real cells" for n in names}, "absent": [],
            "extra": [], "counts": {},
            "n_types": {"indistinguishable": 0, "close": 0, "distinguishable": 0}}


def _per_type_row(name: str) -> dict:
    return {"type": name, "n_real": 3, "n_synthetic": 3, "verdict": "too few cells",
            "note": f"only 3 cells of {name}"}


# ---------------------------------------------- cell type names in Markdown (fidelity.md, results.md)

def test_fidelity_md_shows_odd_type_names_as_spelled():
    """fidelity.md put type names raw into Markdown: '<script>...' became HTML in a viewer,
    'c*d*' italics, '`tick`' code, '[1]' a link; only '|' was escaped."""
    head, tail = markdown({"verdict": _verdict(ODD), "per_type": [_per_type_row(n) for n in ODD]})
    page = _rendered("\n".join([*head, *tail]))
    assert "<script>" not in page and "<em>" not in page
    assert page.count("<code>") == 2  # the page's own `typewise` and `per_type.csv`
    assert "<del>" not in page and "<a " not in page
    for name in ODD:
        assert html.escape(name, quote=False) in page.replace("&quot;", '"'), name
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    assert len(rows) == 1 + len(ODD)  # the header and one row a type: none split or merged
    assert {r.count("<td") for r in rows[1:]} == {rows[0].count("<th")}


def test_results_md_shows_dropped_types_and_verdict_as_spelled(tmp_path):
    """results.md listed QC's dropped types raw, and a type spelled with backticks closed the
    verdict's code fence early (the rest of the verdict rendered as Markdown)."""
    (tmp_path / "metrics").mkdir()
    fid = {"verdict": _verdict(["```fence <b>x</b>", "ok"]),
           "synthetic_vs_real": {"overall": {"c2st_auc": 0.6}},
           "real_vs_real": {"overall": {"c2st_auc": 0.5}}}
    (tmp_path / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    row = {"precision_macro": 1.0, "recall_macro": 1.0, "f1_macro": 1.0, "precision_micro": 1.0,
           "recall_micro": 1.0, "f1_micro": 1.0, "accuracy": 1.0, "n": 10}
    res = {k: {"fine": row, "coarse": row} for k in "abc"}
    report = SimpleNamespace(cells_per_type_after={"a": 5, "b": 5},
                             dropped_types=["<i>rare</i>", "x*y*"])
    text = results.write_results(tmp_path, res, report, config.load(), {}, groups={}).read_text()
    page = _rendered(text)
    assert "<i>" not in page and "<b>" not in page and "<em>" not in page
    assert "&lt;i&gt;rare&lt;/i&gt;, x*y*" in page
    blocks = re.findall(r"<pre><code>(.*?)</code></pre>", page, flags=re.S)
    assert len(blocks) == 1 and "ok: too few cells" in blocks[0]
    assert "```fence &lt;b&gt;x&lt;/b&gt;: too few cells" in blocks[0]


# ---------------------------------------------- '$' in a cell type's name (matplotlib mathtext)

DOLLAR = ["$\\frac$ x", "IFN$\\gamma$ high"]


def test_a_dollar_in_a_type_name_draws_as_spelled(tmp_path):
    """A type named '$\\frac$ x' stopped `cellsynth run` in the explain stage with a matplotlib
    traceback (mathtext ValueError), cost the report its QC figure ('Could not render') and
    failed cs.pl; 'IFN$\\gamma$' was drawn as a formula. Names are drawn as spelled now."""
    import pandas as pd

    from cellsynth import pl
    from cellsynth.explain.shap import ShapResult, plot_shap
    from cellsynth.report.html import render_report

    (tmp_path / "data").mkdir()
    counts = dict.fromkeys([*DOLLAR, "B"], 5)
    (tmp_path / "data" / "qc.json").write_text(json.dumps({
        "steps": [], "cells_per_type_before": counts, "cells_per_type_after": counts}))
    page = render_report(tmp_path)
    assert "Could not render" not in page and "data:image/png;base64," in page
    pcs = pd.DataFrame({"component": ["PC1", "PC2"], "mean_abs_shap": [0.2, 0.1],
                        "mean_shap": [0.1, 0.0]})
    genes = pd.DataFrame({"gene": ["g$1$", "g2"], "score": [0.3, -0.1], "abs_score": [0.3, 0.1],
                          "magnitude": [0.3, 0.1]})
    plot_shap(ShapResult(DOLLAR[0], pcs, genes, n_cells=3), tmp_path / "shap.png")
    assert (tmp_path / "shap.png").stat().st_size > 0
    row = {"c2st_auc": 0.6, "n_real": 30, "n_synth": 30}
    result = {"synthetic_vs_real": {"per_type": {t: row for t in DOLLAR}},
              "real_vs_real": {"per_type": {t: {**row, "c2st_auc": 0.5} for t in DOLLAR}}}
    pl.per_type(result, save=tmp_path / "per_type.png")
    assert (tmp_path / "per_type.png").stat().st_size > 0
    assert [md_text(t) for t in DOLLAR] == ["\\$\\\\frac\\$ x", "IFN\\$\\\\gamma\\$ high"]


# ---------------------------------------------- many types: the per-type figure says whom it leaves out

def test_the_per_type_figure_says_which_types_it_leaves_out(tmp_path):
    """With 128 types, most too small for a two-sample test, the report's per-type figure drew
    19 bars and said nothing of the other 109: read as the whole atlas."""
    from cellsynth.report.html import render_report

    types = [f"type_{i:03d}" for i in range(30)]
    row = {"c2st_auc": 0.6, "n_real": 30, "n_synth": 30}
    fid = {"synthetic_vs_real": {"overall": {}, "per_type": {t: row for t in types[:4]}},
           "real_vs_real": {"overall": {}, "per_type": {types[0]: row}},
           "verdict": {**_verdict(types[4:]),
                       "counts": {t: {"real": 5, "synthetic": 5} for t in types}}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    page = render_report(tmp_path)
    assert "Left out: 26 of 30 types from the figure: too few cells" in page
    assert "type_004, type_005" in page and "and 16 more" in page
    assert "Could not render" not in page


# ---------------------------------------------- a very long cell type name on the figures

def _png_width(uri: str) -> int:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size[0]


def test_a_very_long_type_name_does_not_squeeze_the_figures():
    """A 300-character type name widened the report's cells-per-type, F1, confusion, per-type
    and UMAP figures to 2,500-2,800 pixels: shown at the page's width, every bar became a
    sliver. Labels keep a name's start and end around an ellipsis now (tables keep it whole)."""
    import numpy as np
    import pandas as pd

    from cellsynth.pl import short_label
    from cellsynth.report import figures

    long = "CD4-positive " + "L" * 300 + " T cell"
    assert short_label(long).startswith("CD4-positive L") and short_label(long).endswith(" T cell")
    assert len(short_label(long)) == 40 and short_label("B cell") == "B cell"

    def widths(names: list[str]) -> list[int]:
        counts = dict.fromkeys(names, 5)
        m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        row = {"c2st_auc": 0.6, "n_real": 30, "n_synth": 30}
        fid = {"synthetic_vs_real": {"per_type": {t: row for t in names}},
               "real_vs_real": {"per_type": {t: row for t in names}}}
        rng = np.random.default_rng(0)
        umap = pd.DataFrame({"origin": ["real", "synthetic"] * len(names) * 5,
                             "label": [t for t in names for _ in range(10)],
                             "x": rng.normal(size=10 * len(names)),
                             "y": rng.normal(size=10 * len(names))})
        return [_png_width(u) for u in (
            figures.cells_per_type(counts, counts),
            figures.f1_bars({"(a)": pd.Series(0.5, index=names)}, counts),
            figures.confusion_heatmaps({"(a)": m}), figures.per_type_bars(fid),
            figures.umap_panels(umap))]

    short, wide = widths(["B cell", "T cell"]), widths(["B cell", long])
    assert all(w <= 1.4 * s for s, w in zip(short, wide, strict=True)), (short, wide)


# ---------------------------------------------- a character the figures' font lacks (emoji)

def test_a_character_without_a_glyph_is_said_once_not_as_raw_warnings(tmp_path, monkeypatch,
                                                                      caplog, recwarn):
    """A type named 'T cell 🧬' made `cellsynth run` and `cellsynth report` print matplotlib's
    raw 'UserWarning: Glyph 129516 ... missing from font(s)' with a source line, once per
    figure; it is one log line now, saying what it means."""
    import logging

    from cellsynth import options
    from cellsynth.report.html import render_report

    monkeypatch.setattr(options, "_NO_GLYPH_SAID", set())
    (tmp_path / "data").mkdir()
    counts = {"T cell \U0001f9ec": 5, "B": 5}
    (tmp_path / "data" / "qc.json").write_text(json.dumps({
        "steps": [], "cells_per_type_before": counts, "cells_per_type_after": counts}))
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        render_report(tmp_path)
        render_report(tmp_path)
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    said = [r for r in caplog.records if "no glyph" in r.getMessage()]
    assert len(said) <= 1  # none where the font has the glyph
    if said:
        assert "DNA DOUBLE HELIX" in said[0].getMessage()


def test_the_benchmark_held_out_heading_shows_the_type_as_spelled():
    """`cellsynth benchmark --holdout 'cell_type=CD4+ <naive> *x*,...'` wrote the type raw into
    the page's heading: '<naive>' vanished in a viewer and '*x*' turned italic."""
    from cellsynth.holdout import holdout_section

    row = {"c2st_auc": 0.6, "mmd": 0.1, "knn_precision": 0.9, "knn_recall": 0.9,
           "gene_mean_spearman": 0.9, "gene_auc": 0.6, "n_cells": 50}
    result = {"holdout": {"cell_type": "CD4+ <naive> *x*", "condition": "stim"},
              "n_held_out": 50, "conditioned": {"cvae": True},
              "rows": {"real vs real": row, "pooling (other levels)": row, "cvae": row}}
    page = _rendered("\n".join(holdout_section(result)))
    assert "<h3>Held-out combination: cell_type=CD4+ &lt;naive&gt; *x*, condition=stim</h3>" in page


# ---------------------------------------------- fidelity.md's command line, as a shell reads it

def test_fidelity_md_gives_a_command_a_shell_can_run(tmp_path):
    """`cellsynth evaluate --real 'my real.h5ad' --label-key 'cell type'` wrote the command into
    fidelity.md unquoted (`--real my real.h5ad --label-key cell type`): copied, it failed."""
    from cellsynth.cli import main

    real, syn = tmp_path / "my real.h5ad", tmp_path / "syn.h5ad"
    for seed, path in ((0, real), (1, syn)):
        assert main(["simulate", "--cells", "200", "--genes", "120", "--types", "3", "--seed",
                     str(seed), "--label-key", "cell type", "--out", str(path), "--quiet"]) == 0
    out = tmp_path / "ev"
    assert main(["evaluate", "--real", str(real), "--synthetic", str(syn), "--label-key",
                 "cell type", "--out", str(out), "--quiet", "--gene-repeats", "1"]) == 0
    text = (out / "fidelity.md").read_text()
    assert f"--real '{real}' --synthetic {syn} --label-key 'cell type' " in text
