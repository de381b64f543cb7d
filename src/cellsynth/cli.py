"""The ``cellsynth`` command: parses, calls, prints. Thin on purpose."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from .errors import CellsynthError

logger = logging.getLogger("cellsynth")


def _setup_logging(quiet: bool, logfile: Path | None = None) -> None:
    root = logging.getLogger("cellsynth")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(fmt)
    root.addHandler(console)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile)
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars (tqdm, on stderr): off with ``--quiet`` and when stderr is not a terminal."""
    return not args.quiet and sys.stderr.isatty()


def cmd_run(args: argparse.Namespace) -> int:
    from . import config, pipeline
    from .presets import demo_config_path

    cfg_path = args.config if args.config is not None else demo_config_path()
    cfg = config.load(cfg_path, args.set)  # validated before any long work
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "demo")
    _setup_logging(args.quiet, out / "run.log" if _writable_parent(out) else None)
    logger.info("config: %s; output: %s", cfg_path, out)
    path = pipeline.run(cfg, out, progress=_progress(args), force=set(args.force))
    print(f"results: {path}")
    print(f"report:  {out / 'report.html'}")
    return 0


def _writable_parent(out: Path) -> bool:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return True
    except OSError:
        return False


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import DEFAULT_BASE_URL, download

    _setup_logging(args.quiet)
    path = download(args.accession, args.cache_dir, base_url=args.base_url or DEFAULT_BASE_URL,
                    force=args.force, progress=_progress(args))
    print(path)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .data.simulate import write_atlas

    _setup_logging(args.quiet)
    path = write_atlas(args.out, args.cells, args.genes, args.types, seed=args.seed,
                       label_key=args.label_key, chunk_size=args.chunk_size,
                       progress=_progress(args))
    print(path)
    return 0


def _parse_types(text: str) -> dict[str, int]:
    """``"B cell=500,NK=200"`` -> ``{"B cell": 500, "NK": 200}``."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, n = item.rpartition("=")
        if not sep or not name.strip():
            raise CellsynthError(f"--types expects TYPE=N[,TYPE=N...], got {item!r}")
        try:
            out[name.strip()] = int(n)
        except ValueError:
            raise CellsynthError(f"--types: the count for {name.strip()!r} must be an integer, "
                                 f"got {n!r}") from None
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from . import config
    from .data.io import check_label, read
    from .models.registry import make_generator

    _setup_logging(args.quiet)
    cfg = config.load(args.config, [*args.set, f"generator.model='{args.model}'"])
    adata = read(args.data)
    check_label(adata, args.label_key)
    if adata.isbacked:
        adata = adata.to_memory()
    gen = make_generator(args.model, cfg)
    history = gen.fit(adata, args.label_key, seed=args.seed, progress=_progress(args))
    gen.save(args.out)
    config.save(cfg, Path(args.out) / "run_config.toml")
    print(f"model: {args.out} ({len(gen.labels)} types, {len(gen.genes)} genes, "
          f"{history.get('epochs', '-')} epochs)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .models.cvae import CVAE
    from .models.registry import load_generator

    _setup_logging(args.quiet)
    gen = load_generator(args.model_dir)
    if (args.n_per_type is None) == (args.types is None):
        raise CellsynthError("give exactly one of --n-per-type N or --types 'TYPE=N,...'")
    counts = ({t: args.n_per_type for t in gen.labels} if args.n_per_type is not None
              else _parse_types(args.types))
    if isinstance(gen, CVAE):  # the generator whose sampling takes long enough for a bar
        syn = gen.sample(counts, seed=args.seed, progress=_progress(args))
    else:
        syn = gen.sample(counts, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    syn.write_h5ad(out)
    print(f"generated {syn.n_obs} cells x {syn.n_vars} genes: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    _setup_logging(args.quiet)
    path = evaluate(args.real, args.synthetic, args.label_key, Path(args.out), seed=args.seed,
                    progress=_progress(args))
    print(f"fidelity: {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .evaluation import run_benchmark

    _setup_logging(args.quiet)
    path = run_benchmark([d for d in args.data.split(",") if d], args.models.split(","),
                         Path(args.out), config_path=args.config, overrides=args.set,
                         label_key=args.label_key, progress=_progress(args))
    print(f"benchmark: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    _setup_logging(args.quiet)
    path = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"report: {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_info

    info = describe(args.path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellsynth", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole experiment from a TOML config")
    r.add_argument("--config", help="TOML config (default: the embedded demo)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), repeatable")
    r.add_argument("--out", help="run directory (default: runs/<config name>)")
    r.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    r.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage (and the ones after it) even if done; repeatable")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("download", help="download an Expression Atlas experiment's h5ad")
    d.add_argument("accession", help="e.g. E-ANND-5")
    d.add_argument("--cache-dir", default="~/.cache/cellsynth")
    d.add_argument("--base-url", default="", help="mirror of the Expression Atlas sc_experiments folder")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_download)

    s = sub.add_parser("simulate", help="write a simulated atlas (chunked) to an h5ad")
    s.add_argument("--cells", type=int, default=10_000)
    s.add_argument("--genes", type=int, default=2_000)
    s.add_argument("--types", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-key", default="celltype_annotation")
    s.add_argument("--chunk-size", type=int, default=50_000)
    s.add_argument("--out", required=True)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_simulate)
    f = sub.add_parser("fit", help="fit a generator on an h5ad of raw counts")
    f.add_argument("data")
    f.add_argument("--label-key", required=True)
    f.add_argument("--model", default="cvae", help="cvae, nb, seed or scvi")
    f.add_argument("--out", required=True, help="model directory")
    f.add_argument("--config", help="TOML config for the model's settings (e.g. [cvae])")
    f.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_fit)

    g = sub.add_parser("generate", help="generate cells of chosen types from a saved generator")
    g.add_argument("model_dir")
    g.add_argument("--n-per-type", type=int, help="this many cells of every type")
    g.add_argument("--types", help="'B cell=500,NK=200'")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output .h5ad")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="fidelity of synthetic cells against real ones, with the "
                       "real-vs-real floor")
    e.add_argument("--real", required=True)
    e.add_argument("--synthetic", required=True)
    e.add_argument("--label-key", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("benchmark", help="generators side by side on datasets: fidelity, "
                       "utility, the real-vs-real floor")
    b.add_argument("--data", required=True, help="comma-separated .h5ad files or preset TOMLs")
    b.add_argument("--models", default="cvae,nb,seed,scvi")
    b.add_argument("--label-key", default=None, help="label column (default: the config's)")
    b.add_argument("--config", help="TOML config for every dataset (default settings otherwise)")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    b.add_argument("--out", required=True)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark)

    rp = sub.add_parser("report", help="write a self-contained HTML report of a run directory")
    rp.add_argument("run_dir", help="a run directory written by cellsynth run")
    rp.add_argument("--out", help="HTML file (default: RUN_DIR/report.html)")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_report)

    i = sub.add_parser("info", help="describe a run directory, a model directory or an h5ad")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)
    return p


def _version() -> str:
    from importlib.metadata import version

    return version("cellsynth")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CellsynthError as exc:
        print(f"cellsynth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"cellsynth: error: disk full while writing {exc.filename or 'the output'}; "
              "free space or choose another --out (finished stages are kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
