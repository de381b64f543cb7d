"""The encoder's first layer from the non-zero counts only (models/modules/_sparse_input.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellsynth.models.modules import _sparse_input as S
from cellsynth.models.modules.cvae import CVAEModule


def _batch(n_cells: int, n_genes: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n_cells, n_genes, generator=g) < density
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 4, generator=g) * on
    x[1] = 0.0  # a cell without counts
    x[:, 0] = 0.0  # a gene without counts
    return x


def _encode(module: CVAEModule, x, y, library, c, *, sparse: bool):
    module.sparse_input = sparse
    module.zero_grad(set_to_none=True)
    qz, _ = module.inference(x, y, library, c)
    ((qz.loc**2).sum() + qz.scale.sum()).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return qz.loc.detach().clone(), grads


@pytest.mark.parametrize("n_covariates", [0, 2])
def test_the_sparse_layer_equals_the_dense_one_values_and_gradients(n_covariates):
    torch.manual_seed(0)
    module = CVAEModule(700, 4, n_covariate_levels=[3] * n_covariates).eval()
    x = _batch(48, 700, 0.08)
    y = torch.randint(0, 4, (48,))
    c = torch.randint(0, 3, (48, n_covariates)) if n_covariates else None
    library = x.sum(1).clamp_min(1.0)
    dense = _encode(module, x, y, library, c, sparse=False)
    sparse = _encode(module, x, y, library, c, sparse=True)
    torch.testing.assert_close(sparse[0], dense[0], rtol=1e-5, atol=1e-5)
    assert set(sparse[1]) == set(dense[1])  # the embeddings get their gradient too
    for name, grad in dense[1].items():
        torch.testing.assert_close(sparse[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_sparse_layer_is_used_and_gives_up_on_dense_batches(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(300 + 5, 16)
    cond = torch.randn(32, 5)
    factor = torch.full((32,), 2.0)
    calls = []
    monkeypatch.setattr(S.SparseFirstLayer, "apply",
                        lambda *a: calls.append(a) or torch.zeros(32, 16))  # fmt: skip
    assert S.sparse_first_layer(_batch(32, 300, 0.1), factor, cond, layer) is not None
    assert len(calls) == 1
    assert S.sparse_first_layer(_batch(32, 300, 0.9), factor, cond, layer) is None  # dense
    assert len(calls) == 1


def test_the_normalised_entries_are_log1p_of_the_scaled_counts():
    x = _batch(20, 50, 0.3)
    factor = torch.linspace(0.5, 3.0, 20)
    csr = S.nonzero(x).normalised(factor)
    want = torch.log1p(x * factor[:, None]).numpy()
    np.testing.assert_allclose(csr.toarray(), want, rtol=1e-6, atol=1e-7)
    assert csr.nnz == int((x != 0).sum())


def test_the_same_output_and_gradient_on_one_thread_and_on_two():
    torch.manual_seed(0)
    layer = torch.nn.Linear(400 + 8, 64)
    x = _batch(64, 400, 0.1)
    cond = torch.randn(64, 8)
    factor = torch.full((64,), 1.5)
    dy = torch.randn(64, 64)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            layer.zero_grad(set_to_none=True)
            h = S.sparse_first_layer(x, factor, cond, layer)
            h.backward(dy)
            out.append((h.detach().clone(), layer.weight.grad.clone()))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1][:, :400], out[1][1][:, :400])  # the genes' columns: the kernel's


def test_the_forward_kernel_sums_each_output_alike_whatever_its_tasks():
    """``_times_w`` splits the output's columns into tasks: any split gives the same bits (each
    element summed over its genes in order), a width that does not divide H included, and the
    product is the matrix product, with the weight read where it lies (a strided view)."""
    x = _batch(40, 300, 0.1)
    csc = S.nonzero(x).normalised(torch.full((40,), 0.7)).tocsc()
    weight = torch.randn(50, 300 + 6)  # H = 50: no width below divides it
    w = weight.numpy()[:, :300]
    outs = []
    for width in (16, 32, 128):
        out = np.empty((40, 50), dtype=np.float32)
        S._times_w(csc.indptr, csc.indices, csc.data, w, out, width)
        outs.append(out)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    np.testing.assert_allclose(outs[0], csc.toarray() @ w.T, rtol=1e-5, atol=1e-5)
    assert S._width(512, 2) == 128 and S._width(128, 2) == 64 and S._width(20, 4) == 16


def test_the_nonzero_counts_read_from_csr_are_those_found_in_the_dense_batch():
    import scipy.sparse as sp

    x = _batch(30, 80, 0.2)
    want = S.nonzero(x)
    csr = sp.csr_matrix(x.numpy())
    last = csr.indices[-1]  # a gene the last cell has: stored again there, and a stored zero
    zero = next(g for g in range(80) if x[-1, g] == 0)
    messy = sp.csr_matrix((np.r_[csr.data, 2.0, 0.0], np.r_[csr.indices, last, zero],
                           np.r_[csr.indptr[:-1], csr.nnz + 2]), shape=csr.shape)  # fmt: skip
    messy.has_sorted_indices = False
    x_messy = torch.from_numpy(messy.toarray())
    for got, dense in ((S.Nonzero.from_csr(csr), x), (S.Nonzero.from_csr(messy), x_messy)):
        expect = S.nonzero(dense)
        np.testing.assert_array_equal(got.indptr, expect.indptr)
        np.testing.assert_array_equal(got.indices, expect.indices)
        torch.testing.assert_close(got.counts, expect.counts)
        torch.testing.assert_close(got.rows, expect.rows)
        torch.testing.assert_close(got.cols, expect.cols)
    assert S.Nonzero.from_csr(csr).counts.tolist() == want.counts.tolist()
    assert messy.nnz == csr.nnz + 2  # the caller's matrix is left as it was


def test_a_training_loss_from_the_batch_csr_equals_the_one_from_the_dense_batch():
    import scipy.sparse as sp

    module = CVAEModule(300, 4).train()
    x = _batch(40, 300, 0.1)
    y = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(1))
    library = x.sum(1).clamp_min(1.0)
    out = []
    for csr in (None, sp.csr_matrix(x.numpy())):
        torch.manual_seed(3)  # the same dropout masks and latent draws
        module.zero_grad(set_to_none=True)
        loss = module.loss(x, y, library, kl_weight=0.5, csr=csr).loss
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in module.named_parameters()
                                  if p.grad is not None}))  # fmt: skip
    assert out[0][0] == out[1][0]
    assert out[0][1].keys() == out[1][1].keys()
    for name, grad in out[0][1].items():
        assert torch.equal(out[1][1][name], grad), name
