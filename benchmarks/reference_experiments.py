"""Run the reference experiment (`cellsynth run`) on every shared dataset preset and write
`docs/REFERENCE_RESULTS.md` from the runs: macro-F1 of experiments (a), (b), (c), fine and
coarse, and the wall time of each run.

Usage (from the repository root): .venv/bin/python benchmarks/reference_experiments.py [--out runs/reference] [NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["pbmc_kang2018", "mouse_pancreas_baron2016", "pbmc4k_10x", "cbmc_citeseq", "kidney_young2018"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=PRESETS)
    ap.add_argument("--out", default="runs/reference")
    ap.add_argument("--doc", default="docs/REFERENCE_RESULTS.md")
    args = ap.parse_args()
    rows = []
    for name in args.names:
        out = ROOT / args.out / name
        # a fresh run: one into an earlier run's directory resumes the stages done with the
        # same settings, whatever code did them, and its time would not be the run's
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "cellsynth.cli", "run", "--config", f"examples/{name}.toml",
               "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append((name, None, seconds, None))
            continue
        summary = json.loads((out / "metrics" / "summary.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        rows.append((name, summary, seconds, manifest))
        print(f"{name}: {seconds:.0f} s", flush=True)
    write_doc(ROOT / args.doc, rows, " ".join(["python", "benchmarks/reference_experiments.py", *sys.argv[1:]]))
    return 0


def write_doc(path: Path, rows, command: str) -> None:
    lines = [
        "# The reference experiment on the shared datasets",
        "",
        f"Written by `{command}` on {dt.date.today().isoformat()} "
        f"({platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores). Each row is one `cellsynth run --config "
        "examples/NAME.toml` with the preset's settings (generator `seed`, the reference CVAE).",
        "",
        "Macro-F1: (a) real-trained classifier on the real test split; (b) that classifier on "
        "generated cells; (c) a classifier trained on generated cells, on the real test split.",
        "",
        "| dataset | types | (a) fine | (b) fine | (c) fine | (a) coarse | (b) coarse | (c) coarse "
        "| peak RSS (MB) | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, summary, seconds, manifest in rows:
        if summary is None:
            lines.append(f"| {name} | failed | | | | | | | | {seconds:.0f} |")
            continue
        f = {k: summary[k]["fine"]["f1_macro"] for k in "abc"}
        c = {k: summary[k]["coarse"]["f1_macro"] for k in "abc"}
        n_types = manifest["stages"]["data"].get("types", "")
        peak = max(s.get("peak_rss_mb", 0) for s in manifest["stages"].values())
        lines.append(
            f"| {name} | {n_types} | {f['a']:.3f} | {f['b']:.3f} | {f['c']:.3f} | {c['a']:.3f} "
            f"| {c['b']:.3f} | {c['c']:.3f} | {peak:.0f} | {seconds:.0f} |"
        )
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
