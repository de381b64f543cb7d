"""The privacy audit misused as users do (session 49's sweep): settings and inputs of the
audit's Python functions that are no numbers of cells or counts, cells listed twice, donors of
one side or in the label column, a few cells of a new donor, sets too small for the audit
named by the setting that gives them cells (evaluate, a run, a benchmark), and audits whose
numbers mean little said as such (weak, swapped, a donor level that cannot flag; the figure,
a benchmark's fits and controls)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.errors import DataError

N_GENES, DIM = 40, 8
RATES = np.random.default_rng(99).lognormal(0.5, 1.0, (3, N_GENES))  # 3 cell types
PROJ = np.random.default_rng(98).normal(size=(N_GENES, DIM))  # a fixed "evaluation space"


def _counts(n: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mu = RATES[rng.integers(0, 3, n)] * rng.lognormal(0.0, 0.3, (n, 1))
    return sp.csr_matrix(rng.poisson(mu).astype(np.float32))


def _embed(x: sp.csr_matrix) -> np.ndarray:
    return (np.log1p(x.toarray()) @ PROJ).astype(np.float32)


@pytest.fixture(scope="module")
def cells() -> dict[str, sp.csr_matrix]:
    return {"train": _counts(120, 1), "heldout": _counts(120, 2), "synth": _counts(120, 3)}


@pytest.mark.parametrize(("setting", "value", "said"), [
    ("max_n", 2, r"max_n must be a whole number of at least 20.*got 2; give max_n=20"),
    ("max_n", 0, r"max_n must be a whole number of at least 20.*got 0"),
    ("max_n", 1.5, r"max_n must be .*got 1.5"),
    ("max_n", None, r"max_n must be .*got None"),
    ("k", 1.5, r"k must be a whole number of at least 1 .*got 1.5"),
    ("k", "1", r"k must be a whole number .*got '1'"),
    ("seed", None, r"seed must be a whole number from 0"),
    ("seed", -1, r"seed must be a whole number from 0 .*got -1"),
])
def test_audit_settings_that_are_no_count_are_one_line_errors(cells, setting, value, said):
    """privacy_audit(..., max_n=2) scored every attack on two cells a side and said "not
    flagged" (an AUC of 0.25 on 2 members); max_n=0 or 1, a float, None, a seed of None or -1
    and k='1' ended in tracebacks of numpy or scikit-learn (IndexError, 'n_splits=1', 'an
    integer is required'). Each function of the audit checks them before any work."""
    from cellsynth.metrics.privacy import (
        distance_to_closest,
        membership_attacks,
        privacy_audit,
    )

    tr, ho, sy = (_embed(cells[k]) for k in ("train", "heldout", "synth"))
    kwargs = {"seed": 0, setting: value}
    calls = [lambda: privacy_audit(tr, ho, sy, **kwargs),
             lambda: membership_attacks(tr, ho, sy, **kwargs)]
    if setting != "k":
        calls.append(lambda: distance_to_closest(tr, ho, sy, **kwargs))
    for call in calls:
        with pytest.raises(DataError, match=said):
            call()


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"repeats": 1.5}, r"repeats must be at least 1, a whole number of halvings, got 1.5"),
    ({"repeats": "2"}, r"repeats must be at least 1.*got '2'"),
    ({"max_n": 1}, r"max_n must be a whole number of at least 20"),
    ({"seed": "a"}, r"seed must be a whole number"),
])
def test_audit_counts_settings_are_checked_before_any_work(cells, kwargs, said):
    """audit_counts(..., repeats=1.5) stopped in range() ('float' object cannot be interpreted
    as an integer), repeats='2' in a comparison, max_n=1 in scikit-learn's k-fold after a
    space was fitted."""
    from cellsynth.metrics.privacy_counts import audit_counts

    genes = [f"g{i}" for i in range(N_GENES)]
    with pytest.raises(DataError, match=said):
        audit_counts(cells["train"], cells["heldout"], cells["synth"], genes,
                     **{"seed": 0, **kwargs})


