"""Section 6 of `benchmarks/performance.py` (``--small``): cellsynth's default CVAE fit against
scvi-tools' CondSCVI and SCVI with their defaults, on every shared real data set.

For each data set (``../shared/data/*.h5ad``, or ``--small-data``): one stratified train / test
split by cell type (:func:`cellsynth.data.split.stratified_split`, 80 / 20, seed 0), genes with
no count in the training cells left out (for all three models alike). Then, one after the other,
each in its own process (so its peak RSS is that fit's ``ru_maxrss`` and nothing carries over):

* ``cvae``: what ``cellsynth fit --model cvae`` does with the default settings
  (``cells.for_training`` + ``make_generator("cvae", config.load(None, []))`` + ``fit``), then
  ``CVAE.sample`` of as many cells per type as the test split has;
* ``condscvi``: ``scvi.model.CondSCVI.setup_anndata(labels_key=...)``, ``CondSCVI(adata)``,
  ``train()`` with scvi-tools' defaults; cells from the posterior of the type's training cells
  (see :func:`posterior_cells`), plus, for reference, from its N(0, I) prior;
* ``scvi``: ``scvi.model.SCVI.setup_anndata``, ``SCVI(adata)``, ``train()`` with scvi-tools'
  defaults; cells from the posterior of the type's training cells, the same way.

The parent process scores every model's cells against the test cells with one evaluator: the
classifier two-sample AUC in the 30-PC evaluation space fitted on the real training cells
(:func:`cellsynth.metrics.fidelity.c2st_auc`) and the gene-level AUC
(:func:`cellsynth.metrics.gene_test.gene_c2st`), beside the same numbers for real training cells
(as many per type as the test split has) against the test cells: the floor.

Run as ``python benchmarks/perf_small.py --child MODEL ...`` it is one such fit (used by
:func:`bench_small`; not meant to be run by hand).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
QUICK_DATA = ["pbmc_kang2018_muscat_5types", "kidney_young2018_11clusters"]
QUICK_EPOCHS = 2
QUICK_CELLS = 600  # --quick: at most this many cells per data set (stratified)
MODELS = ("cvae", "condscvi", "scvi")
NAMES = {"cvae": "cellsynth cvae", "condscvi": "scvi-tools CondSCVI",
         "scvi": "scvi-tools SCVI"}  # fmt: skip
LABEL = "cell_type"
TEST_FRACTION = 0.2
SEED = 0
CHUNK = 1024  # cells decoded at once (CondSCVI, SCVI)
log = logging.getLogger("performance.small")


# ---------------------------------------------------------------------------------------------
# the parent: split, one process per fit, one evaluator


def datasets(names: str) -> list[Path]:
    """The data sets of ``--small-data`` (comma-separated names in ../shared/data or paths to
    h5ad files); none named: every h5ad in ../shared/data."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        return sorted(DATA_DIR.glob("*.h5ad"))
    return [Path(n) if n.endswith(".h5ad") else DATA_DIR / f"{n}.h5ad" for n in chosen]


