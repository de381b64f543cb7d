"""Faults found by misusing the experiments stage and the utility metrics (sweep 49)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.cli import main
from cellsynth.errors import DataError
from cellsynth.metrics import augmentation, rarest_types
from test_pipeline import FAST
from test_utility import CFG, mixture


@pytest.fixture(scope="module")
def rare_splits():
    train = mixture([60, 60, 60, 6], 1)
    val, test = mixture([15] * 4, 2), mixture([20] * 4, 3)
    by_type = {t: train[0][train[1] == t][:6] for t in np.unique(train[1])}
    return train, val, test, by_type


@pytest.mark.parametrize("k", [-1, 0, 1.5, None, True])
def test_rare_type_count_out_of_range_refused(rare_splits, k):
    """``augmentation(..., rare_types=-1)`` sliced off the commonest type and augmented every
    other one; a float or None failed with a TypeError: each is a DataError saying what to
    pass."""
    train, val, test, by_type = rare_splits
    with pytest.raises(DataError, match=r"whole number of at least 1.*list of type names"):
        augmentation(train, val, test, by_type, k, CFG, seed=0)
    with pytest.raises(DataError, match="at least 1"):
        rarest_types(train[1], k)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_n_per_type_below_one_refused(rare_splits, n):
    """``n_per_type=0`` was refused with 'generate more cells or lower n_per_type' (lowering
    it makes it worse); 2.5 was silently read as 2."""
    train, val, test, by_type = rare_splits
    with pytest.raises(DataError, match="at least 1; pass a positive n_per_type, or None"):
        augmentation(train, val, test, by_type, 1, CFG, seed=0, n_per_type=n)


def test_rare_type_named_twice_or_as_one_string(rare_splits):
    """A type named twice was augmented twice (n_added said once); one name given as a string
    was read as its characters ('no generated cells for rare type 't''): refused / read as one
    name."""
    train, val, test, by_type = rare_splits
    with pytest.raises(DataError, match="more than once: type3; name each type once"):
        augmentation(train, val, test, by_type, ["type3", "type3"], CFG, seed=0)
    out = augmentation(train, val, test, by_type, "type3", CFG, seed=0)
    assert out["rare_types"] == ["type3"] and out["n_added"] == {"type3": 6}


def test_empty_generated_cells_say_so(rare_splits):
    """No generated cells of a rare type (and no n_per_type) said 'n_per_type=0 ... lower
    n_per_type', a setting the caller never gave."""
    train, val, test, by_type = rare_splits
    empty = {**by_type, "type3": by_type["type3"][:0]}
    with pytest.raises(DataError, match="no generated cells for rare type 'type3'") as err:
        augmentation(train, val, test, empty, 1, CFG, seed=0)
    assert "n_per_type" not in str(err.value)


def test_rare_type_without_test_cells_not_scored_as_zero(rare_splits, caplog):
    """A rare type with no test cells scored F1 0 in every arm and pulled the mean rare-type
    F1 down by a number that measured nothing: its F1 is None, out of the mean; with no rare
    type in the test cells at all, nothing can be scored and it is refused."""
    train, val, test, by_type = rare_splits
    keep = test[1] != "type3"
    no_rare = (test[0][keep], test[1][keep])
    out = augmentation(train, val, no_rare, by_type, ["type3", "type2"], CFG, seed=0)
    for arm in out["arms"].values():
        assert arm["per_type_f1"]["type3"] is None
        assert arm["mean_rare_f1"] == arm["per_type_f1"]["type2"] > 0
    assert "not scored" in caplog.text and "type3" in caplog.text
    with pytest.raises(DataError, match=r"no test cells of any rare type.*give test cells"):
        augmentation(train, val, no_rare, by_type, ["type3"], CFG, seed=0)


