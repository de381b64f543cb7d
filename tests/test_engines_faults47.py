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