def prepare(path: Path, work: Path, max_cells: int = 0) -> dict[str, Any]:
    """Read ``path`` (``max_cells``: a stratified subsample of at most that many), split it,
    write the training cells to ``work/train.h5ad`` (what every fit reads) and return the test
    and training counts for the evaluator."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from cellsynth.data.split import stratified_split, stratified_subsample

    a = ad.read_h5ad(path)
    if max_cells:
        key = str(a.uns.get("label_key", LABEL))
        a = a[stratified_subsample(a.obs[key].astype(str).to_numpy(), max_cells, seed=SEED)].copy()
    x = sp.csr_matrix(a.X, dtype=np.float32)
    key = str(a.uns.get("label_key", LABEL))
    labels = a.obs[key].astype(str).to_numpy()
    split = stratified_split(labels, (1 - TEST_FRACTION, 0.0, TEST_FRACTION), seed=SEED)
    train, test = split == "train", split == "test"
    detected = np.asarray((x[train] > 0).sum(axis=0)).ravel() > 0
    x = x[:, detected]
    genes = [str(g) for g in a.var_names[detected]]
    work.mkdir(parents=True, exist_ok=True)
    tr = ad.AnnData(X=x[train], obs=pd.DataFrame({LABEL: pd.Categorical(labels[train])},
                                                 index=a.obs_names[train].astype(str)),
                    var=pd.DataFrame(index=pd.Index(genes, dtype=str)))  # fmt: skip
    tr.write_h5ad(work / "train.h5ad")
    y_test = labels[test]
    types, counts = np.unique(y_test, return_counts=True)
    return {"name": path.stem, "path": str(path), "cells": int(a.n_obs), "genes_file": int(a.n_vars),
            "genes": len(genes), "types": len(np.unique(labels)),
            "train": int(train.sum()), "test": int(test.sum()),
            "request": {str(t): int(n) for t, n in zip(types, counts, strict=True)},
            "x_train": x[train], "y_train": labels[train], "x_test": x[test], "y_test": y_test,
            "gene_names": genes}  # fmt: skip


def run_child(model: str, work: Path, request: dict[str, int], args) -> dict[str, Any]:
    """One fit and its generation in a fresh process; its result (and ``rc`` / ``error``)."""
    out = work / model
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / "result.json", *out.glob("*.npz")]:
        stale.unlink(missing_ok=True)
    (out / "request.json").write_text(json.dumps(request))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model,
           "--train", str(work / "train.h5ad"), "--dir", str(out),
           "--device", args.small_device, "--seed", str(SEED)]  # fmt: skip
    if args.small_epochs:
        cmd += ["--epochs", str(args.small_epochs)]
    log.info("small: %s on %s", model, work.name)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True,
                              timeout=args.small_limit or None)  # fmt: skip
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", (exc.stderr or b"").decode(errors="replace") \
            if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - t0
    (out / "stderr.log").write_text(err)
    result = json.loads((out / "result.json").read_text()) if rc == 0 else {}
    result.update(model=model, rc=rc, process_s=wall, error=err[-1500:] if rc else "")
    return result


def evaluate(d: dict[str, Any], sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Two-sample AUCs (PCs and genes) of each set of cells against the test cells; ``floor``:
    two halves of the test cells (stratified by type, as ``metrics.fidelity.real_floor``);
    ``train``: real training cells, as many per type as the test split has, against the test
    cells (in the PCs inflated: the space is fitted on the training cells, whose projections
    carry more variance in its later PCs than cells it never saw)."""
    import scipy.sparse as sp

    from cellsynth.metrics.fidelity import c2st_auc
    from cellsynth.metrics.gene_test import gene_c2st
    from cellsynth.metrics.space import fit_space
    from cellsynth.seeds import derive_seed

    space = fit_space(d["x_train"], d["y_train"], d["gene_names"],
                      seed=derive_seed(SEED, "eval-space"))  # fmt: skip
    x_test, emb_test = d["x_test"], space.embed(d["x_test"])
    rng = np.random.default_rng(derive_seed(SEED, "floor-cells"))
    picks = np.sort(np.concatenate([rng.choice(np.flatnonzero(d["y_train"] == t), n, replace=False)
                                    for t, n in d["request"].items()]))  # fmt: skip
    rng = np.random.default_rng(derive_seed(SEED, "floor-halves"))
    first, second = [], []
    for t in sorted(d["request"]):
        idx = rng.permutation(np.flatnonzero(d["y_test"] == t))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 :])
    a, b = np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
    out = {"floor": {"auc": c2st_auc(emb_test[a], emb_test[b], seed=derive_seed(SEED, "c2st")),
                     "gene_auc": gene_c2st(x_test[a], x_test[b],
                                           seed=derive_seed(SEED, "gene-c2st")),
                     "cells": [len(a), len(b)]}}  # fmt: skip
    for name, x in {"train": d["x_train"][picks], **sets}.items():
        x = sp.csr_matrix(x, dtype=np.float32)
        t0 = time.perf_counter()
        out[name] = {"auc": c2st_auc(emb_test, space.embed(x), seed=derive_seed(SEED, "c2st")),
                     "gene_auc": gene_c2st(x_test, x, seed=derive_seed(SEED, "gene-c2st")),
                     "cells": int(x.shape[0])}  # fmt: skip
        log.info("small: %s %s: AUC %.3f, gene AUC %.3f (%.0f s)", d["name"], name,
                 out[name]["auc"], out[name]["gene_auc"], time.perf_counter() - t0)
    return out


