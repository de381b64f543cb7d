"""What the classifier is given, checked before XGBoost reads it: its settings
(:func:`checked_config`). XGBoost's own checks end in a C++ stack trace, and some settings it
takes train to no purpose."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import ClassifierConfig
from ..config_rules import from_dict
from ..config_rules import hints as config_hints
from ..errors import ConfigError


def checked_config(cfg: Any) -> ClassifierConfig:
    """``cfg`` (a :class:`ClassifierConfig` or a dict of its settings) with its types and ranges
    checked as a config file's ``[classifier]`` table is: a section built in Python is not
    checked when built, and XGBoost answered ``n_estimators = 0`` or ``max_depth = -1`` with
    a traceback and trained on ``learning_rate = 0`` or ``subsample = 0`` to no purpose."""
    if isinstance(cfg, ClassifierConfig):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, dict):
        raise ConfigError(f"cfg takes a ClassifierConfig (ClassifierConfig(n_estimators=200), "
                          f"or RunConfig().classifier) or a dict of its settings, got "
                          f"{type(cfg).__name__}")
    with config_hints(lambda key: f"give another {key.removeprefix('classifier.')} in the "
                                  "ClassifierConfig"):  # fmt: skip
        return from_dict(ClassifierConfig, cfg, "classifier.")
