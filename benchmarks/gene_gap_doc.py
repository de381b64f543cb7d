"""The page ``docs/GENE_LEVEL.md``, written from the JSON files of ``benchmarks/gene_gap.py``.

Every number on the page comes from those files, the sentences included (built from them);
``python benchmarks/gene_gap.py --doc-only`` rewrites it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the sources of the binned statistics, in the page's order
SOURCES = ("test", "cvae", "nb")



def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def _label(d: dict[str, Any]) -> str:
    return d["dataset"] + (" (all genes)" if d["genes"] == "all" else "") + (
        f" [{d['tag']}]" if d.get("tag") else "")


#: the reference samples of ``gene_gap.oracles``, in the page's order, and what each one is
ORACLES = {
    "training": "real training cells (as many of each type as the test split): a perfect "
                "generator",
    "shuffled": "the same cells, each gene's counts permuted within the type: exact "
                "distributions per gene, no dependence between genes",
    "poisson": "the same cells, each count x redrawn as Poisson(x): the same means, more noise",
    "redraw": "the same cells' own posterior states, decoded and drawn as cvae generates",
    "independent": "each gene's counts drawn with replacement from the type's training cells, "
                   "every gene and cell independently: each type's gene distributions exactly "
                   "as its training cells show them, with their sampling error",
    "independent_half": "the same from a random half of each type's training cells: twice "
                        "the sampling error (in variance)",
}


def oracle_section(runs: list[dict[str, Any]]) -> list[str]:
    """What a perfect, a gene-independent, a noisier and a per-cell re-drawn sample score (runs
    with ``--oracles``): how far the test's floor is within reach of a generator."""
    runs = [d for d in runs if d.get("oracles")]
    if not runs:
        return []
    out = ["## What the gene-level test rewards: reference samples", "",
           "Each row scores a sample built from real cells against the real test cells, as the "
           "generators are scored (gene AUC on 500 HVGs, then on every detected gene; "
           "`benchmarks/gene_gap.py --oracles`, function `oracles`):", ""]
    out += [f"- `{k}`: {v}" for k, v in ORACLES.items()]
    out += ["", "| dataset | sample | gene AUC, 500 HVGs (floor) | gene AUC, detected genes "
            "(floor) |", "|---|---|---:|---:|"]
    for d in runs:
        floors = {g: _gene(d, "cvae", g)["floor_auc"] for g in ("hvg", "detected")}
        rows = [("cvae (generated)", {g: _gene(d, "cvae", g)["auc"] for g in floors})]
        rows += [(k, d["oracles"][k]) for k in ORACLES if k in d["oracles"]]
        for name, r in rows:
            out.append(f"| {_label(d)} | {name} | {r['hvg']:.3f} ({floors['hvg']:.3f}) | "
                       f"{r['detected']:.3f} ({floors['detected']:.3f}) |")
    for d in runs:
        o, det = d["oracles"], _gene(d, "cvae", "detected")
        if not {"training", "shuffled", "poisson"} <= o.keys():
            continue
        line = (f"**{_label(d)}**, every detected gene: real training cells score "
                f"{o['training']['detected']:.3f} (floor {det['floor_auc']:.3f}); the same cells "
                f"with each gene permuted within its type, every gene's distribution exact, "
                f"{o['shuffled']['detected']:.3f}; with a Poisson draw added to each count "
                f"{o['poisson']['detected']:.3f}")
        if "redraw" in o:
            line += (f"; re-drawn from cvae's posterior of each cell "
                     f"{o['redraw']['detected']:.3f}, against {det['auc']:.3f} for its generated "
                     f"cells")
        independent = "independent" in o and "independent_half" in o
        if independent:
            line += (f"; drawn with replacement from the training cells, each gene on its own, "
                     f"{o['independent']['detected']:.3f}, and from half of them "
                     f"{o['independent_half']['detected']:.3f}")
        floor, gap = det["floor_auc"], det["auc"] - det["floor_auc"]
        if o["shuffled"]["detected"] - o["training"]["detected"] < 0.03:
            line += (". With every gene's distribution in a type exact and the genes "
                     "independent, the shuffled cells sit as near the floor as real cells: the "
                     "test reads each gene's distribution, not the dependence between genes")
        if "redraw" in o and gap > 0.03 and not independent:
            share = (o["redraw"]["detected"] - floor) / gap
            held = (f"holds {share:.0%} of the generated cells' gap to the floor" if share < 1
                    else "is as far from the floor as the generated cells, or further,")
            line += (f". The re-draw {held} with the cells' own states: the gap is in the count "
                     "distribution around a decoded state (the decoder's means and the noise "
                     "drawn around them), not in the states the sampler draws" if share >= 0.5 else
                     f". The re-draw holds {share:.0%} of the generated cells' gap to the floor: "
                     "most of it is in the states the sampler draws")
        if independent:
            line += sampling_error(o, det)
        if det["auc"] > floor + 0.08:
            line += f". Issue 21's target (within 0.08 of the floor) is missed by {gap - 0.08:.3f}"
            if independent and o["independent"]["detected"] > floor + 0.08:
                line += (f"; by the independent draws from the training cells, "
                         f"{o['independent']['detected'] - floor - 0.08:.3f}")
        line += "."
        out += ["", line]
    return [*out, ""]


