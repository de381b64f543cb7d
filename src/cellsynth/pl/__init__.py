"""Plots of cellsynth's results, in scanpy's habit (``cs.pl.<name>``).

Each function takes data (a result dict, a model, AnnData objects), draws into ``ax`` (a new
figure when None) and returns the matplotlib :class:`~matplotlib.axes.Axes`; none calls
``show``, so they work the same in a notebook, a script or on a headless machine (Agg).
matplotlib is imported only when a function is called.

- :func:`fidelity`: each headline metric of :func:`cellsynth.evaluate`, synthetic beside the
  real-vs-real floor;
- :func:`per_type`: one metric per cell type, synthetic beside the floor;
- :func:`history`: a generator's training curve;
- :func:`library_sizes`: counts per cell, real and synthetic (per cell type with
  ``label_key``).
"""

from __future__ import annotations

from ._fidelity import fidelity, per_type
from ._history import history
from ._library import library_sizes

__all__ = ["fidelity", "history", "library_sizes", "per_type"]