def _run(out, *extra: str) -> int:
    args = ["run", "--out", str(out), "--quiet"]
    for s in [*FAST, "dataset.demo_cells=400", "dataset.demo_genes=120",
              "qc.min_genes_per_cell=20", "generator.model=nb", *extra]:
        args += ["--set", s]
    return main(args)


@pytest.mark.parametrize("setting", ["generator.n_per_type_train=1000000000",
                                     "generator.n_per_type_eval=1000000000000"])
def test_huge_experiment_sets_refused_before_generating(tmp_path, capsys, setting):
    """``generator.n_per_type_train = 10**9`` held 16 GB of labels for a minute, then failed
    with numpy's MemoryError traceback (``n_per_type_eval = 10**12`` at once): refused before
    any cell is generated, naming the settings to lower."""
    assert _run(tmp_path, setting) == 2
    err = capsys.readouterr().err
    assert "would take up to" in err and "lower generator.n_per_type_eval, n_per_type_train" in err
    assert "Traceback" not in err and not (tmp_path / "synthetic" / "train.h5ad").exists()


def test_generator_memory_refusal_names_the_experiment_settings(tmp_path, capsys, monkeypatch):
    """A generator's own memory refusal in the experiments ('ask for fewer cells') did not say
    which setting asks for them: it names the experiment sizes."""
    import cellsynth.pipeline.models as models
    from cellsynth.errors import DataError

    monkeypatch.setattr(models, "check_experiment_memory", lambda *a: None)

    def refused(*args, **kwargs):  # a generator that draws its cells in memory (scvi; nb and
        # cvae stream theirs to the file), refused by its own check (models.base.check_memory)
        raise DataError("the cells would take about 9.0 GB, and 0.1 GB is available: ask for "
                        "fewer cells")

    monkeypatch.setattr(models, "_count_chunks", refused)
    assert _run(tmp_path, "generator.n_per_type_val=1000000") == 2
    err = capsys.readouterr().err
    assert "ask for fewer cells: lower generator.n_per_type_eval" in err
    assert "1,000,000 cells per type" in err


def test_all_types_in_one_coarse_group_said_beside_the_scores(tmp_path, kang_path, capsys):
    """``dataset.groups`` putting every type into one group made the coarse tables of
    ``results.md`` and the report all 1.000 under 'A prediction inside the right coarse group
    counts as correct.' (only the log warned): the tables say the scores mean nothing."""
    from conftest import kang_small_cells

    a = kang_small_cells(kang_path)
    data, groups = tmp_path / "kang.h5ad", tmp_path / "groups.tsv"
    a.write_h5ad(data)
    groups.write_text("".join(f"{t}\tall\n" for t in a.obs["cell_type"].unique()))
    out = tmp_path / "run"
    assert _run(out, f"dataset.path={data}", f"dataset.groups={groups}",
                "qc.min_genes_per_cell=5", "report.fidelity=false") == 0
    note = "Every cell type is in the one coarse group 'all'"
    assert note in (out / "results.md").read_text()
    assert note.replace("'", "&#x27;") in (out / "report.html").read_text()


def test_type_without_test_cells_said_under_the_results_table(tmp_path):
    """A type with no test cells (B_cell of Baron kept with qc.min_cells_per_type = 2) was left
    out of (a)'s and (c)'s macro averages with only a log line: results.md, under '13 cell types
    after QC', gave the tables as if every type were scored. The experiment's summary names
    the types it could not score and results.md says so under the fine table."""
    from types import SimpleNamespace

    from cellsynth import config
    from cellsynth.pipeline.models import score
    from cellsynth.report import results

    summary = score(["a", "a", "b"], ["a", "c", "b"], {}, tmp_path, "a_real_real",
                    ["a", "b", "c"])
    assert summary["unscored"] == ["c"]
    row = summary["fine"]
    res = {"a": {"fine": row, "coarse": row, "unscored": ["c"]},
           "b": {"fine": row, "coarse": row, "unscored": []},
           "c": {"fine": row, "coarse": row, "unscored": ["c"]}}
    report = SimpleNamespace(cells_per_type_after={"a": 5, "b": 5, "c": 5}, dropped_types=[])
    text = results.write_results(tmp_path, res, report, config.load(), {}, groups={}).read_text()
    assert "Types with no cells to score" in text and "(a), (c): c." in text


