"""`make bench-performance`: training, FLOP-rate, generation and pipeline timings, measured here
and written to docs/PERFORMANCE.md (never typed by hand).

Sections, each runnable alone (name none and the four run):

  --training    CVAE vs scvi-tools SCVI: training cells/s, same architecture, batch and data
  --flops       GFLOP/s of the CVAE's linear layers vs this machine's matmul peak; step breakdown
  --generation  cells/s of CVAE.sample plus writing the h5ad
  --pipeline    `cellsynth simulate` + `cellsynth run` (default settings) at 10,000, 30,000 and
                100,000 cells x 33,538 genes
  --atlas       the same at 828,328 cells and 126 types (E-ANND-5's size; hours; not run when
                no section is named), with its own overrides (--atlas-set), kept apart
  --small       cellsynth's default CVAE fit vs scvi-tools' CondSCVI and SCVI with their
                defaults on every shared data set (--small-data): fit time, cells/s, peak RSS,
                two-sample AUC of the generated cells (benchmarks/perf_small.py; over an hour;
                not run when no section is named)

Sections 1-3 run on the CPU and, when torch sees CUDA, on the GPU too (--devices to choose).
Each section's last result is kept as benchmarks/results/performance/<section>_<device>.json
(committed with the page; --kept) and the page is rebuilt from every kept result: a section not
rerun keeps its last numbers, with their date (a section with no kept result keeps its text
from the page as last written). Simulated atlases and pipeline runs go to --out.
--quick uses small sizes to check the script end to end (the page says so); --page-only
rebuilds the page from the kept results.

Usage (repository root): .venv/bin/python benchmarks/performance.py [--quick] [--training]
    [--flops] [--generation] [--pipeline] [--atlas] [--small] [--devices cpu,cuda] [--real NAME]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import perf_small  # section 6, benchmarks/perf_small.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("training", "flops", "generation", "pipeline")
ATLAS_CELLS, ATLAS_TYPES = 828_328, 126  # E-ANND-5: cells, informative fine types
ATLAS_HOURS = 1.0  # issue 22: E-ANND-5's size end to end in at most this many hours (and 16 GB)
FULL = {"cells": 20_000, "genes": 2_000, "types": 20, "epochs": 10, "flop_epochs": 3,
        "steps": 50, "gen_cells": 100_000, "wide_genes": 9_000, "pipeline_sizes": [10_000, 30_000, 100_000],
        "pipeline_genes": 33_538, "pipeline_types": 20, "pipeline_set": []}  # fmt: skip
QUICK = {"cells": 2_000, "genes": 2_000, "types": 8, "epochs": 1, "flop_epochs": 1, "steps": 5,
         "gen_cells": 10_000, "wide_genes": 3_000, "pipeline_sizes": [2_000], "pipeline_genes": 2_000,
         "pipeline_types": 8,
         # quick: a cheap pipeline, only to check that the section runs and its page renders
         "pipeline_set": ["features.n_components=50", "classifier.n_estimators=20",
                          "cvae.max_epochs=3", "generator.n_per_type_eval=100",
                          "generator.n_per_type_train=200", "generator.n_per_type_val=20",
                          "report.umap=false"]}  # fmt: skip
TARGETS = {"training": 2.0, "flops": 0.5, "generation": 50_000.0}
LABEL = "cell_type"
log = logging.getLogger("performance")


# ---------------------------------------------------------------------------------------------
# machine, timing, results


#: the widest vector unit a CPU flag names, first match
VECTOR_UNITS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 with BF16"), ("avx512f", "AVX-512"),
                ("avx2", "AVX2"), ("avx", "AVX"))


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU and the versions that matter for these numbers."""
    import torch

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as fh:
        info = fh.read().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    flags = set(next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), []))
    with open("/proc/meminfo") as fh:
        kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal"))
    versions = {}
    for pkg in ("cellsynth", "torch", "scvi-tools", "lightning", "xgboost", "numpy", "scipy",
                "anndata"):  # fmt: skip
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    cuda = torch.cuda.is_available()
    # hosts of one model name differ in vector units (a float32 peak of 137 GFLOP/s with
    # AVX-512, 157 without it on this "AMD EPYC"): named so that sections compare like with like
    vector = next((name for flag, name in VECTOR_UNITS if flag in flags), "no AVX")
    return {"cpu": cpu, "vector": vector, "cores": os.cpu_count(), "ram_gib": round(kb / 2**20, 1),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cuda": torch.version.cuda if cuda else None, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "versions": versions}  # fmt: skip


def describe_machine(m: dict[str, Any]) -> str:
    v = m["versions"]
    gpu = f", GPU {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else ", no GPU"
    vector = f" ({m['vector']})" if m.get("vector") else ""  # not recorded before 2026-12-05
    return (f"{m['cpu']}{vector}, {m['cores']} cores ({m['torch_threads']} torch threads), "
            f"{m['ram_gib']} GiB RAM{gpu}; torch {v['torch']}, scvi-tools {v['scvi-tools']}, "
            f"xgboost {v['xgboost']}, cellsynth {v['cellsynth']}, Python {m['python']}")  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timeit(fn, device: str, min_time: float, min_reps: int = 3) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), timed for at least ``min_time``."""
    fn()
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        if reps >= min_reps:
            sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                return elapsed / reps


@contextmanager
def epoch_ends(logger_name: str, into: list[float]):
    """Collect the times of the per-epoch DEBUG lines (``epoch N: ...``) that ``logger_name``
    or its children log (the CVAE's training loop, wherever it lives)."""

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith("epoch "):
                into.append(record.created)

    lg, hook = logging.getLogger(logger_name), Hook(logging.DEBUG)
    level = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(hook)
    try:
        yield into
    finally:
        lg.removeHandler(hook)
        lg.setLevel(level)


def cpu_seconds() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, of this process and its children, wall clock)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle/iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()


def other_cores(start: tuple[float, float, float]) -> float | None:
    """Cores other processes kept busy on average since ``start`` (from :func:`cpu_seconds`):
    what the load average cannot tell apart from the benchmark's own threads."""
    busy, own, wall = (b - a for a, b in zip(start, cpu_seconds(), strict=True))
    return None if math.isnan(busy) or wall <= 0 else max(0.0, (busy - own) / wall)


def result_path(out: Path, section: str, device: str, variant: str = "") -> Path:
    """Where a section's result on ``device`` (and ``variant``) is kept."""
    return out / f"{section}_{device}{'_' + variant if variant else ''}.json"


def save_result(out: Path, section: str, device: str, result: dict, ctx: dict,
                start: tuple[float, float, float], variant: str = "") -> None:
    """Keep one result per section and device, and per ``variant`` (the --atlas preset's name:
    a preset's run and the default settings' are kept side by side)."""
    path = result_path(out, section, device, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"section": section, "device": device, "variant": variant, **ctx,
                                "load_after": list(os.getloadavg()),
                                "other_cores": other_cores(start), "result": result}, indent=1))
    log.info("wrote %s", path)


def load_results(out: Path) -> dict[str, dict[str, dict]]:
    found: dict[str, dict[str, dict]] = {s: {} for s in (*SECTIONS, "atlas", "small")}
    for path in sorted(out.glob("*_*.json")):
        data = json.loads(path.read_text())
        if data.get("section") in found:
            variant = data.get("variant") or ""
            found[data["section"]][data["device"] + (f"/{variant}" if variant else "")] = data
    return found


def machine_tag(m: dict[str, Any]) -> str:
    """The kept-result variant of a CPU section (1-3): the host's vector units, as a file-name
    word. Hosts of one model name differ in them, and each section's targets are ratios to that
    host's own peak or to scvi-tools on it: a run on another kind of host is kept beside the
    earlier one, not in its place."""
    return re.sub(r"[^a-z0-9]+", "-", str(m.get("vector") or "unknown").lower()).strip("-")


def rel(path: Path) -> str:
    """``path`` relative to the repository root when inside it (commands run from there)."""
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def atlas(cells: int, genes: int, types: int):
    """A simulated atlas held in memory, every cell a training cell (no validation pass)."""
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(cells, genes, types, seed=0, label_key=LABEL, doublet_rate=0.0,
                       uninformative_rate=0.0)
    a.obs["cellsynth_split"] = "train"
    return a


