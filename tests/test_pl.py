"""``cs.pl``: every plot returns Axes, draws into ``ax=``, writes ``save=``, shows on ``show=True``;
the UMAP draws equal numbers of real and generated cells per type; the fidelity plots read
the ``Evaluation`` of ``cs.evaluate`` as well as its dict; the privacy plot reads the audit."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

import cellsynth as cs
from cellsynth.pl._common import REAL_COLOR, SYNTH_COLOR, type_colors
from cellsynth.pl._umap import equal_counts

matplotlib.use("Agg")

LABEL = "cell_type"


@pytest.fixture(scope="module")
def cells():
    """Training cells, held-out cells (of the same model) and generated cells."""
    real = cs.simulate(600, 120, 3, seed=0)
    fake = cs.simulate(300, 120, 3, seed=1)
    return real[:300].copy(), real[300:].copy(), fake


@pytest.fixture(scope="module")
def evaluation(cells):
    train, heldout, fake = cells
    return cs.evaluate(train, fake, label_key=LABEL, max_cells=150, heldout=heldout)


def _history() -> dict:
    return {"train_loss": [5.0, 4.0, 3.5, 3.4], "best_epoch": 2, "select": "fidelity",
            "val_loss": [None, 0.8, None, 0.7]}


def _table(n_real: dict, n_synth: dict) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(o, t) for o, counts in (("real", n_real), ("synthetic", n_synth))
            for t, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"cell": [f"c{i}" for i in range(len(rows))],
                         "origin": [o for o, _ in rows], "label": [t for _, t in rows],
                         "x": rng.normal(size=len(rows)), "y": rng.normal(size=len(rows))})


def _calls(cells, evaluation):
    """Every pl function, as ``name -> fn(**kwargs)``."""
    train, _, fake = cells
    table = _table({"A": 30, "B": 5}, {"A": 50, "B": 50})
    return {
        "fidelity": lambda **kw: cs.pl.fidelity(evaluation, **kw),
        "per_type": lambda **kw: cs.pl.per_type(evaluation, **kw),
        "privacy": lambda **kw: cs.pl.privacy(evaluation, **kw),
        "history": lambda **kw: cs.pl.history(_history(), **kw),
        "library_sizes": lambda **kw: cs.pl.library_sizes(train, fake, label_key=LABEL, **kw),
        "umap": lambda **kw: cs.pl.umap(table, **kw),
        "genes": lambda **kw: cs.pl.genes(evaluation, **kw),  # two panels: a list of Axes
    }


def test_every_function_returns_axes_draws_into_ax_and_saves(cells, evaluation, tmp_path,
                                                            monkeypatch):
    import matplotlib.pyplot as plt

    calls = _calls(cells, evaluation)
    assert set(calls) == set(cs.pl.__all__)  # every plot is tested here
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    for name, call in calls.items():
        ax = call()
        panels = ax if isinstance(ax, list) else [ax]
        assert all(isinstance(a, Axes) and a.has_data() for a in panels), name
        given = Figure().subplots(1, len(panels))
        given = list(given) if len(panels) > 1 else given
        assert call(ax=given) == given if len(panels) > 1 else call(ax=given) is given, name
        path = tmp_path / "sub" / f"{name}.png"
        assert isinstance(call(save=path), Axes | list)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert call(show=True) is None, name
    assert len(shown) == len(calls)
    with pytest.raises(cs.CellsynthError, match="file path"):
        cs.pl.history(_history(), save=True)
    # misuse: refused by name, before a file is written
    for name, call in calls.items():
        for bad, match in ((tmp_path / "plot.h5ad", "saved as one of"),
                           (tmp_path, "is a directory"), ("/proc/x/plot.png", "save=")):
            with pytest.raises(cs.CellsynthError, match=match):
                call(save=bad)
        with pytest.raises(cs.CellsynthError, match="ax= takes"):
            call(ax="left")
        if name != "genes":  # one panel: one Axes, also in a list
            one = Figure().subplots()
            assert call(ax=[one]) is one, name
    assert not (tmp_path / "plot.h5ad").exists()
    with pytest.raises(cs.CellsynthError, match="ax= takes 2 axes"):
        cs.pl.genes(evaluation, ax=Figure().subplots())
    with pytest.raises(cs.CellsynthError, match="bins must be"):
        cs.pl.library_sizes(cells[0], cells[1], bins=0)
    assert cs.pl.fidelity(evaluation, metrics="c2st_auc").has_data()  # one metric by name


def test_equal_counts():
    plan = equal_counts({"A": 300, "B": 4, "C": 10}, {"A": 200, "B": 200, "D": 7})
    assert plan["A"] == (200, 200) and plan["B"] == (4, 4)
    assert plan["C"] == (10, 0) and plan["D"] == (0, 7)  # one side only: still shown
    assert equal_counts({"A": 300}, {"A": 200}, n_per_type=50) == {"A": (50, 50)}
    capped = equal_counts({"A": 900, "B": 3}, {"A": 900, "B": 3}, max_points=100)
    assert capped["B"] == (3, 3) and sum(map(sum, capped.values())) <= 100
    assert capped["A"][0] == capped["A"][1] >= 40
    with pytest.raises(cs.CellsynthError, match="share no cell type"):
        equal_counts({"A": 3}, {"B": 3})


def _drawn(ax: Axes) -> dict[str, str]:
    return {t.get_text().split(" (")[0]: t.get_text() for t in ax.get_legend().get_texts()}


def test_umap_from_a_table_draws_equal_numbers_per_type():
    table = _table({"A": 300, "B": 4}, {"A": 200, "B": 200})
    ax_t, ax_o = cs.pl.umap(table, color=["label", "origin"])
    assert len(ax_t.collections[0].get_offsets()) == 2 * (200 + 4)
    assert _drawn(ax_t) == {"A": "A (200 · 200)", "B": "B (4 · 4)"}
    assert _drawn(ax_o) == {"real": "real (204)", "synthetic": "synthetic (204)"}
    # each legend stands beside its panel, right of it
    assert ax_t.get_legend().get_bbox_to_anchor().x0 > ax_t.get_window_extent().x1 - 1
    ax = cs.pl.umap(table, n_per_type=3)
    assert len(ax.collections[0].get_offsets()) == 12


@pytest.mark.slow
def test_umap_from_anndata_embeds_equal_numbers_per_type(cells):
    import anndata as ad

    train, _, fake = cells
    labels = train.obs[LABEL].to_numpy()
    few = np.flatnonzero(labels == "type_01")[:6]
    real = ad.concat([train[labels != "type_01"], train[few]])  # a handful of type_01
    n_real = real.obs[LABEL].value_counts()
    n_fake = fake.obs[LABEL].value_counts()
    ax_t, ax_o = cs.pl.umap(real, fake, label_key=LABEL, color=["origin", LABEL], seed=1)
    drawn = _drawn(ax_o)
    for t in set(n_real.index) & set(n_fake.index):
        k = min(n_real[t], n_fake[t])
        assert drawn[t] == f"{t} ({k} · {k})"
    assert drawn["type_01"] == "type_01 (6 · 6)"  # a handful of real cells, as many generated
    assert len(ax_t.collections[0].get_offsets()) == 2 * sum(
        min(n_real[t], n_fake[t]) for t in set(n_real.index) & set(n_fake.index))
    with pytest.raises(cs.CellsynthError, match="label column 'nope'"):
        cs.pl.umap(real, fake, label_key="nope")
    with pytest.raises(cs.CellsynthError, match="label_key"):
        cs.pl.umap(real, fake)


def _same_origin_share(df: pd.DataFrame, k: int = 10) -> float:
    from sklearn.neighbors import NearestNeighbors

    xy = df[["x", "y"]].to_numpy()
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    origin = df["origin"].to_numpy()
    return float((origin[idx[:, 1:]] == origin[:, None]).mean())


def test_umap_of_alike_cells_mixes_when_one_side_has_genes_the_other_lacks(cells, caplog):
    """Both sides are normalised over the genes they share: 20 genes with many counts that
    only the 'generated' side holds (real cells of the same kind) do not part them; cells
    without a label are left out with a warning, not drawn as a type called 'nan'."""
    import anndata as ad
    import scipy.sparse as sp

    from cellsynth.pl._umap import _embed

    train, heldout, _ = cells
    extra = ad.AnnData(sp.csr_matrix(np.full((heldout.n_obs, 20), 50.0, dtype=np.float32)),
                       obs=heldout.obs, var=pd.DataFrame(index=[f"extra{i}" for i in range(20)]))
    wider = ad.concat([heldout, extra], axis=1, merge="first")
    assert _same_origin_share(_embed(train, wider, LABEL, None, 0)) < 0.6
    train = train.copy()
    train.obs[LABEL] = train.obs[LABEL].astype(object)
    train.obs.iloc[:30, train.obs.columns.get_loc(LABEL)] = np.nan
    df = _embed(train, heldout, LABEL, None, 0)
    assert "nan" not in set(df["label"]) and "30 cells have no label" in caplog.text


def test_umap_refuses_sides_normalised_apart(cells):
    """Counts on one side and values already normalised on the other would sit apart for that
    alone; values neither counts nor logged are refused as evaluate refuses them."""
    import scipy.sparse as sp

    from cellsynth.pl._umap import _embed

    train, heldout, _ = cells
    logged = heldout.copy()
    x = sp.csr_matrix(logged.X, dtype=np.float32)
    x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)) @ x
    logged.X = sp.csr_matrix(x)
    with pytest.raises(cs.CellsynthError, match=r"the synthetic data: .*sc.pp.log1p"):
        _embed(train, logged, LABEL, None, 0)  # per 10k, unlogged
    logged.X = logged.X.log1p()
    with pytest.raises(cs.CellsynthError, match="the real data hold raw counts and the synthetic "
                                                "data normalised values only"):
        _embed(train, logged, LABEL, None, 0)


def test_umap_refusals():
    table = _table({"A": 5}, {"A": 5})
    with pytest.raises(cs.CellsynthError, match="color"):
        cs.pl.umap(table, color="nope")
    with pytest.raises(cs.CellsynthError, match="lacks column"):
        cs.pl.umap(table.drop(columns="x"))
    with pytest.raises(cs.CellsynthError, match="one per color"):
        cs.pl.umap(table, color=["origin", "label"], ax=Figure().subplots())


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(to_rgb(a), to_rgb(b))))


@pytest.mark.parametrize("n", [3, 8, 12, 16, 40])
def test_type_colours_are_never_the_origin_colours(n):
    colors = type_colors(n)
    assert len(colors) == n and len({tuple(c) for c in colors}) == n
    assert min(_distance(c, o) for c in colors for o in (REAL_COLOR, SYNTH_COLOR)) > 0.2


def test_fidelity_plots_read_the_evaluation_and_its_dict(evaluation):
    as_dict = json.loads(json.dumps(evaluation.to_dict()))  # what fidelity.json holds
    for source in (evaluation, as_dict):
        ax = cs.pl.fidelity(source)
        assert len(ax.patches) == 2 * len(ax.get_yticklabels())
        assert ax.get_title().startswith("verdict: ")
    judged = evaluation.per_type.dropna(subset=["c2st_auc"])
    for source in (evaluation, as_dict, evaluation.per_type):
        ax = cs.pl.per_type(source, "c2st_auc")
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == len(judged)
        row = judged.iloc[0]
        assert labels[0] == (f"{judged.index[0]} ({int(row['n_real_scored'])} · "
                             f"{int(row['n_synthetic_scored'])})")  # class sizes beside bars
    verdicts = {t.get_text() for t in cs.pl.per_type(evaluation, "de_logfc_r").texts}
    assert verdicts <= {"indistinguishable", "close", "distinguishable"} and verdicts
    cs.pl.per_type(evaluation, "mmd_rbf")  # from the reports
    with pytest.raises(cs.CellsynthError, match="per-type table has no"):
        cs.pl.per_type(evaluation.per_type, "mmd_rbf")
    with pytest.raises(cs.CellsynthError, match="unknown per-type metric") as info:
        cs.pl.per_type(evaluation, "nope")
    assert "n_real" not in str(info.value)  # cell counts are no metric to choose
    with pytest.raises(cs.CellsynthError, match="metrics is empty: name one or more of"):
        cs.pl.fidelity(evaluation, metrics=[])
    with pytest.raises(cs.CellsynthError, match=r"cellsynth\.evaluate returned"):
        cs.pl.fidelity({"x": 1})


def test_privacy_plot(evaluation):
    priv = evaluation.privacy
    ax = cs.pl.privacy(evaluation)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["distance attack AUC (cells)", "density attack AUC (cells)"]
    assert "redraw attack AUC (cells)" in labels or "re-draw attack AUC (cells)" in labels
    assert len(ax.patches) == len(labels) == 6
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert {round(line.get_xdata()[0], 6) for line in dashed} >= {
        round(priv["attacks"]["distance"]["threshold"], 6)}  # the flag thresholds drawn
    assert ax.get_title(loc="right").startswith(("privacy: flagged", "privacy: not flagged"))
    assert len(cs.pl.privacy({"privacy": priv}).patches) == 6  # a run's fidelity.json
    assert len(cs.pl.privacy(priv).patches) == 6
    with pytest.raises(cs.CellsynthError, match="not run: too few"):
        cs.pl.privacy({"privacy": {"skipped": "too few cells"}})
    with pytest.raises(cs.CellsynthError, match="heldout"):
        cs.pl.privacy({"synthetic_vs_real": {}})


def test_genes_plot_shows_each_side_and_refuses_a_result_without_genes(evaluation):
    """cs.pl.genes: one point per gene and side in each panel; a result without the gene-level
    test is refused with what to give."""
    zeros, variance = cs.pl.genes(evaluation)
    n = len(evaluation["genes"]["genes"]["real_mean"])
    assert [len(c.get_offsets()) for c in zeros.collections] == [n, n]
    assert [len(c.get_offsets()) for c in variance.collections] == [n, n]
    with pytest.raises(cs.CellsynthError, match="gene-level"):
        cs.pl.genes({"genes": {"skipped": "too few cells"}})
    with pytest.raises(cs.CellsynthError, match="takes 2 axes"):
        cs.pl.genes(evaluation, ax=[Figure().subplots()])