def test_rare_type_count_selecting_every_type_is_said(rare_splits, caplog):
    """``rare_types=99`` (or the benchmark's 3 on a data set of 2 or 3 types) augmented every
    type and reported it as the rare types' F1 without a word: a warning says so."""
    train, val, test, by_type = rare_splits
    out = augmentation(train, val, test, by_type, 99, CFG, seed=0, n_per_type=2)
    assert len(out["rare_types"]) == 4
    assert "all 4 training types" in caplog.text and "ask for fewer" in caplog.text


def test_numeric_labels_one_class_whatever_their_number_type(rare_splits):
    """Real labels as floats (1.0, read from a numeric column) and synthetic ones as ints (1)
    were different classes to ``tstr`` (``astype(str)``: "1.0" and "1"): TSTR and TRTS scored 0
    with a warning that the types had no synthetic cells; ``augmentation``'s ``{3: cells}``
    was 'no generated cells for rare type '3' (got types: 3)'. Labels are read as the scores
    read them (:func:`label_names`)."""
    from cellsynth.metrics import tstr

    train, val, test, by_type = rare_splits

    def num(pair, dtype):
        return pair[0], np.array([int(t[-1]) for t in pair[1]]).astype(dtype)

    out = tstr(num(train, float), num(val, float), num(test, float), num(train, int),
               num(val, int), CFG, seed=0)
    assert out["tstr"]["macro_f1"] > 0.5 and out["trts"]["macro_f1"] > 0.5
    by_num = {int(t[-1]): x for t, x in by_type.items()}
    aug = augmentation(num(train, float), num(val, float), num(test, float), by_num, [3.0],
                       CFG, seed=0)
    assert aug["rare_types"] == ["3"] and aug["n_added"] == {"3": 6}
    with pytest.raises(DataError, match="no rare types given"):
        augmentation(train, val, test, by_type, [], CFG, seed=0)


def test_cells_in_different_feature_spaces_refused_before_training(rare_splits):
    """Synthetic cells of another width than the real ones: ``tstr`` trained both classifiers
    before the test cells were refused, ``augmentation`` failed with numpy's ValueError (a
    1-d array of one cell too): a DataError naming each X's width, before any training."""
    from cellsynth.metrics import tstr

    train, val, test, by_type = rare_splits

    def narrow(pair):
        return pair[0][:, :5], pair[1]

    with pytest.raises(DataError, match=r"different feature spaces.*synth_train 5"):
        tstr(train, val, test, narrow(train), narrow(val), CFG, seed=0)
    with pytest.raises(DataError, match=r"different feature spaces.*synth_by_type\['type3'\] 5"):
        augmentation(train, val, test, {"type3": by_type["type3"][:, :5]}, ["type3"], CFG,
                     seed=0)
    with pytest.raises(DataError, match=r"must be cells x features \(2-d\)"):
        augmentation(train, val, test, {"type3": by_type["type3"][0]}, ["type3"], CFG, seed=0)


def test_an_empty_split_is_named_before_training(rare_splits):
    """An empty real test set trained both of ``tstr``'s classifiers, then failed with 'no cells
    to score: y_true and y_pred are empty', naming no argument: refused first, by name."""
    from cellsynth.metrics import tstr

    train, val, test, _ = rare_splits
    empty = (test[0][:0], test[1][:0])
    with pytest.raises(DataError, match="real_test has no cells, so nothing can be scored"):
        tstr(train, val, empty, train, val, CFG, seed=0)
    with pytest.raises(DataError, match="synth_test has no cells"):
        tstr(train, val, test, train, val, CFG, seed=0, synth_test=empty)