def real_dataset(name: str, genes: int):
    """A shared real dataset (../shared/data/NAME.h5ad or a path), its ``genes`` most counted
    genes (0: every gene with a count), every cell a training cell."""
    import anndata as ad
    import scipy.sparse as sp

    path = Path(name) if name.endswith(".h5ad") else ROOT.parent / "shared" / "data" / f"{name}.h5ad"
    a = ad.read_h5ad(path)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    if genes == 0:
        genes = int((np.asarray(a.X.sum(axis=0)).ravel() > 0).sum())
    if a.n_vars > genes:
        top = np.sort(np.argsort(-np.asarray(a.X.sum(axis=0)).ravel())[:genes])
        a = a[:, top].copy()
    key = str(a.uns.get("label_key", LABEL))
    a.obs[LABEL] = a.obs[key].astype(str)
    a.obs["cellsynth_split"] = "train"
    return a, path.stem


# ---------------------------------------------------------------------------------------------
# 1. training throughput: our CVAE vs scvi-tools SCVI


def fit_ours(adata, hidden: int, layers: int, latent: int, args, device: str,
             precision: str = "float32") -> dict:  # fmt: skip
    import torch

    from cellsynth.config import CVAEConfig
    from cellsynth.models.cvae import CVAE

    cfg = CVAEConfig(n_hidden=[hidden] * layers, n_latent=latent, likelihood="nb", dispersion="gene",
                     dropout_rate=0.1, batch_size=args.batch_size, max_epochs=args.epochs,
                     patience=args.epochs + 1, device=device, precision=precision)  # fmt: skip
    model, ends = CVAE(config=cfg), []
    with epoch_ends("cellsynth.models", ends):
        t0 = time.perf_counter()
        hist = model.fit(adata, LABEL, seed=0)
        total = time.perf_counter() - t0
    n = adata.n_obs
    params = sum(p.numel() for p in model.module.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {**_rates(n, hist["epochs"], hist["seconds"], total, ends, params),
            "precision": hist.get("precision", "float32")}


def fit_scvi(adata, hidden: int, layers: int, latent: int, args, device: str) -> dict:
    import anndata as ad
    import pandas as pd
    import scvi

    sub = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()),
                     var=pd.DataFrame(index=adata.var_names.copy()))  # fmt: skip
    scvi.settings.seed = 0
    clock = perf_small.lightning_clock()
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(sub)
    model = scvi.model.SCVI(sub, n_hidden=hidden, n_latent=latent, n_layers=layers,
                            dropout_rate=0.1, dispersion="gene", gene_likelihood="nb")  # fmt: skip
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, train_size=1.0,
                early_stopping=False, accelerator="gpu" if device == "cuda" else "cpu",
                devices=1, enable_progress_bar=False, callbacks=[clock])  # fmt: skip
    total = time.perf_counter() - t0
    loop = clock.ends[-1] - clock.start
    params = sum(p.numel() for p in model.module.parameters())
    return _rates(sub.n_obs, len(clock.ends), loop, total, clock.ends, params)


def _rates(n: int, epochs: int, loop: float, total: float, ends: list[float], params: int) -> dict:
    steady = n * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) >= 2 else None
    return {"cells": n, "epochs": epochs, "loop_s": loop, "total_s": total, "params": params,
            "cells_per_s": n * epochs / loop, "steady_cells_per_s": steady}  # fmt: skip


def bench_training(args, device: str) -> dict:
    import scvi
    import torch

    from cellsynth.models._training import native_bfloat16

    # bfloat16 (opt-in, cvae.precision) is timed too where the hardware multiplies it natively
    bf16 = native_bfloat16(torch.device(device))
    datasets = [(f"simulated {args.cells:,} × {args.genes:,}, {args.types} types",
                 atlas(args.cells, args.genes, args.types))]  # fmt: skip
    if args.real:
        a, name = real_dataset(args.real, args.genes if args.real_genes is None else args.real_genes)
        datasets.append((f"{name} ({a.n_obs:,} × {a.n_vars:,})", a))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    rows = []
    for label, adata in datasets:
        for hidden, layers, latent in args.archs:
            arch = {"n_hidden": hidden, "n_layers": layers, "n_latent": latent}
            log.info("training %s on %s, %s", arch, label, device)
            ours = fit_ours(adata, hidden, layers, latent, args, device)
            half = (fit_ours(adata, hidden, layers, latent, args, device, "bfloat16")
                    if bf16 else None)  # fmt: skip
            theirs = fit_scvi(adata, hidden, layers, latent, args, device)
            log.info("  ours %.0f cells/s, scvi %.0f cells/s", ours["cells_per_s"],
                     theirs["cells_per_s"])
            rows.append({"data": label, "arch": arch, "ours": ours, "scvi": theirs,
                         "ratio": ours["cells_per_s"] / theirs["cells_per_s"],
                         "ours_bfloat16": half})  # fmt: skip
    return {"rows": rows, "batch_size": args.batch_size, "epochs": args.epochs,
            "scvi_version": scvi.__version__, "threads": torch.get_num_threads()}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 2. FLOP rate of the CVAE's linear layers


def matmul_gflops(m: int, k: int, n: int, device: str, min_time: float, dtype=None) -> float:
    import torch

    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / timeit(lambda: torch.mm(a, b), device, min_time) / 1e9