def test_privacy_audit_called_alone_says_a_weak_or_swapped_audit(cells, caplog):
    """cs.metrics.privacy_audit on 25 cells a side said "not flagged" with no caveat (a flag
    needed an AUC above 0.75), and on generated cells that copy the held-out ones (the sides
    swapped) every AUC was 0.0 and nothing was said: only the averaged audit of
    cs.evaluate and a run read these. The audit says both itself, once also when averaged."""
    from cellsynth.metrics.privacy import privacy_audit
    from cellsynth.metrics.privacy_counts import average_audits

    tr, ho, sy = (cells[k][:25] for k in ("train", "heldout", "synth"))
    with caplog.at_level("WARNING"):
        weak = privacy_audit(_embed(tr), _embed(ho), _embed(sy), seed=0, train_counts=tr,
                             heldout_counts=ho, synthetic_counts=sy)
    assert not weak.flagged
    assert [c for c in weak.caveats if c.startswith("a weak audit: at 25 training and 25 "
                                                     "held-out cells")]
    assert "a weak audit" in caplog.text
    assert "--max-cells, report.max_cells in a run)" in caplog.text  # a run's setting too
    ho, sy = cells["heldout"], cells["heldout"].copy()
    swapped = privacy_audit(_embed(cells["train"]), _embed(ho), _embed(sy), seed=0,
                            train_counts=cells["train"], heldout_counts=ho,
                            synthetic_counts=sy, log=False)
    assert [c for c in swapped.caveats if "read the held-out cells as the members" in c]
    again = average_audits([swapped, swapped])  # said once, from the means
    assert sum("read the held-out cells as the members" in c for c in again.caveats) == 1
    assert average_audits([weak]).caveats == weak.caveats


def test_a_run_s_test_split_too_small_for_the_audit_names_the_run_s_settings(cells, caplog):
    """`cellsynth run --set split.test=0.05` on 300 cells skipped the audit with "heldout has
    13 cells but the privacy audit needs at least 20 in each set; give more cells": a run has
    no "heldout", and no setting was named. The run (and the benchmark) name theirs."""
    from types import SimpleNamespace

    from cellsynth.metrics.space import fit_space
    from cellsynth.pipeline.evaluation import _leaks

    genes = [f"g{i}" for i in range(N_GENES)]
    train, labels = cells["train"], np.array(["a", "b", "c"] * 40)
    space = fit_space(train, labels, genes, seed=0)
    ctx = SimpleNamespace(seed=lambda name: 0, cfg=SimpleNamespace(
        dataset=SimpleNamespace(donor_key="")))
    with caplog.at_level("WARNING"):
        out = _leaks(ctx, space, train, labels, cells["heldout"][:13], cells["synth"],
                     {"c2st_auc": 0.5})
    said = out["privacy"]["skipped"]
    assert said.startswith("the held-out set has 13 cells but the privacy audit needs at least 20")
    assert "the run's test cells are its held-out set" in said and "split.test" in said
    assert "give more cells" not in said.split(";")[0]
    from cellsynth.metrics.privacy_counts import audit_counts

    with pytest.raises(DataError, match=r"the synthetic set has 5 cells .*give more generated"):
        audit_counts(train, cells["heldout"], cells["synth"][:5], genes, seed=0)
    with pytest.raises(DataError, match=r"needs at least 40 training cells .*got 30; give more"):
        audit_counts(train[:30], cells["heldout"], cells["synth"], genes, seed=0)


