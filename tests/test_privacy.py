"""Privacy audit on generators whose answer is known: independent draws, copies, noisy copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.errors import CellsynthError, DataError
from cellsynth.metrics.privacy import (
    MIN_CELLS,
    auc_threshold,
    distance_to_closest,
    membership_attacks,
    privacy_audit,
)

N_GENES, DIM = 60, 10
RATES = np.random.default_rng(99).lognormal(0.5, 1.0, (4, N_GENES))  # 4 cell types
PROJ = np.random.default_rng(98).normal(size=(N_GENES, DIM))  # a fixed "evaluation space"


def counts(n: int, seed: int) -> sp.csr_matrix:
    """Poisson counts of ``n`` cells of 4 types, with a per-cell library factor."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, n)
    mu = RATES[types] * rng.lognormal(0.0, 0.3, (n, 1))
    return sp.csr_matrix(rng.poisson(mu).astype(np.float32))


def embed(x: sp.csr_matrix) -> np.ndarray:
    return (np.log1p(x.toarray()) @ PROJ).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, sp.csr_matrix]:
    return {"train": counts(300, 1), "heldout": counts(300, 2), "synth": counts(300, 3)}


def test_independent_generator_is_not_flagged(data: dict) -> None:
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(data["synth"])
    res = privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"],
                        synthetic_counts=data["synth"], heldout_counts=data["heldout"])
    assert not res.flagged, res.reasons
    for name in ("distance", "density"):
        assert abs(res.attacks[name]["auc"] - 0.5) < 0.07, res.attacks[name]
        assert not res.attacks[name]["flagged"]
    assert res.dcr["exact_duplicates"] == 0 and res.dcr["exact_source"] == "counts"
    assert 0.8 < res.dcr["median_ratio"] < 1.25
    assert res.dcr["share_below_quantile"] < 0.12  # 0.05 expected
    assert res.dcr["near_duplicates"] <= 5  # about 1 expected
    json.dumps(res.to_dict(), allow_nan=False)  # JSON-ready
    again = privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"],
                          synthetic_counts=data["synth"], heldout_counts=data["heldout"])
    assert again.to_dict() == res.to_dict()  # same seed, same numbers


def test_copying_generator_is_flagged(data: dict) -> None:
    perm = np.random.default_rng(5).permutation(300)
    syc = data["train"][perm]
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(syc)
    res = privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"], synthetic_counts=syc)
    assert res.flagged
    assert res.attacks["distance"]["auc"] > 0.95 and res.attacks["distance"]["flagged"]
    assert res.attacks["density"]["auc"] > 0.9 and res.attacks["density"]["flagged"]
    assert res.dcr["exact_source"] == "counts"
    assert res.dcr["exact_duplicates"] == syc.shape[0] - int((np.diff(syc.indptr) < 5).sum())
    assert any("exact copies" in r for r in res.reasons)
    # without counts the copies are coinciding points
    dcr = distance_to_closest(tr, ho, sy, seed=0)
    assert dcr["exact_source"] == "embedding" and dcr["exact_duplicates"] == 300
    assert dcr["median_synthetic"] == 0.0 and dcr["share_below_quantile"] == 1.0


def test_noisy_copies_are_flagged(data: dict) -> None:
    """Training cells plus small noise (30% of each PC's spread): no copy, yet a leak."""
    tr, ho = embed(data["train"]), embed(data["heldout"])
    sy = tr + np.random.default_rng(7).normal(scale=0.3 * tr.std(axis=0), size=tr.shape)
    res = privacy_audit(tr, ho, sy, seed=0)
    assert res.flagged and res.dcr["exact_duplicates"] == 0
    assert res.attacks["distance"]["auc"] > 0.9 and res.attacks["density"]["auc"] > 0.7
    assert res.attacks["distance"]["flagged"] and res.attacks["density"]["flagged"]
    assert res.dcr["median_ratio"] < 0.7 and res.dcr["share_below_quantile"] > 0.5
    assert not any("exact copies" in r for r in res.reasons)


