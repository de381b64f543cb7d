"""Every AnnData key cellsynth reads or writes, named once."""

from __future__ import annotations

#: ``obs``: the coarse group of a cell, when a fine-to-coarse mapping is given
GROUP = "cellsynth_group"
#: ``obs``: ``train`` / ``val`` / ``test``
SPLIT = "cellsynth_split"
#: ``obs``: QC columns computed when the input lacks them
N_GENES = "n_genes"
MITO = "mito"
TOTAL_COUNTS = "total_counts"
#: ``layers``: raw counts, kept beside the normalised ``X``
COUNTS = "counts"
#: ``obs`` of a chunked preprocessing result: each cell's counts over the genes the
#: normalisation saw (before the variance filter); ``log1p(counts / this * target_sum)`` is ``X``
NORM_TOTAL = "cellsynth_norm_total"
#: ``obsm`` / ``uns``: PCA features and their parameters
X_PCA = "X_pca"
PCA = "pca"
#: ``uns``: provenance of a generated AnnData (version, config, seed, model)
UNS = "cellsynth"

SPLITS = ("train", "val", "test")