def generated(path: Path, genes: list[str]):
    """The cells a child wrote, their columns in ``genes``' order (zeros for a gene it lacks)."""
    import scipy.sparse as sp

    with np.load(path, allow_pickle=False) as f:
        x = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
        theirs = [str(g) for g in f["genes"]]
    if theirs == genes:
        return x
    where = {g: i for i, g in enumerate(genes)}
    cols = np.array([where[g] for g in theirs])
    return sp.csr_matrix((x.tocoo().data, (x.tocoo().row, cols[x.tocoo().col])),
                         shape=(x.shape[0], len(genes)))  # fmt: skip


def _commit() -> str | None:
    """The checked-out commit (short), or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _earlier_rows(earlier: dict | None, args, names: set[str]) -> list[dict]:
    """The rows of a kept result (``earlier``, the section's JSON) for data sets this run does
    not measure, when it was made with the same settings (epochs, cells, device); each keeps
    the date and commit it was measured at."""
    res = (earlier or {}).get("result") or {}
    same = (res.get("epochs_override") == (args.small_epochs or None)
            and res.get("max_cells") == (QUICK_CELLS if args.quick else None)
            and res.get("device") == args.small_device)  # fmt: skip
    if not same:
        return []
    rows = [r for r in res.get("rows", []) if r["name"] not in names]
    for r in rows:  # rows kept before rows carried their own date: the run's
        r.setdefault("measured", {"date": earlier.get("date"), "commit": None,
                                  "run": earlier.get("date")})  # fmt: skip
    return rows


def bench_small(args, out: Path, keep=None, earlier: dict | None = None) -> dict[str, Any]:
    """Every data set of ``--small-data``, each model one after the other; ``keep(result)``
    after each data set, so a stopped run keeps the data sets it finished. The rows of
    ``earlier`` (the kept result) for data sets not measured now are carried over, each with
    the date and commit it was measured at, so a run may measure a few data sets at a time."""
    import datetime as dt

    import scvi
    import torch

    paths = datasets(args.small_data)
    carried = _earlier_rows(earlier, args, {p.stem for p in paths})
    rows: list[dict] = []
    commit, run = _commit(), dt.datetime.now().isoformat(timespec="minutes")
    for path in paths:
        work = out / "small" / path.stem
        d = prepare(path, work, QUICK_CELLS if args.quick else 0)
        fits, sets = {}, {}
        for model in MODELS:
            r = run_child(model, work, d["request"], args)
            fits[model] = r
            for name in r.get("generated", []):
                sets[name] = generated(work / model / f"{name}.npz", d["gene_names"])
        auc = evaluate(d, sets)
        for model, r in fits.items():
            r["auc"] = auc.get(model)
            if model == "condscvi":
                r["auc_prior"] = auc.get("condscvi_prior")
        measured = {"date": dt.datetime.now().isoformat(timespec="minutes"), "commit": commit,
                    "run": run}  # fmt: skip
        rows.append({k: v for k, v in d.items() if not k.startswith(("x_", "y_", "gene_names"))}
                    | {"floor": auc["floor"], "train_vs_test": auc["train"], "fits": fits,
                       "measured": measured})
        log.info("small: %s done: %s", d["name"], ", ".join(
            f"{m} {r.get('fit_s', float('nan')):.1f} s" for m, r in fits.items()))
        if keep is not None:
            keep(_result(_ordered(rows + carried), args, scvi.__version__,
                         torch.get_num_threads()))
    return _result(_ordered(rows + carried), args, scvi.__version__, torch.get_num_threads())


def _ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["name"])


def _result(rows: list[dict], args, scvi_version: str, threads: int) -> dict[str, Any]:
    return {"rows": rows, "epochs_override": args.small_epochs or None,
            "max_cells": QUICK_CELLS if args.quick else None,
            "device": args.small_device, "test_fraction": TEST_FRACTION, "seed": SEED,
            "scvi_version": scvi_version, "threads": threads}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the page


INTRO = (
    "Each shared data set (`../shared/data/*.h5ad`) is split once, stratified by cell type "
    "(`cellsynth.data.split.stratified_split`, 80 % train / 20 % test, seed 0); genes with no "
    "count in the training cells are left out for all three models. Then, one after the other "
    "on the same machine, each model is fitted on the training cells in a process of its own "
    "(peak RSS = that process's `ru_maxrss`, which includes Python, torch, scvi-tools and the "
    "training cells; *before fit* is its RSS just before the fit started), with its defaults:\n\n"
    "- **cellsynth cvae**: what `cellsynth fit --model cvae` does with the default settings "
    "(`cells.for_training`: a seeded 10 % of the cells held out for validation; `CVAE.fit`: "
    "`max_epochs = \"auto\"`, epoch kept by the validation two-sample AUC, early stopping), then "
    "`CVAE.sample` (per-type latent mixture).\n"
    "- **scvi-tools CondSCVI**: `CondSCVI.setup_anndata(labels_key=\"cell_type\")`, "
    "`CondSCVI(adata)` and `train()` with scvi-tools' defaults (300 epochs, batch 128, every "
    "cell a training cell, no early stopping).\n"
    "- **scvi-tools SCVI**: `SCVI.setup_anndata`, `SCVI(adata)` and `train()` with scvi-tools' "
    "defaults (`max_epochs` = min(400, 400 × 20,000 / cells), 10 % held out for validation, no "
    "early stopping, ZINB).\n\n"
    "How the scvi-tools models' cells are made: neither has a public sampler of new cells of a "
    "type (CondSCVI's `posterior_predictive_sample` fails in scvi-tools 1.4.2: `VAEC.sample` "
    "takes no `generative_kwargs` and reads a `px_r` output the module does not return). For "
    "each requested cell of type *t* a training cell of type *t* is drawn at random (with "
    "replacement), encoded (`module.inference`; CondSCVI's encoder also sees *t*), one *z* is "
    "drawn from its posterior q(z | x) and decoded with the module's `generative` (CondSCVI: "
    "with *t*; both: at that cell's observed library size), and counts are drawn from the "
    "decoded negative binomial (SCVI: zero-inflated) with `cellsynth.models._draws.nb_csr`. "
    "That is scvi-tools' `posterior_predictive_sample` of random cells of the type: it starts "
    "from real training cells, where the CVAE samples from a mixture fitted to them. "
    "CondSCVI's own generative model, *z* from its N(0, I) prior and decoded with *t*, is "
    "scored too (*prior* in the verdicts).\n\n"
    "Fit s: the whole fit as a user calls it (CVAE: `for_training` + `fit`, including the "
    "sampler's fit after training; scvi-tools: `setup_anndata` + model + `train`), data "
    "reading and imports excluded (the CVAE's child imports what its fit would import on "
    "first use, torch's compiler stack that the first optimiser loads and scikit-learn's "
    "estimators, before its clock starts, as `import scvi` does for scvi-tools). Cells/s = training cells given × epochs run / fit s "
    "(the CVAE and SCVI take 10 % of those for validation). Generate s: making the test "
    "split's number of cells per type. AUC: classifier two-sample test of the generated cells "
    "against the test cells (`metrics.fidelity.c2st_auc`, in the 30-PC evaluation space fitted "
    "on the real training cells); gene AUC: `metrics.gene_test.gene_c2st` (logistic regression on "
    "500 HVGs); one evaluator, seeds alike for every model. Floor: two halves of the test "
    "cells, stratified by type (what `metrics.fidelity.real_floor` compares: a perfect "
    "generator's score, with half the cells a side). *Real training cells vs test* (as many "
    "per type as the test split has) is shown too, but its PC AUC is inflated: the evaluation "
    "space is fitted on the training cells, whose projections carry more variance in the "
    "later PCs than cells the PCA never saw, and the classifier sees that (its gene AUC, on "
    "genes chosen on the test cells, has no such bias). Lower is better; 0.5 is "
    "indistinguishable."
)


def _f(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def page_small(found: dict, header) -> list[str]:
    """Section 6 from the kept results (``header(result)``: performance.py's date, command,
    machine and load line)."""
    lines = ["## 6. Small data: cvae vs scvi-tools CondSCVI and SCVI, default fits", "", INTRO, "",
             "**Target: the default cvae fit faster than CondSCVI's on every shared data set, "
             "with better cells (lower two-sample AUC).**", ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --small` (over an hour "
                "on 2 cores).", ""]
    for r in found.values():
        res = r["result"]
        lines += header(r)
        over = res.get("epochs_override")
        lines += [f"scvi-tools {res['scvi_version']}, {res['threads']} torch threads, device "
                  f"`{res['device']}`."
                  + (f" **Every model capped at {over} epoch(s) (`--small-epochs`): not the "
                     "defaults; timings and AUCs are placeholders.**" if over else "")
                  + (f" **At most {res['max_cells']:,} cells per data set (`--quick`).**"
                     if res.get("max_cells") else ""), "",
                  "| data set (train / test cells × genes, types) | model | fit s | epochs | "
                  "cells/s | generate s | peak RSS MB (before fit) | AUC | gene AUC |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in res["rows"]:
            data = (f"{row['name']} ({row['train']:,} / {row['test']:,} × {row['genes']:,}, "
                    f"{row['types']})")
            for model in MODELS:
                f = row["fits"].get(model, {})
                if f.get("rc") != 0:
                    lines.append(f"| {data} | {NAMES[model]} | failed ({f.get('rc')}) "
                                 "| | | | | | |")
                    continue
                auc = f.get("auc") or {}
                lines.append(
                    f"| {data} | {NAMES[model]} | {_f(f['fit_s'], 1)} | {f['epochs']} "
                    f"| {_f(f['cells_per_s'])} | {_f(f['generate_s'], 1)} "
                    f"| {_f(f['peak_rss_mb'])} ({_f(f['rss_before_fit_mb'])}) "
                    f"| {_f(auc.get('auc'), 3)} | {_f(auc.get('gene_auc'), 3)} |")
            fl, tt = row["floor"], row.get("train_vs_test") or {}
            lines.append(f"| {data} | *floor: two halves of the test cells* | | | | | "
                         f"| {_f(fl['auc'], 3)} | {_f(fl['gene_auc'], 3)} |")
            lines.append(f"| {data} | *real training cells vs test* | | | | | "
                         f"| {_f(tt.get('auc'), 3)} | {_f(tt.get('gene_auc'), 3)} |")
        runs = {(row.get("measured") or {}).get("run") for row in res["rows"]}
        if len(runs) > 1:  # rows from several runs (a run measures the data sets it names)
            lines += ["", "Measured in more than one run, each data set's three fits one after "
                      "the other: " + "; ".join(
                          f"{row['name']} {_when(row)}" for row in res["rows"]) + "."]
        lines += ["", *_verdicts(res["rows"]), ""]
        for row in res["rows"]:
            for model in MODELS:
                f = row["fits"].get(model, {})
                if f.get("rc") not in (0, None):
                    lines += [f"{row['name']}, {NAMES[model]} failed:", "", "```",
                              str(f.get("error", "")).strip()[-1200:], "```", ""]
    return lines


def _when(row: dict) -> str:
    m = row.get("measured") or {}
    return f"{m.get('date') or '?'}" + (f" (commit {m['commit']})" if m.get("commit") else "")


def _verdicts(rows: list[dict]) -> list[str]:
    """A line per data set (cvae against CondSCVI: time, AUC, gene AUC) and the target's."""
    lines, missed, done = [], [], 0
    for row in rows:
        c, q = row["fits"].get("cvae", {}), row["fits"].get("condscvi", {})
        if c.get("rc") != 0 or q.get("rc") != 0:
            lines.append(f"- **{row['name']}**: not compared (a fit failed).")
            continue
        done += 1
        tc, tq = c["fit_s"], q["fit_s"]
        if tc < tq:
            speed = f"cvae faster: {tc:,.1f} s vs {tq:,.1f} s ({tq / tc:.2f}× CondSCVI's speed)"
        else:
            speed = (f"cvae **slower**: {tc:,.1f} s vs {tq:,.1f} s (by {tc - tq:,.1f} s, "
                     f"{tc / tq:.2f}× CondSCVI's time)")
            missed.append(f"{row['name']} by {tc - tq:,.1f} s ({tc / tq:.2f}×)")
        parts = [speed]
        for key, what in (("auc", "AUC"), ("gene_auc", "gene AUC")):
            a, b = (c.get("auc") or {}).get(key), (q.get("auc") or {}).get(key)
            if a is None or b is None:
                continue
            if a < b:
                parts.append(f"{what} lower (better): {a:.3f} vs {b:.3f}")
            else:
                parts.append(f"{what} **not lower**: {a:.3f} vs {b:.3f} (higher by {a - b:.3f})")
        prior = (q.get("auc_prior") or {}).get("auc")
        if prior is not None:
            parts.append(f"CondSCVI from its prior: AUC {prior:.3f}")
        parts.append(f"SCVI: {row['fits']['scvi']['fit_s']:,.1f} s, AUC "
                     f"{_f((row['fits']['scvi'].get('auc') or {}).get('auc'), 3)}"
                     if row["fits"].get("scvi", {}).get("rc") == 0 else "SCVI failed")
        lines.append(f"- **{row['name']}**: " + "; ".join(parts) + ".")
    if not done:
        verdict = "not measured."
    elif missed:
        verdict = f"missed on {len(missed)} of {done}: " + ", ".join(missed) + "."
    else:
        verdict = f"met on all {done} data sets measured."
    lines += ["", f"**Target (cvae's default fit faster than CondSCVI's):** {verdict}"]
    measured = {row["name"] for row in rows}
    left = sorted(p.stem for p in DATA_DIR.glob("*.h5ad") if p.stem not in measured)
    if left:
        lines += ["", "Not measured yet (a run stopped before them, or not named in "
                  "`--small-data`): " + ", ".join(f"`{n}`" for n in left) + "; "
                  "`python benchmarks/performance.py --small --small-data NAMES` measures "
                  "them (every data set: over an hour on 2 cores); the data sets measured "
                  "before are kept."]
    return lines


# ---------------------------------------------------------------------------------------------
# the child: one fit and its cells


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) / 1024