def test_posterior_predictive_redraw_is_flagged(data: dict) -> None:
    """Each generated cell a Poisson draw around one training cell's counts: noisier than real
    cells (its DCRs are not small), yet the distance attack finds the members."""
    syc = sp.csr_matrix(np.random.default_rng(7).poisson(data["train"].toarray() + 0.1))
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(syc)
    res = privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"], synthetic_counts=syc)
    assert res.flagged and res.dcr["exact_duplicates"] == 0
    assert res.attacks["distance"]["auc"] > 0.6 and res.attacks["distance"]["flagged"]


def test_donor_level(data: dict) -> None:
    tr, ho = embed(data["train"]), embed(data["heldout"])
    td = np.repeat([f"t{i}" for i in range(6)], 50)
    hd = np.repeat([f"h{i}" for i in range(6)], 50)
    copies = privacy_audit(tr, ho, tr.copy(), seed=1, train_donors=td, heldout_donors=hd)
    assert copies.donor_skipped is None and copies.reference_split == "donors"
    assert copies.donor_attacks["distance"]["auc"] == 1.0
    assert copies.donor_attacks["distance"]["n_members"] == 6
    assert not copies.donor_attacks["distance"]["flagged"]  # 6 donors: too few to flag alone
    fair = membership_attacks(tr, ho, embed(data["synth"]), seed=1, train_donors=td,
                              heldout_donors=hd)
    assert fair["donor_level"] is not None and fair["donor_level"]["density"]["n_nonmembers"] == 6


def test_donor_level_skipped(data: dict) -> None:
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(data["synth"])
    td = np.repeat([f"t{i}" for i in range(6)], 50)
    one = membership_attacks(tr, ho, sy, seed=0, train_donors=td, heldout_donors=["h"] * 300)
    assert one["donor_level"] is None
    assert "1 held-out donor" in one["donor_skipped"] and "at least 2" in one["donor_skipped"]
    assert one["reference_split"].startswith("cells")
    shared = membership_attacks(tr, ho, sy, seed=0, train_donors=td, heldout_donors=td)
    assert shared["donor_level"] is None and "in both train and heldout" in shared["donor_skipped"]
    none = privacy_audit(tr, ho, sy, seed=0)
    assert none.donor_attacks is None and "no donor column given" in none.donor_skipped
    # a donor column without values is no donor: not one donor named "nan" on both sides
    empty = privacy_audit(tr, ho, sy, seed=0, train_donors=[np.nan] * 300,
                          heldout_donors=[None] * 300)
    assert empty.donor_attacks is None
    assert "no values for the training and held-out cells" in empty.donor_skipped
    hd = np.repeat([f"h{i}" for i in range(6)], 50).astype(object)
    hd[:7] = np.nan
    part = privacy_audit(tr, ho, sy, seed=0, train_donors=td, heldout_donors=hd)
    assert part.donor_attacks is None and "0 training and 7 held-out cells have no donor" in \
        part.donor_skipped


def test_heldout_cells_of_training_and_of_new_donors(data: dict) -> None:
    """A run's test split holds cells of training donors (a random split) and of held-out
    donors: the cell level scores the former, the donor level the latter; with no new donor
    the donor level is skipped with what to do, the cell level as without donors."""
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(data["synth"])
    td = np.repeat([f"d{i}" for i in range(6)], 50)
    hd = np.r_[np.repeat([f"d{i}" for i in range(6)], 25), np.repeat([f"n{i}" for i in range(6)], 25)]
    both = privacy_audit(tr, ho, tr.copy(), seed=1, train_donors=td, heldout_donors=hd)
    assert both.donor_skipped is None
    assert both.donor_attacks["distance"]["n_members"] == 6
    assert both.donor_attacks["distance"]["n_nonmembers"] == 6  # the new donors only
    assert both.donor_attacks["distance"]["auc"] == 1.0
    assert both.attacks["distance"]["n_nonmembers"] == 150  # training donors' held-out cells
    assert both.dcr["n_heldout"] == 150
    alone = privacy_audit(tr, ho[:150], tr.copy(), seed=1)  # the same cell level, no donors
    assert both.attacks["distance"]["auc"] == alone.attacks["distance"]["auc"]
    seen = privacy_audit(tr, ho, sy, seed=1, train_donors=td, heldout_donors=np.resize(td, 300))
    assert seen.donor_attacks is None and "split.heldout_donors" in seen.donor_skipped
    assert seen.attacks["distance"]["n_nonmembers"] == 300
    few = np.r_[np.repeat(["d0"], 10), np.repeat([f"n{i}" for i in range(10)], 29)]
    mostly_new = privacy_audit(tr, ho[:300], sy, seed=1, train_donors=td, heldout_donors=few)
    assert mostly_new.attacks["distance"]["n_nonmembers"] == 300  # 10 < MIN_CELLS: all of them
    assert mostly_new.donor_attacks["distance"]["n_nonmembers"] == 10


