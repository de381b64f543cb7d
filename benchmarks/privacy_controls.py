"""The privacy audit's attacks on a benchmark run's kept generated cells, with the run's split.

Rebuilds the benchmark's inputs of :func:`cellsynth.metrics.privacy.audit_counts` (the preset's
QC, split and seed through :func:`cellsynth.benchmark.prepare`, the training cells as members'
pool, the test split held out, the seed ``derive_seed(seed, "privacy")``) and audits each kept
``synthetic/NAME.h5ad``: one line per generator with every attack's AUC and threshold. Usage,
from the repository root:

    .venv/bin/python benchmarks/privacy_controls.py --run runs/bench/pbmc_kang2018 \
        [--preset pbmc_kang2018] [--data ../shared/data/FILE.h5ad] [NAME ...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=["copy", "cvae", "nb", "reference", "scvi",
                                                 "scvi-pp"])
    ap.add_argument("--run", required=True, help="a benchmark run's dataset directory")
    ap.add_argument("--preset", default="pbmc_kang2018")
    ap.add_argument("--data", help="the dataset file, when the preset's relative path is elsewhere")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import anndata as ad
    import scipy.sparse as sp

    from cellsynth import config
    from cellsynth import keys as K
    from cellsynth.benchmark import _counts, prepare
    from cellsynth.metrics.privacy_counts import audit_counts
    from cellsynth.seeds import derive_seed

    sets = [f"dataset.path='{args.data}'"] if args.data else []
    groups = ROOT / "examples" / "groups" / f"{args.preset}.tsv"
    if groups.exists():
        sets.append(f"dataset.groups='{groups}'")
    cfg = config.load(str(ROOT / "examples" / f"{args.preset}.toml"), sets)
    pre = prepare(cfg.dataset.path, cfg)
    split = pre.obs[K.SPLIT].astype(str).to_numpy()
    labels = pre.obs[cfg.dataset.label_key].astype(str).to_numpy()
    counts, genes = _counts(pre), list(map(str, pre.var_names))
    train, test = counts[split == "train"], counts[split == "test"]
    print("| generator | " + " | ".join(f"{a} AUC ± s.d. over halvings (threshold)" for a in
                                         ("distance", "density", "redraw")) + " | flagged |")
    print("|---|---:|---:|---:|---|")
    for name in args.names:
        syn = ad.read_h5ad(Path(args.run) / "synthetic" / f"{name}.h5ad")
        res = audit_counts(train, test, sp.csr_matrix(syn.X), genes,
                           seed=derive_seed(cfg.seed, "privacy"),
                           train_labels=labels[split == "train"])  # fmt: skip
        cells = [f"{a['auc']:.3f} ± {a['auc_sd']:.3f} ({a['threshold']:.3f})" if a else "–" for a in
                 (res.attacks.get(k) for k in ("distance", "density", "redraw"))]
        print(f"| {name} ({syn.n_obs} cells) | " + " | ".join(cells)
              + f" | {'yes' if res.flagged else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
