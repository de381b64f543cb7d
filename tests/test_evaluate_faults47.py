"""`cellsynth evaluate` / `cs.evaluate` misused as users do (session 47's sweep): labels missing
as text beside held-out training cells, fidelity.md's command, names shared by files written
apart, donors the subsample did not read, an empty --out, a donor_key list, type names in
another Unicode form, a fit's test cells as members, the max_cells advice, and attacks that
read the held-out cells as the members (real and held-out swapped)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.errors import DataError


def _sim(n: int = 300, seed: int = 0, genes: int = 120, types: int = 3):
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(n, genes, types, seed=seed, doublet_rate=0.0, uninformative_rate=0.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    return a


def test_training_cells_in_heldout_are_found_when_some_labels_are_missing_as_text():
    """Real cells labelled "" (missing written as text) shifted the positions the name check
    read: held-out cells that were training cells crashed it (IndexError), or were compared
    with other cells."""
    import anndata as ad

    from cellsynth.evaluation.overlap import check_disjoint

    a = _sim(300)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    real, test = a[:200].copy(), a[200:].copy()
    labels = real.obs["cell_type"].copy()
    labels.iloc[:20] = ""
    real.obs["cell_type"] = labels
    heldout = ad.concat([test, real[-60:]])  # the last training cells, under their names
    with pytest.raises(DataError, match=r"share about 60 of their 160 cells"):
        check_disjoint(real, heldout, "cell_type", 0)


def test_the_command_in_fidelity_md_gives_the_same_evaluation(tmp_path):
    """fidelity.md's command left out --donor-key, --seed, --max-cells and --gene-repeats:
    copied, it scored other cells (the defaults) and ran no donor-level audit."""
    import json
    import shlex

    from cellsynth.cli import main

    a = _sim(600, seed=3)
    a.obs["donor"] = np.where(np.arange(a.n_obs) % 2, "d1", "d2")
    real, test, syn = (tmp_path / f"{n}.h5ad" for n in ("real", "test", "syn"))
    a[:300].write_h5ad(real)
    a[300:].write_h5ad(test)
    _sim(300, seed=4).write_h5ad(syn)
    args = ["--real", str(real), "--synthetic", str(syn), "--label-key", "cell_type",
            "--heldout", str(test), "--donor-key", "donor", "--seed", "5", "--max-cells",
            "150", "--gene-repeats", "1"]
    assert main(["evaluate", *args, "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    text = (tmp_path / "ev" / "fidelity.md").read_text()
    command = text.split("`cellsynth evaluate ", 1)[1].split("`", 1)[0]
    assert shlex.split(command) == args
    # held-out cells given in memory beside files: no command with "--heldout AnnData"
    from cellsynth.evaluation import write

    result = json.loads((tmp_path / "ev" / "fidelity.json").read_text())
    write({**result, "heldout": "AnnData"}, tmp_path / "ev2")
    text = (tmp_path / "ev2" / "fidelity.md").read_text()
    assert "--heldout AnnData" not in text and "on AnnData objects" in text


def test_held_out_cells_that_share_only_names_with_the_fitted_file_are_not_refused(tmp_path):
    """A training file and a held-out file written apart (cells named 0, 1, ...; barcodes of
    two 10x channels) share names, not cells: they were refused as cells the generator was
    fitted on. The names of cells it saw, with their counts, still are."""
    import anndata as ad

    from cellsynth.evaluation.overlap import check_heldout_unseen

    train, test = _sim(200, seed=5), _sim(150, seed=6)
    train.obs_names = [str(i) for i in range(train.n_obs)]
    test.obs_names = [str(i) for i in range(test.n_obs)]
    fitted = tmp_path / "train.h5ad"
    train.write_h5ad(fitted)
    model = tmp_path / "model"
    model.mkdir()
    (model / "run_config.toml").write_text(f'[dataset]\npath = "{fitted}"\n')
    synthetic = _sim(100, seed=7)
    synthetic.uns["cellsynth"] = {"model_path": str(model)}
    check_heldout_unseen(synthetic, test)  # other cells under the same names: fine
    seen = ad.concat([test[:100], train[150:]])  # 50 cells it was fitted on
    seen.obs_names_make_unique()
    with pytest.raises(DataError, match=r"50 of the 150 held-out cells .* by cell name and "
                                        r"counts"):
        check_heldout_unseen(synthetic, seen)


def test_a_training_donor_the_subsample_did_not_read_is_no_held_out_donor(monkeypatch):
    """The donor level took for held-out donors those absent from the training cells read
    (a subsample): a donor with a few training cells, none read, was attacked as a donor the
    generator never saw. Every training donor in the input is now the pool."""
    import anndata as ad

    import cellsynth as cs
    import cellsynth.metrics.privacy as privacy

    a = _sim(420, seed=8, genes=80)
    a.obs["donor"] = np.array(["d0", "d1", "d2", "d3", "d4", "d5", "d6"])[np.arange(420) % 7]
    train = a[a.obs["donor"].isin(["d0", "d1", "d2", "d3"]).to_numpy()].copy()
    test = a[a.obs["donor"].isin(["d4", "d5", "d6"]).to_numpy()].copy()
    stray = test[:1].copy()  # one training cell of donor d4, not among the 80 read
    stray.obs_names = ["stray"]
    train = ad.concat([train, stray])
    seen = {}

    class Stop(Exception):
        pass

    def audit(*args, donor_pool=None, **kwargs):
        seen["pool"] = set(np.asarray(donor_pool).tolist())
        raise Stop

    monkeypatch.setattr(privacy, "privacy_audit", audit)
    with pytest.raises(Stop):
        cs.evaluate(train, _sim(200, seed=9, genes=80), label_key="cell_type", heldout=test,
                    donor_key="donor", max_cells=40, gene_repeats=1)
    assert seen["pool"] == {"d0", "d1", "d2", "d3", "d4"}



@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_output_folder_is_refused_before_any_work(out, tmp_path, monkeypatch, capsys):
    """`cellsynth evaluate --out "$EVAL"` with EVAL unset (and out="" in Python) wrote
    fidelity.json, fidelity.md and per_type.csv into the current folder after the work."""
    import cellsynth as cs
    from cellsynth.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"out is empty .* would name the current folder"):
        cs.evaluate("real.h5ad", "syn.h5ad", label_key="cell_type", out=out)
    assert main(["evaluate", "--real", "real.h5ad", "--synthetic", "syn.h5ad", "--label-key",
                 "cell_type", "--out", out]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("donor_key", [["donor"], 3])
def test_a_donor_key_that_is_not_a_column_name_is_a_one_line_error(donor_key):
    """donor_key=["donor"] ended in pandas' TypeError (unhashable type: 'list')."""
    import cellsynth as cs

    a = _sim(200, seed=10)
    with pytest.raises(DataError, match=r"donor_key takes the name of one obs column"):
        cs.evaluate(a, a, label_key="cell_type", heldout=a, donor_key=donor_key)