def _save_cells(path: Path, x, genes: list[str]) -> None:
    import scipy.sparse as sp

    x = sp.csr_matrix(x, dtype=np.float32)
    np.savez(path, data=x.data, indices=x.indices, indptr=x.indptr, shape=np.array(x.shape),
             genes=np.array(genes, dtype=str))  # fmt: skip


def _first_use_imports() -> None:
    """Import what a CVAE fit imports on first use, so that its fit time, like scvi-tools',
    excludes imports: torch's compiler stack, which creating the first optimiser loads
    (about 2.3 s here; ``import scvi`` loads it through Lightning), and scikit-learn's
    estimators (the sampler's mixtures, the selection check's classifiers)."""
    import sklearn.covariance
    import sklearn.ensemble
    import sklearn.linear_model
    import sklearn.mixture  # noqa: F401
    import torch._dynamo  # noqa: F401


def child_cvae(adata, request: dict[str, int], a) -> tuple[dict, dict]:
    from cellsynth import config
    from cellsynth.cells import for_training
    from cellsynth.models.registry import make_generator
    from cellsynth.seeds import derive_seed

    sets = [f"cvae.device='{a.device}'"] + ([f"cvae.max_epochs={a.epochs}"] if a.epochs else [])
    cfg = config.load(None, sets)
    _first_use_imports()
    rss = _rss_mb()
    t0 = time.perf_counter()
    cells = for_training(adata, LABEL, seed=a.seed, backed=cfg.dataset.backed,
                         drop_undetected=cfg.dataset.drop_undetected_genes,
                         chunk_size=cfg.qc.chunk_size)  # fmt: skip
    n_iter = len(cells.split_rows()["train"])
    gen = make_generator("cvae", cfg)
    hist = gen.fit(cells, seed=a.seed)
    cells.close()
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    syn = gen.sample(request, seed=derive_seed(a.seed, "gen-cvae"))
    gen_s = time.perf_counter() - t1
    info = {"fit_s": fit_s, "generate_s": gen_s, "epochs": int(hist["epochs"]),
            "best_epoch": hist.get("best_epoch"), "loop_s": hist.get("seconds"),
            "cells_per_epoch": n_iter, "rss_before_fit_mb": rss}  # fmt: skip
    return info, {"cvae": (syn.X, list(gen.genes))}


