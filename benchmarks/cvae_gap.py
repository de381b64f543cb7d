"""Where the cvae's distance to real cells comes from: the decoder, or the latents it is fed.

Prints, for each dataset preset, the two-sample AUC (and kNN recall, library-size W1) of cells
generated four ways by one fitted cvae, beside the real-vs-real floor, all in the evaluation
space of `benchmarks/fidelity.py`:

- ``mixture``: ``CVAE.sample`` (the per-type mixture over latent and log library size);
- ``prior``: ``CVAE.sample(latent="prior")`` (prior latent, log-normal library);
- ``training posteriors``: for each requested cell a random training cell of its type, a draw of
  its posterior ``q(z | x)`` and its own library size (the exact aggregate posterior: what the
  mixture approximates);
- ``test reconstructions``: every real test cell's posterior draw and library size, decoded
  (the decoder's own floor: no sampler of latents can do better than this).

The gap between ``test reconstructions`` and the floor is the decoder's; between ``mixture``
and ``training posteriors``, the mixture's. Uses the model `benchmarks/fidelity.py` saved in
``--out`` when there is one, else fits one with the same seed. Prints; writes nothing.

Usage, from the repository root: .venv/bin/python benchmarks/cvae_gap.py [--set KEY=VALUE] [PRESET ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_experiments import PRESETS  # noqa: E402


@torch.no_grad()
def decode_cells(gen, counts: sp.csr_matrix, labels: np.ndarray, rng: np.random.Generator):
    """Counts decoded from one posterior draw of each cell, at the cell's own library size."""
    from cellsynth.models import _training as tr
    from cellsynth.models._counts import Rows
    from cellsynth.models._draws import draw_counts

    module = gen.module.eval()
    codes = {t: i for i, t in enumerate(gen.labels)}
    rows = Rows(counts, np.array([codes[t] for t in labels]), gen.device)
    out = []
    for sl in tr.iter_slices(len(rows), 1024):
        x, y, library, _ = rows.batch(np.arange(sl.start, sl.stop))
        qz, _ = module.inference(x, y, library)
        eps = torch.from_numpy(rng.standard_normal(tuple(qz.loc.shape), dtype=np.float32))
        px = module.generative(qz.loc + qz.scale * eps.to(qz.loc.device), y, library)
        out.append(draw_counts(px, library, rng))
    return sp.vstack(out, format="csr")


def sampled(gen, n_test: dict[str, int], cfg, latent: str):
    """``CVAE.sample`` of the test split's counts per type, as the fidelity benchmark draws."""
    from cellsynth.seeds import derive_seed

    a = gen.sample(n_test, seed=derive_seed(cfg.seed, "gen-test-cvae"), latent=latent)
    return sp.csr_matrix(a.X), a.obs[cfg.dataset.label_key].astype(str).to_numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("presets", nargs="*", default=PRESETS)
    ap.add_argument("--out", default="runs/bench", help="where benchmarks/fidelity.py ran")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    from cellsynth import config
    from cellsynth import keys as K
    from cellsynth.benchmark import _counts, prepare
    from cellsynth.metrics.fidelity import fidelity_report, real_floor
    from cellsynth.metrics.space import fit_space
    from cellsynth.models.cvae import CVAE
    from cellsynth.seeds import derive_seed

    print("| dataset | cells from | 2-sample AUC | kNN recall | library W1 |")
    print("|---|---|---:|---:|---:|")
    for name in args.presets:
        cfg = config.load(ROOT / "examples" / f"{name}.toml", args.set)
        pre = prepare(cfg.dataset.path, cfg)
        split = pre.obs[K.SPLIT].astype(str).to_numpy()
        y = pre.obs[cfg.dataset.label_key].astype(str).to_numpy()
        counts = _counts(pre)
        (x_train, y_train), (x_test, y_test) = [(counts[split == s], y[split == s])
                                                for s in ("train", "test")]
        space = fit_space(x_train, y_train, list(map(str, pre.var_names)),
                          seed=derive_seed(cfg.seed, "eval-space"))
        saved = ROOT / args.out / name / "models" / "cvae"
        if (saved / "genes.json").is_file() and not args.set:
            gen = CVAE.load(saved)
        else:
            gen = CVAE(config=cfg.cvae)
            gen.fit(pre[np.isin(split, ["train", "val"])], cfg.dataset.label_key,
                    seed=derive_seed(cfg.seed, "fit-cvae"))
        rng = np.random.default_rng(derive_seed(cfg.seed, "cvae-gap"))
        # the fidelity benchmark's request (types by count): C2ST folds follow the row order
        n_test = {str(t): int(n) for t, n in pd.Series(y_test).value_counts().items()}
        picks = np.concatenate([rng.choice(np.flatnonzero(y_train == t), n, replace=True)
                                for t, n in n_test.items() if n])

        ways = {
            "real vs real (floor)": None,
            **{latent: sampled(gen, n_test, cfg, latent) for latent in ("mixture", "prior")},
            "training posteriors": (decode_cells(gen, x_train[picks], y_train[picks], rng),
                                    y_train[picks]),
            "test reconstructions": (decode_cells(gen, x_test, y_test, rng), y_test),
        }
        for way, cells in ways.items():
            if cells is None:
                rep = real_floor(space, x_test, y_test, seed=derive_seed(cfg.seed, "floor"))
            else:
                rep = fidelity_report(space, x_test, y_test, *cells,
                                      seed=derive_seed(cfg.seed, "fid-cvae"))
            o = rep["overall"]
            print(f"| {name} | {way} | {o['c2st_auc']:.3f} | {o['knn_recall']:.2f} | "
                  f"{o['library_size_distance']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
