"""The settings a direct call of the data stage is given, checked as a config file's are."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import keys as K
from ..config import DatasetConfig, QCConfig, SplitConfig, check_split
from ..config_rules import from_dict, hints
from ..errors import ConfigError
from ..seeds import checked_seed

#: the sections of the data stage, by the prefix of their settings
_SECTIONS = {"dataset": DatasetConfig, "qc": QCConfig, "split": SplitConfig}


def _keyword_fix(key: str) -> str:
    """A setting's fix said as the keyword of its section's class (``split.val`` ->
    ``SplitConfig(val=...)``): a direct call is given the sections, not a config file."""
    section, _, name = key.partition(".")
    return f"give another value: {_SECTIONS[section].__name__}({name}=...)"


def data_settings(dataset: Any, qc: Any, split: Any,
                  seed: Any) -> tuple[DatasetConfig, QCConfig, SplitConfig, int]:
    """The sections ``preprocess`` and ``preprocess_backed`` are given, checked before any data
    is read as a config file's are: each section's class, its values' types and ranges, the
    split's fractions and held-out donors (a section built in Python is not checked when made);
    the split's ``seed`` (None drew another split at every call; -1 failed in numpy).

    Returns
    -------
    The three sections, their values coerced (a whole float of an int setting an int), and
    the seed as an int.

    Raises
    ------
    ConfigError
        A section of another class, or a value of the wrong type or out of its range.
    DataError
        A seed that is not a whole number from 0 to 2**63 - 1.
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
    check_columns(dataset)
    return dataset, qc, split, checked_seed(seed)


#: ``obs`` columns the data stage writes (``cellsynth_group`` only given a mapping: a run's is not)
WRITTEN = (K.SPLIT, K.MITO, K.N_GENES, K.NORM_TOTAL)


def check_columns(dataset: DatasetConfig) -> None:
    """Refuse a label or donor column that the data stage writes over or reads as another
    column: ``--label-key cellsynth_split`` (a run's file) had its types replaced by
    ``train``/``val``/``test``, and a donor column that is the label column held out whole
    cell types as donors."""
    qc_keys = {"dataset.mito_key": dataset.mito_key, "dataset.n_genes_key": dataset.n_genes_key,
               "dataset.doublet_key": dataset.doublet_key}
    for setting, key in (("dataset.label_key", dataset.label_key),
                         ("dataset.donor_key", dataset.donor_key)):
        read_as = next((k for k, v in qc_keys.items() if v and v == key), None)
        if key in WRITTEN or read_as:
            what = (f"is also {read_as}: the column would be read as both" if read_as else
                    f"names a column the data stage writes ({', '.join(WRITTEN)}), which "
                    "would replace it")
            raise ConfigError(f"{setting} = '{key}' {what}; set {setting} to another obs "
                              "column (rename the column in the data if need be)")
    if dataset.donor_key and dataset.donor_key == dataset.label_key:
        raise ConfigError(f"dataset.donor_key = '{dataset.donor_key}' is the label column "
                          "(dataset.label_key): each cell type would be read as a donor (held "
                          "out whole, audited as one); set dataset.donor_key to the obs column "
                          "of each cell's donor or sample, or to \"\" for none")
