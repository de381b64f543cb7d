"""cellsynth: learn a labelled single-cell atlas, generate synthetic cells, and test them.

cellsynth learns a labelled single-cell RNA-seq atlas (AnnData ``.h5ad``, raw counts), trains
a count-space conditional VAE (or a negative binomial, scVI or the reference model) and
generates integer-count cells of any requested cell type. It scores them against real cells
beside a real-vs-real floor (two halves of the real cells: what a perfect generator would
score) and by what they teach a classifier (train on synthetic, test on real).

Example::

    import cellsynth as cs
    import numpy as np
    adata = cs.simulate(3000, 2000, 8, seed=0)          # or cs.read("atlas.h5ad")
    test = np.random.default_rng(0).random(adata.n_obs) < 0.2  # cells the model never sees
    model = cs.CVAE(adata[~test].copy(), label_key="cell_type"); model.train(seed=0)
    fake = model.sample({"type_00": 500, "type_01": 200}, seed=1)
    result = cs.evaluate(adata[test], fake, label_key="cell_type")  # against unseen cells
    cs.pl.fidelity(result)

``cs.run(...)`` runs the whole pipeline (``cellsynth run``: QC, PCA, classifier, generator,
experiments, SHAP, report) into a resumable run directory; ``cs.load_model(directory)`` reads a
saved generator back; ``cs.predict_types(adata, run_dir)`` annotates new cells with a run's
classifier. Plots are in ``cs.pl``; every setting is a field of ``cs.RunConfig``;
``cs.settings.progress = False`` hides every progress bar. The subpackages are reachable the
same way (``cs.models``, ``cs.metrics``, ``cs.evaluation``, ``cs.data``, ...).
Docs: ``README.md`` and ``docs/`` in the repository (``docs/api.md`` for this API,
``docs/cli.md`` for the command line), and ``help(cs.<name>)``.

The names are imported on first use, so ``import cellsynth`` loads neither torch, anndata nor
scanpy.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("cellsynth")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
    from . import pl
    from .api import evaluate, load_model, read, run, simulate
    from .classify.predict import predict_types
    from .config import RunConfig
    from .errors import CellsynthError
    from .models.cvae import CVAE
    from .models.nb import NegBinBaseline
    from .models.scvi import ScviGenerator
    from .models.seed_counts import SeedGenerator as ReferenceGenerator
    from .options import settings

#: public name -> "module:attribute" ("module" alone for a subpackage), imported on first use
_LAZY: dict[str, str] = {
    "read": "cellsynth.api:read",
    "simulate": "cellsynth.api:simulate",
    "run": "cellsynth.api:run",
    "evaluate": "cellsynth.api:evaluate",
    "load_model": "cellsynth.api:load_model",
    "predict_types": "cellsynth.classify.predict:predict_types",
    "CVAE": "cellsynth.models.cvae:CVAE",
    "NegBinBaseline": "cellsynth.models.nb:NegBinBaseline",
    "ScviGenerator": "cellsynth.models.scvi:ScviGenerator",  # needs the scvi extra to fit
    # the reference model (the registry's ``seed``/``reference``): its CVAE on PCA features,
    # fitted on counts and generating counts
    "ReferenceGenerator": "cellsynth.models.seed_counts:SeedGenerator",
    "RunConfig": "cellsynth.config:RunConfig",
    "CellsynthError": "cellsynth.errors:CellsynthError",
    "pl": "cellsynth.pl",
    "settings": "cellsynth.options:settings",
}

__all__ = [
    "CVAE",
    "CellsynthError",
    "NegBinBaseline",
    "ReferenceGenerator",
    "RunConfig",
    "ScviGenerator",
    "__version__",
    "evaluate",
    "load_model",
    "pl",
    "predict_types",
    "read",
    "run",
    "settings",
    "simulate",
]


def _submodules(packages: bool = False) -> list[str]:
    """The public modules of cellsynth (``config``, ``models``, ``metrics``, ...), or with
    ``packages`` its subpackages alone, found without importing them."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _LAZY
                  and (m.ispkg or not packages))


def __getattr__(name: str) -> Any:
    """Import a public name or submodule on first use (PEP 562) and keep it in the module."""
    target = _LAZY.get(name)
    if target is None and not name.startswith("_") and name in _submodules():
        target = f"cellsynth.{name}"  # cs.models, cs.metrics: as ``import cellsynth.metrics``
    if target is None:
        if name.startswith("_"):  # dunder probes (copy, pickle, IDEs): no listing to build
            raise AttributeError(f"module 'cellsynth' has no attribute {name!r}")
        from .errors import did_you_mean, listed

        near = did_you_mean(name, [*_LAZY, *_submodules()])
        raise AttributeError(
            f"module 'cellsynth' has no attribute {name!r}{near}; its names: "
            f"{listed(sorted(_LAZY), 30)}; its subpackages (each module too, as cs.config): "
            f"{listed(_submodules(packages=True), 30)}")
    module, _, attr = target.partition(":")
    value = import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_submodules()))
