"""The rules a setting obeys: its declared range, a finite value, its type; and how an error
says to fix it (a config file or ``--set``, or a Python keyword within :func:`hints`).

:mod:`cellsynth.config` declares each setting with :func:`ranged`; :func:`from_dict` builds a
section from a dict, its keys, types (:func:`coerce`) and ranges (:func:`check_ranges`) checked;
:func:`apply_overrides` lays ``--set section.key=value`` over the nested dict first.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from .errors import ConfigError

INF = float("inf")
#: whole-number settings are 64-bit integers where they are used (torch, numpy, HDF5)
INT64 = 2**63


@dataclass(frozen=True)
class Range:
    """The interval a numeric setting must lie in (``inf``: unbounded on that side).

    Declared beside each default with :func:`ranged`; a list setting's items must each lie in it.
    """

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> Range:
        """``"[0, 1)"``, ``"(0, inf)"``, ``"[0, 2**63)"`` -> a :class:`Range`."""
        low, high = (part.strip() for part in text.strip()[1:-1].split(","))
        return cls(_number(low), _number(high), text.strip()[0] == "[", text.strip()[-1] == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        return (f"{'[' if self.low_closed else '('}{_show(self.low)}, "
                f"{_show(self.high)}{']' if self.high_closed else ')'}")

    def describe(self) -> str:
        """The rule in words: "positive", "0 or more", "at least 2", "in [0, 1)"."""
        if self.high == INF:
            if self.low == 0:
                return "0 or more" if self.low_closed else "positive (> 0)"
            if self.low_closed:
                return f"at least {_show(self.low)}"
        return f"in {self}"


def _number(text: str) -> float:
    if text in ("inf", "-inf"):
        return float(text)
    if "**" in text:
        base, exp = text.split("**")
        return int(base) ** int(exp)
    return float(text) if "." in text or "e" in text else int(text)


def _show(x: float) -> str:
    if isinstance(x, int) and x >= 2**16 and (x & (x - 1)) == 0:
        return f"2**{x.bit_length() - 1}"
    return str(x)


def within(interval: str) -> dict[str, Range]:
    """Field metadata declaring the range (e.g. ``"[0, 1)"``) a numeric setting must lie in."""
    return {"range": Range.parse(interval)}


def ranged(interval: str, default: Any) -> Any:
    """A dataclass field with ``default`` whose value must lie in ``interval``."""
    return field(default=default, metadata=within(interval))


def field_range(cls: type, name: str) -> Range | None:
    """The declared :class:`Range` of field ``name`` of config class ``cls``, or None."""
    return next((f.metadata.get("range") for f in dataclasses.fields(cls) if f.name == name), None)


def _cli_fix(key: str) -> str:
    return f"fix it in the config file or with --set {key}=..."


_FIX: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar(
    "config_fix", default=_cli_fix)


def _on_command_line() -> bool:
    """Whether config errors speak to a config file or ``--set`` (not inside :func:`hints`)."""
    return _FIX.get() is _cli_fix


def fix_hint(key: str) -> str:
    """How to change the setting ``key`` (``"cvae.lr"``), said as the caller sets it: a config
    file or ``--set`` by default, the Python keyword inside :func:`hints`. An item of a list
    (``cvae.n_hidden[1]``) is fixed by giving the whole list: no ``--set`` takes an index."""
    return _FIX.get()(key.split("[", 1)[0])


@contextlib.contextmanager
def hints(fix: Callable[[str], str]) -> Iterator[None]:
    """Within this block, every config error says how to fix a setting with ``fix(key)``
    (e.g. the keyword of a Python call) instead of the command line's ``--set``."""
    token = _FIX.set(fix)
    try:
        yield
    finally:
        _FIX.reset(token)


