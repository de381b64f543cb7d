"""Mixed precision (``cvae.precision``): bfloat16 matmuls where the hardware has them, float32
everywhere a rounding would show."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cellsynth.config import CVAEConfig
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import ConfigError
from cellsynth.models import CVAE
from cellsynth.models._training import native_bfloat16, resolve_precision
from cellsynth.models.modules.cvae import CVAEModule

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_the_hardware(monkeypatch, caplog, native):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: native, raising=False)
    assert native_bfloat16(CPU) is native
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert resolve_precision("float32", CPU) == torch.float32
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert resolve_precision("bfloat16", CPU) == torch.bfloat16
    assert ("emulated" in caplog.text) is not native  # asked for without the hardware: said
    with pytest.raises(ConfigError, match="'auto', 'float32' or 'bfloat16'"):
        resolve_precision("float16", CPU)
    model = CVAE(config=CVAEConfig(precision="auto", device="cpu"))
    model.genes, model.labels = ["a", "b"], ["t"]
    assert model._build_module().compute_dtype == resolve_precision("auto", CPU)


def _module_and_cells(n_genes: int = 2000, n_cells: int = 256):
    """A module started at the data's gene levels (large output biases, as after
    ``init_from_data``) and Poisson counts of three types."""
    torch.manual_seed(0)
    module = CVAEModule(n_input=n_genes, n_labels=3, n_hidden=[128, 64], n_latent=8,
                        dispersion_fit="moments")  # fmt: skip
    rng = np.random.default_rng(0)
    mean = np.exp(rng.normal(-1.0, 1.5, n_genes))
    x = torch.tensor(rng.poisson(mean * rng.lognormal(0.0, 0.5, (n_cells, 1))), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, n_cells))
    module.init_from_data(torch.log(x.sum(0) / x.sum() + 1e-9), torch.zeros(n_genes))
    return module.train(), x, y, x.sum(1)  # low precision applies in training mode only


def test_bfloat16_loss_matches_float32_and_the_logits_stay_float32():
    module, x, y, library = _module_and_cells()
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        module.compute_dtype = dtype
        torch.manual_seed(1)
        losses[dtype] = module.loss(x, y, library).loss.item()
        qz, z = module.inference(x, y, library)
        h, logits = module._decode(z, y, None)
        assert qz.loc.dtype == z.dtype == h.dtype == logits.dtype == torch.float32
    # the genes' levels (biases near -9) are added after the bfloat16 product: rounded with it,
    # as a plain autocast would, the loss moves about 1.5e-4 of itself
    rel = abs(losses[torch.bfloat16] - losses[torch.float32]) / losses[torch.float32]
    assert rel < 5e-5, losses


def test_eval_mode_decodes_in_float32_whatever_the_training_precision():
    module, x, y, library = _module_and_cells()
    z = torch.randn(len(x), module.n_latent, generator=torch.Generator().manual_seed(0))
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        module.compute_dtype = dtype
        module.train()
        trained = module._decode(z, y, None)[1]
        module.eval()
        out[dtype] = (trained, module._decode(z, y, None)[1], module.inference(x, y, library)[0].loc)
    assert torch.equal(out[torch.float32][1], out[torch.bfloat16][1])  # generation: exact
    assert torch.equal(out[torch.float32][2], out[torch.bfloat16][2])  # sampler fit: exact
    assert not torch.equal(out[torch.float32][0], out[torch.bfloat16][0])  # training: bfloat16


def test_fit_records_its_precision_and_its_losses_are_float32s():
    cells = simulate_atlas(600, 300, 4, seed=0, doublet_rate=0.0, uninformative_rate=0.0)
    history = {}
    for precision in ("float32", "bfloat16"):
        model = CVAE(config=CVAEConfig(n_hidden=[32], n_latent=4, max_epochs=2, select="elbo",
                                       device="cpu", precision=precision))  # fmt: skip
        history[precision] = model.fit(cells, "cell_type", seed=0)
        assert history[precision]["precision"] == precision
        counts = model.sample({model.labels[0]: 20}, seed=0).X
        assert counts.dtype == np.float32 and counts.shape == (20, cells.n_vars)
    f32, b16 = history["float32"]["train_loss"], history["bfloat16"]["train_loss"]
    assert np.allclose(f32, b16, rtol=1e-2) and f32 != b16