def sampling_error(o: dict[str, Any], det: dict[str, Any]) -> str:
    """What the independent draws from the training cells say of the test (``oracle_section``'s
    words for a run with them)."""
    own, half, shuffled = (o[k]["detected"] for k in ("independent", "independent_half",
                                                      "shuffled"))
    floor = det["floor_auc"]
    if half - own < 0.03 or own - shuffled < 0.03:
        return (". Drawn independently from the training cells, a sample scores as the shuffled "
                "one: the training set's sampling error is not what the test reads here")
    where = ("as far from the floor as these independent draws, or further"
             if det["auc"] >= own - 0.01 else
             f"{(own - det['auc']) / max(own - floor, 1e-9):.0%} of the way from these "
             "independent draws to the floor: sharing strength, the network estimates the "
             "genes' distributions better than the training cells show them")
    return (". Every gene's distribution is exact in both the shuffled and the independent "
            "sample; what differs is that the independent one is drawn from the training cells' "
            "distributions rather than being the training cells: each gene's share of zeros and "
            "mean carry the training set's sampling error (about one over the square root of "
            "the type's training cells), the same in every cell drawn, and over thousands of "
            "genes a classifier finds it (half the training cells: "
            f"{half - own:+.3f}). Any generator that learns each gene's distribution from these "
            "cells makes this error unless it shares strength between genes or types. The "
            f"shuffled cells score {shuffled:.3f} because they are the training cells "
            "themselves, drawn without replacement: in each fold of the test their error is "
            "cancelled by that of the folds left out, as a fresh sample's would be (a generator "
            "that copies its training cells is rewarded here, and caught by the privacy "
            "audit). "
            f"cvae's generated cells ({det['auc']:.3f}) are {where}")


