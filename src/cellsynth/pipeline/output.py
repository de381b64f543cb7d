"""Generated cells to an h5ad: the disk check before, and the chunks streamed to the file.

Shared by ``cellsynth generate`` (:mod:`.generate`) and the run's experiments
(:mod:`.models`); kept apart from both so that generating imports no classifier or metric.
"""

from __future__ import annotations

import itertools
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from .. import keys as K
from ..data.genes import annotated_var
from ..errors import DataError
from ..models.base import cell_names, writable_uns
from ..models.sampling import estimate_bytes
from ..outputs import size_text


def check_disk(gen: Any, plan: list[tuple[str, tuple[int, ...], int]], directory: Path,
               chunks: Iterator[Any], hint: str = "ask for fewer cells or write elsewhere",
               ) -> tuple[float, Iterator[Any]]:  # fmt: skip
    """Check, before a byte is written, that ``directory``'s disk can hold a plan's cells;
    raise :class:`DataError` (with ``hint``) when it cannot. Returns the estimated size and the
    ``chunks`` (CSR matrices) to write, unchanged.

    The upper bound (:func:`estimate_bytes`: as many non-zero genes as counts, at most every
    gene) is often ten times the file; where it exceeds the free space the first chunk is drawn
    and the bound scaled by what that chunk's cells take against their bound, with a quarter
    more for the file's own structures and margin (the streamed writer checks each chunk again as it goes)."""
    n = sum(k for _, _, k in plan)
    bound = estimate_bytes(gen, plan)
    free = shutil.disk_usage(directory).free
    if bound <= free or not n:
        return bound, chunks
    first = next(chunks, None)
    if first is None:
        return 0.0, iter(())
    rows = max(int(first.shape[0]), 1)
    took = first.data.nbytes + first.indices.nbytes + 8 * (rows + 1)
    label = plan[0][0]
    first_bound = estimate_bytes(gen, [(label, (), rows)])
    need = 1.25 * bound * took / max(first_bound, 1.0)
    if need > free:
        raise DataError(f"{n:,} cells would take about {size_text(need)} (from the {rows:,} cells "
                        f"drawn first, at {size_text(took / rows)} a cell), but {directory} has "
                        f"{size_text(free)} free: {hint}")
    return need, itertools.chain([first], chunks)


def provenance(gen: Any, seed: int, unseen: list[dict[str, str]],
               plan: list[tuple[str, tuple[int, ...], int]]) -> dict[str, Any]:
    """``uns['cellsynth']`` of a plan's cells streamed from ``gen`` (``sample_chunks``): an nb
    model's names the plan's combinations drawn from their type's fit, so it reads the plan."""
    if hasattr(gen, "plan_bytes"):  # NegBinBaseline
        return gen.provenance(seed, unseen, plan)
    return gen.provenance(seed, unseen)


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` in order, produced in a background thread up to ``depth`` ahead of the caller.

    Writing a chunk (h5py, under the GIL) then overlaps with drawing the next (torch and
    numpy, which release it). An exception in the producer is raised here, at its place in
    the sequence; a caller that stops early stops the producer at its next item.
    """
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put((done, None))
        except BaseException as exc:  # handed to the consumer
            box.put((done, exc))

    thread = threading.Thread(target=produce, name="cellsynth-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = box.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def write_cells(path: Path, chunks, obs: pd.DataFrame, genes: list[str],
                uns: dict, *, overlap: bool = False,
                annotation: pd.DataFrame | None = None) -> None:  # fmt: skip
    """Write generated CSR chunks (an iterable) and their ``obs`` (the type and covariates)
    as an h5ad, one chunk in memory at a time; lists of combinations in ``uns`` are written as
    tables (:func:`~cellsynth.models.base.writable_uns`). With ``overlap`` the next chunk is
    drawn in a background thread while one is written (:func:`prefetched`): worth it when the
    chunks are drawn on a GPU; on the CPU the draw already keeps every core busy, and the two
    threads competing for them wrote 200,000 cells at 2,000 genes at 12,000-14,000 cells/s
    against 16,000 without (two cores). ``var`` holds ``genes`` and the model's gene
    ``annotation`` (:func:`~cellsynth.data.genes.annotated_var`)."""
    from anndata.io import write_elem

    from ..data.csr_writer import CSRWriter
    from ..data.store import h5ad_file

    with h5ad_file(path) as f:
        writer = CSRWriter(f, "X", len(genes), n_rows=len(obs))
        for x in prefetched(chunks) if overlap else chunks:
            writer.append(x)
        obs = obs.copy()
        obs.index = cell_names(len(obs), uns.get("seed", 0))
        for col in obs.columns:  # categorical, as anndata writes them
            if not isinstance(obs[col].dtype, pd.CategoricalDtype):
                obs[col] = pd.Categorical(obs[col].astype(str))
        write_elem(f, "obs", obs)
        write_elem(f, "var", annotated_var(genes, annotation))
        write_elem(f, "uns", {K.UNS: writable_uns(uns)})
