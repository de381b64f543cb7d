"""Donor-level privacy on a simulated atlas of many donors (issue 19): docs/PRIVACY_DONORS.md.

No shared data set has the donors a donor-level membership audit needs (Kang's four samples
come from two donors; an AUC over donors can pass its threshold only with about 7 donors a
side), so this page uses a simulated atlas (``cellsynth.data.simulate.simulate_atlas`` with
``n_donors``: each donor shifts a random subset of genes, sizes stated in ``uns``). Two
``cellsynth benchmark`` runs with ``dataset.donor_key = "donor"`` and ``split.heldout_donors``:

1. the type-only generators and the privacy audit's positive controls (``copy``, ``scvi-pp``);
2. ``cvae`` conditioned on the donor (``cvae.covariates = ["donor"]``): a twin of the training
   split that keeps each training donor's cells, the case a donor-level attack is for.

Usage, from the repository root (about 20 minutes on 2 cores)::

    .venv/bin/python benchmarks/privacy_donors.py [--out runs/privacy_donors] [--rerun]

Each generator's results are kept in ``benchmarks/results/simulated_donors/`` (and, for the
conditioned run, ``simulated_donors_by_donor/``) and reused while its settings are unchanged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PRIVACY_DONORS.md"
#: the simulated atlas: cells, genes, types, donors, and how many donors are held out whole
#: (at a 10x-like depth: the simulator's default of about 550 counts a cell lost a quarter of
#: the cells to QC's 100-gene minimum)
ATLAS = {"n_cells": 6000, "n_genes": 2000, "n_types": 5, "n_donors": 40, "seed": 0,
         "library_size": 3000.0}
HELD_OUT = 15
MODELS = ["cvae", "nb", "copy", "scvi-pp"]


def _body(page: str, title: str) -> str:
    """A benchmark page's dataset section (from its ``## `` heading), under ``title``."""
    section = page[page.index("\n## ") + 1:]
    return re.sub(r"^## .*$", f"## {title}", section, count=1, flags=re.M)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/privacy_donors")
    ap.add_argument("--rerun", action="store_true", help="rerun generators with kept results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.evaluation import run_benchmark
    from cellsynth.outputs import write_text

    os.chdir(ROOT)  # the page names the data by paths relative to the repository
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, made = out / "simulated_donors.h5ad", out / "simulated_donors.json"
    if not data.exists() or not made.exists() or json.loads(made.read_text()) != ATLAS:
        simulate_atlas(ATLAS["n_cells"], ATLAS["n_genes"], ATLAS["n_types"],
                       n_donors=ATLAS["n_donors"], seed=ATLAS["seed"],
                       library_size=ATLAS["library_size"]).write_h5ad(data)  # same seed, same file
        made.write_text(json.dumps(ATLAS))
    kept = ROOT / "benchmarks" / "results"
    atlas = kept / "simulated_donors" / "atlas.json"  # the atlas the kept results are of
    if not atlas.exists() or json.loads(atlas.read_text()) != ATLAS:
        for name in ("simulated_donors", "simulated_donors_by_donor"):  # other data: rerun
            shutil.rmtree(kept / name, ignore_errors=True)
        atlas.parent.mkdir(parents=True, exist_ok=True)
        atlas.write_text(json.dumps(ATLAS, indent=1) + "\n")
    sets = ["dataset.label_key='cell_type'", "dataset.donor_key='donor'",
            f"split.heldout_donors={HELD_OUT}"]
    command = "python benchmarks/privacy_donors.py " + " ".join(sys.argv[1:])
    runs = [("type-only generators and the positive controls", MODELS, sets, data),
            ("cvae conditioned on the donor", ["cvae"], [*sets, "cvae.covariates=['donor']"],
             out / "by_donor" / "simulated_donors_by_donor.h5ad")]
    parts = []
    for title, models, overrides, path in runs:
        if not path.exists():  # the run's name is its file's: kept results per run
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(data.resolve())
        page = run_benchmark([str(path)], models, path.parent, overrides=overrides,
                             doc=path.parent / "RESULTS.md", reuse=not args.rerun,
                             kept=kept, command=command)
        parts.append(_body(page.read_text(), f"simulated, {ATLAS['n_donors']} donors: {title}"))
    head = (
        "# Donor-level privacy on a simulated atlas\n\n"
        f"Written by `{command.strip()}` on {dt.date.today().isoformat()} "
        f"({platform.machine()}, {os.cpu_count()} cores). Do not edit by hand: rerun the "
        "command.\n\n"
        "Does a generator give away which donors it was trained on? No shared data set can say "
        "(Kang's four samples come from two donors, and an AUC over donors can pass its "
        "threshold only with about 7 donors a side), so this page uses a simulated atlas: "
        f"{ATLAS['n_cells']:,} cells × {ATLAS['n_genes']:,} genes, {ATLAS['n_types']} types, "
        f"{ATLAS['n_donors']} donors, each donor shifting a random subset of genes, "
        f"{ATLAS['library_size']:,.0f} counts a cell on average "
        "(`cellsynth.data.simulate.simulate_atlas` with `n_donors` and `library_size`). "
        f"{HELD_OUT} donors are held out whole (`split.heldout_donors = {HELD_OUT}`, "
        "`dataset.donor_key = \"donor\"`): their cells are test cells, the other donors' cells "
        "are split as usual. The privacy audit's cell level attacks the training cells "
        "against the test cells of training donors; its donor level averages each attack's "
        "cell scores per donor and tells the training donors from the held-out ones (ROC AUC "
        "over donors, 0.5 = no leak; the largest of the three attacks is in the table, the "
        "number of donors a side beside it). Every other number is read as on "
        "[the results page](RESULTS.md), against the test split, which here also holds the "
        "held-out donors' cells.\n\n")
    write_text(DOC, head + "\n".join(parts))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