def summary_table(runs: list[dict[str, Any]]) -> list[str]:
    """One row per dataset and generator: PC and gene-level AUCs beside their floors."""
    lines = ["| dataset | genes | generator | PC AUC (floor) | gene AUC, 500 HVGs (floor) | "
             "gap to floor | gene AUC, detected genes (floor) | low / mid / high tercile "
             "(floors) |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for d in runs:
        for m, r in d["models"].items():
            h, det = r["gene_fidelity"]["hvg"]["overall"], r["gene_fidelity"]["detected"]["overall"]
            lv = " / ".join(f"{x['auc']:.3f} ({x['floor_auc']:.3f})" for x in r["auc_by_level"])
            lines.append(f"| {_label(d)} | {d['n_genes']:,} | {m} | {r['pcs']['auc']:.3f} "
                         f"({d['pcs_floor']:.3f}) | {h['auc']:.3f} ({h['floor_auc']:.3f}) | "
                         f"{h['auc'] - h['floor_auc']:+.3f} | {det['auc']:.3f} "
                         f"({det['floor_auc']:.3f}) | {lv} |")
    return lines


def dataset_section(d: dict[str, Any]) -> list[str]:
    """Per type AUCs, importance by expression decile, per-bin statistics, top genes."""
    models = list(d["models"])
    out = [f"## {_label(d)}", "",
           f"`{d['path'].split('/')[-1]}`: {d['n_cells']:,} cells × {d['n_genes']:,} genes, "
           f"{d['n_train']:,} training and {d['n_test']:,} test cells. Written by "
           f"`{d['command']}` on {d['date']} ({d['machine']}, {d['seconds']:.0f} s; code "
           f"{d['commit']}, `+`: the model files changed since). {d.get('note', '')}", "",
           "Gene-level AUC per type (500 HVGs; floor in brackets):", "",
           "| type | test cells | " + " | ".join(models) + " |",
           "|---|---:|" + "---:|" * len(models)]
    types = sorted({t for r in d["models"].values()
                    for t in r["gene_fidelity"]["hvg"]["per_type"]})
    for t in types:
        cells = []
        for m in models:
            p = d["models"][m]["gene_fidelity"]["hvg"]["per_type"].get(t)
            cells.append(f"{p['auc']:.3f} ({p['floor_auc']:.3f})" if p else "–")
        out.append(f"| {t} | {d['n_test_per_type'].get(t, 0)} | " + " | ".join(cells) + " |")
    out += ["", "What the classifier uses, by decile of real mean expression (0 = the least "
            "expressed tenth of the genes it sees): each decile's share of the summed absolute "
            "coefficients, the part of it carried by the detection indicators, and the mean "
            "zero fraction of its genes in generated minus real cells:", "",
            "| decile | real mean (log1p) | " + " | ".join(
                f"{m}: share / via detection / zero diff" for m in models) + " |",
            "|---:|---|" + "---|" * len(models)]
    decs = {m: d["models"][m]["importance"]["deciles"] for m in models}
    for i in range(len(decs[models[0]])):
        first = decs[models[0]][i]
        cells = [f"{x['importance_share']:.2f} / {x['detected_share']:.2f} / "
                 f"{x['zero_diff']:+.3f}" for x in (decs[m][i] for m in models if i < len(decs[m]))]
        out.append(f"| {first['decile']} | {first['real_mean_low']:.3f}–"
                   f"{first['real_mean_high']:.3f} | " + " | ".join(cells) + " |")
    srcs = [s for s in SOURCES if any(isinstance(r.get(s), dict) for r in d["stats"])]
    out += ["", "Generated (and real test) cells against the training cells, per (type, gene) "
            "pair binned by its mean count per training cell of the type. `test` is the floor: "
            "real held-out cells, as many as were generated (in the lowest bins its ratios "
            "exceed 1 because pairs are binned by their training mean, which selects pairs the "
            "training cells happened to see little of; a generator that reproduces its "
            "training cells scores 1 there).", "",
            "| mean count | pairs | " + " | ".join(
                f"{s}: mean ratio / detection ratio / Fano log2 / corr with depth / absent"
                for s in srcs) + " | training corr with depth |",
            "|---|---:|" + "---|" * len(srcs) + "---:|"]
    for r in d["stats"]:
        hi = "∞" if r["mean_high"] is None else f"{r['mean_high']:g}"
        cells = []
        for s in srcs:
            v = r.get(s)
            cells.append("–" if not v else
                         f"{v['mean_ratio']:.2f} / {v['detect_ratio']:.2f} / "
                         f"{_f(v['fano_log2'], '{:+.2f}')} / {_f(v['lib_corr'], '{:.3f}')} / "
                         f"{v['absent']:.2f}")
        out.append(f"| {r['mean_low']:g}–{hi} | {r['n_pairs']:,} | " + " | ".join(cells)
                   + f" | {_f(r['train_lib_corr'])} |")
    for m in models:
        top = d["models"][m]["importance"]["top"][:10]
        out += ["", f"The ten genes that tell `{m}` cells from real ones best (log1p values "
                "per 10k; coefficients > 0 push towards generated):", "",
                "| gene | mean quantile | coef value / detected | real mean / zero frac / "
                "var | generated mean / zero frac / var |", "|---|---:|---|---|---|"]
        for g in top:
            out.append(f"| {g['gene']} | {g['real_mean_quantile']:.2f} | "
                       f"{g['coef_value']:+.3f} / {g['coef_detected']:+.3f} | "
                       f"{g['real_mean']:.3f} / {g['real_zero_fraction']:.2f} / "
                       f"{g['real_variance']:.3f} | {g['synth_mean']:.3f} / "
                       f"{g['synth_zero_fraction']:.2f} / {g['synth_variance']:.3f} |")
    return [*out, ""]


def write_doc(results: Path, doc: Path, command: str) -> Path:
    """``docs/GENE_LEVEL.md`` from every JSON in ``results`` (nothing typed by hand)."""
    runs = sorted((json.loads(p.read_text()) for p in results.glob("*.json")),
                  key=lambda d: (not d["dataset"].startswith("pbmc4k"), d["dataset"], d["genes"],
                                 d.get("tag", "")))
    if not runs:
        raise SystemExit(f"no results in {results}; run this script on a dataset first")
    lines = ["---", "orphan: true", "---", "",
             "# Gene-level fidelity: where the gap comes from", "",
             f"Written by `{command}` on {dt.date.today().isoformat()} from "
             f"`{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}/*.json`"
             ", each written by the command named in its section. Do not edit by hand: rerun "
             "the commands.", "",
             "Each dataset is prepared as `benchmarks/fidelity.py` prepares it (its preset's QC, "
             "split and seed; *all genes*: every gene detected in a few training cells instead "
             "of the QC'd ones); `cvae` (default settings) and `nb` are fitted on the training "
             "and validation cells and generate as many cells of each type as the real test "
             "split holds. PC AUC: the fidelity benchmark's two-sample AUC in 30 PCs of 2,000 "
             "HVGs. Gene AUC: `metrics.genes.gene_fidelity` (an L2 logistic regression on "
             "standardised log1p values and detection indicators of 500 HVGs, or of every gene "
             "detected in 5 cells) between half the real test cells and the generated ones; its "
             "floor is the same test between the two halves of the real test cells. Terciles: "
             "the gene AUC on detected genes restricted to the least, middle and most expressed "
             "third of the genes (by training mean).", "",
             *summary_table(runs), ""]
    lines += findings(runs)
    lines += oracle_section(runs)
    for d in runs:
        lines += dataset_section(d)
    doc.write_text("\n".join(lines))
    return doc


def _base(d: dict[str, Any]) -> str:
    return d["dataset"] + ("_allgenes" if d["genes"] == "all" else "")


def _gene(d: dict[str, Any], model: str, genes: str) -> dict[str, Any]:
    return d["models"][model]["gene_fidelity"][genes]["overall"]


def diagnosis(d: dict[str, Any]) -> list[str]:
    """Sentences on one dataset's run of the unchanged cvae (numbers from its JSON)."""
    c, nb = d["models"]["cvae"], d["models"].get("nb")
    det, hvg = _gene(d, "cvae", "detected"), _gene(d, "cvae", "hvg")
    out = [f"**{_label(d)}**: cvae's gene-level AUC on every detected gene is {det['auc']:.3f} "
           f"against a floor of {det['floor_auc']:.3f}"
           + (f" (nb {_gene(d, 'nb', 'detected')['auc']:.3f})" if nb else "")
           + f"; on 500 HVGs {hvg['auc']:.3f} (floor {hvg['floor_auc']:.3f}"
           + (f", nb {_gene(d, 'nb', 'hvg')['auc']:.3f}" if nb else "")
           + f"); in PCs {c['pcs']['auc']:.3f} (floor {d['pcs_floor']:.3f}"
           + (f", nb {nb['pcs']['auc']:.3f}" if nb else "") + ")."]
    gaps = [x["auc"] - x["floor_auc"] for x in c["auc_by_level"]]
    where = ("largest in the least expressed third" if gaps[0] > 1.5 * max(gaps[1:])
             else "spread over every level of expression")
    out.append("By tercile of expression (least, middle, most expressed third of the detected "
               "genes) it scores " + ", ".join(
                   f"{x['auc']:.3f} (floor {x['floor_auc']:.3f})" for x in c["auc_by_level"])
               + f": the gap is {where}.")
    st = [r for r in d["stats"] if isinstance(r.get("cvae"), dict)]
    low = st[:3]
    words = ", ".join(f"{r['cvae']['mean_ratio']:.2f}" for r in low)
    nbw = ", ".join(f"{r['nb']['mean_ratio']:.2f}" for r in low if r.get("nb"))
    out.append(f"Per (type, gene) pair, cvae's generated means are {words} times the training "
               "means in the bins of under 0.01, 0.01–0.03 and 0.03–0.1 counts a cell"
               + (f" (nb {nbw})" if nbw else "") + ", and it detects those genes in "
               + ", ".join(f"{r['cvae']['detect_ratio']:.2f}" for r in low)
               + " times as many cells; "
               f"{low[0]['cvae']['absent']:.0%} of the lowest bin's pairs get no count at all "
               f"({low[0]['test']['absent']:.0%} in as many real test cells"
               + (f", {low[0]['nb']['absent']:.0%} for nb" if low[0].get("nb") else "") + ").")
    dm = c.get("decoder_means")
    if dm:
        first = next((r for r in dm if r["posterior"] is not None), None)  # lowest filled bin
        lost = first is not None and first["mixture"] > first["posterior"] + 0.1
        out.append("Training mean over the decoder's mean, bin by bin from the least expressed, "
                   "is " + ", ".join(_f(r["posterior"], "{:.2f}") for r in dm)
                   + " at one posterior draw of each training cell and "
                   + ", ".join(_f(r["mixture"], "{:.2f}") for r in dm) + " at cells drawn from the "
                   "per-type mixture the sampler uses"
                   + (": the decoder has the rare genes' means, the sampler loses them. The "
                      "mixture smooths the latent space, and the decoder gives rare genes high "
                      "means only in small regions of it, which the mixture draws too seldom."
                      if lost else ": here the sampler keeps the rare genes' means."))
        spread = [r for r in dm if r["mean_low"] >= 0.1 and r.get("mixture_var") is not None]
        if spread:
            over = max(r["mixture_var"] for r in spread) > 1.1
            out.append("Above 0.1 counts a cell, the variance of the decoded means across cells "
                       "over the training cells' variance beyond Poisson is "
                       + ", ".join(f"{r['posterior_var']:.2f}" for r in spread)
                       + " at posterior draws and "
                       + ", ".join(f"{r['mixture_var']:.2f}" for r in spread)
                       + " under the mixture"
                       + (": the network alone spreads these genes more than the data do, before "
                          "any NB noise, which no fitted dispersion can take back."
                          if over else "."))
    hi = [r for r in st if r["mean_low"] >= 0.1]
    out.append("Above 0.1 counts a cell the median log2 Fano factor against the training cells' "
               "is " + ", ".join(_f(r["cvae"]["fano_log2"], "{:+.2f}") for r in hi)
               + " for cvae, " + ", ".join(_f(r["test"]["fano_log2"], "{:+.2f}") for r in hi)
               + " for as many real test cells"
               + (", " + ", ".join(_f(r["nb"]["fano_log2"], "{:+.2f}") for r in hi) + " for nb"
                  if hi and hi[0].get("nb") else "")
               + "; the correlation of counts with log library size, bin by bin, is "
               + ", ".join(_f(r["cvae"]["lib_corr"], "{:.2f}") for r in st) + " generated and "
               + ", ".join(_f(r["train_lib_corr"], "{:.2f}") for r in st) + " in training cells.")
    deciles = c["importance"]["deciles"]
    out.append("The classifier's weight is spread over every decile of expression (each holds "
               f"{min(x['importance_share'] for x in deciles):.2f}–"
               f"{max(x['importance_share'] for x in deciles):.2f} of it), about half of it on "
               "the detection indicators.")
    return [" ".join(out), ""]


def _target(d: dict[str, Any], genes: str) -> str:
    g, nb = _gene(d, "cvae", genes), d["models"].get("nb")
    within = g["auc"] <= g["floor_auc"] + 0.08
    text = f"within 0.08 of the floor: {'met' if within else 'missed'}"
    if nb:
        ok = g["auc"] <= _gene(d, "nb", genes)["auc"]
        text += f"; no worse than nb: {'met' if ok else 'missed'}"
    return text


def findings(runs: list[dict[str, Any]]) -> list[str]:
    """What the numbers say, as sentences built from them: the diagnosis (on runs tagged
    ``before`` where there are any), and the change measured against them."""
    by = {(_base(d), d.get("tag", "")): d for d in runs if "cvae" in d["models"]}
    bases = sorted({b for b, _ in by}, key=lambda b: (not b.startswith("pbmc4k"), b))
    out = ["## What the numbers say", ""]
    for b in bases:
        d = by.get((b, "before")) or by.get((b, ""))
        if d is not None:
            out += diagnosis(d)
    # per dataset with a "before" run: that run first, then the others by date
    def others(b: str) -> list[dict[str, Any]]:
        return sorted((d for (bb, t), d in by.items() if bb == b and t != "before"),
                      key=lambda d: d["date"])

    changed = [[by[b, "before"], *others(b)] for b in bases if (b, "before") in by]
    changed = [runs_ for runs_ in changed if len(runs_) > 1]
    if changed:
        out += ["## The changes: per-type gene means, then shares of zeros, by moments under "
                "the mixture", "",
                "After training, the sampler's fit (`models._counts.fit_sampler`) draws "
                "cells from each type's fitted mixture, decodes them, and scales each type's "
                "gene means to the training cells' means (`CVAEModule.gene_scale`, used when "
                "generating, never in the training loss): a moment fit like the dispersion's "
                "and like `nb`'s means, on top of the network's structure, shrunk towards one "
                "where a type's training cells hold few counts of a gene "
                "(`(observed + 1) / (expected + 1)` counts: a small type's generated cells are "
                "not pulled towards its few training cells).", "",
                "Then the shares of zeros (`CVAEModule.zero_inflation`, "
                "`models._moments.zero_inflation_by_moments`): the NB dispersion is fitted by "
                "moments around each training cell's reconstruction, which the encoder made "
                "having seen the cell, so much of the cell-to-cell spread reads as explained "
                "(most type-gene dispersions end at the Poisson limit) and generated "
                "cells detected a gene in too many cells at the right mean (a gene on in a "
                "third of a type's cells came out on in half). Each type's zero inflation per "
                "gene is solved so that cells drawn from its mixture have the training cells' "
                "share of zeros, shrunk towards the NB's own share by 10 pseudo-cells, the "
                "mean kept (the NB drawn at `mu / (1 - pi)`). Fitting the dispersion itself to "
                "the zeros closed the gene-level gap too but moved pbmc4k's cells in PC space; "
                "matching the marginal variances instead did not help everywhere (the issue "
                "note has those runs). Each run, as its JSON's note says:", ""]
        for trio in changed:
            out += [f"- {_label(d)}: {d.get('note') or 'no note'}" for d in trio]
        out += ["",
                "| dataset | run | PC AUC | gene AUC, 500 HVGs | gene AUC, detected genes | "
                "floors (PC / HVG / detected) | nb (PC / HVG / detected) | mean ratio, "
                "< 0.01 / 0.01–0.03 counts | Fano log2, 0.1–0.3 / 0.3–1 counts |",
                "|---|---|---:|---:|---:|---|---|---|---|"]
        for trio in changed:
            for d in trio:
                nb = d["models"].get("nb")
                out.append(
                    f"| {d['dataset']}{' (all genes)' if d['genes'] == 'all' else ''} | "
                    f"{d.get('tag') or 'untagged'} | {d['models']['cvae']['pcs']['auc']:.3f} | "
                    f"{_gene(d, 'cvae', 'hvg')['auc']:.3f} | "
                    f"{_gene(d, 'cvae', 'detected')['auc']:.3f} | {d['pcs_floor']:.3f} / "
                    f"{_gene(d, 'cvae', 'hvg')['floor_auc']:.3f} / "
                    f"{_gene(d, 'cvae', 'detected')['floor_auc']:.3f} | "
                    + (f"{nb['pcs']['auc']:.3f} / {_gene(d, 'nb', 'hvg')['auc']:.3f} / "
                       f"{_gene(d, 'nb', 'detected')['auc']:.3f}" if nb else "–") + " | "
                    + " / ".join(f"{r['cvae']['mean_ratio']:.2f}" for r in d["stats"][:2]) + " | "
                    + " / ".join(_f(r["cvae"]["fano_log2"], "{:+.2f}") for r in d["stats"][3:5])
                    + " |")
        out.append("")
        for trio in changed:
            last = trio[-1]
            out.append(f"Issue 21's targets for cvae on {_label(last)} (the newest run): 500 HVGs, "
                       f"{_target(last, 'hvg')}; detected genes, {_target(last, 'detected')}.")
        out.append("")
    return out
