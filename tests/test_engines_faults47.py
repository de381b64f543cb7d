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
