"""The ``cellsynth`` command: parses, calls, prints. Thin on purpose."""

from __future__ import annotations

import argparse
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
    return not args.quiet and sys.stderr.isatty()


def cmd_run(args: argparse.Namespace) -> int:
    from . import config, pipeline
    from .presets import demo_config_path

    cfg_path = args.config if args.config is not None else demo_config_path()
    cfg = config.load(cfg_path, args.set)  # validated before any long work
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "demo")
    _setup_logging(args.quiet, out / "run.log" if _writable_parent(out) else None)
    logger.info("config: %s; output: %s", cfg_path, out)
    path = pipeline.run(cfg, out, progress=_progress(args))
    print(f"results: {path}")
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
                    force=args.force, progress=not args.quiet)
    print(path)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .data.simulate import write_atlas

    _setup_logging(args.quiet)
    path = write_atlas(args.out, args.cells, args.genes, args.types, seed=args.seed,
                       label_key=args.label_key, chunk_size=args.chunk_size,
                       progress=not args.quiet)
    print(path)
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
    except KeyboardInterrupt:
        print("cellsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