def test_heldout_overlapping_training_is_an_error(data: dict) -> None:
    tr, sy = embed(data["train"]), embed(data["synth"])
    hoc = sp.vstack([data["heldout"][:200], data["train"][:100]]).tocsr()
    ho = embed(hoc)
    with pytest.raises(CellsynthError, match="meaningless"):
        privacy_audit(tr, ho, sy, seed=0)
    with pytest.raises(CellsynthError, match="by counts"):
        privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"], heldout_counts=hoc)


def test_bad_shapes_are_errors(data: dict) -> None:
    tr, ho, sy = embed(data["train"]), embed(data["heldout"]), embed(data["synth"])
    with pytest.raises(CellsynthError, match=f"at least {MIN_CELLS}"):
        privacy_audit(tr, ho[:5], sy, seed=0)
    with pytest.raises(CellsynthError, match="dimensions"):
        privacy_audit(tr, ho[:, :5], sy, seed=0)
    with pytest.raises(CellsynthError, match="same order"):
        privacy_audit(tr, ho, sy, seed=0, train_counts=data["train"][:10])
    with pytest.raises(CellsynthError, match="one donor per cell"):
        privacy_audit(tr, ho, sy, seed=0, train_donors=["a"] * 3, heldout_donors=["b"] * 300)


def test_threshold_follows_sampling_noise() -> None:
    small, se_small = auc_threshold(100, 100)
    large, _ = auc_threshold(5_000, 5_000)
    assert se_small == pytest.approx(np.sqrt(201 / 120_000))
    assert small == pytest.approx(0.5 + 3 * se_small) and large == pytest.approx(0.55)


def test_audit_counts_fits_its_space_on_other_training_cells():
    """From counts, the space is fitted on half the training cells and the other half are the
    members: a generator independent of its training cells is not flagged, one that returns
    them is. A space fitted on the members themselves spreads them apart from everything
    (a PCA's own cells), which an attack reads as a leak of the wrong sign."""
    from cellsynth.metrics.privacy_counts import audit_counts
    from cellsynth.metrics.space import fit_space

    genes = [f"g{i}" for i in range(N_GENES)]
    train, held, synth = counts(240, 11), counts(200, 12), counts(200, 13)
    fair = audit_counts(train, held, synth, genes, seed=0)
    assert not fair.flagged, fair.reasons
    assert not fair.population["shifted"]
    assert [c for c in fair.caveats if not c.startswith("a weak audit")] == []  # 120 a side
    assert all(abs(a["auc"] - 0.5) < 0.1 for a in fair.attacks.values()), fair.attacks
    assert fair.settings["space_cells"] + fair.settings["member_pool"] == 240
    copies = audit_counts(train, held, train, genes, seed=0)
    assert copies.flagged and copies.attacks["distance"]["auc"] > 0.9
    # every copy is counted, of the space's half too (it counted only the members': 49.7%)
    assert copies.dcr["exact_share"] == 1.0 and copies.dcr["exact_duplicates"] == 240
    shared = sp.vstack([held[:190], train[:10]], format="csr")  # 10 training cells held out
    with pytest.raises(DataError, match="10 of 200 held-out cells are identical to training"):
        audit_counts(train, shared, synth, genes, seed=0)
    space = fit_space(train, np.zeros(240), genes, n_pcs=30, seed=0)  # fitted on the members
    biased = privacy_audit(space.embed(train), space.embed(held), space.embed(synth), seed=0)
    assert biased.attacks["distance"]["auc"] < 0.45 < fair.attacks["distance"]["auc"]


