"""`make bench-fidelity`: every generator on every shared dataset, written to docs/RESULTS.md.

Runs `cellsynth benchmark` with the dataset presets in examples/ (their QC and split settings)
and the models' default settings, and writes the page from the run. Usage, from the repository
root: .venv/bin/python benchmarks/fidelity.py [--models cvae,nb,reference,scvi,copy,scvi-pp] [--out runs/bench] [--rerun] [PRESET ...]
A generator whose results kept in --kept (benchmarks/results/DATASET/NAME.json, committed) were
made with the same settings and version is read back, not rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from covariates import put_sections  # noqa: E402
from reference_experiments import PRESETS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("presets", nargs="*", default=PRESETS)
    ap.add_argument("--models", default="cvae,nb,reference,scvi,copy,scvi-pp")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--doc", default="docs/RESULTS.md")
    ap.add_argument("--kept", default="benchmarks/results",
                    help="where each generator's results are kept, per dataset (committed with "
                         "the page, so it can be rewritten and only changed generators rerun)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--rerun", action="store_true",
                    help="rerun generators whose kept results in --out match (default: reuse them)")
    ap.add_argument("--fits", type=int, default=1,
                    help="fits per generator, each with its own seeds: rows are their means")
    ap.add_argument("--kept-only", action="store_true",
                    help="fit nothing: write the page from the results kept in --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from cellsynth.evaluation import run_benchmark

    path = run_benchmark([str(ROOT / "examples" / f"{p}.toml") for p in args.presets],
                         args.models.split(","), ROOT / args.out, overrides=args.set,
                         doc=ROOT / args.doc, reuse=not args.rerun, kept_only=args.kept_only,
                         kept=ROOT / args.kept, fits=args.fits,
                         command=" ".join(["python benchmarks/fidelity.py", *sys.argv[1:]]))
    put_sections(path)  # the covariate sections kept by benchmarks/covariates.py
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
