"""Saved model directories: their files, checks, atomic saves and loads.

``config.json``, ``weights.safetensors`` (never a pickle), ``labels.json``, ``history.json`` and
``checksums.json``; a save writes a new directory beside the old and replaces it whole
(:func:`saves_whole`), a load checks the checksums, the kind of model, the sizes of the weights
and that they are finite. Shared by every generator; nothing here knows about one model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checksums import CHECKSUMS_FILE, verify_checksums, write_checksums
from ..config import PCA_SPACE_MODEL
from ..config_rules import from_dict, hints
from ..errors import ConfigError, ModelFileError, NotTrainedError, listed
from ..outputs import check_out_dir, save_tensors, saved_json, temp_beside
from ..paths import expand_user
from ._training import package_version

logger = logging.getLogger(__name__)



MODEL_FILES = {"config": "config.json", "weights": "weights.safetensors", "labels": "labels.json"}
HISTORY_FILE = "history.json"
#: the training data's gene annotation (text columns of var), written where there is any
VAR_FILE = "var.json"


def model_directory(directory: str | Path) -> Path:
    """Create the model directory ``directory``; an existing file there is a
    :class:`ModelFileError` (not an OS error about a path)."""
    directory = check_out_dir(directory, "the model directory", "the model", ModelFileError)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a model cellsynth saved (its ``config.json`` names the model)."""
    return bool(saved_kind(path))


def saved_kind(directory: Path) -> str:
    """The model kind a saved model's ``config.json`` names (with its format version), or ""
    for a directory that holds no saved model."""
    try:
        meta = json.loads((directory / MODEL_FILES["config"]).read_text())
    except (OSError, ValueError):
        return ""
    if not (isinstance(meta, dict) and "model" in meta and "format_version" in meta):
        return ""
    return str(meta["model"])


def refuse_pca_space(directory: Path, kind: str) -> None:
    """Refuse a run's PCA-space reference CVAE (``kind`` :data:`PCA_SPACE_MODEL`) where a
    generator of cells is loaded, saying where its points are and how to fit the reference
    model as a generator of counts."""
    if kind == PCA_SPACE_MODEL:
        raise ModelFileError(
            f"{directory} holds the reference CVAE that a cellsynth run fitted on its PCA "
            "features (generator.model = \"reference\"): it draws points of that run's PCA, "
            "not cells, so it is not a generator to load or generate from; the run's generated "
            f"points are in {directory.parent / 'synthetic'} (eval.h5ad, train.h5ad), and "
            "`cellsynth fit DATA --model reference` (cellsynth.ReferenceGenerator) fits the "
            "reference model as a generator of counts")


def check_save_dir(out: Path, flag: str = "the model directory") -> None:
    """Refuse a model directory that is a file, cannot be written under, or is a non-empty
    directory that is not a saved model (a project's folder, a run directory): a save replaces
    the directory whole; nor a new one named like an ``.h5ad`` file (as ``cellsynth fit``)."""
    check_out_dir(out, flag, "the model", ModelFileError)
    if out.suffix.lower() == ".h5ad" and not is_model_dir(out):
        raise ModelFileError(f"{flag} {out} is named like an .h5ad file, but a model is saved as a "
                             f"folder (config.json, weights, ...): give one such as "
                             f"{out.with_suffix('')}; write generated cells with "
                             "model.sample(...).write_h5ad(...)")
    if out.is_dir() and is_model_dir(out):
        extra = _not_the_model(out)
        if extra:
            raise ModelFileError(
                f"{flag} {out} holds a saved model and other files ({listed(extra)}); a save "
                "replaces the directory whole, so they would be lost: move them out or give "
                "another directory")
    if out.is_dir() and any(out.iterdir()) and not is_model_dir(out):
        held = sorted(p.name for p in out.iterdir())
        raise ModelFileError(
            f"{flag} {out} is a non-empty directory that is not a saved model (it holds "
            f"{listed(held)}); a save replaces the "
            "directory whole: give a new or empty directory")


