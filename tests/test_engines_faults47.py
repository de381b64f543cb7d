"""Faults of the engines beyond one process: the Dask classifier's scheduler and cluster, the
data-parallel CVAE under torchrun, devices and precision, cells read from disk."""

from __future__ import annotations

import pytest

from cellsynth.errors import ConfigError


def _dask_module():
    pytest.importorskip("distributed", reason="dask.distributed is not installed (cellsynth[dask])")
    from cellsynth.classify import dask as module

    return module


@pytest.mark.parametrize("bad", ["tcp://[::1", "tcp://[::1:8786", "tcp://127.0.0.1:1/path",
                                 "tcp://user@127.0.0.1:1", " tcp://127.0.0.1:8786",
                                 "127.0.0.1:8786 "])
def test_a_scheduler_address_that_is_no_address_is_refused_in_one_line(bad):
    """An unclosed IPv6 bracket raised urlsplit's ValueError (a traceback); a path, a user or
    spaces passed the check and failed at the connection, said as a 10 s timeout or as
    distributed's own parse error."""
    module = _dask_module()
    with pytest.raises(ConfigError, match="is not a scheduler address"):
        module.check_scheduler(bad)
    for good in ("tcp://[::1]:8786", "tcp://10.0.0.5:8786", "127.0.0.1:8786"):
        module.check_scheduler(good)


def test_a_tls_scheduler_without_certificates_is_refused_before_connecting(monkeypatch):
    """tls:// (and wss://) without the client's certificates in Dask's configuration raised
    distributed's TypeError from inside the client, and the half-open client printed a
    second traceback when it was collected."""
    module = _dask_module()
    from distributed.security import Security

    for address in ("tls://node-1.cluster:8786", "wss://node-1.cluster:8786"):
        with pytest.raises(ConfigError, match=r"distributed\.comm\.tls\.client\.cert"):
            module.check_scheduler(address)
    with pytest.raises(ConfigError, match="no TLS certificates"):
        with module._connect(None, "tls://127.0.0.1:1", 1):
            pass
    monkeypatch.setattr(Security, "get_connection_args",
                        lambda self, role: {"ssl_context": object()})
    module.check_scheduler("tls://node-1.cluster:8786")  # configured: left to the connection


def test_a_ucx_scheduler_without_ucx_is_refused_before_connecting():
    module = _dask_module()
    from distributed.comm.registry import get_backend

    try:
        get_backend("ucx").get_connector()
    except Exception:  # UCX missing, as on most machines
        pass
    else:
        pytest.skip("UCX is installed here")
    with pytest.raises(ConfigError, match="install distributed-ucxx"):
        module.check_scheduler("ucx://127.0.0.1:8786")


def test_dask_not_installed_is_said_before_any_stage(tmp_path, monkeypatch, capsys):
    """Without dask, classifier.backend = "dask" ran the data and features stages (an atlas's
    hour) and failed at the classifier."""
    import sys

    from cellsynth.cli import main

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    out = tmp_path / "r"
    assert main(["run", "--set", "classifier.backend='dask'", "--out", str(out), "--quiet"]) == 2
    assert "pip install 'cellsynth[dask]'" in capsys.readouterr().err
    assert not (out / "data").exists()