def lightning_clock():
    """A Lightning callback that times scvi-tools' training loop: ``start`` (train start) and
    ``ends`` (each epoch's end), ``time.perf_counter`` seconds (also section 1's)."""
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def __init__(self) -> None:
            self.start, self.ends = 0.0, []

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.ends.append(time.perf_counter())

    return Clock()


def child_scvi_tools(adata, request: dict[str, int], a, model_name: str) -> tuple[dict, dict]:
    """CondSCVI or SCVI with scvi-tools' defaults; cells from training cells' posteriors."""
    import scvi
    import torch

    from cellsynth.seeds import derive_seed

    cls = scvi.model.CondSCVI if model_name == "condscvi" else scvi.model.SCVI
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    scvi.settings.seed = a.seed
    clock = lightning_clock()
    kwargs: dict[str, Any] = {"enable_progress_bar": False, "callbacks": [clock]}
    if a.device != "auto":
        kwargs["accelerator"] = "gpu" if a.device == "cuda" else a.device
    if a.epochs:
        kwargs["max_epochs"] = a.epochs
    rss = _rss_mb()
    t0 = time.perf_counter()
    if model_name == "condscvi":
        cls.setup_anndata(adata, labels_key=LABEL)
    else:
        cls.setup_anndata(adata)
    model = cls(adata)
    model.train(**kwargs)
    fit_s = time.perf_counter() - t0
    split = model.trainer.datamodule if hasattr(model.trainer, "datamodule") else None
    n_iter = len(getattr(split, "train_idx", [])) or adata.n_obs
    t1 = time.perf_counter()
    gseed = derive_seed(a.seed, f"gen-{model_name}")
    cells = posterior_cells(model, adata, request, gseed, prior=False)
    gen_s = time.perf_counter() - t1
    out = {model_name: (cells, list(map(str, adata.var_names)))}
    if model_name == "condscvi":
        out["condscvi_prior"] = (posterior_cells(model, adata, request, gseed, prior=True),
                                 list(map(str, adata.var_names)))
    info = {"fit_s": fit_s, "generate_s": gen_s, "epochs": len(clock.ends),
            "loop_s": (clock.ends[-1] - clock.start) if clock.ends else None,
            "cells_per_epoch": int(n_iter), "rss_before_fit_mb": rss,
            "module": type(model.module).__name__,
            "params": sum(p.numel() for p in model.module.parameters()),
            "torch_threads": torch.get_num_threads()}  # fmt: skip
    return info, out


