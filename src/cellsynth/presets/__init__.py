"""Configs shipped with the package (the embedded demo)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def demo_config_path() -> Path:
    """The demo config: the embedded simulated atlas at settings that finish in minutes.

    ``config_sources.resolve`` uses it only when no data is given in any way.
    """
    return Path(str(resources.files("cellsynth.presets").joinpath("demo.toml")))
