"""The ``cellsynth`` command: parses, calls, prints. Thin on purpose."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from . import config, config_sources
from .cli_logging import command_logging, say, show, to_devnull, to_log_file
from .cli_logging import setup as _setup_logging
from .cli_parser import build_parser
from .cli_signals import Terminated, exit_if_hdf5_broken, hdf5_failures, terminations
from .errors import CellsynthError
from .heartbeat import heartbeat
from .options import settings
from .outputs import json_text

logger = logging.getLogger("cellsynth")


def _value(value: object) -> str:
    """A setting's value as TOML writes it (``"a.h5ad"``, ``[512, 256]``, ``true``)."""
    return json.dumps(value)


def settings_line(cfg: config.RunConfig, sources: dict[str, str]) -> str:
    """The settings not at their default, each with where it came from, on one line."""
    given = [f"{k}={_value(config_sources.get_setting(cfg, k))} ({src})"
             for k, src in sources.items() if src != "default"]
    return "settings: " + (", ".join(given) or "all defaults")


def show_settings(cfg: config.RunConfig, sources: dict[str, str]) -> str:
    """The resolved settings as TOML, each line's comment giving its default, source and rule."""
    defaults = config.RunConfig()
    lines: list[str] = []
    section = ""
    for key in sources:
        head, _, name = key.rpartition(".")
        if head != section:
            section = head
            lines += ["", f"[{head}]"]
        value, default = config_sources.get_setting(cfg, key), config_sources.get_setting(defaults, key)
        source = sources[key] if sources[key] == "default" else             f"{sources[key]} (default {_value(default)})"
        lines.append(f"{name} = {_value(value)}".ljust(38) + f"  # {source}; {config_sources.rule(key)}")
    return "\n".join(lines)


def _not_blank(value: str, flag: str, fix: str) -> None:
    """Refuse an empty path option (``--out "$DIR"`` with ``DIR`` unset): it would name the
    current folder."""
    if not value.strip():
        raise CellsynthError(f"{flag} is empty ({value!r}); {fix}")


