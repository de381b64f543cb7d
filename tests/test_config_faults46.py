"""Settings misuse (sweep 46): values too large for the 64-bit whole numbers every setting
becomes, networks too large for the machine, ... each refused as one line naming the setting."""

from __future__ import annotations

import anndata as ad
import pytest

import cellsynth as cs
from cellsynth import config
from cellsynth.config import CVAEConfig, RunConfig
from cellsynth.errors import ConfigError


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    return cs.simulate(120, 40, 3, seed=0)


@pytest.mark.parametrize("override", ["cvae.batch_size=1e30", "cvae.n_hidden=[1e30]",
                                      "cvae.n_latent=1e19", "qc.min_cells_per_gene=1e300"])
def test_a_whole_number_beyond_64_bits_is_refused_at_load(override):
    """1e30 passed every range ([1, inf)) and stopped the run later with a traceback (torch's
    overflow, HDF5's object dtype writing the model's settings)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}(\[0\])? must be a whole number below 2\*\*63"):
        config.load(None, [override])
    with pytest.raises(ConfigError, match="below 2"):
        RunConfig(cvae={"n_latent": 2**64}).validate()


def test_a_network_too_large_for_memory_is_refused_before_allocation(atlas, monkeypatch):
    """cvae.n_hidden = [1000000000] stopped a fit with the allocator's RuntimeError traceback."""
    from cellsynth import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: 1e6)  # 1 MB free
    with pytest.raises(ConfigError, match=r"cvae.n_hidden = \[100000\].*GB is available.*"
                                          r"--set cvae.n_hidden="):
        cs.CVAE(atlas, config=CVAEConfig(n_hidden=[100_000]))
    monkeypatch.undo()
    assert cs.CVAE(atlas, config=CVAEConfig(n_hidden=[16])).module is not None
