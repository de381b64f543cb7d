"""``cs.pl`` and the report's figures under misuse (session 48's sweep): figures left open by a
loop of saves, matplotlib's own tick labels drawn as raw mathtext, missing or non-finite numbers
in a result, and refusals that did not say what each side held."""

from __future__ import annotations

import matplotlib
import pytest

import cellsynth as cs

matplotlib.use("Agg")

LABEL = "cell_type"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _history() -> dict:
    return {"train_loss": [5.0, 4.0, 3.5, 3.4], "best_epoch": 2, "val_loss": [4.5, 4.1, 3.9, 3.8]}


# -- 1: a loop of save= calls ------------------------------------------------------------------


def test_a_loop_of_saves_leaves_no_figure_open(tmp_path, recwarn):
    """cs.pl.history(h, save=f'{i}.png') in a loop on a machine without a display (Agg) left
    each figure open in pyplot: the 21st call warned 'More than 20 figures have been opened'
    and memory grew with each; a saved figure that nothing can show is closed now (as scanpy
    closes it), its axes still returned, and a figure of the caller's (ax=) stays open."""
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    for i in range(22):
        ax = cs.pl.history(_history(), save=tmp_path / f"h{i}.png")
    assert len(plt.get_fignums()) == before
    assert not [w for w in recwarn if "More than 20 figures" in str(w.message)]
    ax.figure.savefig(tmp_path / "again.png")  # the axes returned still save
    assert (tmp_path / "h21.png").stat().st_size and (tmp_path / "again.png").stat().st_size
    _, mine = plt.subplots()
    assert cs.pl.history(_history(), ax=mine, save=tmp_path / "mine.png") is mine
    assert plt.fignum_exists(mine.figure.number)  # the caller's figure is left to the caller
    assert cs.pl.history(_history()).has_data() and len(plt.get_fignums()) == before + 2