def _run_dir(args: argparse.Namespace, cfg: config.RunConfig) -> Path:
    """``--out``, else ``runs/<name>``: the data argument's, the config's, the data's, or demo."""
    if args.out is not None:  # `--out "$RUN"` with RUN unset
        _not_blank(args.out, "--out", "give the run directory, or leave --out out for "
                   "runs/<the data's name>")
    if args.out:  # ~ expanded: else run.log went to a folder named ~, the rest to the home's
        from .paths import expand_user

        return expand_user(args.out, "--out")
    from .api import _default_out  # one rule for cs.run and this command

    return _default_out(args.data, args.config, cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from . import pipeline

    _setup_logging(args.quiet)  # a renamed setting's warning is shown while resolving
    # validated (keys, types, ranges) before any data is read
    cfg, sources = config_sources.resolve(args.data, args.label_key, args.config, args.set)
    out = _run_dir(args, cfg)
    from .outputs import check_links, check_out

    check_links(out)  # before run.log is opened in it: links leading out, a file as --out
    check_out(out, cfg)
    from .runtime import RunLock

    RunLock(out).check_free()  # a run going on there: its run.log is not this one's
    _setup_logging(args.quiet, out / "run.log" if _writable_parent(out) else None,
                   command=args.command_line)
    logger.info("config: %s; output: %s", args.config or ("the demo preset" if "demo preset" in
                sources.values() else "package defaults"), out)
    if args.config and not cfg.dataset.path:  # the demo is for a run given nothing at all
        logger.warning("%s gives no dataset.path: this run uses the embedded demo atlas, with "
                       "the config's settings; to run on your data set [dataset] path = "
                       "\"DATA.h5ad\" there (or --set dataset.path=DATA.h5ad)", args.config)
    logger.info("%s", settings_line(cfg, sources))
    path = pipeline.run(cfg, out, force=set(args.force), command=args.command_line)
    _print_verdict(out / "metrics" / "fidelity.json")
    show(f"results: {path}")
    show(f"report:  {out / 'report.html'}")
    return 0


def _print_verdict(path: Path) -> None:
    """The verdict lines of a run's fidelity (none when it was not measured)."""
    try:
        fid = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if "verdict" in fid:
        from .metrics.verdict_text import verdict_lines

        show("\n".join(verdict_lines(fid["verdict"], privacy=fid.get("privacy"))))


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "defaults":
        cfg, sources = config.RunConfig(), dict.fromkeys(config_sources.setting_names(), "default")
    else:
        _setup_logging(quiet=False)
        cfg, sources = config_sources.resolve(args.data, args.label_key, args.config, args.set)
    show(show_settings(cfg, sources).lstrip("\n"))
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
    _not_blank(args.cache_dir, "--cache-dir", "give a folder, or leave --cache-dir out for "
               "~/.cache/cellsynth")  # not the current folder
    path = download(args.accession, args.cache_dir, base_url=args.base_url or DEFAULT_BASE_URL,
                    force=args.force)
    show(path)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .data.simulate import write_atlas

    _setup_logging(args.quiet)
    if args.chunk_size < 1:
        raise CellsynthError(f"--chunk-size must be at least 1 cell, got {args.chunk_size}")
    _not_blank(args.out, "--out", "give the h5ad file to write, e.g. --out atlas.h5ad")
    path = write_atlas(args.out, args.cells, args.genes, args.types, seed=args.seed,
                       label_key=args.label_key, chunk_size=args.chunk_size,
                       n_donors=args.donors, n_conditions=args.conditions)
    show(path)
    return 0


def _parse_types(text: str) -> dict[str, int]:
    """``"B cell=500,NK=200"`` -> ``{"B cell": 500, "NK": 200}``; a name holding a comma is
    read up to the count that follows it (``"B, naive=10"`` -> ``{"B, naive": 10}``)."""
    from .pipeline.generate import parse_count

    out: dict[str, int] = {}
    items, pending = [], ""
    for piece in text.split(","):
        if "=" not in piece and piece.strip():  # part of a name holding ',': the next has its n
            pending += piece + ","
            continue
        items.append(pending + piece)
        pending = ""
    if pending:
        raise CellsynthError(f"--types expects TYPE=N[,TYPE=N...], got {pending.rstrip(',')!r} "
                             "without a count; a type holding ',' or '=' is read with the count "
                             "after it, or goes in a --request file")
    for item in filter(None, (p.strip() for p in items)):
        name, sep, n = item.rpartition("=")
        if not sep or not name.strip():
            raise CellsynthError(f"--types expects TYPE=N[,TYPE=N...], got {item!r}; a type "
                                 "holding ',' or '=' goes in a --request file")
        if name.strip() in out:
            raise CellsynthError(f"--types names {name.strip()!r} twice; give each type once "
                                 "(TYPE=N,...) with the total you want")
        try:
            out[name.strip()] = parse_count(n)
        except ValueError:
            raise CellsynthError(f"--types: the count for {name.strip()!r} must be an integer, "
                                 f"got {n!r} (a type whose name holds ',' or '=' goes in a "
                                 "--request file)") from None
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from . import config
    from .pipeline import fit_model

    _setup_logging(args.quiet)
    given = config.load(args.config, list(args.set)).generator.model  # --config, --set
    if args.model is None:
        args.model = given
    elif (given != config.GeneratorConfig().model
          and config.canonical_model(given) != config.canonical_model(args.model)):
        raise CellsynthError(f"the generator is given twice: --model {args.model} and "
                             f"generator.model = {given} (--set or --config); give one")
    config_sources.check_fit_overrides(args.set, args.model, args.data, args.label_key)
    config_sources.warn_fit_config(args.config, args.model, args.data, args.label_key)
    sets = [*args.set, f"generator.model='{args.model}'"]
    covariates = [c.strip() for c in (args.covariates or "").split(",") if c.strip()]
    if args.covariates is not None and not covariates:  # `--covariates "$COVS"`, COVS unset
        raise CellsynthError(f"--covariates names no column ({args.covariates!r}): the model "
                             "would be fitted without covariates; give the obs columns, e.g. "
                             "--covariates condition,donor, or leave --covariates out")
    section = config.COVARIATE_SECTIONS.get(config.canonical_model(args.model))
    cfg = config.load(args.config, sets)
    if covariates:
        if section is None:
            raise CellsynthError(f"--covariates: the {args.model} generator does not condition "
                                 f"on covariates; use --model "
                                 f"{', '.join(config.COVARIATE_SECTIONS)}")
        given = list(getattr(cfg, section).covariates)
        if given and given != covariates:
            raise CellsynthError(f"the covariates are given twice: --covariates "
                                 f"{','.join(covariates)} and {section}.covariates = {given} "
                                 "(--set or --config); give one")
        cfg = config.load(args.config, [*sets, f"{section}.covariates={json.dumps(covariates)}"])
    for other, unused in config.unused_covariates(cfg, args.model).items():
        logger.warning("%s.covariates = %s is not used: this fits --model %s (give "
                       "--covariates, or %s.covariates)", other, unused, args.model,
                       section or other)
    if args.seed is not None and cfg.seed not in (0, args.seed):
        raise CellsynthError(f"the seed is given twice: --seed {args.seed} and seed = {cfg.seed} "
                             "(--set or --config); give one")
    gen, history = fit_model(cfg, args.data, args.label_key, args.out, model=args.model,
                             seed=args.seed)
    epochs = f", {history['epochs']} epochs" if "epochs" in history else ""  # nb: fitted, not trained
    show(f"model: {args.out} ({len(gen.labels)} types, {len(gen.genes)} genes{epochs})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline.generate import generate_to_file

    _setup_logging(args.quiet)
    out = Path(args.out)
    # streamed chunk by chunk into OUT.part, renamed when complete (a kill leaves no OUT)
    n = generate_to_file(args.model_dir, out, n_per_type=args.n_per_type,
                         types=_parse_types(args.types) if args.types is not None else None,
                         where=args.where, request=args.request, like=args.like, seed=args.seed)  # fmt: skip
    show(f"generated {n} cells: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import _out_dir, compare, write
    from .metrics.verdict_text import verdict_lines

    _setup_logging(args.quiet)
    _out_dir(args.out)  # before any work
    result = compare(args.real, args.synthetic, label_key=args.label_key, seed=args.seed,
                     max_cells=args.max_cells, heldout=args.heldout, donor_key=args.donor_key,
                     gene_repeats=args.gene_repeats)
    path = write(result, Path(args.out))
    show(f"fidelity: {path}")
    show("\n".join(verdict_lines(result["verdict"], privacy=result.get("privacy"))))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .evaluation import run_benchmark

    _setup_logging(args.quiet)
    from .holdout import parse_holdout

    # checked before any work; an empty one (`--holdout "$COMBO"` with COMBO unset) is refused
    holdout = parse_holdout(args.holdout) if args.holdout is not None else None
    _not_blank(args.out, "--out", "give the benchmark directory, e.g. --out bench/")
    # the results of a finished generator are read back while its settings are unchanged (the
    # help and a stopped benchmark's message say so): a rerun fits only what is missing
    datasets = [d.strip() for d in args.data.split(",") if d.strip()]
    path = run_benchmark(datasets, args.models.split(","), Path(args.out),
                         config_path=args.config, overrides=args.set, label_key=args.label_key,
                         holdout=holdout, fits=args.fits, reuse=True, command=args.command_line)
    for name in (Path(d).stem for d in datasets):  # not an earlier command's other data sets
        summary = path.parent / name / "summary.json"
        for line in json.loads(summary.read_text()).get("verdicts", []) if summary.is_file() else []:
            show(f"{name}: {line}")
    show(f"benchmark: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    _setup_logging(args.quiet)
    path = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    show(f"report: {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_info

    info = describe(args.path)
    show(json_text(info) if args.json else format_info(info))  # numpy values of uns too
    return 0


#: the function each command calls
COMMANDS = {
    "run": cmd_run,
    "config": cmd_config,
    "download": cmd_download,
    "simulate": cmd_simulate,
    "fit": cmd_fit,
    "generate": cmd_generate,
    "evaluate": cmd_evaluate,
    "benchmark": cmd_benchmark,
    "report": cmd_report,
    "info": cmd_info,
}


def _path_options(args: argparse.Namespace, filename: Any) -> str:
    """The options of this command whose path holds ``filename`` (``--cache-dir``), or the
    command's path options, to name in an error about that file."""
    paths = {k: v for k, v in vars(args).items()
             if isinstance(v, str | Path) and k not in ("func", "command", "command_line") and v}
    name = str(filename)
    hit = [k for k, v in paths.items()
           if name == str(v) or name.startswith(str(v).rstrip("/") + "/")]
    shown = [("the data" if k == "data" else "--" + k.replace("_", "-")) for k in hit or paths]
    return ", ".join(shown) if shown else "the paths given"


def _undecodable(argv: list[str]) -> str | None:
    """The error for an argument holding bytes the locale could not decode (a name with 'γ'
    or 'é' under an ASCII locale: Python keeps them as surrogates, which matched no name in
    the data and crashed the first write of the settings with a traceback); None if none."""
    for arg in argv:
        if any("\udc80" <= c <= "\udcff" for c in arg):
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return (f"cellsynth: error: the argument {shown!r} holds characters the locale's "
                    f"encoding ({sys.getfilesystemencoding()}) cannot read; run cellsynth under "
                    "a UTF-8 locale (export LC_ALL=C.UTF-8) or with PYTHONUTF8=1, or give the "
                    "value in a --config file (read as UTF-8)")
    return None


def main(argv: list[str] | None = None) -> int:
    undecodable = _undecodable(list(sys.argv[1:] if argv is None else argv))
    if undecodable:
        say(undecodable)
        return 2
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["cellsynth", *(sys.argv[1:] if argv is None else argv)])
    # progress bars (tqdm, on stderr): off with --quiet, else when stderr is a terminal
    quiet = getattr(args, "quiet", False)
    failures = hdf5_failures()  # an earlier command's in this process (tests) is not this one's
    with command_logging(getattr(args, "verbose", False)):  # its handlers go when it ends
        try:
            return _command(args, quiet, failures)
        except Exception as exc:  # not a user error: Python's traceback follows on stderr
            to_log_file(f"cellsynth: stopped by an unexpected error ({type(exc).__name__}: "
                        f"{exc}); please report it with this log",
                        exc_info=(type(exc), exc, exc.__traceback__))
            raise


def _command(args: argparse.Namespace, quiet: bool, failures: int) -> int:
    """Run the parsed command; a user error, an interrupt or a signal as one line and its exit
    code."""
    try:
        with settings.override(progress=False if quiet else "auto"), terminations(), \
                heartbeat(f"cellsynth {args.command}"):
            return COMMANDS[args.command](args)
    except CellsynthError as exc:
        say(f"cellsynth: error: {exc}")
        exit_if_hdf5_broken(2, failures)
        return 2
    except BrokenPipeError:  # e.g. `cellsynth info PATH | head`: the reader stopped reading
        to_devnull(sys.stdout)  # no second error at exit
        return 0
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            say(_disk_full(args, exc.filename))
            exit_if_hdf5_broken(2, failures)
            return 2
        if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError |
                      FileExistsError | FileNotFoundError) and exc.filename:  # a path given
            say(f"cellsynth: error: {exc.filename}: {exc.strerror}; check "
                f"{_path_options(args, exc.filename)}")
            return 2
        raise
    except Terminated as exc:
        import signal

        name = signal.Signals(exc.signum).name
        say(f"cellsynth: terminated by {name}; {_after_stop(args)}")
        return 128 + exc.signum
    except KeyboardInterrupt:
        say(f"cellsynth: interrupted; {_after_stop(args)}")
        return 130
    except RuntimeError as exc:  # pathlib's, for a ~user that does not exist
        if "home directory" not in str(exc):
            raise
        say(f"cellsynth: error: a path starting with ~ cannot be expanded ({exc}); give it "
            "as a full path")
        return 2


def _disk_full(args: argparse.Namespace, filename: Any) -> str:
    """A full disk, in words: the file (else the command's output) and what was kept, which
    only a run (its finished stages) and a benchmark (its finished generators) keep."""
    out = getattr(args, "out", None)
    where = filename or (f"--out {out}" if out else "the output")
    flag = "--cache-dir" if args.command == "download" else "--out" if out else ""
    kept = {"run": " (finished stages are kept)",
            "benchmark": " (the generators it finished are kept)"}.get(args.command, "")
    return (f"cellsynth: error: disk full while writing {where}; free space"
            f"{f' or choose another {flag}' if flag else ''}{kept}")


def _after_stop(args: argparse.Namespace) -> str:
    """What was kept of a stopped command and what a rerun does, in words: a download keeps its
    partial file and resumes it, a run resumes, a benchmark reuses the generators it finished,
    the others start again."""
    if args.command == "download":
        return ("the partial download (NAME.part in --cache-dir) is kept: run the same command "
                "again to resume it")
    return "partial outputs removed" + _rerun(args)


def _rerun(args: argparse.Namespace) -> str:
    """What a rerun of a stopped command other than download does, in words."""
    if args.command == "run":
        return (" (a run keeps its finished stages and its last training checkpoint: rerun "
                "the same command to resume)")
    if args.command == "benchmark":
        return (" (the generators it finished are kept: the same command reuses them and "
                "fits the others)")
    from .runtime import fit_checkpoint_dir

    out = Path(os.path.expanduser(str(args.out))) if args.command == "fit" else None
    # none before the first epochs were saved
    if out is not None and getattr(args, "model", None) in (None, "cvae") and \
            fit_checkpoint_dir(out).is_dir():
        return (" (the cvae's last training checkpoint is kept beside --out: the same command "
                "resumes from it)")
    if args.command in ("fit", "generate"):
        return f" (`cellsynth {args.command}` does not resume: the same command starts again)"
    return ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
