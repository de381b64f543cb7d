"""Scale faults (sweep 46): an atlas's shape on small data, many types, genes and covariate
levels (donors), and what grew faster than the data."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import torch

from cellsynth.models._design import Design
from cellsynth.models._levels import Combinations, transferred_effects
from cellsynth.models.modules.cvae import CVAEModule


def _types(n_types: int, n_genes: int, donors: list[tuple[int, ...]], seed: int = 0
           ) -> list[Combinations]:  # fmt: skip
    """One Combinations per type: 12 cells at each of its donors, in two conditions."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_types):
        comb = Combinations()
        for d in donors[t]:
            for cond in (0, 1):
                comb.index[(d, cond)] = len(comb.sums)
                comb.sums.append(rng.poisson(rng.gamma(0.5, 4, n_genes) * 12).astype(np.float64))
                comb.cells.append(12)
        out.append(comb)
    return out


def test_carried_level_effects_hold_the_levels_a_type_has_not_every_donor():
    """transferred_effects kept, per type, a table of every level of a covariate by every gene
    (types x donors x genes: 18 GB peak RSS for `cellsynth fit` of 200 types, 300 donors and
    29,000 genes); a type's factors are held for its own levels now, and the effects are those
    of the same data with its donors numbered densely."""
    shared = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]  # donor 0 and 1 carry to the others
    n_genes = 200
    few = transferred_effects(_types(5, n_genes, shared), [4, 2])
    spread = [tuple(d * 5000 for d in donors) for donors in shared]  # the same donors, renamed
    tracemalloc.start()
    try:
        many = transferred_effects(_types(5, n_genes, spread), [20000, 2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert few and {(t, j, lv * 5000) for t, j, lv in few} == set(many)
    for (t, j, lv), effect in few.items():
        np.testing.assert_array_equal(effect, many[(t, j, lv * 5000)])
    assert peak < 20e6, f"{peak / 1e6:.0f} MB for 5 types of {n_genes} genes"


def test_levels_a_type_lacks_are_matched_to_the_types_that_have_them_not_every_type():
    """For each type and each donor it lacked, transferred_effects scanned every other type
    (types x types x donors: 400 types of 2,000 donors, 320 million checks, 23 s, growing
    with the square of the types); the types that have each level are indexed first."""
    n_types, n_donors = 400, 2000
    donors = [(2 * t % n_donors, (2 * t + 1) % n_donors) for t in range(n_types)]
    donors[:3] = [(0, 1), (0, 2), (1, 2)]  # donors 0, 1 and 2 carry to the others of the three
    observed = _types(n_types, 5, donors)
    start = time.perf_counter()
    carried = transferred_effects(observed, [n_donors, 2])
    assert time.perf_counter() - start < 2.0
    assert {(t, lv) for t, _, lv in carried} == {(0, 2), (1, 1), (2, 0)}


def test_decoding_a_few_cells_of_one_type_reads_that_types_rows_not_every_types():
    """Generation decodes each type's cells at each combination of levels apart (a few cells a
    chunk at hundreds of donors); every chunk took the exp of the whole (types x genes)
    dispersion table and asked the whole zero inflation table whether any was set: 163 s for
    14,000 cells of 202 types (33 s now). The same distribution; the zero inflation's state
    follows the buffer when it is set again."""
    n_types, n_genes = 3000, 3000
    module = CVAEModule(n_input=n_genes, n_labels=n_types, n_hidden=[8], n_latent=2,
                        dispersion="gene-label", dispersion_fit="moments").eval()  # fmt: skip
    module.set_dispersion(torch.linspace(-2, 2, n_types * n_genes).reshape(n_types, n_genes))
    z, y, library = torch.zeros(2, 2), torch.full((2,), 7), torch.full((2,), 1e3)
    with torch.no_grad():
        plain = module.generative(z, y, library, one_type=True)
        pi = torch.zeros(n_types, n_genes)
        pi[7, :10] = 0.5
        module.set_zero_inflation(pi)
        inflated = module.generative(z, y, library, one_type=True)
        start = time.perf_counter()
        for _ in range(100):
            module.generative(z, y, library, one_type=True)
        seconds = time.perf_counter() - start
    theta = torch.exp(module.px_r[7])  # within PX_R_RANGE
    torch.testing.assert_close(plain.theta.expand(2, -1), theta.expand(2, -1),
                               rtol=0, atol=0)  # fmt: skip
    assert plain.zi_logits is None and inflated.zi_logits is not None
    assert seconds < 1.5, f"{seconds:.1f} s for 100 chunks of 2 cells"


def test_a_request_row_that_names_every_level_is_not_matched_against_every_combination():
    """A request table that names every covariate in each row (`generate --like` of an atlas:
    a row per type and donor) matched each row it had no training cells at against every
    type's combinations (rows x combinations: 8 s of a 6,000-cell twin's 84); such a row is
    its own combination, as it was."""
    n_types, n_donors = 400, 2000
    levels = [f"D{i}" for i in range(n_donors)]
    design = Design(["donor"], {"donor": levels}, {
        f"T{t}": [[[(5 * t + i) % n_donors], 12] for i in range(5)] for t in range(n_types)})
    rows = pd.DataFrame([(f"T{t}", levels[(5 * t + 5 + i) % n_donors], 3)
                         for t in range(n_types) for i in range(10)],
                        columns=["cell_type", "donor", "n"])  # fmt: skip
    rows.loc[0, "donor"] = levels[0]  # one the type had
    start = time.perf_counter()
    plan, unseen = design.plan(rows, None, list(design.composition), "cell_type")
    seconds = time.perf_counter() - start
    assert plan[0] == ("T0", (0,), 3) and plan[1] == ("T0", (6,), 3) and len(plan) == len(rows)
    assert len(unseen) == len(rows) - 1
    assert seconds < 2.0, f"{seconds:.1f} s for {len(rows)} rows"


def test_zero_inflation_logits_are_taken_once_not_for_every_chunk(monkeypatch):
    """Each chunk of generated cells took the logit of its type's zero inflation row, and the
    logit of a zero (a gene without inflation: -inf) takes a slow path, 3 ms a row of 29,000
    genes, a fifth of generating 14,000 cells of 202 types in chunks of a few cells. The table's
    logits are taken once while it is unchanged: the same values."""
    module = CVAEModule(n_input=50, n_labels=4, n_hidden=[8], n_latent=2).eval()
    pi = torch.zeros(4, 50)
    pi[1, :5] = 0.25
    module.set_zero_inflation(pi)
    calls = []
    logit = torch.logit
    monkeypatch.setattr(torch, "logit", lambda x, *a, **k: calls.append(1) or logit(x, *a, **k))
    z, library = torch.zeros(3, 2), torch.full((3,), 1e3)
    with torch.no_grad():
        for t in (0, 1, 2, 3, 1, 0) * 10:
            px = module.generative(z, torch.full((3,), t), library, one_type=True)
            torch.testing.assert_close(px.zi_logits, logit(pi[t:t + 1]), rtol=0, atol=0)
        module.set_zero_inflation(pi * 2)  # set again: read again
        px = module.generative(z, torch.full((3,), 1), library, one_type=True)
    torch.testing.assert_close(px.zi_logits, logit(pi[1:2] * 2), rtol=0, atol=0)
    assert len(calls) == 2