def test_a_local_dask_cluster_on_cuda_without_a_gpu_is_refused_before_any_stage(
        tmp_path, monkeypatch, capsys):
    """classifier.device = "cuda" is refused without a GPU for the local backend, but a local
    Dask cluster (its workers on this machine) trained on the CPU, XGBoost's workers warning
    in their own words, the run's record saying CUDA."""
    module = _dask_module()
    from cellsynth.classify import xgb
    from cellsynth.cli import main
    from cellsynth.config import ClassifierConfig

    monkeypatch.setattr(xgb, "_has_gpu", lambda: False)
    out = tmp_path / "r"
    assert main(["run", "--set", "classifier.backend='dask'", "--set",
                 "classifier.device='cuda'", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device here" in err and "starts its workers on this machine" in err
    assert not (out / "data").exists()
    cfg = ClassifierConfig(device="cuda")
    with pytest.raises(ConfigError, match="sees no CUDA device here"):
        module.train_classifier_dask([[0.0]], ["a"], [[0.0]], ["a"], cfg, seed=0)
    module.check_settings(ClassifierConfig(device="cuda", dask_scheduler="tcp://10.0.0.5:8786"))


def _launcher(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "cellsynth.models._torchrun", "--standalone",
            "--nproc_per_node=1", *args]


def _gone(pid: int, seconds: float = 20.0) -> bool:
    import os
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _worker_script(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    return script


def test_a_failed_rank_is_said_in_one_line_not_torchruns_traceback(tmp_path):
    """A rank that failed (bad data, a disk full at the save, the out-of-memory killer) ended
    `cellsynth run` with torchrun's ChildFailedError traceback and its box of failures."""
    import subprocess

    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('error (rank 0): no such file', file=sys.stderr)\n"
                      "sys.exit(2)\n")
    run = subprocess.run(_launcher(str(script)), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "ChildFailedError" not in run.stderr
    assert "error (rank 0): " in run.stderr
    assert "torchrun: rank 0 of the distributed CVAE training exited with status 2" in run.stderr
    from cellsynth.models._torchrun import _failure

    assert "out-of-memory killer" in _failure(1, -9)


def test_a_stopped_launcher_stops_its_ranks_without_a_traceback(tmp_path):
    """Ctrl-C (or a scheduler's SIGTERM) during `cellsynth run`'s distributed fit printed
    torchrun's SignalException traceback under the one-line 'interrupted'."""
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen(_launcher(str(_worker_script(tmp_path)), str(pid_file)),
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if pid_file.is_file() and pid_file.read_text():
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
    assert _gone(int(pid_file.read_text()))


def test_the_ranks_end_when_cellsynth_run_is_killed(tmp_path):
    """`cellsynth run` killed with SIGKILL (the out-of-memory killer) left torchrun and its
    ranks, each in a session of its own, training on: they wrote into the run directory and
    removed the checkpoint that the rerun, beside its own ranks, resumed from."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cellsynth.models._torchrun import PARENT_ENV

    pid_file = tmp_path / "worker.pid"
    parent = ("import os, subprocess, sys, time\n"
              f"env = {{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}\n"
              "subprocess.Popen(sys.argv[1:], env=env)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent,
                             *_launcher(str(_worker_script(tmp_path)), str(pid_file))])
    try:
        for _ in range(600):
            if pid_file.is_file() and pid_file.read_text():
                break
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    worker = int(pid_file.read_text())
    if not _gone(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the rank outlived the killed run")


def test_more_training_processes_than_the_machine_holds_are_refused_before_any_stage(
        tmp_path, monkeypatch, capsys, caplog):
    """cvae.nproc_per_node = 64 on a 2-core machine started 64 processes, each holding torch
    (the memory filled); on a GPU node a rank past the last device failed in
    torch.cuda.set_device with a traceback. More ranks than cores trained without a word."""
    import torch

    from cellsynth.cli import main
    from cellsynth.config import CVAEConfig
    from cellsynth.models import _ddp

    monkeypatch.setattr(_ddp, "cpu_cores", lambda: 2)
    out = tmp_path / "r"
    assert main(["run", "--set", "cvae.distributed=true", "--set", "cvae.nproc_per_node=9",
                 "--set", "cvae.device='cpu'", "--out", str(out), "--quiet"]) == 2
    assert "cvae.nproc_per_node = 9 training processes on 2 cores" in capsys.readouterr().err
    assert not (out / "data").exists()
    with caplog.at_level("WARNING", logger="cellsynth"):
        _ddp.check_processes(CVAEConfig(nproc_per_node=3, device="cpu"))
    assert "they share the cores" in caplog.text
    _ddp.check_processes(CVAEConfig(nproc_per_node=2, device="cpu"))
    monkeypatch.setattr(_ddp.tr, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"2 ranks on 1 CUDA device\(s\)"):
        _ddp.check_processes(CVAEConfig(nproc_per_node=2))


def test_cvae_distributed_on_a_one_process_fit_is_said(tmp_path, capsys, one_torch_thread):
    """`cellsynth fit --set cvae.distributed=true` (and CVAE.fit with such a config) trained in
    one process without a word: the setting is read by `cellsynth run` only."""
    from cellsynth.cli import main
    from cellsynth.data.simulate import simulate_atlas

    data = tmp_path / "atlas.h5ad"
    simulate_atlas(n_cells=200, n_genes=60, n_types=2, label_key="cell_type").write_h5ad(data)
    assert main(["fit", str(data), "--label-key", "cell_type", "--out", str(tmp_path / "m"),
                 "--set", "cvae.distributed=true", "--set", "cvae.max_epochs=1", "--set",
                 "cvae.n_hidden=[16]", "--set", "cvae.n_latent=2", "--set",
                 "cvae.select='elbo'"]) == 0
    err = capsys.readouterr().err
    assert "cvae.distributed = true: this fit trains in one process" in err
    assert "-m cellsynth.models.distributed" in err


def test_a_data_parallel_fit_records_its_precision(tmp_path, one_torch_thread, caplog):
    """history["precision"] says which precision trained a CVAE, but the data-parallel fit's
    history had no such key: a bfloat16 fit under torchrun was recorded as nothing."""
    import torch.distributed as dist

    from cellsynth.config import CVAEConfig
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models.distributed import fit_distributed

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    data = tmp_path / "atlas.h5ad"
    simulate_atlas(n_cells=200, n_genes=60, n_types=2, label_key="cell_type").write_h5ad(data)
    cfg = CVAEConfig(precision="bfloat16", device="cpu", max_epochs=1, n_hidden=[16],
                     n_latent=2, select="elbo")
    with caplog.at_level("ERROR"):  # bfloat16 emulated on this CPU: a warning, not the point
        model = fit_distributed(data, "cell_type", config=cfg, seed=0)
    assert model.history["precision"] == "bfloat16"


def test_covariates_with_a_data_parallel_fit_are_refused_before_any_stage(tmp_path, capsys):
    """cvae.covariates with cvae.distributed trained data-parallel on the type alone, saved a
    config naming covariates it had no design for, and its load then said 'the file was
    edited: save the model again': the training lost, the cause unsaid."""
    from cellsynth.cli import main
    from cellsynth.config import CVAEConfig
    from cellsynth.models.distributed import fit_distributed

    out = tmp_path / "r"
    assert main(["run", "--set", "cvae.distributed=true", "--set", "cvae.covariates=['batch']",
                 "--out", str(out), "--quiet"]) == 2
    assert "the data-parallel fit conditions on the cell type only" in capsys.readouterr().err
    assert not (out / "data").exists()
    with pytest.raises(ConfigError, match=r"cvae\.distributed = false to condition on"):
        fit_distributed(tmp_path / "any.h5ad", config=CVAEConfig(covariates=["batch"]))


def test_a_file_open_for_writing_elsewhere_is_said_so_not_called_corrupt(tmp_path, capsys):
    """An h5ad another process holds open for writing (a notebook's backed='r+' AnnData, a
    write still going on) was said to be 'truncated or corrupt: download or write it again';
    the data-parallel fit's ranks ended on h5py's BlockingIOError traceback."""
    import subprocess
    import sys

    from cellsynth.data.io import read
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.errors import DataError
    from cellsynth.models.distributed import main as ddp_main

    data = tmp_path / "atlas.h5ad"
    simulate_atlas(n_cells=60, n_genes=40, n_types=2, label_key="cell_type").write_h5ad(data)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               "f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True)\n"
                               "time.sleep(60)", str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for backed in (False, True):
            with pytest.raises(DataError, match="is open for writing in another process"):
                read(data, backed=backed)
        assert ddp_main(["--data", str(data), "--out", str(tmp_path / "m"), "--quiet"]) == 2
        assert "is open for writing in another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    from cellsynth.data.io import unreadable

    other = OSError("Unable to synchronously open file (unable to lock file, errno = 38, "
                    "error message = 'Function not implemented')")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in str(unreadable(data, other))


@pytest.mark.parametrize("lost", ["worker", "future", "scheduler"])
def test_a_dask_worker_or_scheduler_lost_during_training_is_one_line(monkeypatch, lost):
    """A worker killed mid-training (the out-of-memory killer, a preempted node) ended the run
    on distributed's FutureCancelledError traceback (exit 1); a scheduler stopped, on an
    OSError's."""
    module = _dask_module()
    import types

    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    from cellsynth.config import ClassifierConfig
    from cellsynth.errors import CellsynthError

    worker = types.SimpleNamespace(address="tcp://10.0.0.5:40000", name="w0")
    error = {"worker": KilledWorker("fit", worker, 3),
             "future": FutureCancelledError("finalize-1", "already forgotten"),
             "scheduler": OSError("Timed out trying to connect to tcp://10.0.0.5:8786")}[lost]

    def lose(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, "_distribute", lose)
    x = [[0.0], [1.0], [0.0], [1.0]]
    with pytest.raises(CellsynthError, match="a worker or the scheduler was lost"):
        module.train_classifier_dask(x, ["a", "b", "a", "b"], x, ["a", "b", "a", "b"],
                                     ClassifierConfig(device="cpu"), seed=0, client=object())


def test_a_benchmark_refuses_a_device_that_is_not_there_before_any_fit(tmp_path, monkeypatch,
                                                                       capsys, caplog):
    """`cellsynth benchmark --set classifier.device='cuda'` on a machine without a GPU fitted
    the first generator (hours on an atlas) and only then refused, at its first utility
    score; the fit was lost. classifier.backend = 'dask' was ignored there without a word."""
    from cellsynth.classify import xgb
    from cellsynth.cli import main
    from cellsynth.data.simulate import simulate_atlas

    monkeypatch.setattr(xgb, "_has_gpu", lambda: False)
    data = tmp_path / "atlas.h5ad"
    simulate_atlas(n_cells=200, n_genes=60, n_types=2, label_key="cell_type").write_h5ad(data)
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--label-key", "cell_type", "--models",
                 "nb", "--out", str(out), "--set", "classifier.device='cuda'", "--set",
                 "qc.min_genes_per_cell=5", "--set", "qc.min_cells_per_gene=1", "--quiet"]) == 2
    assert "sees no CUDA device here" in capsys.readouterr().err
    assert not out.exists()
    from cellsynth import config
    from cellsynth.evaluation.runner import _check_engines

    cfg = config.load(None, ["classifier.backend='dask'", "classifier.device='cpu'"])
    with caplog.at_level("WARNING", logger="cellsynth"):
        _check_engines([("atlas", cfg)], ["nb"])
    assert "the benchmark trains its classifiers on this machine" in caplog.text


def test_the_data_parallel_fit_checks_its_model_directory_before_training(tmp_path,
                                                                          monkeypatch):
    """torchrun -m cellsynth.models.distributed --out DIR, DIR a non-empty folder that is not a
    model (or under a file), trained to the end and then refused DIR at rank 0's save: the
    training lost, as `cellsynth fit` refuses it before any work."""
    from cellsynth.errors import CellsynthError
    from cellsynth.models import distributed

    def trained(*args, **kwargs):
        raise AssertionError("trained before the model directory was checked")

    monkeypatch.setattr(distributed, "_fit", trained)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "mine", tmp_path / "file" / "model"):
        with pytest.raises(CellsynthError, match=r"nothing can be written|non-empty directory"):
            distributed.fit_distributed(tmp_path / "any.h5ad", out=out)


def test_a_rank_that_outlives_a_lost_peer_says_so_in_one_line(tmp_path, monkeypatch):
    """A rank killed mid-training (the out-of-memory killer) left the others failing in their
    next collective with gloo's 'Connection reset by peer' RuntimeError: a traceback per rank
    above torchrun's line."""
    import torch.distributed as dist

    from cellsynth.errors import CellsynthError
    from cellsynth.models import distributed

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")

    def peer_lost(*args, **kwargs):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:52147: "
                           "Connection reset by peer")

    def a_bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(distributed, "_fit", peer_lost)
    with pytest.raises(CellsynthError, match="rank 0 lost the other ranks during training"):
        distributed.fit_distributed(tmp_path / "any.h5ad")
    monkeypatch.setattr(distributed, "_fit", a_bug)  # not a lost peer: left as it is
    with pytest.raises(RuntimeError, match="shape mismatch"):
        distributed.fit_distributed(tmp_path / "any.h5ad")
    assert not dist.is_initialized()