def test_audit_counts_averages_halvings_of_the_training_cells():
    """Each AUC is the mean over halvings (members / space) of the training cells, the first
    halving the one audit of ``repeats=1``; the halvings differ, and a flag follows the mean
    (copies: every halving finds them)."""
    from cellsynth.metrics.privacy_counts import audit_counts

    genes = [f"g{i}" for i in range(N_GENES)]
    train, held, synth = counts(240, 11), counts(200, 12), counts(200, 13)
    one = audit_counts(train, held, synth, genes, seed=0, repeats=1)
    three = audit_counts(train, held, synth, genes, seed=0, repeats=3)
    assert three.settings["repeats"] == 3 and one.settings["repeats"] == 1
    for name, a in three.attacks.items():
        assert len(a["auc_repeats"]) == 3 and a["auc"] == pytest.approx(np.mean(a["auc_repeats"]))
        assert a["auc_repeats"][0] == pytest.approx(one.attacks[name]["auc"])
        assert len(set(a["auc_repeats"])) == 3 and a["auc_sd"] > 0  # other members each time
        assert a["flagged"] == (a["auc"] > a["threshold"])
    assert not three.flagged, three.reasons
    copies = audit_counts(train, held, train, genes, seed=0, repeats=3)
    assert copies.flagged and min(copies.attacks["distance"]["auc_repeats"]) > 0.9
    assert copies.dcr["exact_duplicates"] == 240
    with pytest.raises(DataError, match="repeats must be at least 1"):
        audit_counts(train, held, synth, genes, seed=0, repeats=0)
    from cellsynth.metrics import privacy  # the old home still answers, on first use
    assert privacy.audit_counts is audit_counts
    json.dumps(three.to_dict(), allow_nan=False)


# --- the re-draw attack: a simulation where memorisation is known -----------------------------
SIM_GENES, SIM_TYPES = 200, 4
SIM_BASE = np.random.default_rng(50).normal(-1.0, 1.2, (SIM_TYPES, SIM_GENES))  # type profiles
SIM_LOAD = np.random.default_rng(51).normal(0.0, 0.4, (3, SIM_GENES))  # within-type states


def sim_population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Types and true NB means of ``n`` cells: a type profile, a 3-d within-type state and a
    lognormal depth of about 800 counts (count noise swamps much of each cell's state)."""
    rng = np.random.default_rng(seed)
    t, u = rng.integers(0, SIM_TYPES, n), rng.normal(size=(n, 3))
    p = np.exp(SIM_BASE[t] + u @ SIM_LOAD)
    return t, p / p.sum(1, keepdims=True) * (800 * rng.lognormal(0.0, 0.4, n))[:, None]


def sim_nb(mu: np.ndarray, rng: np.random.Generator, theta: float = 10.0) -> sp.csr_matrix:
    return sp.csr_matrix(rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32))


def sim_sets(n_train: int, n_heldout: int, seed: int) -> dict:
    """Training and held-out counts, a memoriser (one NB re-draw of each training cell's true
    mean: its state and depth plus fresh noise, as a posterior predictive) and an independent
    generator (``nb``'s kind: NB around each type's mean profile, depths of training cells)."""
    rng = np.random.default_rng(seed + 2)
    tt, mt = sim_population(n_train, seed)
    xt, xh = sim_nb(mt, rng), sim_nb(sim_population(n_heldout, seed + 1)[1], rng)
    lib = np.asarray(xt.sum(1)).ravel()
    prof = np.stack([(xt[tt == k].toarray() / lib[tt == k, None]).mean(0)
                     for k in range(SIM_TYPES)])  # fmt: skip
    ts = rng.integers(0, SIM_TYPES, n_train)
    depth = np.array([rng.choice(lib[tt == k]) for k in ts])
    return {"train": xt, "heldout": xh, "labels": tt.astype(str),
            "redraw": sim_nb(mt, rng), "independent": sim_nb(prof[ts] * depth[:, None], rng)}