def test_type_names_in_another_unicode_form_are_named_with_the_fix(caplog):
    """'Naïve T' written as i + a combining diaeresis on one side was "no real type of that
    name", beside real types that printed the same: nothing said why, or how to mend it."""
    import unicodedata

    import pandas as pd

    from cellsynth.evaluation.inputs import _check_labels

    real = pd.Series({unicodedata.normalize("NFC", "Naïve T"): 50, "B": 40})
    synthetic = pd.Series({unicodedata.normalize("NFD", "Naïve T"): 50, "B": 40})
    with caplog.at_level("WARNING"):
        _check_labels(real, synthetic, "cell_type")
    assert r"'Nai\u0308ve T' (real: 'Na\xefve T', the same name in another Unicode form" \
        in caplog.text
    assert "unicodedata.normalize('NFC', s)" in caplog.text
    with pytest.raises(DataError, match="another Unicode form"):
        _check_labels(real, synthetic.drop("B"), "cell_type")


def test_real_cells_the_fit_left_out_are_refused_as_the_audits_members(tmp_path):
    """A fit's own file, split with obs['cellsynth_split'], given as the real (training) cells
    beside held-out ones: its 'test' cells were read as members the generator trained on,
    pulling every attack towards chance."""
    import cellsynth as cs

    a = _sim(300, seed=11)
    real, test = a[:200].copy(), a[200:].copy()
    real.obs["cellsynth_split"] = np.where(np.arange(200) % 5 == 0, "test", "train")
    path = tmp_path / "split.h5ad"
    real.write_h5ad(path)
    for given in (real, path):
        with pytest.raises(DataError, match=r"hold 40 cells marked 'test' in "
                                            r"obs\['cellsynth_split'\], which cellsynth fit"):
            cs.evaluate(given, test, label_key="cell_type", heldout=test)
    real.obs["cellsynth_split"] = "train"
    from cellsynth.evaluation.overlap import check_members

    check_members(real)  # every cell trained on: fine
    with pytest.raises(DataError, match="the real data is a list; give an AnnData"):
        cs.evaluate([real], test, label_key="cell_type", heldout=test)  # its reader's message


