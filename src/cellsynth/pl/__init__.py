"""Plots of cellsynth's results, in scanpy's habit (``cs.pl.<name>``).

Each function takes data (a result, a model, AnnData objects), draws into ``ax`` (a new
figure when None) and returns the matplotlib :class:`~matplotlib.axes.Axes` (a list of them
for several panels); ``save=`` writes
the figure to a file and ``show=True`` calls ``plt.show()`` (and returns None), as scanpy's
``pl`` functions do; where matplotlib cannot show a figure (Agg, no display) it says so and
closes the figure it made. By default nothing is shown, so they work the same in a notebook, a
script or on a headless machine (Agg). matplotlib is imported only when a function is
called. ``report.html`` draws its figures with these same functions.

- :func:`umap`: real and generated cells in one UMAP, equal numbers of each per type;
- :func:`fidelity`: each headline metric of :func:`cellsynth.evaluate`, synthetic beside the
  real-vs-real floor;
- :func:`per_type`: one metric per cell type, synthetic beside the floor;
- :func:`genes`: per gene, mean against zero fraction and against variance, real and
  generated;
- :func:`privacy`: the privacy audit's attack AUCs beside their flag thresholds and the
  distances to the closest training cell;
- :func:`history`: a generator's training curve;
- :func:`library_sizes`: counts per cell, real and synthetic (per cell type with
  ``label_key``).
"""

from __future__ import annotations

from ._common import REAL_COLOR as REAL_COLOR  # the report's colours too
from ._common import SYNTH_COLOR as SYNTH_COLOR
from ._common import short_label as short_label  # the report's figures' labels too
from ._fidelity import fidelity, per_type
from ._genes import genes
from ._history import history
from ._library import library_sizes
from ._privacy import privacy
from ._umap import umap

__all__ = ["fidelity", "genes", "history", "library_sizes", "per_type", "privacy", "umap"]
