"""Faults of the paths for scale and for more than one process: counts with a few corrected
values, the distributed fit's workers on a stop, the Dask scheduler's address."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data.io import find_counts


def test_counts_with_a_few_fractional_values_are_not_called_unlogged_normalised_values():
    import anndata as ad

    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (300, 200)).astype(np.float32)
    x[:, 0] = rng.integers(100, 2000, 300)  # a highly expressed gene: counts above 50
    frac = np.flatnonzero(x.ravel())[:20]
    x.flat[frac] += 0.5  # a few corrected values
    note = find_counts(ad.AnnData(sp.csr_matrix(x))).note
    assert "looks like raw counts" in note and "np.rint" in note
    assert "not log-transformed" not in note
    cpm = x / x.sum(axis=1, keepdims=True) * 1e6  # normalised, never logged: still said so
    assert "not log-transformed" in find_counts(ad.AnnData(sp.csr_matrix(cpm))).note


def test_a_stopped_run_stops_the_training_processes_it_started(tmp_path):
    """Stopping the run (here an alarm raising KeyboardInterrupt, as the CLI's SIGTERM handler
    does) stops torchrun's whole process group, workers included: they trained on before."""
    import os
    import signal
    import sys
    import time

    from cellsynth.pipeline.models import run_process_group

    pid_file = tmp_path / "worker.pid"
    spawn = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(w.pid)); "
             "time.sleep(120)")

    def stop(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(3)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_process_group([sys.executable, "-c", spawn, str(pid_file)], grace=5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    worker = int(pid_file.read_text())
    for _ in range(50):  # the worker, reparented once its parent died, is reaped by init
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived the stopped run")
    assert run_process_group([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_a_dask_scheduler_that_cannot_be_reached_is_one_line_and_quick(monkeypatch):
    import time

    from cellsynth.classify import dask as module
    from cellsynth.errors import ConfigError

    for bad in ("not an address", "foo://host:1", "tcp://host", "tcp://host:port"):
        with pytest.raises(ConfigError, match="is not a scheduler address"):
            module.check_scheduler(bad)
    for good in ("tcp://10.0.0.5:8786", "127.0.0.1:8786", "ws://node-1.cluster:8786"):
        module.check_scheduler(good)
    monkeypatch.setattr(module, "CONNECT_SECONDS", 2)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1"):
        with module._connect(None, "tcp://127.0.0.1:1", 1):
            pass
    assert time.perf_counter() - start < 20
    with pytest.raises(ConfigError, match="dask_workers = 1000"):
        with module._connect(None, "", 1000):
            pass


def test_a_stopped_cvae_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    """`cellsynth fit` keeps the CVAE's checkpoint beside --out: the same command resumes it
    (an out-of-core fit of an atlas is hours a scheduler may stop)."""
    import logging

    from cellsynth import config
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models import _checkpoint
    from cellsynth.pipeline.fit import checkpoint_dir, fit_model

    data = tmp_path / "atlas.h5ad"
    simulate_atlas(n_cells=300, n_genes=120, n_types=3, label_key="cell_type").write_h5ad(data)
    cfg = config.load(None, ["cvae.max_epochs=3", "cvae.select='elbo'", "cvae.n_hidden=[32]",
                             "cvae.n_latent=4", "cvae.checkpoint_seconds=0.0"])
    out = tmp_path / "model"
    write = _checkpoint.Checkpoint.write

    def write_then_die(self, tensors, meta):
        write(self, tensors, meta)
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(_checkpoint.Checkpoint, "write", write_then_die)
        fit_model(cfg, data, "cell_type", out, seed=0)
    assert any(checkpoint_dir(out).iterdir()) and not out.exists()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        _, history = fit_model(cfg, data, "cell_type", out, seed=0)
    assert "resuming CVAE training from epoch 1" in caplog.text
    assert history["resumed_from"] == 1 and (out / "weights.safetensors").is_file()
    assert not checkpoint_dir(out).exists()  # removed once training ended


def test_cellsynths_kernels_leave_torchs_thread_count_as_the_user_set_it():
    """numba's OpenMP pool, started by the first parallel kernel, set the process's OpenMP
    thread count, torch's: a user's torch.set_num_threads(1) became every core after the first
    draw, and a fit after it summed in another order than the same fit before (the one-rank
    data-parallel fit differed from the plain one). A fresh process: the pool starts once."""
    import subprocess
    import sys

    code = (
        "import torch, numpy as np\n"
        "torch.set_num_threads(1)\n"
        "from cellsynth.models._nb_kernel import nb_csr_arrays\n"
        "from cellsynth.models.modules._sparse_input import nonzero\n"
        "nonzero(torch.ones(8, 16))\n"
        "nb_csr_arrays(np.ones((8, 16), np.float32), np.ones((1, 16), np.float32), None, 1, 1)\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**__import__("os").environ, "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "1", out.stderr[-2000:]


def test_a_rank_whose_peers_never_come_says_so_in_time(monkeypatch):
    """A rank started without its peers waited torch's 30 minutes in silence."""
    import socket
    import time

    import torch
    import torch.distributed as dist

    from cellsynth.errors import CellsynthError
    from cellsynth.models import _ddp as distributed

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not in this build")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed, "JOIN_SECONDS", 2)
    start = time.perf_counter()
    with pytest.raises(CellsynthError, match="could not join the other ranks of 2"):
        distributed.init_process_group(torch.device("cpu"))
    assert time.perf_counter() - start < 30 and not dist.is_initialized()
