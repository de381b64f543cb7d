"""Dropout with the CPU mask drawn by a compiled kernel (models/modules/_dropout.py)."""

from __future__ import annotations

import numba
import pytest
import torch

from cellsynth.models._nb_kernel import numba_threads
from cellsynth.models.modules._dropout import Dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_mask_keeps_one_minus_p_scaled_up(p):
    mask = dropout_mask(torch.Size([400, 500]), p, seed=3)
    kept = mask > 0
    assert mask.dtype == torch.float32 and mask.shape == (400, 500)
    values = mask.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / (1 - p))]
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * ((p * (1 - p) / kept.numel()) ** 0.5)
    # no pattern along rows or columns: every row and column keeps about 1 - p
    assert kept.float().mean(0).std().item() < 0.1 and kept.float().mean(1).std().item() < 0.1


def test_the_mask_depends_on_the_seed_only():
    shape = torch.Size([300, 257])
    a = dropout_mask(shape, 0.2, seed=11)
    assert torch.equal(a, dropout_mask(shape, 0.2, seed=11))
    assert not torch.equal(a, dropout_mask(shape, 0.2, seed=12))
    if numba.config.NUMBA_NUM_THREADS > 1:
        with numba_threads(1):
            one = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert torch.equal(a, dropout_mask(shape, 0.2, seed=11))
            finally:
                torch.set_num_threads(one)


def test_dropout_trains_through_its_mask_and_follows_torch_seed():
    layer = Dropout(0.3).train()
    x = torch.randn(64, 128, requires_grad=True)
    torch.manual_seed(5)
    y = layer(x)
    y.sum().backward()
    mask = y.detach() / x.detach()
    # the gradient is the mask: zero where dropped, 1 / (1 - p) where kept
    torch.testing.assert_close(x.grad, torch.where(y.detach() == 0, 0.0, 1 / 0.7))
    torch.testing.assert_close(mask[y.detach() != 0], torch.full_like(mask[y.detach() != 0], 1 / 0.7))
    torch.manual_seed(5)
    assert torch.equal(layer(x), y)  # torch's seed fixes the stream
    assert not torch.equal(layer(x), y)
    assert torch.equal(layer.eval()(x), x)  # evaluation: the identity
    assert torch.equal(Dropout(0.0).train()(x), x)
