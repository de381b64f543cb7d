"""Shared fixtures: the real datasets in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared datasets live in ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def kang_path() -> Path:
    return shared_file("pbmc_kang2018_muscat_5types.h5ad")


@pytest.fixture(scope="session")
def baron_path() -> Path:
    return shared_file("mouse_pancreas_baron2016_13types.h5ad")


@pytest.fixture(scope="session")
def pbmc4k_path() -> Path:
    return shared_file("pbmc4k_10x_soupx_fullgenes_5types.h5ad")


def kang_small_cells(kang_path: Path) -> ad.AnnData:
    """300 cells of Kang over its 200 most expressed genes (the misuse tests' small data)."""
    import numpy as np

    a = ad.read_h5ad(kang_path)
    rows = np.sort(np.random.default_rng(0).choice(a.n_obs, 300, replace=False))
    a = a[rows].copy()
    x = a.layers["counts"] if "counts" in a.layers else a.X
    genes = np.sort(np.argsort(-np.asarray(x.sum(axis=0)).ravel())[:200])
    return a[:, genes].copy()


@pytest.fixture
def kang(kang_path: Path) -> ad.AnnData:
    return ad.read_h5ad(kang_path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest single-threaded; extra threads only contend on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, so that `make test`'s two workers do not end with one of them running
    a minute-long test while the other waits: the modules holding a test marked ``slow`` come
    first, and in each module its slow tests first. A module's tests stay together (its
    module-scoped fixtures are built once per worker that runs them)."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.module.__name__ if item.module else "", []).append(item)

    def slow(item) -> bool:
        return item.get_closest_marker("slow") is not None

    ordered = sorted(modules.values(), key=lambda tests: not any(map(slow, tests)))
    items[:] = [t for tests in ordered for t in sorted(tests, key=lambda t: not slow(t))]


@pytest.fixture(autouse=True)
def _close_figures():
    """Every test leaves no matplotlib figure open (pyplot's, where a test drew one): figures
    left by one test would warn of "more than 20 figures" in another."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
