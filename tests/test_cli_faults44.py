"""The command line under misuse (session 44's sweep): held-out cells the generator was fitted
on are refused by the privacy audit's inputs, a model fitted on a GPU loads on a machine without
one, and a list of numbers is shown unquoted in a --set hint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

from cellsynth.errors import DataError

CLI = [sys.executable, "-m", "cellsynth.cli"]
TINY = ["--set", "cvae.max_epochs=1", "--set", "cvae.min_steps=0", "--set", "cvae.n_hidden=[32]",
        "--quiet"]  # fmt: skip


def _fit_and_generate(data: Path, out: Path) -> Path:
    subprocess.run([*CLI, "fit", str(data), "--label-key", "cell_type", "--out", str(out / "m"),
                    *TINY], check=True, capture_output=True)  # fmt: skip
    synthetic = out / "g.h5ad"
    subprocess.run([*CLI, "generate", str(out / "m"), "--n-per-type", "25", "--out",
                    str(synthetic), "--quiet"], check=True, capture_output=True)  # fmt: skip
    return synthetic


def test_held_out_cells_the_generator_was_fitted_on_are_refused(tmp_path: Path, kang_path: Path
                                                                ) -> None:  # fmt: skip
    from cellsynth.evaluation.overlap import check_heldout_unseen

    a = ad.read_h5ad(kang_path)
    a.obs["cellsynth_split"] = "train"
    a.obs.iloc[:200, a.obs.columns.get_loc("cellsynth_split")] = "test"  # held back by the fit
    data = tmp_path / "kang_split.h5ad"
    a.write_h5ad(data)
    synthetic = _fit_and_generate(data, tmp_path)
    unseen, seen = tmp_path / "unseen.h5ad", tmp_path / "seen.h5ad"
    a[:200].copy().write_h5ad(unseen)
    a[150:260].copy().write_h5ad(seen)  # 60 of them trained on
    check_heldout_unseen(str(synthetic), str(unseen))  # the fit's test cells: fine
    with pytest.raises(DataError, match=r"60 of the 110 held-out cells .* fitted on"):
        check_heldout_unseen(str(synthetic), str(seen))
    with pytest.raises(DataError, match="fitted on"):  # the cells in memory, provenance in uns
        check_heldout_unseen(ad.read_h5ad(synthetic), ad.read_h5ad(seen))


def test_a_model_fitted_with_device_cuda_loads_on_the_cpu(tmp_path: Path, kang_path: Path,
                                                        caplog) -> None:  # fmt: skip
    import hashlib
    import json

    import torch

    from cellsynth.models.cvae import CVAE

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the saved device loads as it is")
    subprocess.run([*CLI, "fit", str(kang_path), "--label-key", "cell_type", "--out",
                    str(tmp_path / "m"), *TINY], check=True, capture_output=True)  # fmt: skip
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["device"] = "cuda"  # as a fit on a GPU saves it
    config.write_text(json.dumps(meta, indent=1))
    sums = tmp_path / "m" / "checksums.json"
    table = json.loads(sums.read_text())
    table["config.json"] = hashlib.sha256(config.read_bytes()).hexdigest()
    sums.write_text(json.dumps(table))
    model = CVAE.load(tmp_path / "m")
    assert next(model.module.parameters()).device.type == "cpu"
    assert "does not have" in caplog.text
    with pytest.raises(Exception, match="CUDA is not available"):  # asked for: an error
        CVAE.load(tmp_path / "m", device="cuda")
    done = subprocess.run([*CLI, "generate", str(tmp_path / "m"), "--n-per-type", "5", "--out",
                           str(tmp_path / "g.h5ad"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_list_of_numbers_is_shown_unquoted_in_the_hint(tmp_path: Path, kang_path: Path) -> None:
    done = subprocess.run([*CLI, "fit", str(kang_path), "--label-key", "cell_type", "--out",
                           str(tmp_path / "m"), "--set", "cvae.n_hidden=512,256"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0
    assert "--set 'cvae.n_hidden=[512, 256]'" in done.stderr


def test_nothing_is_written_into_a_saved_models_folder(tmp_path: Path, kang_path: Path) -> None:
    import json

    synthetic = _fit_and_generate(kang_path, tmp_path)
    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(tmp_path / "m"), str(other)], check=True)
    done = subprocess.run([*CLI, "generate", str(tmp_path / "m"), "--n-per-type", "3", "--out",
                           str(other)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "other_synthetic.h5ad" in done.stderr  # not other/...
    done = subprocess.run([*CLI, "evaluate", "--real", str(kang_path), "--synthetic",
                           str(synthetic), "--label-key", "cell_type", "--out", str(other)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "holds a saved model" in done.stderr
    assert not (other / "fidelity.json").exists()
    genes = other / "genes.json"  # edited, its checksums gone: still refused
    names = json.loads(genes.read_text())
    genes.write_text(json.dumps([names[0], *names[:-1]]))
    (other / "checksums.json").unlink()
    done = subprocess.run([*CLI, "generate", str(other), "--n-per-type", "3", "--out",
                           str(tmp_path / "x.h5ad")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "more than once" in done.stderr


def test_any_level_in_where_says_to_leave_the_covariate_out() -> None:
    import numpy as np
    import pandas as pd

    from cellsynth.models._design import Design

    obs = pd.DataFrame({"cell_type": ["B", "T"] * 10, "condition": ["ctrl"] * 10 + ["stim"] * 10})
    rows = np.arange(len(obs))
    design, _ = Design.fit(obs, ["condition"], "cell_type", obs["cell_type"].to_numpy(), rows,
                           rows)  # fmt: skip
    with pytest.raises(DataError, match="leave 'condition' out"):
        design.plan({"B": 3}, {"condition": "*"}, ["B", "T"], "cell_type")


def test_a_request_file_may_hold_comment_lines(tmp_path: Path) -> None:
    from cellsynth.pipeline.generate import read_request

    path = tmp_path / "request.tsv"
    path.write_text("# asked by the lab\ncell_type\tn\n# B first\nB cells\t5\n\nT cells\t2\n")
    table = read_request(path, "cell_type")
    assert table["cell_type"].tolist() == ["B cells", "T cells"]
    assert table["n"].tolist() == [5, 2]
    path.write_text("cell_type\tn\nB cells\tfive\n")
    with pytest.raises(DataError, match="line 2"):  # lines still numbered as in the file
        read_request(path, "cell_type")


def test_a_config_without_data_warns_that_the_demo_runs(tmp_path: Path, monkeypatch, capsys
                                                        ) -> None:  # fmt: skip
    import cellsynth.pipeline as pipeline
    from cellsynth.cli import main

    config = tmp_path / "mine.toml"
    config.write_text("[cvae]\nmax_epochs = 2\n")
    ran = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, out, **kw: ran.append(cfg) or out / "r.md")
    main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert ran and not ran[0].dataset.path
    assert "gives no dataset.path" in capsys.readouterr().err
