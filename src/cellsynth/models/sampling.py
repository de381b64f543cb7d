"""The CVAE's generation: :meth:`~GenerationMixin.sample` into memory, or
:meth:`~GenerationMixin.sample_chunks` one chunk at a time, and the provenance written beside
the cells.

A request is turned into a plan (``(type, covariate codes, n)`` rows) by
:class:`._design.DesignRequests`; each chunk's latents, library sizes and counts are drawn by
:func:`._draws.sample_counts` from one ``numpy`` generator, so the same seed gives the same
counts whether the cells are held or streamed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import keys as K
from ..data.csr import stack_rows
from ..errors import DataError
from ..options import progress_bar
from ..seeds import checked_seed
from . import _training as tr
from ._draws import sample_counts_rows
from .base import check_memory, request_bytes, synthetic_adata, writable_uns

_SAMPLE_VALUES = 4_000_000  # generated values (cells x genes) held densely at once


def estimate_bytes(gen: Any, plan: list[tuple[str, tuple[int, ...], int]]) -> float:
    """An upper estimate of the stored counts of a plan's cells (:func:`.base.request_bytes`),
    from each type's mean library size under its log-normal library model (a generator of
    its own estimate, :meth:`~.nb.NegBinBaseline.plan_bytes`, gives that)."""
    if hasattr(gen, "plan_bytes"):
        return gen.plan_bytes(plan)
    module = gen.module
    mean = module.library_log_mean.detach().cpu().numpy().astype(np.float64)
    sd = module.library_log_std.detach().cpu().numpy().astype(np.float64)
    library = np.exp(mean + sd**2 / 2)
    index = {label: i for i, label in enumerate(gen.labels)}
    return request_bytes([(library[index[t]], k) for t, _, k in plan], len(gen.genes))


class GenerationMixin:
    """:meth:`sample` and :meth:`sample_chunks` for :class:`~cellsynth.models.cvae.CVAE`
    (which also brings :meth:`plan` and :meth:`plan_obs` from
    :class:`._design.DesignRequests`, the trained module and its labels, genes and design)."""

    @torch.no_grad()
    def sample(
        self,
        request: dict[str, int] | pd.DataFrame,
        *,
        where: dict[str, Any] | None = None,
        seed: int = 0,
        latent: Literal["mixture", "prior"] = "mixture",
    ) -> ad.AnnData:
        """Generate integer-count cells; rows come out grouped as requested, in its order.

        Parameters
        ----------
        request
            Cells to generate per type, e.g. ``{"B cells": 100}``; or, for a model with
            covariates, a table with the label column, any covariate columns and ``n`` (one row
            per combination).
        where
            Covariate levels for every type of a dict request, e.g. ``{"condition": "stim"}``.
            A covariate not given follows the type's training composition over it. A
            combination of seen levels that no training cell had is allowed (and listed in
            ``uns['cellsynth']['unseen_combinations']``).
        seed
            All noise (latents, library sizes, counts) is drawn from
            ``numpy.random.default_rng(seed)``: the same seed gives byte-identical counts.
        latent
            Where ``z`` comes from: ``"mixture"``, the per-type Gaussian mixture over ``z`` and
            the log library size fitted to the training cells after training (keeps
            multi-modal types, e.g. treated and control cells, apart, and each state's
            sequencing depth; with covariates it is pooled over their levels, which enter
            through the decoder); ``"prior"``, the model's prior ``p(z | type)``, with the
            library from the type's log-normal library model.

        Returns
        -------
        AnnData with CSR float32 whole-number counts in ``X``, the types (categorical, the
        types generated) and every covariate (categorical, with its training levels) in
        ``obs``, the model's genes in ``var`` (with the text columns of the training data's
        ``var``, e.g. gene symbols) and provenance in ``uns['cellsynth']``.
        """
        plan, unseen = self.plan(request, where)
        check_memory(estimate_bytes(self, plan), sum(k for _, _, k in plan),
                     ", or stream them to a file chunk by chunk (CVAE.sample_chunks, or "
                     "cellsynth generate)")
        chunks = [x for _, x in self.sample_chunks(plan, seed=seed, latent=latent)]  # fmt: skip
        obs = self.plan_obs(plan)
        out = synthetic_adata(stack_rows(chunks), obs[self.label_key].to_numpy(),
                              self.genes, label_key=self.label_key, model=self.name, seed=seed,
                              annotation=self.gene_annotation)
        for key, col in obs.items():
            if key != self.label_key:
                out.obs[key] = col.values  # categorical, with the training levels
        out.uns[K.UNS] = self.provenance(seed, unseen, latent)
        return out

    def provenance(self, seed: int, unseen: list[dict[str, str]],
                   latent: str = "mixture") -> dict[str, Any]:  # fmt: skip
        """``uns['cellsynth']`` of generated cells (:meth:`sample`, and cells written chunk by
        chunk): version, model, seed, label key, settings and, with covariates, the
        combinations no training cell had."""
        uns = {"version": tr.package_version(), "model": self.name, "seed": int(seed),
               "label_key": self.label_key,
               "config": {**dataclasses.asdict(self.config), "latent_sampler": latent}}
        if self.design:
            uns["unseen_combinations"] = unseen
        return writable_uns(uns)  # as the h5ad holds it

    def sample_chunks(
        self,
        request: dict[str, int] | pd.DataFrame | list,
        *,
        where: dict[str, Any] | None = None,
        seed: int = 0,
        latent: Literal["mixture", "prior"] = "mixture",
    ) -> Iterator[tuple[str, sp.csr_matrix]]:
        """The cells :meth:`sample` returns, as ``(type, CSR counts)`` chunks in the same order
        (``request`` may also be a :meth:`plan`).

        The same seed gives the same counts as :meth:`sample`; memory holds one chunk, so a
        caller can embed or write the cells as they come (the out-of-core pipeline). The
        request, ``latent`` and ``seed`` are checked here, when it is called, not when the
        first chunk is asked for (after a caller has opened the file it writes, say).
        """
        plan, _ = self.plan(request, where)
        if latent not in ("mixture", "prior"):
            raise DataError(f"latent must be 'mixture' or 'prior', got {latent!r}")
        self._module()
        self._check_trained("generate cells")
        return self._streamed(plan, np.random.default_rng(checked_seed(seed)), latent)

    @torch.no_grad()
    def _streamed(self, plan: list[tuple[str, tuple[int, ...], int]], rng: np.random.Generator,
                  latent: str) -> Iterator[tuple[str, sp.csr_matrix]]:  # fmt: skip
        """:meth:`sample_chunks`'s chunks of a checked plan, behind a progress bar."""
        self._module().eval()
        bar = progress_bar(total=sum(n for _, _, n in plan), desc="CVAE sample", unit="cell")  # fmt: skip
        try:
            for label, x in self._chunks(plan, rng, latent):
                yield label, x
                bar.update(x.shape[0])
        finally:
            bar.close()

    @torch.no_grad()
    def _chunks(self, plan: list[tuple[str, tuple[int, ...], int]], rng: np.random.Generator,
                latent: str) -> Iterator[tuple[str, sp.csr_matrix]]:  # fmt: skip
        """``(type, CSR counts)`` chunks of a checked plan, all noise from ``rng`` (no checks,
        no progress bar: :meth:`sample_chunks`, and the epoch selection's checks while the model
        is still training)."""
        codes = {label: i for i, label in enumerate(self.labels)}
        rows = max(1, min(4 * self.config.batch_size, _SAMPLE_VALUES // max(1, len(self.genes))))
        free = self._module().any_type is not None  # trained with label dropout
        together = self._module().likelihood != "gaussian"
        group: list[tuple[tuple[int, ...], int]] = []  # pieces decoded together
        key: tuple[str, bool, bool] | None = None
        for label, cov, n in plan:
            # a combination no training cell had: decoded with "some type" where the model
            # learned one (label dropout); a level the type never had: without its zero inflation
            unseen = free and not self.design.seen(label, cov)
            new_level = bool(cov) and self.design.new_level(label, cov)
            for sl in tr.iter_slices(n, rows):
                k = sl.stop - sl.start
                # consecutive pieces of one type and flags share a chunk, up to its rows: the
                # small combinations of a many-donor request are decoded together
                if group and ((label, unseen, new_level) != key or not together
                              or sum(m for _, m in group) + k > rows):
                    yield key[0], self._sample_group(codes[key[0]], group, rng, latent, key)
                    group = []
                key = (label, unseen, new_level)
                group.append((cov, k))
        if group:
            yield key[0], self._sample_group(codes[key[0]], group, rng, latent, key)

    def _sample_group(self, code: int, group: list[tuple[tuple[int, ...], int]],
                      rng: np.random.Generator, latent: str,
                      key: tuple[str, bool, bool]) -> sp.csr_matrix:  # fmt: skip
        """One chunk of type ``code``: the pieces of ``group`` (consecutive combinations of one
        type and ``key``'s flags) decoded together, each with the noise it would have alone
        (:func:`~._draws.sample_counts_rows`)."""
        _, unseen, new_level = key
        return sample_counts_rows(self._module(), code, group, rng, latent, any_type=unseen,
                                  unseen_level=new_level)  # fmt: skip
