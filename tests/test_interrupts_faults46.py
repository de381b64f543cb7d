"""Interrupted and repeated work (session 46's sweep): what a killed command leaves behind,
and two commands at once on one output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

CLI = [sys.executable, "-m", "cellsynth.cli"]


def _dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A SIGKILL while an h5ad, a text file or a model folder was written left its temporary
    file (hundreds of MB for `cellsynth generate`) for ever: each rerun wrote a new one beside
    it. The next writer of the same output removes those of ended processes, and keeps a live
    writer's and a user's own files."""
    from cellsynth.data.store import write_h5ad
    from cellsynth.outputs import _host, temp_beside, write_text

    dead = _dead_pid()
    host = _host()
    out = tmp_path / "cells.h5ad"
    left = tmp_path / f"cells.h5ad.{dead}@{host}.ab12cd34.part"
    left.write_bytes(b"\0" * 1000)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"cells.h5ad.{live_proc.pid}@{host}.zz12cd34.part"
        live.write_bytes(b"\0")
        other_host = tmp_path / f"cells.h5ad.{dead}@elsewhere.ab12cd34.part"
        other_host.write_bytes(b"\0")
        users = tmp_path / "cells.h5ad.backup.part"
        users.write_bytes(b"\0")
        a = ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.float32)))
        write_h5ad(a, out)
        assert out.is_file() and not left.exists()
        assert live.exists() and other_host.exists() and users.exists()
    finally:
        live_proc.kill()
        live_proc.wait()

    text = tmp_path / "run.log.json"
    (tmp_path / f"run.log.json.{dead}@{host}.qq12cd34.tmp").write_text("half")
    write_text(text, "{}")
    assert not list(tmp_path.glob("run.log.json.*.tmp"))

    model = tmp_path / "model"
    partial = tmp_path / f".model.{dead}@{host}.xy12cd34.partial"
    (partial / "sub").mkdir(parents=True)
    (partial / "weights.safetensors").write_bytes(b"\0" * 100)
    mine = temp_beside(model, ".partial", folder=True)
    assert mine.is_dir() and not partial.exists()