def test_a_type_too_noisy_to_judge_is_told_to_raise_max_cells_only_when_that_helps():
    """Every cell of a type was already scored (the inputs hold no more) and the verdict
    still said "give more cells (max_cells)": raising it changes nothing."""
    from cellsynth.metrics.verdict import fidelity_verdict

    fs = {"overall": {}, "per_type": {}}
    ff = {"overall": {}, "per_type": {}}
    for t in ("delta", "ok"):
        fs["per_type"][t] = {"c2st_auc": 0.785 if t == "delta" else 0.52, "n_real": 22,
                             "n_synth": 44, "library_size_distance": 0.03}
        ff["per_type"][t] = {"c2st_auc": 0.683 if t == "delta" else 0.50, "n_real": 22,
                             "n_synth": 22, "library_size_distance": 0.02}
    block = {"knn_precision": {"value": 1.0, "floor": 0.98, "sd": 0.01, "n": 22},
             "marker_overlap": {"value": 0.36, "floor": 0.36, "sd": 0.01, "n": 22}}
    noisy = {**block, "knn_recall": {"value": 0.49, "floor": 1.0, "sd": 0.2, "n": 22}}
    typewise = {"per_type": {"delta": noisy, "ok": block}}

    def why(real_more: bool) -> str:
        counts = {t: {"real": 22, "synthetic": 44, "real_total": 44, "synthetic_total": 44,
                      "real_more": real_more} for t in ("delta", "ok")}
        v = fidelity_verdict(fs, ff, typewise=typewise, type_counts=counts)
        return v["too_few"]["delta"]

    assert "the inputs hold only 44 real and 44 synthetic" in why(False)
    assert "max_cells" not in why(False)
    assert "raise max_cells to judge this type (the inputs hold 44 real" in why(True)


def test_real_more_says_whether_max_cells_held_real_cells_back():
    import pandas as pd

    from cellsynth.evaluation import _type_counts

    labels = np.array(["a"] * 40 + ["b"] * 60)
    total = pd.Series(labels).value_counts()
    rl = np.array(["a"] * 19 + ["b"] * 31)  # half of them, rounding aside: max_cells >= 50
    whole = {"real_total": total, "synthetic_total": total,
             "evaluated": np.ones(50, dtype=bool)}
    assert not _type_counts(rl, labels, whole)["a"]["real_more"]
    capped = {**whole, "evaluated": np.ones(30, dtype=bool)}  # max_cells = 30 < 50
    rl = np.array(["a"] * 12 + ["b"] * 18)
    assert _type_counts(rl, labels, capped)["a"]["real_more"]


def _audit(auc: float):
    from cellsynth.metrics.privacy import PrivacyResult

    attack = {"auc": auc, "threshold": 0.57, "flagged": auc > 0.57, "se_null": 0.03,
              "n_members": 300, "n_nonmembers": 300}
    return PrivacyResult({"exact_share": 0.0, "exact_duplicates": 0, "exact_source": "counts"},
                         {"distance": dict(attack)}, None, None, "cells", False, [], {})


def test_attacks_that_read_the_held_out_cells_as_members_are_said(caplog):
    """--real TEST --heldout TRAIN (swapped): the generated cells sat nearer the held-out
    cells, every attack read an AUC of about 0.34, and the audit said "not flagged"."""
    from cellsynth.metrics.privacy_counts import average_audits

    with caplog.at_level("WARNING"):
        low = average_audits([_audit(0.33), _audit(0.35)])
    assert not low.flagged
    assert "the attacks read the held-out cells as the members (cell-level distance attack " \
           "AUC 0.340" in low.caveats[0]
    assert "swapped" in low.caveats[0] and "swapped" in caplog.text
    assert average_audits([_audit(0.47), _audit(0.49)]).caveats == []  # chance: nothing said


def test_members_marked_test_in_another_spelling_are_not_missed():
    """The members' check compared obs['cellsynth_split'] to 'test' as written: 'Test' cells
    (a split column of another tool) passed as members. It reads the column as every fit does
    (data.split.split_column): values other than train, val and test are named."""
    from cellsynth.evaluation.overlap import check_members

    real = _sim(60, seed=3)
    real.obs["cellsynth_split"] = np.where(np.arange(60) % 3 == 0, "Test", "Train")
    with pytest.raises(DataError, match=r"holds 'Test', 'Train'; its values are 'train'"):
        check_members(real)