def check_ranges(section: Any, prefix: str = "") -> None:
    """Raise a :class:`ConfigError` for a non-finite float or a value outside its declared range.

    Checks the fields of ``section`` (a config dataclass) and of the dataclasses nested in it;
    ``prefix`` (``"cvae."``) names the section in the message.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
            continue
        rng = f.metadata.get("range")
        if isinstance(value, list) and not value and rng is not None:  # layer widths, say
            raise ConfigError(f"{key} must hold at least one value (each {rng.describe()}), got "
                              f"[]; {fix_hint(key)}")
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue  # "auto" and other words are checked by their type
            name = f"{key}[{i}]" if isinstance(value, list) else key
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v}; {fix_hint(key)}")
            if rng is not None and v not in rng:
                raise ConfigError(f"{name} must be {rng.describe()}, got {v}; {fix_hint(key)}")
            if isinstance(v, int) and not -INT64 <= v < INT64:  # 1e30 for a layer width, say
                raise ConfigError(f"{name} must be a whole number below 2**63 (a 64-bit "
                                  f"integer), got {v:.3g}; {fix_hint(key)}")


def type_name(tp: Any) -> str:
    """A field type as a message says it: ``int or 'auto'``, ``list``, ``float``."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return " or ".join(map(toml_value, get_args(tp)))
    if tp is bool:
        return "true or false"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``"auto"``, ``3``): how a message shows a
    choice or what it got, so that it can be copied into a config file or ``--set``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _quoting(key: str, value: Any, tp: Any) -> str:
    """How to write ``value`` for a setting of type ``tp`` in TOML, where a common slip shows:
    ``True`` for ``true``, a list of unquoted words, a number or date meant as text."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return " (TOML writes true and false unquoted and in lower case)"
    cli = _on_command_line()
    if get_origin(tp) in (list, tuple) and isinstance(value, str) and value.lstrip()[:1] == "[":
        return (" (a list of words quotes each one: [\"a\", \"b\"]" + (
            f"; on the command line --set '{key}=[\"a\", \"b\"]')" if cli else ")"))
    if get_origin(tp) in (list, tuple) and isinstance(value, str):  # one word, or "a,b"
        words = [w.strip() for w in value.split(",") if w.strip()] or ["a"]
        numbers = (get_args(tp)[:1] or (str,))[0] in (int, float)  # list[int]: 512, not "512"
        shown = ", ".join(w if numbers else f'\"{w}\"' for w in words)
        how = "numbers unquoted" if numbers else "each word quoted"
        return (f" (a list in brackets, {how}: --set '{key}=[{shown}]')" if cli
                else f" (a list: [{shown}])")
    if tp is str and not isinstance(value, str):
        return " (text is quoted in TOML" + (
            f"; on the command line --set '{key}=\"...\"')" if cli else ")")
    return ""


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a :class:`ConfigError` naming ``key``."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a and type(value) is type(a):
                return a
        raise ConfigError(f"{key} must be one of {', '.join(map(toml_value, allowed))}, got "
                          f"{toml_value(value)}{_quoting(key, value, tp)}; {fix_hint(key)}")
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {toml_value(value)}"
                              f"{_quoting(key, value, tp)}; {fix_hint(key)}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        for arg in get_args(tp):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {type_name(tp)}, got {toml_value(value)}"
                          f"{_quoting(key, value, tp)}; {fix_hint(key)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"unsupported config type {tp} for {key}")
    raise ConfigError(f"{key} must be {type_name(tp)}, got {toml_value(value)} "
                      f"({type(value).__name__}){_quoting(key, value, tp)}; {fix_hint(key)}")


#: settings (of :class:`cellsynth.config.RunConfig`) people look for where they are not, and
#: where they are: an unknown key among them is answered with where it is
MOVED = {"dataset.covariates": "cvae.covariates (each generator's own section: nb.covariates, "
                               "scvi.covariates; or `cellsynth fit --covariates`)",
         "generator.covariates": "cvae.covariates (or nb.covariates, scvi.covariates)"}


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """A config dataclass ``cls`` from a nested dict, keys, types and ranges checked.

    ``prefix`` (``"cvae."``) names the section in error messages. Raises :class:`ConfigError`.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            moved = MOVED.get(f"{prefix}{key}") or next(
                (f"'{prefix}{m}'" for m in difflib.get_close_matches(str(key), names, n=1)), None)
            raise ConfigError(
                f"unknown config key '{prefix}{key}' in {where}"
                + (f"; did you mean {moved}?" if moved else "")
                + f"; valid keys: {', '.join(sorted(names))}"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        value = data[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                name = f"{prefix}{f.name}"
                how = (f"[{name}] with KEY = VALUE lines in a config file, or --set "
                       f"{name}.KEY=VALUE" if _on_command_line() else fix_hint(name))
                raise ConfigError(f"'{name}' is a section: it takes a table of settings ({how}; "
                                  f"`cellsynth config show` lists them), got {toml_value(value)}")
            kwargs[f.name] = from_dict(tp, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(value, tp, f"{prefix}{f.name}")
    section = cls(**kwargs)
    check_ranges(section, prefix)  # before any data is read
    return section


def _parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as TOML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        dotted, text = item.split("=", 1)
        if not text.strip():  # `--set dataset.path=$ATLAS` with ATLAS unset: not "" meant
            raise ConfigError(f"--set {item.strip()} gives no value (a shell variable that is "
                              f"not set?); give one, or --set '{dotted.strip()}=\"\"' for "
                              "empty text")
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        _merge(node, parts[-1], _parse_value(text.strip()))
    return data


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    """``node[key] = value``, but a table (``--set 'cvae={lr=1e-3}'``) set over a table merges
    into it key by key: replacing it dropped the section's other settings of the config file or
    an earlier ``--set`` without a word."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge(node[key], k, v)
    else:
        node[key] = value
