"""The Python API under misuse (session 44's sweep): every path a user gives is ``~``-expanded
by the writer that uses it (no folder named ``~``), a figure never replaces a file cellsynth did
not write, seeds and argument types are checked with one-line errors, a too small held-out set
is refused before any work, and an evaluation result hands out copies."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import cellsynth as cs
from cellsynth.errors import CellsynthError, DataError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``~`` is ``tmp_path/home``; the current folder ``tmp_path/cwd`` (where a literal ``~``
    folder would appear)."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def halves(kang_path: Path):
    a = ad.read_h5ad(kang_path)
    return a[::2].copy(), a[1::2].copy()


@pytest.fixture(scope="module")
def result(halves):
    real, fake = halves
    return cs.evaluate(real, fake, label_key="cell_type", max_cells=300, gene_repeats=1)


def test_every_writer_expands_the_home_folder(home: Path, halves, result) -> None:
    real, fake = halves
    cs.evaluate(real, fake, label_key="cell_type", max_cells=300, gene_repeats=1,
                out="~/eval")  # fmt: skip
    assert (home / "eval" / "fidelity.json").is_file()
    assert (home / "eval" / "per_type.csv").is_file()
    written = result.to_html("~/report.html")
    assert written == home / "report.html" and written.is_file()
    ax = cs.pl.fidelity(result, save="~/fig.png")
    plt.close(ax.figure)
    assert (home / "fig.png").is_file()
    assert not Path("~").exists()  # no folder named ~ in the current one


@pytest.mark.parametrize("bad", [None, 3, 2.5, ["a"]])
def test_a_path_that_is_not_one_is_a_one_line_error(bad) -> None:
    from cellsynth.outputs import check_file_out, check_out_dir
    from cellsynth.pl._common import finish

    with pytest.raises(CellsynthError, match="takes a path"):
        check_out_dir(bad, "out", "an evaluation")
    with pytest.raises(CellsynthError, match="takes a path"):
        check_file_out(bad, "an HTML report", lambda p: True, flag="to_html:")
    if bad is not None:  # save=None: no file
        _, ax = plt.subplots()
        with pytest.raises(CellsynthError):
            finish(ax, False, bad)
        plt.close(ax.figure)


def test_a_figure_replaces_its_own_file_and_never_anothers(tmp_path: Path) -> None:
    from cellsynth.pl._common import finish

    def save(path: Path) -> None:
        _, ax = plt.subplots()
        ax.plot([0, 1])
        try:
            finish(ax, False, path)
        finally:
            plt.close(ax.figure)

    for kind in ("png", "pdf", "svg"):
        save(tmp_path / f"fig.{kind}")
        save(tmp_path / f"fig.{kind}")  # its own: replaced
    thesis = tmp_path / "thesis.pdf"
    thesis.write_text("irreplaceable")
    with pytest.raises(DataError, match="not a figure that cellsynth wrote"):
        save(thesis)
    assert thesis.read_text() == "irreplaceable"
    save(tmp_path / "fig.jpg")  # no field to mark it: written once, never replaced
    with pytest.raises(DataError, match="never replaces one"):
        save(tmp_path / "fig.jpg")


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_umap_checks_its_seed(seed, halves) -> None:
    real, fake = halves
    with pytest.raises(DataError, match="seed must be a whole number"):
        cs.pl.umap(real, fake, label_key="cell_type", seed=seed)


def test_umap_of_a_missing_table_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        cs.pl.umap(str(tmp_path / "nope.csv"))


def test_a_small_held_out_set_is_refused_before_any_work(halves, monkeypatch) -> None:
    import cellsynth.evaluation as ev

    real, fake = halves

    def never(*args, **kwargs):
        raise AssertionError("the evaluation started before refusing the held-out set")

    monkeypatch.setattr(ev, "fit_space", never)
    with pytest.raises(DataError, match="held-out data has 5 cells"):
        cs.evaluate(real, fake, label_key="cell_type", heldout=fake[:5].copy(), max_cells=300)


def test_the_result_hands_out_copies(result) -> None:
    verdict = result.verdict
    verdict["overall"] = "edited"
    assert result.verdict["overall"] != "edited"
    table = result["per_type"]
    table.clear()
    assert result["per_type"]


def test_an_empty_per_type_table_is_said_to_be_empty(result) -> None:
    with pytest.raises(DataError, match="no rows"):
        cs.pl.per_type(result.per_type.iloc[:0])


@pytest.mark.parametrize("key", [["cell_type"], None, 3])
def test_label_key_must_name_one_column(halves, key) -> None:
    real, fake = halves
    with pytest.raises(DataError, match="label_key takes the name of one obs column"):
        cs.evaluate(real, fake, label_key=key, max_cells=300)


def test_library_sizes_of_no_cells_is_an_error(halves) -> None:
    real, fake = halves
    with pytest.raises(DataError, match="has no cells"):
        cs.pl.library_sizes(real[:0].copy(), fake)


def test_synthetic_types_the_real_data_lack_are_a_warning_in_the_verdict(halves) -> None:
    real, fake = halves
    keep = (real.obs["cell_type"] != "B cells").to_numpy()
    res = cs.evaluate(real[keep].copy(), fake, label_key="cell_type", max_cells=300,
                      gene_repeats=1)  # fmt: skip
    assert "B cells" in res.verdict["extra"]
    assert "not in the real data" in (res.verdict["warning"] or "")
    assert res.verdict["overall"]["verdict"]  # the types both hold are judged
