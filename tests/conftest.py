"""Shared fixtures: the real datasets in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

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