def test_redraw_attack_flags_a_posterior_predictive_memoriser() -> None:
    """Re-draws of every training cell: the plain distance and density attacks hardly see them
    (count noise swamps the distance), the re-draw attack does."""
    from cellsynth.metrics.privacy_counts import audit_counts

    s = sim_sets(600, 300, seed=100)
    genes = [f"g{i}" for i in range(SIM_GENES)]
    res = audit_counts(s["train"], s["heldout"], s["redraw"], genes, seed=0,
                       train_labels=s["labels"])  # fmt: skip
    a = res.attacks
    assert set(a) == {"distance", "density", "redraw"}
    assert a["redraw"]["flagged"] and res.flagged and a["redraw"]["auc"] > 0.68, a
    assert a["redraw"]["auc"] > max(a["distance"]["auc"], a["density"]["auc"]) + 0.08, a
    assert a["redraw"]["n_members"] == res.settings["member_pool"]  # every member scored
    assert 0.0 < res.settings["redraw"]["library_reliability"] <= 0.99
    assert any("redraw attack" in r for r in res.reasons)
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("n_train", "n_heldout", "seed"),
                         [(200, 100, 1), (400, 200, 2), (800, 400, 3), (1200, 600, 4)])
def test_redraw_attack_leaves_an_independent_generator_unflagged(
    n_train: int, n_heldout: int, seed: int,
) -> None:
    """False alarms: a generator of cells independent of the training cells (their type means
    and depths only) is not flagged at several sizes, and the re-draw AUC stays within the
    null's noise of 0.5 (the threshold's standard error is honest)."""
    from cellsynth.metrics.privacy_counts import audit_counts

    s = sim_sets(n_train, n_heldout, seed=10 * seed)
    genes = [f"g{i}" for i in range(SIM_GENES)]
    res = audit_counts(s["train"], s["heldout"], s["independent"], genes, seed=seed,
                       train_labels=s["labels"])  # fmt: skip
    r = res.attacks["redraw"]
    assert not r["flagged"] and not res.flagged, res.reasons
    assert abs(r["auc"] - 0.5) < 3 * r["se_null"], r


def test_redraw_attack_at_donor_level_and_without_counts() -> None:
    """The re-draw attack joins the donor level when donors are given, and is skipped (the
    other attacks run) without the counts it needs."""
    from cellsynth.metrics.privacy_counts import audit_counts
    from cellsynth.metrics.privacy_redraw import fit_redraw_space
    from cellsynth.metrics.space import fit_space

    s = sim_sets(400, 200, seed=7)
    genes = [f"g{i}" for i in range(SIM_GENES)]
    td = np.array([f"t{i % 8}" for i in range(400)])
    hd = np.array([f"h{i % 8}" for i in range(200)])
    res = audit_counts(s["train"], s["heldout"], s["redraw"], genes, seed=0,
                       train_labels=s["labels"], train_donors=td, heldout_donors=hd)
    assert set(res.donor_attacks) == {"distance", "density", "redraw"}
    assert res.donor_attacks["redraw"]["n_members"] == 8
    space = fit_space(s["train"][:200], s["labels"][:200], genes, seed=0)
    rs = fit_redraw_space(space, s["train"][:200], s["labels"][:200], seed=0)
    emb = [space.embed(x) for x in (s["train"][200:], s["heldout"], s["redraw"])]
    plain = privacy_audit(*emb, seed=0, redraw=rs)  # no counts: no re-draw attack
    assert set(plain.attacks) == {"distance", "density"}


def test_held_out_cells_of_another_population_are_a_caveat_not_a_silent_leak():
    """Held-out cells that differ from the training cells (another sample: a gene programme
    up) make an independent generator look leaky; the audit says the populations differ."""
    from cellsynth.metrics.privacy_counts import audit_counts

    genes = [f"g{i}" for i in range(N_GENES)]
    held = counts(200, 12).toarray()
    held[:, :10] = np.random.default_rng(3).poisson(held[:, :10] * 3 + 2)
    result = audit_counts(counts(240, 11), sp.csr_matrix(held), counts(200, 13), genes, seed=0)
    assert result.population["shifted"] and result.population["auc"] > 0.9
    assert "the held-out cells differ from the training cells themselves" in result.caveats[0]
    assert result.to_dict()["caveats"] == result.caveats

