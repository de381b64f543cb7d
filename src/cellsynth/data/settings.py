"""The settings a direct call of the data stage is given, checked as a config file's are."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import DatasetConfig, QCConfig, SplitConfig, check_split
from ..config_rules import from_dict, hints
from ..errors import ConfigError

#: the sections of the data stage, by the prefix of their settings
_SECTIONS = {"dataset": DatasetConfig, "qc": QCConfig, "split": SplitConfig}


def _keyword_fix(key: str) -> str:
    """A setting's fix said as the keyword of its section's class (``split.val`` ->
    ``SplitConfig(val=...)``): a direct call is given the sections, not a config file."""
    section, _, name = key.partition(".")
    return f"give another value: {_SECTIONS[section].__name__}({name}=...)"


def data_settings(dataset: Any, qc: Any, split: Any) -> tuple[DatasetConfig, QCConfig,
                                                               SplitConfig]:
    """The sections ``preprocess`` and ``preprocess_backed`` are given, checked before any data
    is read as a config file's are: each section's class, its values' types and ranges, the
    split's fractions and held-out donors (a section built in Python is not checked when made).

    Returns
    -------
    The three sections, their values coerced (a whole float of an int setting an int).

    Raises
    ------
    ConfigError
        A section of another class, or a value of the wrong type or out of its range.
    """
    checked = []
    for (name, kind), value in zip(_SECTIONS.items(), (dataset, qc, split), strict=True):
        if not isinstance(value, kind):
            raise ConfigError(f"{name} is a {type(value).__name__}; give a cellsynth.config."
                              f"{kind.__name__} ({kind.__name__}(**settings) for a dict of "
                              f"them; a run's: cs.RunConfig(...).{name})")
        with hints(_keyword_fix):
            checked.append(from_dict(kind, dataclasses.asdict(value), f"{name}."))
    dataset, qc, split = checked
    with hints(_keyword_fix):
        check_split(split, dataset.donor_key)
    return dataset, qc, split