def bench_flops(args, device: str) -> dict:
    import torch
    from torch import nn

    from cellsynth.config import CVAEConfig
    from cellsynth.models.cvae import CVAE
    from cellsynth.models.modules._sparse_input import MAX_DENSITY, sparse_first_layer

    min_time = 0.2 if args.quick else 1.0
    sizes = ([2048, 4096, 8192] if device == "cuda" else [1024, 2048])[: 1 if args.quick else 3]
    # the real training loop, the CVAE's default architecture (and precision)
    adata = atlas(args.cells, args.genes, args.types)
    cfg = CVAEConfig(max_epochs=args.flop_epochs, patience=args.flop_epochs + 1, device=device)
    model, ends = CVAE(config=cfg), []
    with epoch_ends("cellsynth.models", ends):
        hist = model.fit(adata, LABEL, seed=0)
    dtype = model.module.compute_dtype  # what the dense layers multiply in
    precision = str(dtype).removeprefix("torch.")
    peaks = {p: {str(s): matmul_gflops(s, s, s, device, min_time, getattr(torch, p))
                 for s in sizes} for p in dict.fromkeys(["float32", precision])}  # fmt: skip
    peak = peaks[precision]  # the layers' FLOP rate is read against their own dtype's peak
    peak_gflops = max(peak.values())
    bs, n, genes = cfg.batch_size, adata.n_obs, adata.n_vars
    steps_per_epoch = math.ceil(n / bs)
    step_loop = hist["seconds"] / (hist["epochs"] * steps_per_epoch)
    if len(ends) >= 2:  # epochs after the first
        step_loop = (ends[-1] - ends[0]) / ((len(ends) - 1) * steps_per_epoch)
    module = model.module
    module.train()
    linears = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    # the input layer reads only the non-zero counts where the step does (CPU, float32, sparse
    # enough: models/modules/_sparse_input.py); its genes' FLOPs are then 2 · non-zeros · out
    batches = _batches(model, adata, device, bs)
    x0, _, lib0 = batches(0)
    density = float((x0 != 0).float().mean())
    sparse = module.sparse_encoding(x0) and density <= MAX_DENSITY
    layers, flops, dense_flops = [], 0, 0
    for name, lin in linears:
        first = lin.in_features >= genes  # the input layer: no gradient for its input
        f = 2 * bs * lin.in_features * lin.out_features * (2 if first else 3)
        dense_flops += f
        if first and sparse:
            f = 2 * 2 * lin.out_features * (density * bs * genes + bs * (lin.in_features - genes))
        flops += f
        w = lin.weight.detach().to(dtype)
        x = torch.randn(bs, lin.in_features, device=device, dtype=dtype)
        g = torch.randn(bs, lin.out_features, device=device, dtype=dtype)
        layers.append({"name": name, "in": lin.in_features, "out": lin.out_features,
                       "flops_per_step": f, "passes": 2 if first else 3,
                       "fwd_gflops": 2 * bs * lin.in_features * lin.out_features
                       / timeit(lambda x=x, w=w: torch.nn.functional.linear(x, w), device,
                                min_time / 4) / 1e9,
                       "dgrad_gflops": matmul_gflops(bs, lin.out_features, lin.in_features,
                                                     device, min_time / 4, dtype),
                       "wgrad_gflops": 2 * bs * lin.in_features * lin.out_features
                       / timeit(lambda x=x, g=g: g.T @ x, device, min_time / 4) / 1e9})  # fmt: skip

    # the peak is the best any matmul of this run reached: square products timed for a second
    # vary run to run (2048²: 128-160 GFLOP/s on this CPU), and a layer's product above them
    # shows the machine can do that much
    best_layer = max((max(la["fwd_gflops"], la["dgrad_gflops"], la["wgrad_gflops"]), la["name"])
                     for la in layers)  # fmt: skip
    peak_layer = best_layer[1] if best_layer[0] > peak_gflops else None
    peak_gflops = max(peak_gflops, best_layer[0])

    # one training step, phase by phase, as CVAE.fit takes it
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)  # fmt: skip
    phases = {"densify": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    n_steps = args.steps
    for step in range(n_steps + 3):
        t0 = time.perf_counter()
        x, y, lib = batches(step)
        sync(device)
        t1 = time.perf_counter()
        out = module.loss(x, y, lib, kl_weight=1.0)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sync(device)
        t3 = time.perf_counter()
        opt.step()
        sync(device)
        t4 = time.perf_counter()
        if step >= 3:  # three warm-up steps
            for key, dt_ in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[key] += dt_ / n_steps
    step_manual = sum(phases.values())

    # the same step's pieces alone: linear layers (forward + backward), the NB head
    xs = [(lin, torch.randn(bs, lin.in_features, device=device,
                            requires_grad=lin.in_features < genes)) for _, lin in linears]  # fmt: skip

    factor = 1e4 / lib0  # the encoder's normalisation, for the sparse input layer

    def linear_only() -> None:
        with module._mixed():  # the module's own autocast: the layers' matmuls in its dtype
            for lin, xin in xs:
                if sparse and lin.in_features >= genes:  # as the step runs it
                    sparse_first_layer(x0, factor, xin[:, genes:], lin).sum().backward()
                else:
                    lin(xin).float().sum().backward()

    t_linear = timeit(linear_only, device, min_time)
    x, y, lib = batches(0)
    t_nb = _time_head(module, x, lib, device, min_time)
    prof = _profile(module, opt, batches, device, 3 if args.quick else 10)
    module.zero_grad(set_to_none=True)
    return {"peak_gflops": peak, "peak": peak_gflops, "peaks": peaks, "precision": precision,
            "peak_layer": peak_layer,
            "batch_size": bs, "genes": genes,
            "cells": n, "n_hidden": list(cfg.n_hidden), "n_latent": cfg.n_latent,
            "n_embed": cfg.n_embed, "flops_per_step": flops, "layers": layers,
            "sparse_input": bool(sparse), "input_density": density,
            "dense_flops_per_step": dense_flops,
            "step_loop_s": step_loop, "loop_epochs": hist["epochs"],
            "step_manual_s": step_manual, "phases_s": phases, "linear_s": t_linear,
            "nb_head_s": t_nb, "head": module.dispersion_fit, "batch_source": batches.source, "achieved_gflops": flops / step_loop / 1e9,
            "linear_only_gflops": flops / t_linear / 1e9, "profile": prof,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}  # fmt: skip


def _batches(model, adata, device: str, bs: int):
    """``batches(step)`` -> (x, y, library) of a shuffled mini-batch, densified as CVAE.fit does
    (the CVAE's own row server, ``Rows`` or ``_Rows``, when found; else scipy rows densified on
    the host)."""
    import scipy.sparse as sp
    import torch

    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    codes = np.searchsorted(np.array(model.labels), adata.obs[LABEL].astype(str).to_numpy())
    order = np.random.default_rng(0).permutation(adata.n_obs)
    n_batches = max(1, adata.n_obs // bs)
    rows = None
    for module_name, name in (("cellsynth.models._counts", "Rows"),
                              ("cellsynth.models.cvae", "_Rows")):  # fmt: skip
        try:
            cls = getattr(__import__(module_name, fromlist=[name]), name)
            rows = cls(counts, codes, torch.device(device))
            break
        except (ImportError, AttributeError, TypeError):
            continue
    y_all = torch.from_numpy(codes.astype(np.int64)).to(device)

    def batches(step: int):
        idx = order[(step % n_batches) * bs:(step % n_batches + 1) * bs]
        if rows is not None:
            return rows.batch(idx)[:3]
        x = torch.from_numpy(counts[idx].toarray()).to(device)
        return x, y_all[torch.from_numpy(idx).to(device)], x.sum(1).clamp_min(1.0)

    batches.source = f"{module_name}.{name}" if rows is not None else "scipy, host"
    return batches


#: the likelihood head a training step computes, by ``cvae.dispersion_fit``
HEADS = {"moments": "Poisson from the logits (`log_poisson_softmax`; the dispersion is fitted "
                    "by moments after training, the default)",
         "learned": "softmax → mean → `NegativeBinomial.log_prob_cells`"}  # fmt: skip


def _time_head(module, x, lib, device: str, min_time: float) -> float | None:
    """Forward + backward of the module's likelihood head (:data:`HEADS`) on one batch, from
    its logits, summed over the non-zero counts found once as the training step finds them."""
    import torch

    from cellsynth.models.modules._sparse_input import nonzero
    from cellsynth.models.modules.likelihoods import NegativeBinomial, log_poisson_softmax

    logits = torch.randn(x.shape, device=device, requires_grad=True)
    px_r = torch.zeros(x.shape[1], device=device, requires_grad=True)

    def head() -> None:
        found = nonzero(x) if x.device.type == "cpu" else None
        if module.dispersion_fit == "moments":
            loss = -log_poisson_softmax(x, logits, lib, found).mean()
        else:
            mu = lib[:, None] * torch.softmax(logits, dim=-1)
            loss = -NegativeBinomial(mu, torch.exp(px_r)).log_prob_cells(x, found).mean()
        loss.backward()

    return timeit(head, device, min_time)


def _profile(module, opt, batches, device: str, steps: int) -> dict:
    """torch.profiler over ``steps`` training steps: the ops (CPU) or kernels (CUDA) with most
    self time, and the total of those self times per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        for step in range(steps):
            x, y, lib = batches(step)
            out = module.loss(x, y, lib, kl_weight=1.0)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        sync(device)
    if device == "cuda":  # kernels only (an op's self device time repeats its kernels')
        attr = "self_device_time_total"
        events = [e for e in prof.key_averages()
                  if e.device_type == torch.autograd.DeviceType.CUDA and getattr(e, attr) > 0]
    else:
        attr = "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: -getattr(e, attr))
    top = [{"op": e.key[:90], "ms_per_step": getattr(e, attr) / 1e3 / steps,
            "share": getattr(e, attr) / total} for e in events[:12]]  # fmt: skip
    return {"top": top, "ms_per_step": total / 1e3 / steps, "kind": attr}


# ---------------------------------------------------------------------------------------------
# 3. generation throughput


def bench_generation(args, device: str) -> dict:
    import anndata as ad
    import torch

    from cellsynth.config import CVAEConfig
    from cellsynth.models.cvae import CVAE

    adata = atlas(args.cells, args.genes, args.types)
    cfg = CVAEConfig(max_epochs=args.flop_epochs, patience=args.flop_epochs + 1, device=device)
    model = CVAE(config=cfg)
    model.fit(adata, LABEL, seed=0)
    # untimed: a first `cellsynth generate` after an install compiles (and caches) the kernels
    stream_generation(model, len(model.labels))
    streamed = [fastest(functools.partial(stream_generation, model, n), "wall_s")
                for n in (args.gen_cells, STREAM_FACTOR * args.gen_cells)]  # fmt: skip
    wide = atlas(args.cells, args.wide_genes, args.types)
    wide_model = CVAE(config=cfg)
    wide_model.fit(wide, LABEL, seed=0)
    streamed.append(fastest(functools.partial(stream_generation, wide_model, args.gen_cells),
                            "wall_s"))
    del wide, wide_model
    per_type, extra = divmod(args.gen_cells, len(model.labels))
    request = {t: per_type + (i < extra) for i, t in enumerate(model.labels)}
    best = None
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
            t0 = time.perf_counter()
            syn = model.sample(request, seed=1)
            t1 = time.perf_counter()
            syn.write_h5ad(Path(tmp) / "generated.h5ad")
            t2 = time.perf_counter()
            size_mb = (Path(tmp) / "generated.h5ad").stat().st_size / 1e6
            back = ad.read_h5ad(Path(tmp) / "generated.h5ad")
            assert back.shape == syn.shape
        if best is None or t2 - t0 < best[2] - best[0]:
            best = (t0, t1, t2)
        n, genes = syn.n_obs, syn.n_vars
        nnz = syn.X.nnz
        del syn, back
    t0, t1, t2 = best
    # where sample's time goes: mixture + decoder (on the device) vs the sparse NB draw
    module = model.module
    rows = max(1, min(4 * cfg.batch_size, 4_000_000 // genes))  # CVAE.sample's chunk size
    n_chunks = max(1, min(math.ceil(n / rows), 10))
    rng = np.random.default_rng(0)
    t_dec = t_draw = math.inf
    for _ in range(REPEATS):  # the fastest of the repeats, each part apart
        dec, draw = chunk_times(module, model, rows, n_chunks, rng, device)
        t_dec, t_draw = min(t_dec, dec), min(t_draw, draw)
    per_cell = 1 / (n_chunks * rows)
    decoder_flops = sum(2 * m.in_features * m.out_features for name, m in module.named_modules()
                        if isinstance(m, torch.nn.Linear)
                        and name.split(".")[0] in ("decoder", "px_scale_decoder",
                                                   "px_dropout_decoder"))  # fmt: skip
    return {"cells": n, "genes": genes, "types": len(request), "train_cells": adata.n_obs,
            "sample_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0, "file_mb": size_mb,
            "nnz_share": nnz / (n * genes), "cells_per_s": n / (t2 - t0),
            "sample_cells_per_s": n / (t1 - t0), "values_per_s": n * genes / (t2 - t0),
            "decoder_s_per_cell": t_dec * per_cell, "draw_s_per_cell": t_draw * per_cell,
            "decoder_flops_per_cell": decoder_flops, "chunk_rows": rows,
            "streamed": streamed}  # fmt: skip


#: section 3 times each measurement this many times and keeps the fastest: on the shared 2-core
#: host one run's decoder time varied by half between runs of the same code
REPEATS = 3


def fastest(measure, key: str) -> dict:
    """The result of ``measure()`` with the smallest ``key`` of :data:`REPEATS` calls."""
    return min((measure() for _ in range(REPEATS)), key=lambda r: r[key])


def chunk_times(module, model, rows: int, n_chunks: int, rng, device: str) -> tuple[float, float]:
    """Seconds of ``n_chunks`` chunks of ``rows`` cells in the mixture and decoder, and in the
    sparse NB draw, decoded as :func:`~cellsynth.models._draws.sample_counts` decodes a chunk."""
    import torch

    from cellsynth.models._draws import draw_counts

    t_dec = t_draw = 0.0
    with torch.no_grad():  # as CVAE.sample does: latents and libraries from each type's mixture
        for i in range(n_chunks):
            s0 = time.perf_counter()
            y = torch.full((rows,), i % len(model.labels), dtype=torch.long, device=device)
            u = torch.from_numpy(rng.random(rows, dtype=np.float32)).to(device)
            eps = torch.from_numpy(rng.standard_normal((rows, module.n_latent + 1),
                                                       dtype=np.float32)).to(device)  # fmt: skip
            z, lib = module.mixture_from_noise(u, eps, y)
            px = module.generative(z, y, lib, one_type=True)
            sync(device)
            s1 = time.perf_counter()
            draw_counts(px, lib, rng)
            s2 = time.perf_counter()
            t_dec, t_draw = t_dec + s1 - s0, t_draw + s2 - s1
    return t_dec, t_draw


#: the larger streamed request is this many times the in-memory one (memory must not grow)
STREAM_FACTOR = 5


def stream_generation(model, cells: int) -> dict:
    """``cellsynth generate`` of ``cells`` cells (even over the types) from ``model`` (saved to a
    temporary directory; it loads on the device it was trained on) into an h5ad, in its own process: wall time
    (start-up and loading included) and peak RSS."""
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        model.save(Path(tmp) / "model")
        per_type = max(1, cells // len(model.labels))
        out = Path(tmp) / "generated.h5ad"
        cmd = [str(Path(sys.executable).parent / "cellsynth"), "generate", str(Path(tmp) / "model"),
               "--n-per-type", str(per_type), "--seed", "1", "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        rc, err, peak = run_watched(cmd, None)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"cellsynth generate failed ({rc}): {err[-2000:]}")
        n = per_type * len(model.labels)
        return {"cells": n, "genes": len(model.genes), "wall_s": wall, "cells_per_s": n / wall,
                "values_per_s": n * len(model.genes) / wall, "peak_mb": peak,
                "file_mb": out.stat().st_size / 1e6,
                "command": "cellsynth generate MODEL --n-per-type "
                           f"{per_type} --seed 1 --out generated.h5ad --quiet"}


# ---------------------------------------------------------------------------------------------
# 4. the full pipeline on simulated atlases


#: seconds between two readings of a watched run's peak memory
POLL_S = 0.05


def run_watched(cmd: list[str], limit: float | None) -> tuple[int | str, str, float | None]:
    """Run ``cmd`` from the repository root; kill it after ``limit`` seconds. Returns its exit
    status (``"timeout"`` when killed), its stderr and its peak RSS in MB: the kernel's
    ``VmHWM`` of the process, read every :data:`POLL_S` seconds until it ends. Not the
    ``ru_maxrss`` that ``wait4`` gives: that keeps the high-water mark of the image the child
    was forked from, this (large) process's, across its ``exec``."""
    import threading

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()  # drained as it comes: a full pipe would stall the child
    start, killed, peak = time.monotonic(), False, None
    status_file = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            kb = next(int(line.split()[1]) for line in status_file.read_text().splitlines()
                      if line.startswith("VmHWM:"))  # fmt: skip
            peak = max(peak or 0.0, kb / 1024)
        except (OSError, StopIteration, ValueError):
            pass  # not Linux, or the process is ending
        if not killed and limit is not None and time.monotonic() - start > limit:
            proc.kill()
            killed = True
        time.sleep(POLL_S)
    reader.join()
    return ("timeout" if killed else proc.returncode), "".join(err), peak


def bench_pipeline(args, out: Path, keep=None, *, atlas: bool = False) -> dict:
    """Simulate and run each size (``atlas``: E-ANND-5's, with the --atlas settings);
    ``keep({"rows": ...})`` after each, so a run stopped at a large size keeps the sizes it
    finished."""
    sizes = [ATLAS_CELLS] if atlas else list(args.pipeline_sizes)
    types = args.atlas_types if atlas else args.pipeline_types
    overrides = args.atlas_set if atlas else args.pipeline_set
    cli = str(Path(sys.executable).parent / "cellsynth")
    work = out / "pipeline"
    rows = []
    for cells in sizes:
        tag = f"{cells}x{args.pipeline_genes}x{types}"
        data = work / f"atlas_{tag}.h5ad"
        sim_cmd = [cli, "simulate", "--cells", str(cells), "--genes", str(args.pipeline_genes),
                   "--types", str(types), "--out", rel(data), "--quiet"]  # fmt: skip
        timing = data.with_suffix(".json")  # how long the simulation took, kept beside it
        if not (data.is_file() and timing.is_file()):  # same arguments and seed, same file
            data.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            subprocess.run(sim_cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            timing.write_text(json.dumps({"seconds": time.perf_counter() - t0,
                                          "date": dt.datetime.now().isoformat(timespec="minutes")}))
        sim = json.loads(timing.read_text())
        run_dir = work / f"run_{tag}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
        if atlas and args.atlas_config:  # a preset, on the simulated atlas instead of its data
            run_cmd = [cli, "run", "--config", args.atlas_config, "--out", rel(run_dir), "--quiet",
                       "--set", f'dataset.path="{rel(data)}"',
                       "--set", 'dataset.label_key="celltype_annotation"',
                       "--set", 'dataset.groups=""', "--set", 'explain.cell_type=""']  # fmt: skip
        else:
            config = work / f"config_{tag}.toml"
            # the default settings; the simulator writes its labels to obs["celltype_annotation"]
            config.write_text(f'[dataset]\npath = "{data}"\nlabel_key = "celltype_annotation"\n')
            run_cmd = [cli, "run", "--config", rel(config), "--out", rel(run_dir), "--quiet"]
        for override in overrides:
            run_cmd += ["--set", override]
        log.info("pipeline: %s", " ".join(run_cmd))
        limit = (args.atlas_limit if atlas else 0) or None
        t0 = time.perf_counter()
        rc, stderr, peak_mb = run_watched(run_cmd, limit)
        wall = time.perf_counter() - t0
        manifest = run_dir / "manifest.json"
        stages = json.loads(manifest.read_text())["stages"] if manifest.is_file() else {}
        rows.append({"cells": cells, "genes": args.pipeline_genes, "types": types,
                     "simulate_s": sim["seconds"], "simulate_date": sim["date"],
                     "simulate_cmd": " ".join(sim_cmd[1:]),
                     "run_cmd": " ".join(run_cmd[1:]), "wall_s": wall, "rc": rc,
                     "limit_s": limit, "peak_rss_mb": peak_mb,
                     "defaults": not overrides and not (atlas and args.atlas_config),
                     "error": stderr[-1500:] if rc else "",
                     "stages": {k: {f: v.get(f) for f in ("status", "seconds", "peak_rss_mb",
                                                          "cells", "genes", "types", "epochs")}
                                for k, v in stages.items()}})  # fmt: skip
        log.info("pipeline %d cells: rc %s, %.0f s", cells, rc, wall)
        if keep is not None:
            keep({"rows": rows})
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------
# the page


def fmt(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def header(r: dict) -> list[str]:
    quick = " **Quick mode (small sizes; a placeholder, not the real measurement).**" \
        if r.get("quick") else ""
    load = " / ".join(f"{x:.1f}" for x in r["load_before"][:1] + r["load_after"][:1])
    others = r.get("other_cores")
    if others is None:  # older results: only the load average, which counts our own threads
        busy = max(r["load_before"][0], r["load_after"][0]) > 0.5 * r["machine"]["cores"]
        seen = f"Load average (1 min) before / after: {load}."
    else:
        busy = others > 0.25
        seen = (f"Other processes used {others:.2f} cores on average while it ran (from "
                f"`/proc/stat` less its own CPU time); load average before / after: {load}.")
    warn = " **The machine was busy (other processes): these timings are inflated.**" \
        if busy else ""
    return [f"*{r['device'].upper()}* — measured {r['date']} by `{r['command']}` on "
            f"{describe_machine(r['machine'])}. {seen}{warn}{quick}", ""]


def _ratio(r: float) -> str:
    """A speed ratio to 2 decimals, or 3 where 2 would show a missed target as met (2.00)."""
    target = TARGETS["training"]
    return f"{r:.3f}" if r < target <= round(r, 2) else f"{r:.2f}"


def page_training(found: dict) -> list[str]:
    lines = ["## 1. CVAE training throughput vs scvi-tools SCVI", "",
             "Both models train on the same cells (every cell a training cell, so neither runs a "
             "validation pass), for the same fixed number of epochs with no early stopping, with "
             "the same mini-batch size. Training cells/s = cells × epochs / wall time of the "
             "training loop (CVAE: `history['seconds']`, from the first epoch to the restored best "
             "weights; SCVI: Lightning's `on_train_start` to the last `on_train_epoch_end`). "
             "Model construction, data checks and the CVAE's data-based initialisation are "
             "excluded. *Steady* leaves out the first epoch.", "",
             "Architecture mapping: CVAE `n_hidden = [H] * L`, `n_latent = D`, "
             "`likelihood = \"nb\"`, `dispersion = \"gene\"`, `dropout_rate = 0.1` (encoder "
             "only; decoder 0) ↔ `scvi.model.SCVI(n_hidden=H, n_layers=L, n_latent=D, "
             "gene_likelihood=\"nb\", dispersion=\"gene\", dropout_rate=0.1)` and "
             "`train(batch_size=B, train_size=1.0, early_stopping=False)`. Differences that "
             "remain: the CVAE conditions encoder and decoder on a cell-type embedding "
             "(`n_embed` = 32 inputs more per layer), uses LayerNorm + GELU where SCVI uses "
             "BatchNorm + ReLU, encodes `log1p(x / library × 1e4)` where SCVI encodes `log1p(x)`, "
             "and learns a per-type prior; SCVI's decoder also computes a dropout head "
             "(H × genes) that the NB loss does not use, and SCVI uses the observed library "
             "size (no library encoder); in float32 on the CPU the CVAE's input layer reads "
             "only the non-zero counts (`models/modules/_sparse_input.py`, the same layer), "
             "SCVI's multiplies every entry, and its dropout masks come from a compiled "
             "counter-based generator (`models/modules/_dropout.py`), SCVI's from torch's "
             "`bernoulli_`; with `cvae.dispersion_fit = \"moments\"` (the default) the CVAE's "
             "network trains on a Poisson likelihood from its logits and its NB dispersion is "
             "fitted by moments after training, where SCVI learns the dispersion in its NB "
             "loss. Both train in float32 (the CVAE's default "
             "`cvae.precision`; Lightning's default precision, as scvi-tools leaves it). Where "
             "the hardware has bfloat16 units the CVAE is also timed with `cvae.precision = "
             "\"bfloat16\"` (opt-in: its dense layers multiply in bfloat16 while training; "
             "weights, output logits and losses stay float32), whose cells were further from "
             "real ones gene by gene (ARCHITECTURE.md); the target is read on the default.", ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --training`.", ""]
    for r in found.values():
        res = r["result"]
        lines += header(r)
        ours = sorted({row["ours"].get("precision", "float32") for row in res["rows"]})
        lines += [f"Batch size {res['batch_size']}, {res['epochs']} epoch(s), scvi-tools "
                  f"{res['scvi_version']}, {res['threads']} torch threads; the CVAE's dense "
                  f"layers in {' and '.join(ours)}.", "",
                  "| data | H × L, latent | params ours / scvi | ours cells/s | scvi cells/s | "
                  "ours steady | scvi steady | ours / scvi | target ≥ "
                  f"{TARGETS['training']:.0f}× | ours bfloat16 cells/s (/ scvi) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for row in res["rows"]:
            a, o, s = row["arch"], row["ours"], row["scvi"]
            h = row.get("ours_bfloat16")
            half = (f"{fmt(h['cells_per_s'])} ({h['cells_per_s'] / s['cells_per_s']:.2f}×)"
                    if h else "not timed")  # fmt: skip
            lines.append(f"| {row['data']} | {a['n_hidden']} × {a['n_layers']}, {a['n_latent']} "
                         f"| {o['params']:,} / {s['params']:,} | {fmt(o['cells_per_s'])} "
                         f"| {fmt(s['cells_per_s'])} | {fmt(o['steady_cells_per_s'])} "
                         f"| {fmt(s['steady_cells_per_s'])} | {_ratio(row['ratio'])}× "
                         f"| {'met' if row['ratio'] >= TARGETS['training'] else 'missed'} "
                         f"| {half} |")
        lines.append("")
    return lines


def page_flops(found: dict) -> list[str]:
    lines = ["## 2. FLOP rate of the CVAE's dense layers vs this machine's matmul peak", "",
             "Peak: `torch.mm` of square matrices (the best size), or the fastest product of "
             "the layer timings below where one is faster, in the dtype the CVAE's "
             "dense layers multiply in (`cvae.precision`: float32 by default; with bfloat16, "
             "float32's peak is shown beside it). FLOPs per training "
             "step: 2 · batch · in · out per `nn.Linear` for the forward pass, ×3 for forward + "
             "both backward matmuls, ×2 for the input layer (its input needs no gradient). "
             "Achieved = those FLOPs / the training step time of `CVAE.fit` (its own loop, the "
             "default architecture, epochs after the first when there are several). "
             "The step breakdown times one step phase by phase (synchronised on a GPU), then "
             "the same linear layers alone (forward + backward on random inputs) and the "
             "likelihood head alone (from the logits, forward + backward) on one batch.", ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --flops`.", ""]
    for r in found.values():
        res = r["result"]
        frac = res["achieved_gflops"] / res["peak"]
        precision = res.get("precision", "float32")  # results from before cvae.precision
        every = res.get("peaks", {precision: res["peak_gflops"]})
        peaks = "; ".join(f"{p} " + ", ".join(f"{k}²: {fmt(v, 1)}" for k, v in sizes.items())
                          for p, sizes in every.items())  # fmt: skip
        if res.get("peak_layer"):  # a layer's product beat the square ones
            peaks += f"; best of any layer's products, `{res['peak_layer']}`"
        lines += header(r)
        dense = ""
        if res.get("sparse_input"):  # the input layer from the non-zero counts only
            dense = f" ({res['dense_flops_per_step'] / 1e9:.3f} G as dense layers)"
            lines += ["The encoder's input layer reads only the non-zero counts "
                      f"({res['input_density']:.1%} of a batch's entries here: "
                      "`models/modules/_sparse_input.py`): its genes' FLOPs are counted as "
                      "2 · non-zeros · out per pass, and *linear layers alone* runs it that way "
                      "on a training batch; the per-layer table times its dense matmuls.", ""]
        lines += [f"CVAE `n_hidden = {res['n_hidden']}`, `n_latent = {res['n_latent']}`, "
                  f"`n_embed = {res['n_embed']}`, batch {res['batch_size']}, "
                  f"{res['genes']:,} genes, {res['cells']:,} simulated cells, "
                  f"{res['loop_epochs']} training epoch(s); dense layers in {precision}; "
                  f"float32 matmul precision `{res['float32_matmul_precision']}`.", "",
                  "| quantity | value |", "|---|---:|",
                  f"| {precision} matmul peak, GFLOP/s ({peaks}) | {fmt(res['peak'], 1)} |",
                  f"| linear-layer FLOPs per step | {res['flops_per_step'] / 1e9:.3f} G{dense} |",
                  f"| training step (CVAE.fit loop) | {res['step_loop_s'] * 1e3:.2f} ms |",
                  f"| achieved GFLOP/s in training | {fmt(res['achieved_gflops'], 1)} |",
                  f"| fraction of peak (target ≥ {TARGETS['flops']}) | {frac:.3f} "
                  f"({'met' if frac >= TARGETS['flops'] else 'missed'}) |",
                  f"| linear layers alone, GFLOP/s | {fmt(res['linear_only_gflops'], 1)} "
                  f"({res['linear_only_gflops'] / res['peak']:.2f} of peak) |", "",
                  "Step breakdown (ms per step):", "", "| part | ms | share of the step |",
                  "|---|---:|---:|"]
        step = res["step_manual_s"]
        for k, v in res["phases_s"].items():
            lines.append(f"| phase: {k} | {v * 1e3:.2f} | {v / step:.0%} |")
        lines.append(f"| **whole step (phases summed)** | {step * 1e3:.2f} | 100% |")
        lines.append(f"| of which linear layers, fwd + bwd (alone) | {res['linear_s'] * 1e3:.2f} "
                     f"| {res['linear_s'] / step:.0%} |")
        if res.get("nb_head_s") is not None:  # results before "head" timed the learned one
            head = HEADS[res.get("head", "learned")]
            lines.append(f"| of which the likelihood head, {head}, fwd + bwd (alone) | "
                         f"{res['nb_head_s'] * 1e3:.2f} | {res['nb_head_s'] / step:.0%} |")
            rest = step - res["linear_s"] - res["nb_head_s"] - res["phases_s"]["densify"] \
                - res["phases_s"]["optimizer"]
            lines.append(f"| of which the rest (norms, activations, dropout, KL, autograd and "
                         f"Python overhead) | {rest * 1e3:.2f} | {rest / step:.0%} |")
            if rest < 0:
                lines += ["", "The parts add up to more than the step: the timings disagree "
                          "(a busy machine?); rerun when it is quiet."]
        lines += ["", "Per layer, GFLOP/s of its three matmuls at the training batch "
                  "(forward `x Wᵀ`, input gradient, weight gradient):", "",
                  "| layer | in → out | FLOPs per step | forward | input grad | weight grad |",
                  "|---|---|---:|---:|---:|---:|"]
        for la in res["layers"]:
            lines.append(f"| `{la['name']}` | {la['in']:,} → {la['out']:,} "
                         f"| {la['flops_per_step'] / 1e6:,.1f} M (×{la['passes']}) "
                         f"| {fmt(la['fwd_gflops'], 1)} | {fmt(la['dgrad_gflops'], 1)} "
                         f"| {fmt(la['wgrad_gflops'], 1)} |")
        prof = res["profile"]
        if isinstance(prof, list):  # results written before the totals were kept
            prof = {"top": prof, "ms_per_step": sum(p["ms_per_step"] for p in prof),
                    "kind": "self_cpu_time_total"}  # fmt: skip
        what = "CUDA kernels" if prof["kind"] == "self_device_time_total" else "CPU ops"
        lines += ["", f"torch.profiler over training steps, the {what} with the most self time "
                  f"(in all, {prof['ms_per_step']:.2f} ms per step"]
        if prof["kind"] == "self_device_time_total":
            lines[-1] += (f": the GPU is busy {prof['ms_per_step'] / 1e3 / step:.0%} of the "
                          "step; the rest is launch and host time")
        lines[-1] += "):"
        lines += ["", "| op | ms per step | share |", "|---|---:|---:|"]
        for p in prof["top"]:
            lines.append(f"| `{p['op']}` | {p['ms_per_step']:.2f} | {p['share']:.0%} |")
        lines.append("")
    return lines


def page_generation(found: dict, peaks: dict[str, float]) -> list[str]:
    lines = ["## 3. Generation throughput", "",
             "`CVAE.sample` of the requested cells (spread evenly over the types, mixture "
             "latents) and `AnnData.write_h5ad` of the result; cells/s counts both. Every "
             f"time here is the fastest of {REPEATS} runs (on a shared host a run's time "
             "varies by more than the changes it is read for). The model "
             "is the default architecture trained briefly on a simulated atlas (training does "
             "not change the cost of sampling). The split of `sample`'s time is timed apart on "
             "up to 10 of its chunks, as `sample` makes them (latents and library sizes from "
             "each type's mixture, types in turn): the mixture and the decoder on the device, "
             "and the sparse negative binomial draw (`models._draws.nb_csr`: which entries are non-zero, and their "
             "counts, drawn where the decoder runs: on the CPU a compiled kernel, a vectorised "
             "pass over every entry and a pass over the non-zero ones; on a GPU tensor "
             "operations; CSR out). Then "
             "`cellsynth generate` in its own process (start-up and loading the model "
             "included), which streams the cells to the h5ad one chunk at a time (on a GPU "
             "the next chunk is drawn while one is written): its peak memory must not grow with the request (issue 22's "
             "\"memory independent of the request\"), and a wider model shows the cost per "
             "gene.", ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --generation`.", ""]
    for key, r in found.items():
        res = r["result"]
        ok = res["cells_per_s"] >= TARGETS["generation"]
        lines += header(r)
        lines += ["| quantity | value |", "|---|---:|",
                  f"| cells × genes generated | {res['cells']:,} × {res['genes']:,} "
                  f"({res['types']} types; {res['nnz_share']:.1%} non-zero) |",
                  f"| `sample` | {res['sample_s']:.2f} s ({fmt(res['sample_cells_per_s'])} "
                  "cells/s) |",
                  f"| `write_h5ad` | {res['write_s']:.2f} s ({res['file_mb']:.0f} MB) |",
                  f"| **cells/s, sample + write** (target ≥ {TARGETS['generation']:,.0f}) "
                  f"| **{fmt(res['cells_per_s'])}** ({'met' if ok else 'missed'}) |",
                  f"| values/s (cells × genes) | {res['values_per_s'] / 1e6:,.1f} M |",
                  f"| latent mixture + decoder, µs per cell | {res['decoder_s_per_cell'] * 1e6:.1f} |",
                  f"| sparse NB draw to CSR, µs per cell | {res['draw_s_per_cell'] * 1e6:.1f} |",
                  ""]  # fmt: skip
        flops = res.get("decoder_flops_per_cell")
        peak = peaks.get(key)  # section 2's run on the same kind of host
        if flops and peak:  # what the decoder alone allows at the measured matmul peak
            bound = peak * 1e9 / flops
            lines[-1:] = [f"| decoder matmul FLOPs per cell | {flops / 1e6:.2f} M "
                          f"({flops / res['decoder_s_per_cell'] / 1e9:.1f} GFLOP/s achieved) |",
                          f"| cells/s the decoder alone allows at the section 2 matmul peak "
                          f"({peak:.1f} GFLOP/s) | {fmt(bound)} |",
                          "| cells/s the decoder at that peak and the draw above allow "
                          "(nothing else: no mixture, no write) | "
                          f"{fmt(1 / (1 / bound + res['draw_s_per_cell']))} |", ""]
        if res.get("streamed"):
            lines += ["Streamed to a file by `cellsynth generate`, after an untimed first run "
                      "(on a fresh install, it compiles and caches the kernels) (" +
                      "; ".join(f"`{x['command']}`" for x in res["streamed"]) + "):", "",
                      "| cells × genes | wall s | cells/s | values/s | peak RSS MB | file MB |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {x['cells']:,} × {x['genes']:,} | {x['wall_s']:.1f} | "
                      f"{fmt(x['cells_per_s'])} | {x['values_per_s'] / 1e6:,.1f} M | "
                      f"{x['peak_mb']:,.0f} | {x['file_mb']:,.0f} |" for x in res["streamed"]]
            same = [x for x in res["streamed"] if x["genes"] == res["genes"]]
            if len(same) >= 2 and all(x["peak_mb"] for x in same):
                grow = same[-1]["peak_mb"] / same[0]["peak_mb"]
                lines += ["", f"Peak memory ×{grow:.2f} for a request ×"
                          f"{same[-1]['cells'] / same[0]['cells']:.0f} at {res['genes']:,} "
                          "genes."]
            lines += [""]
    return lines


PIPELINE_INTRO = (
    "`cellsynth simulate` writes the atlas (cached between runs: same arguments, same file), "
    "then `cellsynth run` runs every stage with the default settings (`dataset.path` the file, "
    "`dataset.label_key = \"celltype_annotation\"`, the simulator's column; any `--set` is in "
    "the command) in its own process, into a fresh run directory. Stage times and peak RSS are "
    "read from the run's `manifest.json`; the peak RSS of a stage is the process's peak so far "
    "(`ru_maxrss`), so it only grows. Wall time is the whole `cellsynth run` process.")


def page_pipeline(found: dict) -> list[str]:
    lines = ["## 4. The full pipeline on simulated atlases", "", PIPELINE_INTRO, ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --pipeline`.", ""]
    for r in found.values():
        lines += _pipeline_tables(r)
    return lines


def page_atlas(found: dict) -> list[str]:
    lines = [f"## 5. E-ANND-5's size: {ATLAS_CELLS:,} cells", "",
             f"As section 4, at {ATLAS_CELLS:,} cells × 33,538 genes and {ATLAS_TYPES} types "
             "(`--atlas`), with the default settings or a preset (`--atlas-config`: its "
             "dataset path, label column, coarse groups and explained type replaced by the "
             "simulated atlas's) and any `--atlas-set` overrides, all in the command. A run "
             "stopped at its time limit (`--atlas-limit`) keeps the stages it finished; the "
             "stage it was in shows as stopped.", ""]
    if not found:
        return [*lines, "Not run yet: `python benchmarks/performance.py --atlas` (hours).", "",
                *_atlas_target([])]
    for r in found.values():
        lines += _pipeline_tables(r) + _atlas_target(r["result"]["rows"])
    return lines


def _atlas_target(rows: list[dict]) -> list[str]:
    """The issue's target for E-ANND-5's size: met or missed by how much, or not measured."""
    limit = ATLAS_HOURS
    head = f"**Target: {ATLAS_CELLS:,} cells end to end in ≤ {limit:g} h with peak RSS ≤ 16 GB:**"
    if not rows:
        return [f"{head} not measured.", ""]
    r = rows[-1]
    hours = r["wall_s"] / 3600
    peak = max([r.get("peak_rss_mb") or 0]
               + [st.get("peak_rss_mb") or 0 for st in r["stages"].values()]) / 1024
    if r["rc"] not in (0, "timeout"):
        return [f"{head} not measured: the run failed (rc {r['rc']}).", ""]
    if not r.get("defaults"):  # the target is for the default settings: say what this run was
        word = lambda ok: "within" if ok else "over"  # noqa: E731
        if r["rc"] == "timeout":
            got = f"stopped at its limit after {hours:.2f} h in the {_stopped_in(r)} stage"
        else:
            got = f"{hours:.2f} h end to end ({word(hours <= limit)} {limit:g} h)"
        return [f"{head} not measured with the default settings. With the settings in the "
                f"command: {got}, peak RSS {peak:.1f} GB ({word(peak <= 16)} 16 GB).", ""]
    rss = f"peak RSS {peak:.1f} GB ({'met' if peak <= 16 else f'missed by {peak - 16:.1f} GB'})"
    if r["rc"] == "timeout":
        if hours >= limit:
            return [f"{head} missed: not finished after {hours:.2f} h (stopped in the "
                    f"{_stopped_in(r)} stage); {rss} until then.", ""]
        return [f"{head} not measured to the end: stopped at the {hours:.2f} h limit in the "
                f"{_stopped_in(r)} stage; {rss} until then.", ""]
    time_verdict = "met" if hours <= limit else f"missed by {hours - limit:.2f} h"
    return [f"{head} {hours:.2f} h ({time_verdict}), {rss}.", ""]


def _stopped_in(row: dict) -> str:
    """The stage a run stopped at its limit was in."""
    return next((k for k, st in row["stages"].items() if st.get("status") == "running"), "?")


def _pipeline_tables(r: dict) -> list[str]:
    rows, lines = r["result"]["rows"], []
    lines += header(r)
    lines += ["Commands: " + "; ".join(f"`cellsynth {row['simulate_cmd']}` "
                                         f"then `cellsynth {row['run_cmd']}`" for row in rows), ""]
    names: list[str] = []
    for row in rows:
        names += [k for k in row["stages"] if k not in names]
    head = " | ".join(f"{row['cells']:,} × {row['genes']:,} s | peak MB" for row in rows)
    lines += [f"| stage | {head} |", "|---|" + "---:|---:|" * len(rows)]
    for name in names:
        cells = []
        for row in rows:
            st = row["stages"].get(name, {})
            s = fmt(st.get("seconds"), 1)
            status = st.get("status", "–")
            if status == "running":  # the run ended during this stage
                status = "stopped" if row["rc"] == "timeout" else "failed"
            epochs = f" ({st['epochs']} epochs)" if st.get("epochs") else ""  # the generator's
            cells.append(f"{s if status == 'done' else status}{epochs} "
                         f"| {fmt(st.get('peak_rss_mb'))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| outside the stages (start-up, results page, HTML report) | " + " | ".join(
        f"{fmt(row['wall_s'] - sum(st.get('seconds') or 0 for st in row['stages'].values()), 1)}"
        " | " for row in rows) + " |")
    lines.append("| **wall time (process)** | " + " | ".join(
        f"**{fmt(row['wall_s'], 1)}** | " for row in rows) + " |")
    lines += ["", "| cells | types | after QC: cells × genes | simulate s | run wall s | ms per "
              "input cell | growth vs previous size |", "|---:|---:|---|---:|---:|---:|---|"]
    prev = None
    for row in rows:
        data = row["stages"].get("data", {})
        qc = f"{fmt(data.get('cells'))} × {fmt(data.get('genes'))}" if data.get("cells") else "–"
        growth = "–"
        if prev is not None and row["rc"] == 0 and prev["rc"] == 0:
            t, c = row["wall_s"] / prev["wall_s"], row["cells"] / prev["cells"]
            growth = f"time ×{t:.1f} for cells ×{c:.1f} (exponent {math.log(t) / math.log(c):.2f})"
        status = ("" if row["rc"] == 0 else f" (stopped at the {row['limit_s']:,.0f} s limit)"
                  if row["rc"] == "timeout" else f" (failed, rc {row['rc']})")
        lines.append(f"| {row['cells']:,} | {row['types']} | {qc} | {fmt(row['simulate_s'], 1)} "
                     f"| {fmt(row['wall_s'], 1)}{status} | {row['wall_s'] / row['cells'] * 1e3:.2f} "
                     f"| {growth} |")
        prev = row
    for row in rows:
        if row["rc"] and row["rc"] != "timeout":
            lines += ["", f"{row['cells']:,} cells failed:", "", "```", row["error"].strip(), "```"]
    lines.append("")
    return lines


def _sections(text: str) -> dict[str, list[str]]:
    """The page's ``## `` sections, by heading line, each with its lines (heading first)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line, [])
        if current is not None:
            current.append(line)
    return found


def write_page(out: Path, doc: Path) -> Path:
    found = load_results(out)
    any_quick = any(r.get("quick") for sec in found.values() for r in sec.values())
    lines = ["# Performance", "",
             "Written by `benchmarks/performance.py` from the results it keeps in "
             f"`{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}/`; every number "
             "comes from a run. Each section names its own date, command and machine, because "
             "sections are rerun one at a time (`--training`, `--flops`, `--generation`, "
             "`--pipeline`, `--atlas`, `--small`). Sections 1-3 on the CPU are kept per kind "
             "of host (its vector units: hosts of one model name differ in them, and so do "
             "their peaks): a run on another kind adds its own table beside the earlier one, "
             "and each table's targets are read on its own host. Do not edit by hand: rerun "
             "the command.", ""]
    if not any(r.get("device") == "cuda" for sec in found.values() for r in sec.values()):
        lines += ["**GPU: not measured yet.** Every section runs on CUDA too where there is a "
                  "GPU (`--devices cpu,cuda`, the default when torch sees one; the pipeline "
                  "sections use what `device = \"auto\"` picks), and adds its rows beside the "
                  "CPU's. No GPU has been available to these runs yet: no result here comes "
                  "from one, and the script's CUDA paths have not run on one.", ""]
    if any_quick:
        lines += ["**Some sections below are from `--quick` runs (small sizes, to check the "
                  "script): placeholders until the full run.**", ""]
    peaks = {key: r["result"]["peak"] for key, r in found["flops"].items()}
    old = _sections(doc.read_text()) if doc.is_file() else {}
    for section, part in (("training", page_training(found["training"])),
                          ("flops", page_flops(found["flops"])),
                          ("generation", page_generation(found["generation"], peaks)),
                          ("pipeline", page_pipeline(found["pipeline"])),
                          ("atlas", page_atlas(found["atlas"])),
                          ("small", perf_small.page_small(found["small"], header))):  # fmt: skip
        if not found[section] and part[0] in old:
            # no kept result (results kept before they were committed are gone): the section
            # as the page last had it, which a run wrote, rather than "not run"
            part = old[part[0]]
        lines += part
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines).rstrip("\n") + "\n")
    return doc


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SECTIONS:
        ap.add_argument(f"--{s}", action="store_true", help=f"run the {s} section")
    ap.add_argument("--atlas", action="store_true",
                    help=f"the pipeline at {ATLAS_CELLS:,} cells (hours; kept apart)")
    ap.add_argument("--atlas-types", type=int, default=ATLAS_TYPES)
    ap.add_argument("--atlas-config", default="",
                    help="--atlas: run this preset (its dataset, groups and explained type "
                    "replaced by the simulated atlas's) instead of the default settings")
    ap.add_argument("--atlas-limit", type=float, default=0,
                    help="--atlas: stop the run after this many seconds (0: none); the page "
                    "keeps the stages it finished")
    ap.add_argument("--atlas-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="--atlas: a `cellsynth run --set` override (default: none)")
    ap.add_argument("--small", action="store_true",
                    help="section 6: cvae vs CondSCVI and SCVI, default fits, shared data sets "
                    "(over an hour; not run when no section is named)")
    ap.add_argument("--small-data", default=None, metavar="NAMES",
                    help="section 6: comma-separated ../shared/data names or h5ad paths "
                    "(default: every h5ad there; --quick: "
                    f"{','.join(perf_small.QUICK_DATA)})")
    ap.add_argument("--small-epochs", type=int, default=None,
                    help="section 6: cap every model at this many epochs (default: none, each "
                    f"model's own default; --quick: {perf_small.QUICK_EPOCHS})")
    ap.add_argument("--small-device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="section 6: the device of all three fits")
    ap.add_argument("--small-limit", type=float, default=0,
                    help="section 6: stop a fit after this many seconds (0: none)")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    ap.add_argument("--page-only", action="store_true", help="rebuild the page, run nothing")
    ap.add_argument("--devices", default="", help="cpu,cuda (default: cpu, and cuda if present)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads, sections 1-3 (default: torch's, one per core)")
    ap.add_argument("--cells", type=int, help="simulated cells, sections 1-3")
    ap.add_argument("--genes", type=int, help="genes, sections 1-3")
    ap.add_argument("--types", type=int, help="cell types, sections 1-3")
    ap.add_argument("--epochs", type=int, help="fixed epochs, section 1")
    ap.add_argument("--flop-epochs", type=int, help="CVAE.fit epochs, sections 2 and 3")
    ap.add_argument("--steps", type=int, help="timed steps of the step breakdown, section 2")
    ap.add_argument("--batch-size", type=int, default=256, help="section 1, both models")
    ap.add_argument("--archs", default="128x1:10,512x2:32",
                    help="section 1: HIDDENxLAYERS:LATENT, comma-separated")
    ap.add_argument("--real", default="", help="section 1: also this ../shared/data dataset")
    ap.add_argument("--real-genes", type=int, default=None,
                    help="section 1: the --real data set's most counted genes (default: --genes; "
                    "0: every gene with a count, the width real data sets train at)")
    ap.add_argument("--gen-cells", type=int, help="cells to generate, section 3")
    ap.add_argument("--wide-genes", type=int, help="genes of section 3's second, wider model")
    ap.add_argument("--pipeline-sizes", help="section 4: cells, comma-separated")
    ap.add_argument("--pipeline-genes", type=int)
    ap.add_argument("--pipeline-types", type=int)
    ap.add_argument("--pipeline-set", action="append", metavar="SECTION.KEY=VALUE",
                    help="section 4: a `cellsynth run --set` override (default: none; --quick: "
                    "cheap settings)")
    ap.add_argument("--out", default="runs/performance",
                    help="simulated atlases and pipeline run directories (not committed)")
    ap.add_argument("--kept", default="benchmarks/results/performance",
                    help="where each section's last result is kept (committed with the page)")
    ap.add_argument("--doc", default="docs/PERFORMANCE.md")
    args = ap.parse_args()
    if args.small_data is None:
        args.small_data = ",".join(perf_small.QUICK_DATA) if args.quick else ""
    if args.small_epochs is None:
        args.small_epochs = perf_small.QUICK_EPOCHS if args.quick else 0
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if isinstance(args.pipeline_sizes, str):
        args.pipeline_sizes = [int(s) for s in args.pipeline_sizes.split(",") if s]
    args.archs = [tuple(int(v) for v in a.replace(":", "x").split("x"))
                  for a in args.archs.split(",") if a]  # fmt: skip
    chosen = [s for s in SECTIONS if getattr(args, s)]
    if not chosen and not args.atlas and not args.small:
        chosen = list(SECTIONS)
    args.sections = [] if args.page_only else \
        chosen + (["atlas"] if args.atlas else []) + (["small"] if args.small else [])
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO)  # the epoch hooks turn on DEBUG records
    out, kept, doc = ROOT / args.out, ROOT / args.kept, ROOT / args.doc
    (ROOT / "runs").mkdir(exist_ok=True)
    if args.sections:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

        devices = [d for d in args.devices.split(",") if d] or \
            ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        ctx = {"command": " ".join(["python benchmarks/performance.py", *sys.argv[1:]]),
               "quick": args.quick, "machine": machine()}
        for section in args.sections:
            # the pipeline uses the default device (`auto`): label it by what that picks
            auto = "cuda" if torch.cuda.is_available() else "cpu"
            whole_runs = section in ("pipeline", "atlas")
            if section == "small":  # one device for its three fits, chosen by --small-device
                ctx.update(date=dt.datetime.now().isoformat(timespec="minutes"),
                           load_before=list(os.getloadavg()))
                start, device = cpu_seconds(), args.small_device
                log.info("== small on %s", device)

                def keep_small(res: dict, device: str = device, start=start) -> None:
                    save_result(kept, "small", device, res, ctx, start)

                path = result_path(kept, "small", device)
                earlier = json.loads(path.read_text()) if path.exists() else None
                perf_small.bench_small(args, out, keep_small, earlier)  # kept per data set
                continue
            for device in ([auto] if whole_runs else devices):
                ctx.update(date=dt.datetime.now().isoformat(timespec="minutes"),
                           load_before=list(os.getloadavg()))
                start = cpu_seconds()
                log.info("== %s on %s", section, device)
                if whole_runs:
                    variant = Path(args.atlas_config).stem if section == "atlas" else ""

                    def keep(res: dict, device: str = device, start=start,
                             section: str = section, variant: str = variant) -> None:
                        save_result(kept, section, device, res, ctx, start, variant)

                    bench_pipeline(args, out, keep, atlas=section == "atlas")  # kept per size
                else:
                    result = globals()[f"bench_{section}"](args, device)
                    variant = machine_tag(ctx["machine"]) if device == "cpu" else ""
                    save_result(kept, section, device, result, ctx, start, variant)
    print(f"wrote {write_page(kept, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
