"""The ``cellsynth`` command's parser: every command, option, help text and default (what
``cellsynth COMMAND --help`` and the documentation's CLI reference show). The command a line
names is ``args.command``; :mod:`cellsynth.cli` calls it."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, NoReturn


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default, unless it says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        quiet = quiet or action.default == []
        if quiet or "default" in text or not (action.option_strings or action.nargs == "?"):
            return text
        return f"{text} (default: %(default)s)"


_DESCRIPTION = """\
Learn a labelled single-cell RNA-seq atlas (an AnnData .h5ad), generate synthetic cells of the
types you ask for, and measure how close they are to real ones.

  cellsynth run                      the demo: a simulated atlas, minutes on a laptop CPU
  cellsynth run my.h5ad --label-key cell_type
  cellsynth config show my.h5ad      the settings that run would use, with their ranges
  cellsynth COMMAND --help           each command's options and defaults"""

_SET_HELP = ("override one setting, TOML syntax (cvae.lr=1e-3, dataset.path='a.h5ad'); "
             "repeatable; `cellsynth config show` lists them all (default: none)")
_QUIET_HELP = "warnings only, no progress bars (default: off)"
_VERBOSE_HELP = ("also cellsynth's debugging lines (a failed generator's traceback, for a bug "
                 "report; default: off)")


def _verbosity(p: argparse.ArgumentParser) -> None:
    """A command's ``--quiet`` and ``--verbose``, one or the other."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    group.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, made strict and helpful: an option that takes one value refuses a
    second (:class:`_Once` is every such option's action), and its errors say how to fix them
    (the command a misspelt one is close to, the options an unknown one is close to, ``=`` for
    a value starting with '-')."""

    argv: ClassVar[list[str]] = []  # the line parsed (by the top parser, for every parser's hints)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)  # the default action, "store"
        self.register("action", "store", _Once)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: None = None) -> argparse.Namespace:
        _Parser.argv = list(sys.argv[1:] if args is None else args)  # for the hints
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # named by the command's parser, whose options they are close to
            _command_parser(self, parsed).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        super().error(message + _hint(self, message))