def _not_the_model(path: Path) -> list[str]:
    """What a saved model's directory holds beyond the model: entries its ``checksums.json``
    does not list, other than the checksums, the settings and training history a fit or a run
    saves beside them and a run's training checkpoints (an older save without checksums:
    nothing is known, so nothing is named)."""
    try:
        listed = json.loads((path / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(listed, dict):
        return []
    ours = {Path(name).parts[0] for name in listed} | {CHECKSUMS_FILE, HISTORY_FILE,
                                                        "run_config.toml", "checkpoint"}
    return sorted(p.name for p in path.iterdir() if p.name not in ours
                  and not p.name.startswith("."))


def replace_dir(new: Path, out: Path) -> None:
    """Put directory ``new`` in the place of ``out`` (a model saved earlier goes whole, so no
    file of another model stays beside the new one's)."""
    old = temp_beside(out, ".old", folder=True)  # this saver's own (an empty folder)
    try:
        if out.exists():
            out.rename(old)  # onto the empty folder
        new.rename(out)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def saves_whole(save: Callable[..., Any]) -> Callable[..., None]:
    """A generator's ``save(directory)`` made safe: the directory is checked first
    (:func:`check_save_dir`), the model written beside it and then put in its place, so that a
    save never mixes with other files, never leaves a model of another kind's files behind, and
    a failed save leaves what was there. ``beside`` (file name -> text) is written into the
    model's folder before it is put in place, so that it arrives with the model or not at all
    (``cellsynth fit``'s ``run_config.toml``)."""
    @functools.wraps(save)
    def wrapper(self: Any, directory: str | Path, *args: Any,
                beside: dict[str, str] | None = None, **kwargs: Any) -> None:  # fmt: skip
        if not getattr(self, "labels", None) and getattr(self, "is_trained", None) is not True:
            raise NotTrainedError(f"this {type(self).__name__} has not been fitted, so it "
                                  "cannot be saved: call fit(adata, label_key) first")
        out = expand_user(directory, "the model directory").resolve()
        check_save_dir(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = temp_beside(out, ".partial", folder=True)  # this saver's own
        try:
            save(self, partial, *args, **kwargs)
            for name, text in (beside or {}).items():
                (partial / name).write_text(text, encoding="utf-8")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if out.is_dir() and any(out.iterdir()):
            logger.info("replacing the model saved in %s", out)
        replace_dir(partial, out)
        logger.info("saved %s to %s", type(self).__name__, out)
    return wrapper


def save_model_dir(
    directory: str | Path,
    meta: dict[str, Any],
    module: torch.nn.Module,
    labels: list[str],
    history: dict[str, Any],
    extra_files: dict[str, str] | None = None,
    lr_setting: str = "cvae.lr",
) -> Path:
    """Write a model directory of plain files (JSON and safetensors; nothing pickled).

    ``meta`` (model name, format version, sizes, config) goes to ``config.json``;
    ``extra_files`` (file name -> text, e.g. ``genes.json``) are written beside. Weights that are
    not finite (a diverged fit) are refused, naming ``lr_setting``. ``checksums.json`` records the sha256 of every
    file written here, and :func:`load_model_dir` checks them.
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    bad = _non_finite(state)
    if bad:
        # ``directory`` is the save's temporary folder (saves_whole), not the user's: unnamed
        raise ModelFileError(f"the model's weights hold non-finite values ({bad}): training "
                             f"diverged, and the model was not saved; lower {lr_setting} "
                             "(e.g. by 10x) and fit again, or check the input counts")
    model_directory(directory)
    texts = {MODEL_FILES["config"]: json.dumps(meta, indent=2),
             MODEL_FILES["labels"]: json.dumps(labels, indent=2),
             HISTORY_FILE: json.dumps(history, indent=2), **(extra_files or {})}
    (directory / CHECKSUMS_FILE).unlink(missing_ok=True)  # no stale checksums while writing
    for name, text in texts.items():
        (directory / name).write_text(text)
    save_tensors(save_file, state, directory / MODEL_FILES["weights"])
    write_checksums(directory, [*texts, MODEL_FILES["weights"]])
    return directory


def _non_finite(state: dict[str, torch.Tensor]) -> str:
    """The tensors of ``state`` holding NaN or infinity, in words ("" when none)."""
    bad = [f"{k}: {int((~torch.isfinite(v)).sum())} of {v.numel()}" for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return "; ".join(bad[:3]) + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")


def load_model_dir(
    directory: str | Path, model: str, format_version: int
) -> tuple[dict[str, Any], list[str], dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check a directory written by :func:`save_model_dir`.

    Returns ``(meta, labels, state_dict, history)``; raises :class:`ModelFileError` when a file
    is missing, corrupt or changed since it was saved (``checksums.json``), the weights are not
    finite, the model name or format version differ, or the labels are invalid. Checks that
    depend on the architecture are left to the caller.
    """
    directory = Path(directory)
    check_kind(directory, model)
    for name in MODEL_FILES.values():
        if not (directory / name).is_file():
            raise missing_file(directory / name, directory, model)
    meta, labels = (json_file(directory / MODEL_FILES[k]) for k in ("config", "labels"))
    hist_path = directory / HISTORY_FILE
    history = json_file(hist_path) if hist_path.is_file() else {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{directory / MODEL_FILES['config']} must hold a JSON object (the "
                             f"model's settings), not a {type(meta).__name__}; save the model "
                             "again")
    if meta.get("model") != model:
        raise ModelFileError(f"{directory / MODEL_FILES['config']} does not describe a {model}")
    check_format(directory, meta, format_version)
    if (
        not isinstance(labels, list)
        or not all(isinstance(x, str) for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelFileError(
            f"{directory / MODEL_FILES['labels']} must hold a list of unique cell type names"
        )
    try:
        state = load_file(str(directory / MODEL_FILES["weights"]))
    except (SafetensorError, OSError) as exc:  # a file replaced after saving says so first
        raise unreadable_file(directory / MODEL_FILES["weights"], directory, exc) from None
    verify_checksums(directory)  # after the checks that name a corrupt file's fault
    bad = _non_finite(state)
    if bad:
        raise ModelFileError(f"{directory / MODEL_FILES['weights']} holds non-finite weights "
                             f"({bad}); the model cannot generate: train it again")
    return meta, labels, state, history if isinstance(history, dict) else {}


def check_format(directory: Path, meta: dict[str, Any], format_version: int) -> None:
    """Refuse a save whose ``config.json`` has another ``format_version`` than
    ``format_version``, saying how to load it: a newer cellsynth's save with that version
    (upgrade), an older one's with the version that saved it or by fitting again, and a value
    that is no version (``true`` is no version 1) as an edited file."""
    saved = meta.get("format_version")
    if type(saved) is int and saved == format_version:
        return
    by = meta.get("cellsynth_version")
    by = f"cellsynth {by}" if isinstance(by, str) and by.strip() else "another cellsynth"
    if type(saved) is not int:
        how = f"that is no format version (a whole number): {EDITED}"
    elif saved > format_version:
        how = (f"it was saved by {by}, newer than this one ({package_version()}): upgrade "
               "cellsynth (pip install -U cellsynth) to load it")
    else:
        how = (f"it was saved by {by}, older than this one ({package_version()}): load it with "
               "that version, or fit the model again with this one")
    raise ModelFileError(f"{directory} has format version {saved!r}; this cellsynth reads "
                         f"version {format_version}: {how}")


def missing_file(path: Path, directory: Path, model: str = "model") -> ModelFileError:
    """The error for ``path``, a file of the save in ``directory`` that is not there: its
    ``checksums.json`` read first where it has one (a ``config.json`` replaced by another
    model's names itself, not the file its model kind lacks), else one line with the fix."""
    if (directory / CHECKSUMS_FILE).is_file():
        verify_checksums(directory)
    return ModelFileError(f"{path} is missing; {directory} is not a complete {model} save: "
                          "copy the whole directory from the same save, or fit the model again")


def unreadable_file(path: Path, directory: Path, exc: BaseException) -> ModelFileError:
    """The error for ``path``, a file of the save in ``directory`` that cannot be read
    (safetensors' ``header too small``): its checksums read first, as :func:`missing_file`."""
    if (directory / CHECKSUMS_FILE).is_file():
        verify_checksums(directory)
    return ModelFileError(f"{path} cannot be read ({exc}): the file is damaged or cut short; "
                          "copy it again from the same save, or fit the model again")


def json_file(path: Path) -> Any:
    """The contents of one of a model's JSON files; a corrupt one is named."""
    return saved_json(path, "save the model again")


def check_kind(directory: Path, model: str, names: set[str] | None = None) -> None:
    """Refuse, before any file is read, a ``directory`` that is a file or that holds another
    kind of model than ``model`` (its ``config.json`` names one not in ``names``): that is not
    a damaged save, and the message says which loader reads it."""
    if directory.is_file():
        raise ModelFileError(f"{directory} is a file, not a model directory; give the folder "
                             "that fit or save wrote")
    if not directory.exists():  # not a damaged save: nothing is there
        raise ModelFileError(f"{directory} does not exist; give the folder that fit or save "
                             "wrote")
    other = saved_kind(directory)
    if other and other not in (names or {model}):
        refuse_pca_space(directory, other)
        raise ModelFileError(f"{directory} holds a saved {other} model, not {_a(model)}; load it "
                             "with cellsynth.load_model(path), which reads every kind")


def read_genes(path: Path, directory: Path) -> list[str]:
    """The gene list a model directory holds (``genes.json``), checked."""
    if not path.is_file():
        raise missing_file(path, directory)
    genes = json_file(path)
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise ModelFileError(f"{path} must hold a list of gene names")
    repeated = pd.Index(genes)[pd.Index(genes).duplicated()].unique()
    if len(repeated):  # a save writes unique names: the file was edited (checked without sums)
        raise ModelFileError(f"{path} lists {len(repeated)} gene name(s) more than once "
                             f"({', '.join(map(repr, repeated[:3]))}): the file was edited; "
                             "save or fit the model again")
    return genes


def annotation_files(annotation: pd.DataFrame | None) -> dict[str, str]:
    """``{VAR_FILE: text}`` of a model's gene annotation (the text columns of the training
    data's ``var``, :func:`~cellsynth.data.genes.gene_annotation`): a JSON object of one list
    per column, in the genes' order, missing values null; nothing without columns."""
    if annotation is None or not len(annotation.columns):
        return {}
    columns = {str(c): [None if v is None or v != v else str(v) for v in annotation[c]]
               for c in annotation.columns}
    return {VAR_FILE: json.dumps(columns)}


def read_annotation(directory: Path, genes: list[str]) -> pd.DataFrame | None:
    """The gene annotation a model directory holds (``var.json``), checked against its
    genes; None for a model saved without one."""
    path = directory / VAR_FILE
    if not path.is_file():
        return None
    columns = json_file(path)
    if not isinstance(columns, dict) or not all(
            isinstance(v, list) and len(v) == len(genes)
            and all(x is None or isinstance(x, str) for x in v) for v in columns.values()):
        raise ModelFileError(f"{path} must hold one list of {len(genes)} texts (or nulls) per "
                             "gene annotation column, as genes.json lists the genes; save the "
                             "model again")
    return pd.DataFrame(columns, index=pd.Index(genes, dtype=object), dtype=object)


def saved_label_key(directory: Path, meta: dict[str, Any], covariates: Any = ()) -> str:
    """``config.json``'s ``label_key``, the ``obs`` column generated cells name their type in:
    a blank or non-text name, or one of the model's covariates (the covariate's levels would
    replace the types in ``obs``, without a word), is an edited file; ``cell_type`` when an
    older save wrote none."""
    key = meta.get("label_key", "cell_type")
    if not isinstance(key, str) or not key.strip() or key in list(covariates or ()):
        why = ("is one of its covariates" if isinstance(key, str) and key.strip() else
               "is no column name")
        raise ModelFileError(f"{directory / MODEL_FILES['config']} names the label column "
                             f"{key!r}, which {why}: the file was edited; restore it from the "
                             "same save, or fit the model again")
    return key


def read_config(directory: Path, meta: dict[str, Any], cls: type) -> Any:
    """The settings dataclass ``cls`` saved in ``config.json``'s ``config`` table, checked."""
    with saved_settings(directory):
        setting(meta, "label_key", object)
        return from_dict(cls, setting(meta, "config"), "config.")


#: how a saved model's edited or foreign ``config.json`` is mended (not with ``--set``)
EDITED = "the file was edited: restore it from the same save, or fit the model again"


@contextlib.contextmanager
def saved_settings(directory: Path) -> Iterator[None]:
    """Read settings from the ``config.json`` of the model saved in ``directory`` within this
    block: a setting missing, of another type, out of range or unknown (a file edited by hand,
    or another program's) is one :class:`ModelFileError` naming the file and the setting, and
    saying to restore the file or fit again, not to ``--set`` it."""
    try:
        with hints(lambda key: EDITED):
            yield
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        why = f"it lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ModelFileError(f"{directory / MODEL_FILES['config']} is invalid: {why}"
                             + ("" if EDITED in why else f"; {EDITED}")) from None


_KINDS = {dict: "a table of settings", list: "a list", str: "text", int: "a whole number",
          float: "a number"}


def setting(meta: Any, dotted: str, kind: type = dict) -> Any:
    """The entry ``dotted`` (``"config.seed_vae"``) of a saved model's ``config.json``, of type
    ``kind`` (a table by default; ``float`` takes a whole number too, no kind takes true or
    false but ``bool``): a missing entry or one of another type is a ``ValueError`` naming it,
    which :func:`saved_settings` says in one line."""
    value, keys = meta, dotted.split(".")
    for i, key in enumerate(keys):
        if i and not isinstance(value, dict):  # an enclosing entry that is no table
            return setting(meta, ".".join(keys[:i]))
        if key not in value:
            raise ValueError(f"'{dotted}' is missing")
        value = value[key]
    kinds = (int, float) if kind is float else (kind,)
    if kind is not object and (not isinstance(value, kinds)
                               or (isinstance(value, bool) and kind is not bool)):
        raise ValueError(f"'{dotted}' must be {_KINDS.get(kind, kind.__name__)}, got "
                         f"{json.dumps(value)}")
    return value


def read_design(directory: Path, meta: dict[str, Any]) -> Any:
    """The covariate design a save's ``config.json`` holds (a
    :class:`~cellsynth.models._design.Design`, empty without covariates), checked whole: an
    edited one (keys, levels or a type's ``[[level codes], cells]`` of another shape, a code
    past its covariate's levels) is one :class:`ModelFileError`, not an error of Python's
    found when cells are asked for."""
    from ._design import Design  # _design imports base, which imports this module

    if meta.get("design") is None:
        return Design()
    with saved_settings(directory):
        keys = setting(meta, "design.keys", list)
        levels = setting(meta, "design.levels")
        composition = setting(meta, "design.composition")
        if not _names(keys) or set(levels) != set(keys) or not all(
                _names(levels[k]) and levels[k] for k in keys):
            raise ValueError("'design' must name each covariate once ('keys') and give each a "
                             "list of unique level names ('levels')")
        sizes = [len(levels[k]) for k in keys]
        for label, rows in composition.items():
            if not isinstance(rows, list) or not all(_combination(r, sizes) for r in rows):
                raise ValueError(f"'design.composition' of {label!r} must list [[a level code "
                                 f"of each of the {len(keys)} covariate(s)], cells] pairs, each code "
                                 "below its covariate's number of levels, cells at least 1")
    return Design(list(keys), {k: list(levels[k]) for k in keys}, dict(composition))


def _names(values: Any) -> bool:
    """Whether ``values`` is a list of unique texts."""
    return (isinstance(values, list) and all(isinstance(v, str) for v in values)
            and len(set(values)) == len(values))


def _combination(row: Any, sizes: list[int]) -> bool:
    """Whether ``row`` is a design's ``[[codes], cells]`` for covariates of ``sizes`` levels."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (isinstance(row, list) and len(row) == 2 and isinstance(row[0], list)
            and len(row[0]) == len(sizes) and whole(row[1]) and row[1] >= 1
            and all(whole(c) and 0 <= c < n for c, n in zip(row[0], sizes, strict=True)))


def check_sizes(directory: Path, state: dict[str, torch.Tensor],
                expected: dict[str, tuple[int, str, str]]) -> None:  # fmt: skip
    """Refuse weights whose first dimension disagrees with a file of the same save:
    ``expected`` maps a weight to ``(size, file, what)``."""
    for key, (size, file, what) in expected.items():
        n = state[key].shape[0] if key in state else None
        if n != size:
            raise ModelFileError(
                f"{file} in {directory} lists {size} {what} but the weights hold {n}; the files "
                "come from different models"
            )


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Load a saved CVAE module's weights (its latent mixture sized first), in eval mode."""
    try:
        module.set_latent_mixture(state["mixture_weight"], state["mixture_mean"],
                                  state["mixture_chol"])  # fmt: skip
        module.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelFileError(misfit_weights(directory, exc)) from None
    module.eval()


def misfit_weights(directory: Path, exc: BaseException) -> str:
    """One line for weights that do not fit their ``config.json`` (torch's ``load_state_dict``
    lists every missing key and size mismatch, one line each, dozens for weights of another
    model): the first of them, how many more, and the fix."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Error(s) in loading")]
    shown = lines[0][:200] if lines else type(exc).__name__
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return (f"weights in {directory} do not fit the saved config: {shown}{more}; the weights "
            "come from another model: restore the files of one save together, or fit again")


def _a(word: str) -> str:
    """``word`` with its article: "a cvae", "an nb" (read as letters: en-bee, es-cee-vee-i)."""
    spelt = word.lower().split("-")[0] in ("nb", "scvi")
    return f"{'an' if spelt or word[:1].lower() in 'aeiou' else 'a'} {word}"
