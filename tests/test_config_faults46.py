"""Settings misuse (sweep 46): values too large for the 64-bit whole numbers every setting
becomes, networks too large for the machine, ... each refused as one line naming the setting."""

from __future__ import annotations

import anndata as ad
import pytest

import cellsynth as cs
from cellsynth import config
from cellsynth.config import RunConfig
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