def _sim(n: int, seed: int = 0):
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(n, 80, 3, seed=seed, doublet_rate=0.0, uninformative_rate=0.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs_names = [f"c{seed}_{i}" for i in range(n)]
    return a


@pytest.mark.parametrize("side", ["heldout", "real"])
def test_cells_listed_twice_are_refused_before_the_audit_reads_a_leak(side, cells):
    """Held-out cells concatenated with themselves (names made unique) were audited as 600
    cells: a candidate's twin in the density attack's reference flagged a leak (AUC 0.77, a
    generator of independent cells); training cells listed twice read as the sides swapped
    (AUC 0.36). Either side repeating its own cells is refused before any work."""
    import anndata as ad

    import cellsynth as cs
    from cellsynth.metrics.privacy import privacy_audit

    a = _sim(360, seed=1)
    real, test, synth = a[:120].copy(), a[120:240].copy(), a[240:].copy()
    twice = {"heldout": test, "real": real}[side]
    twice = ad.concat([twice, twice])
    twice.obs_names_make_unique()
    given = {"real": real, "heldout": test, side: twice}
    what = {"heldout": "held-out", "real": "training"}[side]
    with pytest.raises(DataError, match=rf"120 of the 240 {what} cells read repeat another "
                                        rf"{what} cell, count for count.*keep one of each"):
        cs.evaluate(given["real"], synth, label_key="cell_type", heldout=given["heldout"])
    tr, ho = cells["train"], sp.vstack([cells["heldout"][:60]] * 2, format="csr")
    with pytest.raises(DataError, match=r"60 of the 120 held-out cells read repeat"):
        privacy_audit(_embed(tr), _embed(ho), _embed(cells["synth"]), seed=0, train_counts=tr,
                      heldout_counts=ho, synthetic_counts=cells["synth"])


def test_audit_inputs_that_are_no_matrix_or_no_counts_are_named(cells):
    """The audit's Python functions given an AnnData or a path stopped in numpy or scipy
    ('setting an array element with a sequence', 'unrecognized csr_matrix constructor
    input'), genes=None in len(); NaN or negative counts given to audit_counts were said as
    "heldout has NaN or infinite coordinates; embed finite counts" (no coordinates were
    given), and privacy_audit's held-out counts of NaN as cells that repeat each other."""
    import anndata as ad

    from cellsynth.metrics.privacy import privacy_audit
    from cellsynth.metrics.privacy_counts import audit_counts

    tr, ho, sy = cells["train"], cells["heldout"], cells["synth"]
    genes = [f"g{i}" for i in range(N_GENES)]
    with pytest.raises(DataError, match=r"train must be a matrix of embedded cells .*not "
                                        r"AnnData .*cellsynth.evaluate\(real, synthetic"):
        privacy_audit(ad.AnnData(_embed(tr)), _embed(ho), _embed(sy), seed=0)
    with pytest.raises(DataError, match=r"heldout must be a matrix .*not str 'test.h5ad'"):
        privacy_audit(_embed(tr), "test.h5ad", _embed(sy), seed=0)
    with pytest.raises(DataError, match=r"training counts must be a matrix of raw counts .*not "
                                        r"AnnData.*give adata.X or adata.layers\['counts'\]"):
        audit_counts(ad.AnnData(tr), ho, sy, genes, seed=0)
    with pytest.raises(DataError, match=r"genes must be the list of the counts' gene names"):
        audit_counts(tr, ho, sy, None, seed=0)
    bad = ho.copy()
    bad.data[:5] = np.nan
    with pytest.raises(DataError, match=r"held-out counts holds NaN or infinite values"):
        audit_counts(tr, bad, sy, genes, seed=0)
    bad.data[:5] = -3
    with pytest.raises(DataError, match=r"held-out counts holds negative values"):
        audit_counts(tr, bad, sy, genes, seed=0)
    nan = sp.csr_matrix(np.full(ho.shape, np.nan, dtype=np.float32))
    with pytest.raises(DataError, match=r"heldout counts holds NaN or infinite values"):
        privacy_audit(_embed(tr), _embed(ho), _embed(sy), seed=0, train_counts=tr,
                      heldout_counts=nan, synthetic_counts=sy)


def test_donors_of_one_side_only_are_refused_not_said_to_be_missing(cells):
    """privacy_audit(..., train_donors=d) without heldout_donors skipped the donor level as
    "no donor column given (donor_key=, --donor-key)", though one was given; donors as a
    column of shape (n, 1) were "300 labels for 300 cells"."""
    from cellsynth.metrics.privacy import membership_attacks, privacy_audit
    from cellsynth.metrics.privacy_counts import audit_counts

    tr, ho, sy = (_embed(cells[k]) for k in ("train", "heldout", "synth"))
    donors = np.array(["a", "b", "c"])[np.arange(120) % 3]
    with pytest.raises(DataError, match=r"train_donors is given without heldout_donors.*give "
                                        r"heldout_donors too .*or neither"):
        privacy_audit(tr, ho, sy, seed=0, train_donors=donors)
    with pytest.raises(DataError, match=r"heldout_donors is given without train_donors"):
        membership_attacks(tr, ho, sy, seed=0, heldout_donors=donors)
    with pytest.raises(DataError, match=r"heldout_donors is given without train_donors"):
        audit_counts(cells["train"], cells["heldout"], cells["synth"],
                     [f"g{i}" for i in range(N_GENES)], seed=0, heldout_donors=donors)
    with pytest.raises(DataError, match=r"train_donors holds 120 labels, shape \(120, 1\), for "
                                        r"120 cells; give one donor per cell, a 1-d list"):
        privacy_audit(tr, ho, sy, seed=0, train_donors=donors[:, None], heldout_donors=donors)


def test_the_privacy_figure_says_what_its_not_flagged_must_be_read_with():
    """cs.pl.privacy of an audit whose sides were swapped (every AUC 0.0) or too small to
    flag a leak titled it "privacy: not flagged", where the audit itself said a leak would
    read as none: the title names the audit's caveats."""
    import cellsynth as cs
    from cellsynth.metrics.privacy import auc_threshold

    threshold, se = auc_threshold(30, 30)
    attack = {"auc": 0.0, "threshold": threshold, "flagged": False, "se_null": se,
              "n_members": 30, "n_nonmembers": 30}
    audit = {"attacks": {"distance": attack}, "flagged": False, "caveats": [
        "the attacks read the held-out cells as the members (cell-level distance attack AUC "
        "0.000, ...)", "a weak audit: at 30 training and 30 held-out cells ...", "other"]}
    title = cs.pl.privacy(audit).get_title(loc="right")
    assert title == "privacy: not flagged (read with: sides swapped?, a weak audit, see caveats)"
    audit["caveats"] = []
    assert cs.pl.privacy(audit).get_title(loc="right") == "privacy: not flagged"


def test_a_donor_key_that_is_the_label_column_is_refused_before_any_work(tmp_path, capsys):
    """`cellsynth evaluate --heldout TEST --donor-key cell_type --label-key cell_type` read
    each cell type as a donor and said the donor level was skipped because "every held-out
    donor (3) also has training cells" (a run refuses it as dataset.donor_key)."""
    import cellsynth as cs
    from cellsynth.cli import main

    a = _sim(240, seed=2)
    with pytest.raises(DataError, match=r"donor_key 'cell_type' is the label column"):
        cs.evaluate(a[:120], a[120:], label_key="cell_type", heldout=a[:120],
                    donor_key="cell_type", out=tmp_path / "ev")
    assert main(["evaluate", "--real", "r.h5ad", "--synthetic", "s.h5ad", "--heldout", "t.h5ad",
                 "--label-key", "cell_type", "--donor-key", "cell_type", "--out",
                 str(tmp_path / "ev")]) == 2
    assert "is the label column (label_key)" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def _attack(n_members: int, n_nonmembers: int, auc: float = 0.5) -> dict:
    from cellsynth.metrics.privacy import auc_threshold

    threshold, se = auc_threshold(n_members, n_nonmembers)
    return {"auc": auc, "threshold": threshold, "flagged": auc > threshold, "se_null": se,
            "n_members": n_members, "n_nonmembers": n_nonmembers}


def test_a_donor_level_that_cannot_flag_is_said_in_the_audit_itself():
    """`cellsynth evaluate --donor-key donor` with 3 training and 3 held-out donors: fidelity.md
    and the run's report showed donor-level AUCs "flagged above 1.264" with nothing said (only
    the command line's verdict lines said no AUC can pass); the audit's caveats say it, and
    so every page that shows them does."""
    import cellsynth as cs
    from cellsynth.metrics.privacy import PrivacyResult
    from cellsynth.metrics.privacy_counts import average_audits

    def audit(donors: int, auc: float = 0.2) -> PrivacyResult:
        return PrivacyResult({"exact_share": 0.0, "exact_duplicates": 0, "exact_source": "x"},
                             {"distance": _attack(2000, 2000)},
                             {"distance": _attack(donors, donors, auc)}, None, "donors",
                             False, [], {})

    few = average_audits([audit(3)])
    said = [c for c in few.caveats if c.startswith("the donor level cannot flag")]
    assert len(said) == 1 and "at 3 training and 3 held-out donors no AUC passes its " \
                                "threshold (1.264); hold out more donors" in said[0]
    assert average_audits([audit(30, 0.5)]).caveats == []  # 30 donors a side can flag
    assert cs.pl.privacy(few.to_dict()).get_title(loc="right") == (
        "privacy: not flagged (read with: too few donors)")


def test_an_audit_set_held_back_by_max_cells_is_told_to_raise_it():
    """`cellsynth evaluate --heldout TEST --max-cells 15` on 300 real cells: "the real
    (training) cells scored has 15 cells ...; give more cells", where the input held 150 that
    a larger --max-cells would score. More cells is said only where the input lacks them."""
    import cellsynth as cs

    a = _sim(400, seed=3)
    real, test, synth = a[:200], a[200:300], a[300:]
    with pytest.raises(DataError, match=r"the real \(training\) cells scored has 15 cells .*"
                                        r"raise max_cells \(--max-cells, now 15\): the input "
                                        r"gives up to 100"):
        cs.evaluate(real, synth, label_key="cell_type", heldout=test, max_cells=15)
    with pytest.raises(DataError, match=r"the held-out data has 10 cells .*at least 20 in each "
                                        r"set; give more cells, or leave heldout out"):
        cs.evaluate(real, synth, label_key="cell_type", heldout=test[:10])


def test_a_leak_flagged_in_some_fits_of_a_benchmark_is_said_not_outvoted():
    """`cellsynth benchmark --fits 2` whose privacy audit flagged one fit and not the other
    wrote "no" under "leak flagged" (a tie broken by the order of the fits; with 3 fits a
    flag in one was outvoted). The row says "yes (1 of 2 fits)", and a control flagged in
    some fits only has its target missed."""
    from cellsynth.benchmark import mean_of_fits
    from cellsynth.evaluation.page import _privacy_targets

    def fits(*flags: str) -> list[tuple[dict, dict]]:
        return [({"privacy_flagged": f, "verdict": "close"}, {"seconds": 1.0}) for f in flags]

    assert mean_of_fits(fits("no", "yes"))[0]["privacy_flagged"] == "yes (1 of 2 fits)"
    assert mean_of_fits(fits("yes", "no", "no"))[0]["privacy_flagged"] == "yes (1 of 3 fits)"
    assert mean_of_fits(fits("yes", "yes"))[0]["privacy_flagged"] == "yes"
    assert mean_of_fits(fits("no", "no"))[0]["privacy_flagged"] == "no"
    notes = _privacy_targets({"copy": {"privacy_flagged": "yes (1 of 2 fits)"}}, None)
    assert notes == ["the copy control is flagged by the privacy audit: missed (flagged in 1 "
                     "of 2 fits only)"]
    assert _privacy_targets({"copy": {"privacy_flagged": "yes"}}, None) == [
        "the copy control is flagged by the privacy audit: met"]


@pytest.mark.parametrize("given", [[], None, "audit", [{"attacks": {}}]])
def test_average_audits_of_no_audit_is_named(given):
    """average_audits([]) stopped with IndexError, of to_dict()'s dicts with AttributeError
    ('dict' object has no attribute 'attacks')."""
    from cellsynth.metrics.privacy_counts import average_audits

    with pytest.raises(DataError, match=r"average_audits takes a non-empty list of "
                                        r"PrivacyResult"):
        average_audits(given)


def test_a_few_cells_of_a_new_donor_skip_the_donor_level_not_the_whole_audit(cells):
    """`cellsynth evaluate --heldout TEST --donor-key donor` where 5 of the 300 held-out cells
    were of a donor absent from training (the rest of training donors) failed after the whole
    evaluation with "heldout has 5 cells but the privacy audit needs at least 20 in each set;
    give more cells". The donor level is skipped with the reason; the cell level stands."""
    from cellsynth.metrics.privacy import privacy_audit

    tr, ho, sy = (_embed(cells[k]) for k in ("train", "heldout", "synth"))
    train_donors = np.array(["a", "b", "c"])[np.arange(120) % 3]
    heldout_donors = train_donors.copy()
    heldout_donors[:5] = "z"
    result = privacy_audit(tr, ho, sy, seed=0, train_donors=train_donors,
                           heldout_donors=heldout_donors, log=False)
    assert result.donor_attacks is None
    assert result.donor_skipped == ("5 held-out cell(s) of donors absent from training, fewer "
                                    "than the 20 the donor level needs: give more cells of "
                                    "held-out donors")
    assert result.attacks["distance"]["n_nonmembers"] == 115  # the training donors' cells


def test_a_control_the_benchmark_could_not_audit_is_said_on_its_page():
    """A benchmark of cvae beside the copy control whose audit was skipped (a test split too
    small) dropped the control's target line from the page without a word."""
    from cellsynth.evaluation.page import _privacy_targets

    skipped = {"models": {"copy": {"privacy": {"skipped": "the held-out set has 13 cells"}}}}
    assert _privacy_targets({"copy": {"privacy_flagged": None}}, skipped) == [
        "the copy control is flagged by the privacy audit: not audited (the held-out set has "
        "13 cells)"]
    assert _privacy_targets({}, skipped) == []  # no copy control benchmarked: no line


def test_counts_given_without_the_training_counts_are_not_left_unused(cells):
    """privacy_audit(..., synthetic_counts=sc, heldout_counts=hc) without train_counts looked
    for copies by embedding alone and never read the counts given, without a word: a copy
    of a training cell in counts was looked for as coinciding points."""
    from cellsynth.metrics.privacy import distance_to_closest, privacy_audit

    tr, ho, sy = (_embed(cells[k]) for k in ("train", "heldout", "synth"))
    with pytest.raises(DataError, match=r"synthetic_counts and heldout_counts are compared with "
                                        r"the training cells' counts, which are not given: give "
                                        r"train_counts too"):
        privacy_audit(tr, ho, sy, seed=0, synthetic_counts=cells["synth"],
                      heldout_counts=cells["heldout"])
    with pytest.raises(DataError, match=r"copy_refs are compared"):
        distance_to_closest(tr, ho, sy, seed=0, copy_refs=cells["train"])


def test_a_donor_written_with_a_space_in_one_file_is_not_a_new_donor():
    """Training cells of donor 'd1' and held-out cells written 'd1 ' (files made apart): the
    donor level attacked d1's held-out cells as a donor the generator never saw, without a
    word. Donor names that differ only by spaces across the two are refused, as type names
    are."""
    import cellsynth as cs

    a = _sim(360, seed=4)
    real, test, synth = a[:120].copy(), a[120:240].copy(), a[240:]
    real.obs["donor"] = np.array(["d1", "d2", "d3"])[np.arange(120) % 3]
    test.obs["donor"] = np.array(["d1 ", "d4", "d5"])[np.arange(120) % 3]
    with pytest.raises(DataError, match=r"obs\['donor'\] holds donors that differ only by "
                                        r"surrounding spaces \('d1', 'd1 '\)"):
        cs.evaluate(real, synth, label_key="cell_type", heldout=test, donor_key="donor")


@pytest.mark.slow
def test_an_audit_that_read_part_of_the_training_cells_says_copies_of_the_rest_are_unseen():
    """Exact copies are looked for among the training cells read (``max_cells`` of them): on a
    large atlas most are not read, and a generator copying those would pass unflagged. The
    audit says so where it read part of them and flagged nothing; not where it read them all."""
    import cellsynth as cs

    a = _sim(420, seed=5)
    real, test, synth = a[:240], a[240:330], a[330:]
    part = cs.evaluate(real, synth, label_key="cell_type", heldout=test, max_cells=120,
                       gene_repeats=1)
    said = [c for c in part.privacy["caveats"] if "exact copies were looked for" in c]
    assert not part.privacy["flagged"]
    assert len(said) == 1 and "of 240" in said[0] and "to 240" in said[0], said
    whole = cs.evaluate(real, synth, label_key="cell_type", heldout=test, max_cells=240,
                        gene_repeats=1)
    assert not [c for c in whole.privacy["caveats"] if "exact copies were looked for" in c]