def _command_parser(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser the parsed ``args`` went to (``cellsynth config show``'s)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                return _command_parser(action.choices[chosen], args)
    return parser


def _hint(parser: argparse.ArgumentParser, message: str) -> str:
    """How to fix the usage error ``message`` of ``parser``, or ``""``."""
    from .errors import did_you_mean

    help_ = f"; `{parser.prog} --help` lists them"
    if m := re.search(r"invalid choice: '?([^' ]*)'? \(choose from", message):
        names = [n for a in parser._actions if a.choices for n in a.choices]
        return did_you_mean(m.group(1), names) + help_
    if m := re.search(r"unrecognized arguments: (\S+)", message):
        word = m.group(1).split("=")[0]  # likeness without the dashes all options share
        names = [f[2:] for a in parser._actions for f in a.option_strings if f[:2] == "--"]
        close = did_you_mean(word.lstrip("-"), names) if word.startswith("-") else ""
        close = re.sub(r"'(?=[\w])", "'--", close)
        return (close or " (not an option or argument of this command)") + \
            _as_setting(parser, word) + _dash(parser) + f"; `{parser.prog} --help` lists its options"
    if m := re.search(r"argument (--[\w-]+).*: expected one argument", message):
        return (f"; give its value after it, and a value starting with '-' as "
                f"{m.group(1)}=VALUE")
    if m := re.search(r"argument (--[\w-]+).*: ignored explicit argument", message):
        return f"; {m.group(1)} takes no value: give it alone"
    if m := re.search(r"argument (--[\w-]+).*: invalid int value", message):
        return f"; give a whole number in digits, e.g. {m.group(1)} 1000 (not 1e3, 1,000 or 1k)"
    if "arguments are required" in message:
        return _dash(parser) + f"; `{parser.prog} --help` says what each is"
    return ""


def _dash(parser: argparse.ArgumentParser) -> str:
    """How to give a path starting with '-' (taken for an option), when the line has one that
    is no option of ``parser``; else ``""``."""
    flags = parser._option_string_actions
    odd = [a for a in _Parser.argv if a.startswith("-") and a != "--" and a.split("=")[0] not in flags
           and not a.startswith("--") and len(a) > 2]
    if not odd or "--" in _Parser.argv:
        return ""
    return (f"; {odd[0]} was taken for an option: give a path starting with '-' after `--` "
            f"(`{parser.prog} ... -- {odd[0]}`) or as ./{odd[0]}")


def _as_setting(parser: argparse.ArgumentParser, word: str) -> str:
    """``"; it is a setting: --set seed=VALUE"`` when the unknown option ``word`` names a setting
    (``--seed`` to ``run``, ``--max-epochs``, ``--model``) and ``parser`` takes --set; else ``""``."""
    if "--set" not in parser._option_string_actions or not word.startswith("--"):
        return ""
    from .config_sources import setting_names

    key = word[2:].replace("-", "_").lower()
    keys = [k for k in setting_names() if key in (k, k.rpartition(".")[2], k.replace(".", "_"))]
    keys = keys or (["generator.model"] if key == "model" else [])
    if not keys:
        return ""
    return (f"; {'it is a setting' if len(keys) == 1 else 'settings of that name'}, given as "
            + " or ".join(f"--set {k}=VALUE" for k in keys[:4]))


def _command(sub: argparse._SubParsersAction, name: str, summary: str,
             description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows ``description`` and every option's default."""
    return sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}",
                          formatter_class=_HelpFormatter)


class _Once(argparse.Action):
    """An option that takes one value, given once: argparse keeps the last of repeated values, so
    ``--types 'B cells=500' --types 'NK=200'`` generated NK cells only, and ``--where`` twice the
    last level, without a word. A repeat is refused, naming both values."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:  # fmt: skip
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            together = (f"; put them in one value, e.g. {option_string} "
                        f"'{getattr(namespace, self.dest)},{values}'"
                        if self.dest in ("types", "where", "covariates", "data", "models")
                        else "")
            raise argparse.ArgumentError(
                self, f"given twice ({getattr(namespace, self.dest)!r}, then {values!r}): "
                      f"give it once{together}")
        given.add(self.dest)
        own = self.dest in _OWN_EMPTY or f"{parser.prog} {self.dest}" in _OWN_EMPTY
        if isinstance(values, str) and not values.strip() and not own:
            how = "" if self.required or not self.option_strings else ", or leave it out"
            raise argparse.ArgumentError(  # `--label-key "$KEY"`, KEY unset: '' or the folder .
                self, f"is empty ({values!r}; a shell variable that is not set?): give "
                      f"{self.metavar or self.dest.upper()}{how}")
        setattr(namespace, self.dest, values)


#: the values whose emptiness the command itself refuses, with its own message (--out "",
#: --config "", simulate's --label-key ""), or allows (--base-url "": the EBI's)
_OWN_EMPTY = frozenset({"data", "config", "out", "holdout", "cache_dir", "base_url", "covariates",
                        "cellsynth simulate label_key"})


def _seed(text: str) -> int:
    """A --seed value: a whole number in [0, 2**63), as the config's ``seed``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {text}")
    return value


def _repeats(text: str) -> int | str:
    """A --gene-repeats value: "auto" or a whole number from 1, as ``report.gene_repeats``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    """DATA, --label-key, --config and --set: what settings are resolved from (``run`` and
    ``config show`` take the same)."""
    p.add_argument("data", nargs="?", metavar="DATA.h5ad",
                   help="the labelled atlas to learn (dataset.path; default: the demo atlas "
                        "unless --config or --set dataset.path names one)")
    p.add_argument("--label-key", metavar="KEY",
                   help="obs column with the cell type (dataset.label_key; default: the "
                        "config's, 'cell_type')")
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file (default: none with DATA, else the embedded demo)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=_SET_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cellsynth", description=_DESCRIPTION, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = _command(sub, "run", "run the whole experiment into one run directory", (
        "Reads the atlas, QCs and splits it, fits PCA, the classifier and the generator, runs\n"
        "the three experiments and writes results.md and report.html. With no DATA, no --config\n"
        "and no --set dataset.path it runs the demo: a simulated atlas with the embedded demo\n"
        "preset's settings (`make demo`). With DATA the package defaults apply, then --config,\n"
        "then --set. The log's `settings:` line says where each non-default setting came from;\n"
        "`cellsynth config show` prints them all before a run. A rerun on the same directory\n"
        "skips the stages already done with the same settings."))
    _settings_arguments(r)
    r.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<DATA's name>, else runs/<config's name>, "
                        "else runs/<dataset.path's name>, else runs/demo)")
    _verbosity(r)
    r.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage (data, features, classifier, generator, experiments, "
                        "explain, evaluation) and the ones after it even if done; repeatable "
                        "(default: none)")

    c = _command(sub, "config", "print settings: resolved, with defaults, sources and ranges", (
        "`config show` resolves the settings exactly as `cellsynth run` would with the same\n"
        "arguments and prints them as TOML, each line's comment giving where the value came\n"
        "from (default, demo preset, config FILE, --set, argument), the default and what the\n"
        "setting accepts (its range or choices). `config defaults` prints the package defaults."))
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cs = _command(csub, "show", "the settings a run would use", (
        "Takes the settings arguments of `cellsynth run` (DATA, --label-key, --config, --set;\n"
        "not --out, --force or --quiet); reads no data."))
    _settings_arguments(cs)
    _command(csub, "defaults", "the package defaults", (
        "What every setting is when neither a config file nor --set changes it."))

    d = _command(sub, "download", "download an Expression Atlas experiment's h5ad", (
        "Resumable (HTTP Range into a .part file), size-checked, renamed when complete; prints\n"
        "the cached file's path."))
    d.add_argument("accession", help="the experiment's accession, e.g. E-ANND-5")
    d.add_argument("--cache-dir", default="~/.cache/cellsynth", metavar="DIR",
                   help="where downloads are kept")
    d.add_argument("--base-url", default="", metavar="URL",
                   help="mirror of the Expression Atlas sc_experiments folder (default: the "
                        "EBI's)")
    d.add_argument("--force", action="store_true",
                   help="download again even if cached (default: off)")
    _verbosity(d)

    s = _command(sub, "simulate", "write a simulated atlas (chunked) to an h5ad", (
        "Negative binomial counts with per-type marker programs, written chunk by chunk, so\n"
        "atlases larger than memory can be made for tests and benchmarks. --donors and\n"
        "--conditions add obs columns 'donor' (D0, D1...) and 'condition' (ctrl, stim,\n"
        "stim2...) whose effects are known: a per-donor shift of some genes and, per type, a\n"
        "condition program, stated in uns['simulation'] (genes and log fold changes)."))
    s.add_argument("--cells", type=int, default=10_000, metavar="N", help="cells")
    s.add_argument("--genes", type=int, default=2_000, metavar="N", help="genes")
    s.add_argument("--types", type=int, default=20, metavar="N", help="cell types")
    s.add_argument("--seed", type=_seed, default=0, help="random seed")
    s.add_argument("--label-key", default="celltype_annotation", metavar="KEY",
                   help="obs column the cell types are written to")
    s.add_argument("--chunk-size", type=int, default=50_000, metavar="N",
                   help="cells generated and written at a time")
    s.add_argument("--donors", type=int, default=0, metavar="K",
                   help="donors, each shifting a random subset of genes (default: 0, no donor "
                        "column)")
    s.add_argument("--conditions", type=int, default=0, metavar="C",
                   help="conditions: ctrl, then stim, stim2... each with a gene program per type "
                        "(default: 0, no condition column; types x (conditions - 1) at most "
                        "5,000)")
    s.add_argument("--out", required=True, metavar="FILE", help="the h5ad file to write")
    _verbosity(s)

    f = _command(sub, "fit", "fit a generator on an h5ad of raw counts", (
        "Fits one generator on every labelled cell of DATA (but cells marked test in\n"
        "obs['cellsynth_split'], as a run's data/preprocessed.h5ad marks them; a random 10%\n"
        "of each type, or the cells marked val there, are its validation cells) and saves it as\n"
        "a directory of plain files (config.json, safetensors weights, labels and genes) for\n"
        "`cellsynth generate`. The model's settings are the package defaults, then --config,\n"
        "then --set."))
    f.add_argument("data", metavar="DATA.h5ad", help="labelled atlas of raw counts")
    f.add_argument("--label-key", action=_Once, required=True, metavar="KEY",
                   help="obs column with the cell type")
    f.add_argument("--model", action=_Once, default=None,
                   help="generator: cvae, nb, reference (the reference project's CVAE; "
                        "'seed' is its old name) or scvi (default: generator.model of "
                        "--config or --set, else cvae)")
    f.add_argument("--out", action=_Once, required=True, metavar="DIR",
                   help="model directory to write")
    f.add_argument("--config", action=_Once, metavar="FILE",
                   help="TOML config for the model's settings, e.g. its [cvae] section "
                        "(default: the package defaults)")
    f.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=_SET_HELP)
    f.add_argument("--covariates", action=_Once, metavar="LIST", default=None,
                   help="comma-separated obs columns the model also conditions on (donor, "
                        "condition, batch...): cvae, nb or scvi; same as --set "
                        "MODEL.covariates=[...], e.g. nb.covariates=[...] (default: the "
                        "config's, none unless set)")
    f.add_argument("--seed", action=_Once, type=_seed, default=None,
                   help="random seed of the fit (default: the config's seed, 0 unless set)")
    _verbosity(f)

    g = _command(sub, "generate", "generate cells of chosen types from a saved generator", (
        "Give exactly one of --n-per-type, --types, --request and --like. Writes counts, every\n"
        "generator's (the reference model's too: `cellsynth fit --model reference`), with the\n"
        "types and covariates in obs and provenance in uns['cellsynth'] (with the combinations\n"
        "no training cell had). A run of generator.model = \"reference\" keeps a model of its\n"
        "PCA instead, not a generator: its generated points are in RUN/synthetic/."))
    g.add_argument("model_dir", help="a model directory written by `cellsynth fit` or a run's "
                                     "generator/ directory")
    g.add_argument("--n-per-type", action=_Once, type=int, metavar="N",
                   help="this many cells of every type (default: none; or --types)")
    g.add_argument("--types", action=_Once, metavar="'TYPE=N,...'",
                   help="cells per named type, e.g. 'B cell=500,NK=200' (default: none; or "
                        "--n-per-type)")
    g.add_argument("--where", action=_Once, metavar="'COV=LEVEL,...'",
                   help="covariate levels for every requested type, e.g. 'condition=stim,"
                        "donor=D7'; a covariate not given follows each type's training "
                        "composition (a cvae, nb or scvi fitted with --covariates; default: none)")
    g.add_argument("--request", action=_Once, metavar="FILE",
                   help="a TSV (or .csv) with the label column, any covariate columns and n, "
                        "one row per combination; * in a covariate's cell: the type's "
                        "training composition over it (default: none)")
    g.add_argument("--like", action=_Once, metavar="REAL.h5ad",
                   help="as many cells of every type (x covariate levels) as this file has: "
                        "a synthetic twin (default: none)")
    g.add_argument("--seed", action=_Once, type=_seed, default=0, help="random seed of the draws")
    g.add_argument("--out", action=_Once, required=True, metavar="FILE", help="output .h5ad")
    _verbosity(g)

    e = _command(sub, "evaluate", "fidelity of synthetic cells against real ones, with the "
                 "real-vs-real floor", (
                     "Two-sample AUC, MMD, energy, kNN precision/recall and gene statistics in a\n"
                     "space fitted on the real cells, beside what two halves of the real cells\n"
                     "score (the floor); a gene-level two-sample test; per type, DE fold-change r,\n"
                     "marker overlap and TRTS. Ends with the verdict: overall and per type,\n"
                     "indistinguishable, close or distinguishable from the floor. With --heldout,\n"
                     "a privacy audit: can the synthetic cells tell training cells from unseen ones?"))
    e.add_argument("--real", required=True, metavar="FILE", help="h5ad of real cells")
    e.add_argument("--synthetic", required=True, metavar="FILE", help="h5ad of generated cells")
    e.add_argument("--label-key", required=True, metavar="KEY",
                   help="obs column with the cell type, in both files")
    e.add_argument("--out", required=True, metavar="DIR",
                   help="directory for fidelity.json, fidelity.md (the verdict first) and "
                        "per_type.csv")
    e.add_argument("--seed", type=_seed, default=0, help="random seed of subsamples and the floor")
    e.add_argument("--max-cells", type=int, default=3000, metavar="N",
                   help="cells of each file read (a stratified subsample; files are never "
                        "read whole)")
    e.add_argument("--gene-repeats", type=_repeats, default="auto", metavar="N",
                   help="random halvings the gene-level AUCs average over ('auto': up to 10 "
                        "when there are few cells; 1 is the quickest)")
    e.add_argument("--heldout", metavar="FILE",
                   help="h5ad of real cells the generator never saw (e.g. the test split), for "
                        "the privacy audit; --real are then the cells it trained on (default: "
                        "no audit)")
    e.add_argument("--donor-key", metavar="KEY",
                   help="obs column with each cell's donor, in --real and --heldout: donor-level "
                        "membership attacks (default: cell level only)")
    _verbosity(e)

    b = _command(sub, "benchmark", "generators side by side on datasets: fidelity, utility, "
                 "the real-vs-real floor", (
                     "Each generator's results are kept per dataset and reused while its\n"
                     "settings are unchanged; the page is written to OUT."))
    b.add_argument("--data", action=_Once, required=True, metavar="LIST",
                   help="comma-separated .h5ad files or preset TOMLs")
    b.add_argument("--models", action=_Once, default="cvae,nb,reference,scvi", metavar="LIST",
                   help="comma-separated generators: cvae, nb, reference, scvi, and the privacy "
                        "audit's positive controls copy (training cells returned) and scvi-pp "
                        "(scVI's posterior re-draws of them)")
    b.add_argument("--label-key", action=_Once, default=None, metavar="KEY",
                   help="label column (default: the config's)")
    b.add_argument("--config", action=_Once, metavar="FILE",
                   help="TOML config for every dataset (default: the package defaults)")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=_SET_HELP)
    b.add_argument("--out", action=_Once, required=True, metavar="DIR", help="benchmark directory")
    b.add_argument("--holdout", action=_Once, metavar="COLUMN=LEVEL,...", default=None,
                   help="also hold this combination out of training and score it, e.g. "
                        "'cell_type=CD14+ Monocytes,condition=stim' (default: none)")
    b.add_argument("--fits", action=_Once, type=int, default=1, metavar="N",
                   help="fit each generator N times, each with its own seeds, and report the "
                        "mean and the spread across fits (default: 1)")
    _verbosity(b)

    rp = _command(sub, "report", "write a self-contained HTML report of a run directory", (
        "Reads only the run directory's files; no model is loaded."))
    rp.add_argument("run_dir", help="a run directory written by cellsynth run")
    rp.add_argument("--out", metavar="FILE", help="HTML file (default: RUN_DIR/report.html)")
    _verbosity(rp)

    i = _command(sub, "info", "describe a run directory, a model directory, a benchmark "
                 "directory or an h5ad", (
        "A run's stages and results, a model's kind, types and genes, a benchmark's data sets\n"
        "and verdicts, or an h5ad's shape, columns and where its counts are."))
    i.add_argument("path", help="a run directory, a model directory, a benchmark directory or "
                   "an .h5ad file")
    i.add_argument("--json", action="store_true", help="print JSON (default: text)")
    return p


def _version() -> str:
    from importlib.metadata import version

    return version("cellsynth")
