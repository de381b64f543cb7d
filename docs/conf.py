"""Sphinx configuration of the cellsynth documentation (``make docs``, warnings as errors)."""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "cellsynth"
author = "cellsynth contributors"
copyright = "cellsynth contributors"  # noqa: A001 (Sphinx's name)
release = version = _version("cellsynth")

extensions = [
    "myst_nb",  # MyST Markdown pages and notebooks executed during the build
    "sphinx.ext.autodoc",
    "numpydoc",  # the docstrings are numpydoc style
    "cellsynth_cli",  # docs/_ext: the CLI reference from cellsynth.cli.build_parser()
]

exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "_ext"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# MyST: anchors for headings down to ###, so `PAGE.md#a-heading` links resolve
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks are committed without outputs and executed on every build that reads them
nb_execution_mode = "force"
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"  # library warnings (tqdm, anndata) are noise to a reader

# API reference: signatures without module prefixes; numpydoc renders the sections
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
add_module_names = False
numpydoc_show_class_members = False  # members are listed by the autoclass directives
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"cellsynth {release}"
html_static_path: list[str] = []