def posterior_cells(model, adata, request: dict[str, int], seed: int, *, prior: bool):
    """Counts for ``request``: per requested cell of type t a random training cell of type t,
    one z from its posterior (``prior``: from N(0, I), CondSCVI only) decoded by the module's
    ``generative`` (CondSCVI: with t) at that cell's library size; counts drawn from the
    decoded NB (SCVI: ZINB) with ``nb_csr``."""
    import scipy.sparse as sp
    import torch

    from cellsynth.models._draws import nb_csr

    module = model.module.eval().to("cpu")
    cond = type(module).__name__ == "VAEC"
    labels = adata.obs[LABEL].astype(str).to_numpy()
    mapping = [str(t) for t in model.adata_manager.get_state_registry("labels")
               .categorical_mapping] if cond else []  # fmt: skip
    x_all = sp.csr_matrix(adata.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed % 2**31)
    blocks = []
    with torch.inference_mode():
        for t, n in request.items():
            picks = rng.choice(np.flatnonzero(labels == t), n, replace=True)
            for s in range(0, n, CHUNK):
                idx = picks[s:s + CHUNK]
                x = torch.from_numpy(x_all[idx].toarray())
                m = x.shape[0]
                if cond:
                    y = torch.full((m, 1), mapping.index(t), dtype=torch.long)
                    b = torch.zeros((m, 1), dtype=torch.long)  # scvi's one default batch
                    inf = module.inference(x, y, b)
                    z = torch.randn(m, module.n_latent) if prior else inf["z"]
                    px = module.generative(z, inf["library"], y, b)["px"]
                    blocks.append(nb_csr(rng, px.mu, px.theta))
                else:
                    b = torch.zeros((m, 1), dtype=torch.long)
                    inf = module.inference(x, b)
                    px = module.generative(inf["z"], inf["library"], b, y=b)["px"]
                    zi = px.zi_probs if module.gene_likelihood == "zinb" else None
                    blocks.append(nb_csr(rng, px.mu, px.theta, zi))
    return sp.vstack(blocks, format="csr")


def child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=MODELS, required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--epochs", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import anndata as ad

    from cellsynth.options import settings

    settings.progress = False
    d = Path(a.dir)
    request = json.loads((d / "request.json").read_text())
    adata = ad.read_h5ad(a.train)
    if a.child == "cvae":
        info, cells = child_cvae(adata, request, a)
    else:
        info, cells = child_scvi_tools(adata, request, a, a.child)
    for name, (x, genes) in cells.items():
        _save_cells(d / f"{name}.npz", x, genes)
    n = adata.n_obs
    info.update(train_cells=n, cells_per_s=n * info["epochs"] / info["fit_s"],
                generated=list(cells),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                children_peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                pid=os.getpid())  # fmt: skip
    (d / "result.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1:]))
