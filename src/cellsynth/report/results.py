"""``results.md``: the reference's two tables, filled from a run."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.groups import merges_types, one_group_note
from ..metrics.classification import small_sample_note
from ..outputs import md_fence, md_text, write_text

_ROWS = {
    "a": ("Real data", "Real data"),
    "b": ("Real data", "Synthetic data"),
    "c": ("Synthetic data", "Real data"),
}


def _table(results: dict[str, dict], level: str) -> list[str]:
    lines = [
        "| Experiment | Training set | Test set | Precision (macro) | Recall (macro) | F1 (macro) "
        "| Precision (micro) | Recall (micro) | F1 (micro) | cells |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, (train, test) in _ROWS.items():
        if key not in results:
            continue
        r = results[key][level]
        lines.append(
            f"| ({key}) | {train} | {test} | {r['precision_macro']:.3f} | {r['recall_macro']:.3f} "
            f"| {r['f1_macro']:.3f} | {r['precision_micro']:.3f} | {r['recall_micro']:.3f} "
            f"| {r['f1_micro']:.3f} | {r['n']} |"
        )
    note = small_sample_note({f"({k})": results[k][level] for k in _ROWS if k in results})
    return [*lines, "", note] if note else lines


def _unscored(results: dict[str, dict]) -> list[str]:
    """A sentence naming the types an experiment had no cells of (support 0 in its per-class
    tables, out of its macro average): the table's macro scores are over the others."""
    by_types: dict[tuple[str, ...], list[str]] = {}
    for key in _ROWS:
        if key in results and (types := results[key].get("unscored")):
            by_types.setdefault(tuple(types), []).append(f"({key})")
    if not by_types:
        return []
    parts = [f"{', '.join(keys)}: {', '.join(map(md_text, types))}"
             for types, keys in by_types.items()]
    return ["", "Types with no cells to score (support 0 in `metrics/*_per_class.csv`, left out "
            f"of the macro averages above): {'; '.join(parts)}."]


def _fidelity(out: Path) -> list[str]:
    """The verdict on the generated cells (``metrics/fidelity.json``), or why there is none."""
    import json

    from ..metrics.verdict_text import verdict_lines

    path = out / "metrics" / "fidelity.json"
    lines = ["## Are the generated cells realistic?", ""]
    try:
        fid = json.loads(path.read_text())
    except (OSError, ValueError):
        return [*lines, "Not measured in this run (`report.fidelity = false`, or the generator "
                "makes PCA coordinates, not counts).", ""]
    if "verdict" not in fid:
        return [*lines, "Not judged: `metrics/fidelity.json` was written by an earlier version; "
                "rerun with `--force evaluation`.", ""]
    o = fid["synthetic_vs_real"]["overall"]
    text = verdict_lines(fid["verdict"], privacy=fid.get("privacy"))
    fence = md_fence(text)  # longer than a cell type's run of backticks
    floor = fid["real_vs_real"]["overall"]
    return [*lines, "Each metric is read against two halves of the real test cells (the "
            "floor) and its noise: indistinguishable, close or distinguishable.", "",
            fence, *text, fence, "",
            f"Two-sample AUC {o['c2st_auc']:.3f} (floor {floor['c2st_auc']:.3f}); per type and "
            "per metric in `metrics/per_type.csv` and `metrics/fidelity.json`.", ""]


def write_results(out: Path, results: dict[str, dict], report: Any, cfg: RunConfig,
                  manifest: dict, *, groups: dict[str, str]) -> Path:
    """Write ``out/results.md`` and return its path (``groups``: the run's fine -> coarse
    mapping)."""
    stages = manifest.get("stages", {})
    n_types = len(report.cells_per_type_after)
    g = cfg.generator
    lines = [
        "# cellsynth results",
        "",
        f"Written by `cellsynth run` on {_dt.datetime.now().isoformat(timespec='seconds')}; "
        f"dataset: `{cfg.dataset.path or 'embedded demo atlas (simulated)'}`, "
        f"label `{cfg.dataset.label_key}`, seed {cfg.seed}, generator `{g.model}`.",
        "",
        f"{n_types} cell types after QC"
        + (f" ({len(report.dropped_types)} dropped: "
           f"{', '.join(map(md_text, report.dropped_types))})"
           if report.dropped_types else "")
        + ". Experiments: (a) classifier trained on the real training split, tested on the real "
        f"test split; (b) that classifier on {g.n_per_type_eval} generated cells per type, scored "
        f"against the intended type; (c) a classifier trained on {g.n_per_type_train} generated "
        f"cells per type ({g.n_per_type_val} per type for early stopping), tested on the real "
        "test split.",
        "",
        "## Fine cell types",
        "",
        *_table(results, "fine"),
        *_unscored(results),
        "",
        "## Coarse groups",
        "",
    ]
    if merges_types(groups):
        note = one_group_note(groups, report.cells_per_type_after)
        lines.append("A prediction inside the right coarse group counts as correct."
                     + (f" {note}" if note else ""))
    else:
        lines.append("No fine-to-coarse mapping (`dataset.groups`) merges any types: each type is "
                     "its own group, so this table repeats the fine one.")
    lines += ["", *_table(results, "coarse"), "", *_fidelity(out), "## Stages", "",
              "| stage | seconds | peak RSS (MB) |", "|---|---:|---:|"]
    for name, s in stages.items():
        lines.append(f"| {name} | {s.get('seconds', float('nan')):.1f} | "
                     f"{s.get('peak_rss_mb', float('nan')):.0f} |")
    total = sum(s.get("seconds", 0) for s in stages.values())
    lines += ["", f"Total: {total:.1f} s. Per-class metrics, confusion matrices and the SHAP "
              "explanation are in `metrics/` and `explain/`.", ""]
    path = out / "results.md"
    write_text(path, "\n".join(lines))  # atomic: never a half-written page
    return path
