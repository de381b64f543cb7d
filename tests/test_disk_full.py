"""A disk without room for an h5ad: refused before HDF5 writes a byte (a disk that fills under
HDF5 leaves a file it cannot close, and the process crashed at exit after the right message),
and the command line exits at once when such a write failed anyway."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.errors import DataError

Usage = namedtuple("Usage", "total used free")


def _full(free: int):
    real = shutil.disk_usage

    def usage(path):
        return Usage(real(path).total, real(path).total - free, free)

    return usage


def _cells(n: int = 2000, genes: int = 500) -> ad.AnnData:
    x = sp.random(n, genes, density=0.1, format="csr", dtype=np.float32, random_state=0)
    return ad.AnnData(x)


def test_an_h5ad_too_big_for_the_disk_is_refused_before_it_is_written(tmp_path: Path,
                                                                      monkeypatch) -> None:  # fmt: skip
    from cellsynth.data import store

    adata = _cells()
    need = store.nbytes(adata)
    assert need > adata.X.data.nbytes  # values, indices and row pointers at least
    monkeypatch.setattr(shutil, "disk_usage", _full(need // 2))
    with pytest.raises(DataError, match=r"about .* needed for the h5ad, and its disk has .* free"):
        store.write_h5ad(adata, tmp_path / "cells.h5ad")
    assert list(tmp_path.iterdir()) == []  # nothing begun, no part file left
    assert store.hdf5_failures() == 0  # HDF5 never saw the write
    monkeypatch.setattr(shutil, "disk_usage", _full(50 * need))  # room enough: written
    store.write_h5ad(adata, tmp_path / "cells.h5ad")
    assert ad.read_h5ad(tmp_path / "cells.h5ad").shape == adata.shape


def test_rows_streamed_to_a_disk_that_fills_stop_before_the_chunk_that_would_not_fit(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    from cellsynth.data.csr_writer import CSRWriter
    from cellsynth.data.store import h5ad_file

    chunk = _cells(500).X
    free = [10 * (chunk.data.nbytes + chunk.indices.nbytes) + (2 << 20)]
    real = shutil.disk_usage

    def usage(path):  # the disk fills as rows are written
        return Usage(real(path).total, 0, free[0])

    monkeypatch.setattr(shutil, "disk_usage", usage)
    written = 0
    with pytest.raises(DataError, match=r"needed for the next 500 rows"):
        with h5ad_file(tmp_path / "stream.h5ad") as f:
            writer = CSRWriter(f, "X", chunk.shape[1])
            for _ in range(100):
                writer.append(chunk)
                written += 1
                free[0] -= 4 * (chunk.data.nbytes + chunk.indices.nbytes)
    assert 0 < written < 100
    assert list(tmp_path.iterdir()) == []  # the part file removed, no output


def test_the_command_line_exits_at_once_after_a_failed_hdf5_write(tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:  # fmt: skip
    import os

    from cellsynth import cli
    from cellsynth.data import store

    exits = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(store, "_FAILED_WRITES", [])
    missing = str(tmp_path / "none.h5ad")
    assert cli.main(["info", missing]) == 2  # an ordinary error: an ordinary return
    assert exits == []

    def disk_filled(args) -> int:  # as store's writer fails on a disk that fills under HDF5
        store._FAILED_WRITES.append(tmp_path / "x.h5ad")
        raise DataError("cannot write x.h5ad (No space left on device); the disk is full")

    monkeypatch.setitem(cli.COMMANDS, "info", disk_filled)
    with pytest.raises(SystemExit):
        cli.main(["info", missing])
    assert exits == [2]
    assert "the disk is full" in capsys.readouterr().err  # the message first
    monkeypatch.setitem(cli.COMMANDS, "info", lambda args: (_ for _ in ()).throw(
        DataError("another error")))
    assert cli.main(["info", missing]) == 2  # an earlier command's failure is not this one's
    assert exits == [2]


def _disk_full_error():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device "
                           "(os error 28)")


def test_a_model_file_that_the_disk_cannot_hold_is_an_os_error_with_its_errno(tmp_path: Path) -> None:
    import errno

    from safetensors import SafetensorError

    from cellsynth.outputs import save_tensors

    def full(tensors, path):  # safetensors' own error type, not an OSError
        raise _disk_full_error()

    with pytest.raises(OSError) as caught:  # the command line's one line for a full disk
        save_tensors(full, {}, tmp_path / "weights.safetensors")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "weights.safetensors")

    def denied(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: Permission denied "
                              "(os error 13)")

    with pytest.raises(PermissionError) as caught:
        save_tensors(denied, {}, tmp_path / "weights.safetensors")
    assert caught.value.errno == errno.EACCES


def test_a_training_checkpoint_the_disk_cannot_hold_stops_checkpoints_not_training(
        tmp_path: Path, monkeypatch, caplog) -> None:  # fmt: skip
    import torch

    from cellsynth.models import _checkpoint

    def full(*args, **kwargs):
        raise _disk_full_error()

    monkeypatch.setattr(_checkpoint, "save_file", full)
    ckpt = _checkpoint.Checkpoint(tmp_path, key="k")
    with caplog.at_level("WARNING"):
        ckpt.write({"w": torch.zeros(2)}, {"epoch": 1})
    assert "cannot write the training checkpoint" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no part file left
    assert not ckpt.due(2)  # no more tries


def test_generate_writes_what_fits_though_its_upper_bound_does_not(
        tmp_path: Path, kang_path: Path, monkeypatch, capsys) -> None:  # fmt: skip
    """The size bound of generated cells (a non-zero gene per count) is often ten times the
    file: a request that fits is generated, one that does not is refused before any is
    written, from what its first cells took."""
    from cellsynth import cli
    from cellsynth.config import CVAEConfig
    from cellsynth.models.cvae import CVAE
    from cellsynth.models.sampling import estimate_bytes

    model = CVAE(config=CVAEConfig(max_epochs=1, min_steps=0, n_hidden=[32], n_latent=4))
    model.fit(ad.read_h5ad(kang_path), "cell_type", seed=0)
    model.save(tmp_path / "m")
    plan, _ = model.plan({t: 2000 for t in model.labels})
    bound = estimate_bytes(model, plan)
    out = tmp_path / "g.h5ad"
    real = shutil.disk_usage

    def room(free: int):
        return lambda path: Usage(real(path).total, 0, free) if Path(path) == tmp_path else \
            real(path)

    monkeypatch.setattr(shutil, "disk_usage", room(int(bound / 2)))
    assert cli.main(["generate", str(tmp_path / "m"), "--n-per-type", "2000", "--out", str(out),
                     "--quiet"]) == 0  # fmt: skip
    size = out.stat().st_size
    assert size < bound / 2  # the bound would have refused it
    out.unlink()
    monkeypatch.setattr(shutil, "disk_usage", room(size // 3))
    assert cli.main(["generate", str(tmp_path / "m"), "--n-per-type", "2000", "--out",
                     str(out), "--quiet"]) == 2  # fmt: skip
    assert "from the 1,024 cells drawn first" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("g.h5ad*"))


def test_a_classifier_the_disk_cannot_hold_is_a_one_line_error_and_leaves_no_part(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    """XGBoost's own save_model raised an XGBoostError on a full disk (a traceback) and left a
    truncated model.ubj; the classifier is now written by the atomic writer."""
    import errno

    import xgboost as xgb

    from cellsynth.classify.xgb import Classifier
    from cellsynth.errors import CellsynthError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3},
                        xgb.DMatrix(x, y), num_boost_round=3)  # fmt: skip
    clf = Classifier(booster, ["a", "b", "c"], best_iteration=2)
    clf.save(tmp_path / "ok")
    again = Classifier.load(tmp_path / "ok")
    np.testing.assert_allclose(again.predict_proba(x), clf.predict_proba(x))

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(CellsynthError, match="disk full while writing"):
        clf.save(tmp_path / "full")
    assert list((tmp_path / "full").iterdir()) == []  # no truncated model.ubj
