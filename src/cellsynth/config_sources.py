"""Every setting by name, where its value came from and what it accepts: what
``cellsynth config show`` prints and how :func:`resolve` layers the defaults, a config file,
``--set`` and the command's arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config import (
    MODEL_ALIASES,
    RunConfig,
    apply_overrides,
    groups_is_file,
    read_toml,
    run_config,
)
from .config_rules import type_name
from .errors import ConfigError, listed
from .paths import variables_hint

logger = logging.getLogger(__name__)


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"cvae": {"lr": 1}}`` -> ``{"cvae.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def setting_names(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every setting of ``cls`` (default :class:`RunConfig`) as ``"section.key"``, in field order."""
    cls = RunConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names += setting_names(hints[f.name], f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names


def setting_field(dotted: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field of setting ``dotted`` (``"cvae.lr"``) and its type."""
    cls: Any = RunConfig
    *sections, key = dotted.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return next(f for f in dataclasses.fields(cls) if f.name == key), typing.get_type_hints(cls)[key]


def get_setting(cfg: RunConfig, dotted: str) -> Any:
    """The value of setting ``dotted`` (``"cvae.lr"``) in ``cfg``."""
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def rule(dotted: str) -> str:
    """What setting ``dotted`` accepts, in words: its type with its declared range or choices."""
    f, tp = setting_field(dotted)
    rng = f.metadata.get("range")
    words: list[str] = []
    for arg in get_args(tp) if get_origin(tp) in (types.UnionType, typing.Union) else (tp,):
        if get_origin(arg) is Literal:
            choices = [a for a in get_args(arg) if a not in MODEL_ALIASES]
            words.append(("one of " if len(choices) > 1 else "") + ", ".join(map(_json, choices)))
        elif get_origin(arg) is list:
            item = get_args(arg)[0]
            words.append(f"a list of {type_name(item)}" + (f", each in {rng}" if rng else ""))
        elif arg is bool:
            words.append("true or false")
        elif arg in (int, float):
            words.append(f"{type_name(arg)} in {rng}" if rng else type_name(arg))
        else:
            words.append(type_name(arg))
    if dotted in ("split.train", "split.val", "split.test"):  # the fractions' rule alone
        words.append("train + val + test = 1")
        return "; ".join(words)
    return " or ".join(words)


def _json(value: Any) -> str:
    return json.dumps(value)


def resolve(data: str | None = None, label_key: str | None = None,
            config_path: str | Path | None = None,
            overrides: Sequence[str] = ()) -> tuple[RunConfig, dict[str, str]]:
    """The run's validated config and where each setting came from.

    Layers, later ones winning: the package defaults; a config file (``config_path``), or the
    embedded demo preset when no data is given in any way (no ``data``, no ``config_path``, no
    non-empty ``dataset.path`` among ``overrides``); the ``--set`` ``overrides``; the ``data``
    and ``label_key`` arguments. With data and no config file the package defaults apply, not
    the demo's settings.

    Parameters
    ----------
    data
        The h5ad file to learn (``dataset.path``); None when not given as an argument.
    label_key
        The obs column with the cell type (``dataset.label_key``); None keeps the config's.
    config_path
        A TOML config file; None for none.
    overrides
        ``section.key=value`` strings (``--set``), values in TOML syntax.

    Returns
    -------
    The validated :class:`RunConfig`, and for every setting ``"section.key"`` (``"seed"`` at the
    top level) its source: ``"default"``, ``"demo preset"``, ``"config FILE"``, ``"--set"`` or
    ``"argument"``.

    Raises
    ------
    ConfigError
        A missing or invalid file, an unknown key, a value of the wrong type or out of range, or
        ``data`` given both as an argument and as a different ``--set dataset.path``.
    """
    for given, what in ((data, "the data argument"), (config_path, "--config")):
        if given is not None and not str(given).strip():  # "$ATLAS" with ATLAS not set
            raise ConfigError(f"{what} is empty (a shell variable that is not set?); give the "
                              "file's path, or leave it out (no data and no --config: the demo)")
    set_leaves = _leaves(apply_overrides({}, list(overrides)))
    if data is not None and set_leaves.get("dataset.path", data) != data:
        raise ConfigError(f"the data file is given twice: as the argument {data!r} and as --set "
                          f"dataset.path={set_leaves['dataset.path']!r}; give it once")
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_path is not None:
        layers.append((f"config {config_path}", read_toml(config_path)))
    elif data is None and not set_leaves.get("dataset.path"):
        from .presets import demo_config_path

        layers.append(("demo preset", read_toml(demo_config_path())))
    layers.append(("--set", apply_overrides({}, list(overrides))))
    arguments = {"path": data, "label_key": label_key}
    layers.append(("argument", {"dataset": {k: v for k, v in arguments.items() if v is not None}}))
    merged: dict[str, Any] = {}
    sources = dict.fromkeys(setting_names(), "default")
    for source, layer in layers:
        for dotted, value in _leaves(layer).items():
            node = merged
            *sections, key = dotted.split(".")
            for part in sections:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
            node[key] = value
            sources[dotted] = source
    for key in ("path", "groups"):
        if config_path is not None and sources.get(f"dataset.{key}") == f"config {config_path}":
            _from_config_folder(merged, Path(config_path), key)
    return run_config(merged), sources  # an unknown key has raised: sources names settings only


def _from_config_folder(merged: dict[str, Any], config_path: Path, key: str) -> None:
    """A relative ``dataset.path`` or ``dataset.groups`` file of a config file is read from the
    current folder; where no file is there but one is beside the config file, that one (a
    config kept with its data and run from elsewhere), logged. A groups file in neither place
    is refused, naming both."""
    given = merged.get("dataset", {}).get(key)
    if not isinstance(given, str) or not given or Path(given).expanduser().is_absolute():
        return
    if key == "groups" and not groups_is_file(given):
        return  # "auto" or a packaged name
    beside = (config_path.parent / given).resolve()
    if not Path(given).exists() and beside.exists():
        logger.info("dataset.%s %s: not in the current folder; using %s, beside the config "
                    "file", key, given, beside)
        merged["dataset"][key] = str(beside)
    elif key == "path" and not Path(given).exists():  # the data stage refuses it, naming cwd
        logger.warning("dataset.path = %r (config %s): no such file in the current folder (%s) "
                       "nor beside the config file (%s); a relative path in a config file is "
                       "read from the current folder, then from the config file's%s", given,
                       config_path, Path(given).absolute(), beside, variables_hint(given))
    elif key == "groups" and not Path(given).exists():
        raise ConfigError(
            f"dataset.groups = {given!r} (config {config_path}): no such file in the current "
            f"folder ({Path(given).absolute()}) nor beside the config file ({beside})"
            f"{variables_hint(given)}; give the file's path, a packaged mapping (e-annd-5), "
            "\"auto\" or \"\" for none")


#: the settings ``cellsynth fit`` reads whatever the generator, besides the data and label
#: arguments (``dataset.path``, ``dataset.label_key``)
FIT_SETTINGS = ("seed", "generator.model", "dataset.backed", "dataset.drop_undetected_genes",
                "qc.chunk_size")
#: settings ``cellsynth fit`` names as unused with a warning (``config.unused_covariates``)
UNUSED_WARNED = ("cvae.covariates", "nb.covariates", "scvi.covariates")
#: the sections (and single settings) each generator's fit reads
FIT_SECTIONS = {"cvae": ("cvae.",), "nb": ("nb.",), "scvi": ("scvi.",),
                "reference": ("seed_vae.", "features.", "qc.target_sum")}


def check_fit_overrides(overrides: Sequence[str], model: str, data: str,
                        label_key: str) -> None:
    """Refuse a ``--set`` that ``cellsynth fit --model model`` would not use (QC, split,
    classifier, another generator's section...), or that names another data file or label
    column than its arguments: the fit ignored them without a word and recorded them in the
    model's ``run_config.toml`` as if used."""
    from .config import canonical_model

    model = canonical_model(model)
    own = FIT_SECTIONS.get(model, ())
    arguments = {"dataset.path": ("DATA", data), "dataset.label_key": ("--label-key", label_key)}
    for key, value in _leaves(apply_overrides({}, list(overrides))).items():
        if key in arguments:
            name, given = arguments[key]
            if not _same_argument(key, value, given):
                raise ConfigError(f"--set {key}={value!r} and the argument {name} {given!r} "
                                  f"both give it; `cellsynth fit` uses the argument: drop the "
                                  "--set")
        elif _fit_ignores(key, own):
            raise ConfigError(
                f"--set {key}: `cellsynth fit --model {model}` does not use this setting (it "
                f"reads {_fit_reads(own)}); drop it, or give it to `cellsynth run`, which "
                "uses it")


def warn_fit_config(path: str | Path | None, model: str, data: str, label_key: str) -> None:
    """Warn of the settings a ``cellsynth fit --config FILE`` file gives that the fit does not
    use (a preset's QC, split, classifier...: refused when given with ``--set``, but a whole
    preset is a fair config to take a generator's settings from), and of a data file or label
    column other than the arguments', which win: all were dropped without a word."""
    from .config import canonical_model

    if path is None:
        return
    given = _leaves(read_toml(path))
    own = FIT_SECTIONS.get(canonical_model(model), ())
    arguments = {"dataset.path": ("DATA", data), "dataset.label_key": ("--label-key", label_key)}
    for key, (name, value) in arguments.items():
        if key in given and not _same_argument(key, given[key], value):
            logger.warning("%s = %r (config %s) is not used: `cellsynth fit` reads the argument "
                           "%s %r", key, given[key], path, name, value)  # fmt: skip
    ignored = [k for k in given if k not in arguments and _fit_ignores(k, own)]
    if ignored:
        logger.warning("config %s: `cellsynth fit --model %s` does not use %s (it reads %s); "
                       "they are not applied (`cellsynth run` uses them)", path, model,
                       listed(ignored, 8), _fit_reads(own))  # fmt: skip


def _same_argument(key: str, value: Any, given: str) -> bool:
    if key == "dataset.path":
        return Path(str(value)).expanduser().resolve() == Path(given).expanduser().resolve()
    return value == given


def _fit_ignores(key: str, own: tuple[str, ...]) -> bool:
    """Whether ``cellsynth fit`` leaves ``key`` unused (``own``: its generator's sections);
    another generator's covariates are not: the fit warns of them itself."""
    return key not in UNUSED_WARNED and key not in FIT_SETTINGS and not any(
        key.startswith(p) if p.endswith(".") else key == p for p in own)


def _fit_reads(own: tuple[str, ...]) -> str:
    uses = [f"[{p[:-1]}]" if p.endswith(".") else p for p in own]
    return f"{', '.join(uses)} and {', '.join(FIT_SETTINGS[2:])}, seed"
