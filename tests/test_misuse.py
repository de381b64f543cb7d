"""Misuse that must never give a silent wrong result (issue 20): each class of bad input ends in
a one-line error (exit 2 from the CLI, no traceback) or a correct recovery."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth import evaluation
from cellsynth.cli import _parse_types, main
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import CellsynthError
from cellsynth.metrics.verdict_text import verdict_lines

LABEL = "cell_type"


# -- 12: an evaluation that cannot be fooled by copies ----------------------------------------

@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas") / "real.h5ad"
    simulate_atlas(600, 150, 3, seed=0, label_key=LABEL).write_h5ad(path)
    return path


def test_the_real_file_as_synthetic_is_flagged_as_memorisation(atlas_file, tmp_path, caplog):
    copy = tmp_path / "copy.h5ad"
    shutil.copyfile(atlas_file, copy)  # another name, the same bytes
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        md = evaluation.evaluate(atlas_file, copy, LABEL, tmp_path / "out", max_cells=200)
    result = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    memo = result["memorisation"]
    assert memo["flagged"] is True
    assert memo["exact_copy_fraction"] > 0.1  # the subsamples share real cells
    assert any("real file itself" in r for r in memo["reasons"])
    assert "Memorisation" in md.read_text()
    assert "memorisation" in caplog.text and "WARNING" in caplog.text


def test_copied_cells_in_memory_are_flagged_without_a_file(atlas_file):
    real = ad.read_h5ad(atlas_file)
    syn = real[np.arange(0, real.n_obs, 2)].copy()  # half the real cells, copied
    syn.obs_names = [f"syn{i}" for i in range(syn.n_obs)]
    memo = evaluation.compare(real, syn, label_key=LABEL, max_cells=200)["memorisation"]
    assert memo["flagged"] and memo["exact_copies"] > 0
    assert memo["near_copy_fraction"] > 0.1


def test_cells_from_another_draw_are_not_flagged(atlas_file):
    real = ad.read_h5ad(atlas_file)
    other = simulate_atlas(600, 150, 3, seed=0, label_key=LABEL, )
    # the same model, other cells: new draws of the counts
    rng = np.random.default_rng(5)
    other.X = rng.poisson(np.asarray(other.X.todense() if hasattr(other.X, "todense")
                                     else other.X) + 0.0).astype(np.float32)
    result = evaluation.compare(real, other, label_key=LABEL, max_cells=200)
    assert result["memorisation"]["exact_copy_fraction"] < 0.01
    assert result["memorisation"]["near_copy_fraction"] < 0.01


def test_a_handful_of_new_cells_is_not_called_copies(atlas_file):
    """Three fresh draws: their two-sample AUC is any number (0.17 in a sweep), chance at
    that size; that alone is no sign of copies, so the verdict is not 'copies of real cells'."""
    from cellsynth.metrics.memorisation import memorisation
    from cellsynth.metrics.space import fit_space
    from cellsynth.metrics.verdict import COPIES

    real = ad.read_h5ad(atlas_file)
    other = simulate_atlas(600, 150, 3, seed=1, label_key=LABEL)
    few = other[other.obs[LABEL] == real.obs[LABEL].iloc[0]][:3].copy()
    result = evaluation.compare(real, few, label_key=LABEL, max_cells=200)
    assert not result["memorisation"]["flagged"], result["memorisation"]["reasons"]
    assert result["verdict"]["overall"]["verdict"] != COPIES
    space = fit_space(sp.csr_matrix(real.X), real.obs[LABEL].astype(str).to_numpy(),
                      list(real.var_names), seed=0)
    x = sp.csr_matrix(other.X[:50])
    for cells, flagged in ((3, False), (2_000, True)):  # the same low AUC, read at its size
        memo = memorisation(space, sp.csr_matrix(real.X), x, c2st=0.17, seed=0, c2st_cells=cells)
        assert memo["flagged"] is flagged


# -- 11: duplicate requests -------------------------------------------------------------------

def test_a_type_requested_twice_is_an_error():
    assert _parse_types("B=5, NK=7") == {"B": 5, "NK": 7}
    with pytest.raises(CellsynthError, match="'B' twice"):
        _parse_types("B=5,B=7")
    with pytest.raises(CellsynthError, match="'B cell' twice"):
        _parse_types("B cell=5, B cell =7")


def test_types_with_commas_in_their_names():
    """A name holding ',' is read up to the count after it; a name without any count says how
    to give such names."""
    assert _parse_types("B, naive=10,NK=2") == {"B, naive": 10, "NK": 2}
    assert _parse_types("CD4+, CD8+ T=3") == {"CD4+, CD8+ T": 3}
    with pytest.raises(CellsynthError, match=r"got 'NK' without a count; a type holding ',' or "
                                             r"'=' is read with the count after it"):
        _parse_types("B=1,NK")


# -- 10: downloads that are not HDF5 ----------------------------------------------------------

@pytest.mark.parametrize(("body", "said"), [
    (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head></html>",
     "an HTML page: '503 Service Unavailable'"),
    (b"\x1f\x8b\x08\x00" + bytes(100), "a gzip file"),
    (b"", "an empty file"),
])
def test_a_download_that_is_not_hdf5_is_refused(body, said, tmp_path):
    from _http_server import start
    from cellsynth.data.download import download
    from cellsynth.errors import DownloadError

    srv, _state, base = start(body)
    try:
        with pytest.raises(DownloadError, match="not an HDF5") as err:
            download("E-TEST-1", tmp_path, base_url=base, timeout=5.0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert said in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no .part to resume


# -- 9: broken models -------------------------------------------------------------------------

def _saved(tmp_path, **kw):
    import torch

    from cellsynth.models import _model_dir as md

    module = torch.nn.Linear(4, 3)
    meta = {"model": "Toy", "format_version": 1}
    return md.save_model_dir(tmp_path / "model", meta, module, ["a", "b"], {"epochs": 1}, **kw)


def test_a_model_file_changed_after_saving_is_refused_naming_it(tmp_path):
    from cellsynth.errors import ModelFileError
    from cellsynth.models import _model_dir as md

    d = _saved(tmp_path, extra_files={"genes.json": json.dumps(["g1", "g2", "g3", "g4"])})
    sums = json.loads((d / "checksums.json").read_text())
    assert set(sums) == {"config.json", "weights.safetensors", "labels.json", "history.json",
                         "genes.json"}
    md.load_model_dir(d, "Toy", 1)  # untouched: loads
    for name, edit in [("genes.json", '["g1", "g2", "g3", "X"]'),
                       ("config.json", '{"model": "Toy", "format_version": 1, "x": 1}'),
                       ("labels.json", '["b", "a"]')]:
        before = (d / name).read_text()
        (d / name).write_text(edit)
        with pytest.raises(ModelFileError, match=f"{re.escape(name)} changed after the model was saved"):
            md.load_model_dir(d, "Toy", 1)
        (d / name).write_text(before)
    (d / "genes.json").unlink()
    with pytest.raises(ModelFileError, match=r"genes\.json is missing \(it is listed in checksums\.json\)"):
        md.load_model_dir(d, "Toy", 1)


def test_an_older_model_without_checksums_loads_with_a_warning(tmp_path, caplog):
    from cellsynth.models import _model_dir as md

    d = _saved(tmp_path)
    (d / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING):
        md.load_model_dir(d, "Toy", 1)
    assert "has no checksums.json" in caplog.text


def test_non_finite_weights_are_refused_at_save_and_at_load(tmp_path):
    import torch
    from safetensors.torch import save_file

    from cellsynth.errors import ModelFileError
    from cellsynth.models import _model_dir as md

    module = torch.nn.Linear(4, 3)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(ModelFileError, match=r"non-finite values \(weight: 1 of 12\)"):
        md.save_model_dir(tmp_path / "nan", {"model": "Toy", "format_version": 1}, module,
                          ["a"], {})
    assert not (tmp_path / "nan").exists()
    d = _saved(tmp_path)
    (d / "checksums.json").unlink()  # an older save, its weights NaN
    state = {"weight": torch.full((3, 4), float("nan")), "bias": torch.zeros(3)}
    save_file(state, str(d / "weights.safetensors"))
    with pytest.raises(ModelFileError, match="holds non-finite weights"):
        md.load_model_dir(d, "Toy", 1)


# -- 7: atomic writes -------------------------------------------------------------------------

def _h5ad_fails_midway(self, path, *args, **kwargs):
    """``AnnData.write_h5ad`` that writes part of its file, then fails (a full disk)."""
    Path(path).write_bytes(b"partial")
    raise OSError(28, "No space left on device")


def _text_fails_midway(self, data, *args, **kwargs):
    """``Path.write_text`` that writes part of its file, then fails (a full disk)."""
    self.write_bytes(data[:1].encode())
    raise OSError(28, "No space left on device")


def test_a_failed_h5ad_write_leaves_no_file_under_its_name(monkeypatch, tmp_path):
    from cellsynth.data.store import write_h5ad
    from cellsynth.errors import DataError

    adata = simulate_atlas(50, 60, 2, seed=0, label_key=LABEL)
    out = tmp_path / "syn.h5ad"
    with monkeypatch.context() as m:
        m.setattr(ad.AnnData, "write_h5ad", _h5ad_fails_midway)
        with pytest.raises(DataError, match="cannot write"):
            write_h5ad(adata, out)
    assert list(tmp_path.iterdir()) == []
    write_h5ad(adata, out)
    assert ad.read_h5ad(out).n_obs == 50 and [p.name for p in tmp_path.iterdir()] == ["syn.h5ad"]
    with pytest.raises(DataError, match="is a directory"):
        write_h5ad(adata, tmp_path)


def test_generate_streams_checks_the_size_and_writes_atomically(tmp_path, monkeypatch, capsys):
    """`cellsynth generate` streams a CVAE's cells to OUT.part and renames it: the same cells as
    sample() in memory; a request too large for the disk is refused before any work with its
    estimate; a failure mid-way leaves no file under OUT."""
    import anndata as ad

    from cellsynth.cli import main
    from cellsynth.config import CVAEConfig
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models.cvae import CVAE

    model = CVAE(simulate_atlas(300, 60, 3, seed=0), config=CVAEConfig(
        n_hidden=[8], n_latent=2, max_epochs=1, select="elbo", device="cpu"))
    model.train()
    model.save(tmp_path / "m")
    out = tmp_path / "syn.h5ad"
    assert main(["generate", str(tmp_path / "m"), "--types", "type_00=700,type_01=5",
                 "--seed", "3", "--out", str(out), "--quiet"]) == 0
    streamed, memory = ad.read_h5ad(out), model.sample({"type_00": 700, "type_01": 5}, seed=3)
    assert (streamed.X != memory.X).nnz == 0 and streamed.obs.equals(memory.obs.set_axis(
        streamed.obs.index))
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "m"), "--types", f"type_00={10**11}",
                 "--out", str(tmp_path / "huge.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "GB" in err and "free" in err and not (tmp_path / "huge.h5ad").exists()

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("killed")

    monkeypatch.setattr(CVAE, "sample_chunks", broken)
    with pytest.raises(RuntimeError, match="killed"):
        main(["generate", str(tmp_path / "m"), "--types", "type_00=5", "--out",
              str(tmp_path / "new.h5ad"), "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "syn.h5ad"]


def test_a_failed_text_write_keeps_the_earlier_file(monkeypatch, tmp_path):
    from cellsynth import outputs

    page = tmp_path / "report.html"
    page.write_text("earlier")
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", _text_fails_midway)
        with pytest.raises(CellsynthError, match="disk full"):
            outputs.write_text(page, "new")
        with pytest.raises(CellsynthError, match="disk full"):
            outputs.write_json(tmp_path / "fidelity.json", {"a": 1})
    assert page.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_reports_and_fidelity_use_the_atomic_writer(monkeypatch, tmp_path):
    """results.md, report.html and fidelity.md are written by outputs.write_text."""
    from cellsynth import evaluation, outputs
    from cellsynth.report import html, results

    for module in (html, results, evaluation):
        assert module.write_text is outputs.write_text, module.__name__
    written = []
    monkeypatch.setattr(evaluation, "write_text", lambda path, text: written.append(Path(path)))
    result = {"n_cells": {"real": {"used": 1, "total": 2, "space": 1},
                          "synthetic": {"used": 1, "total": 1}},
              "real": "a.h5ad", "synthetic": "b.h5ad", "label_key": LABEL, "max_cells": 4,
              "n_genes": 1, "real_vs_real": {"overall": {}}, "synthetic_vs_real": {"overall": {}},
              "memorisation": {"flagged": False}}
    monkeypatch.setattr(evaluation, "write_json", lambda path, data: None)
    evaluation.write(result, tmp_path)
    assert tmp_path / "fidelity.md" in written


def test_simulate_killed_midway_leaves_no_file(monkeypatch, tmp_path):
    from cellsynth.data import simulate
    from cellsynth.data.simulate import write_atlas

    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(simulate, "write_elem", boom)  # after X, while writing obs
    with pytest.raises(KeyboardInterrupt):
        write_atlas(tmp_path / "sim.h5ad", 300, 50, 3, seed=0, label_key=LABEL)
    assert list(tmp_path.iterdir()) == []


# -- 1 and 6: resume keys that cover the input file, missing outputs, a corrupt manifest ---------

RUN_SETTINGS = ["features.n_components=10", "classifier.n_estimators=20", "classifier.max_depth=3",
                "generator.model=nb", "generator.n_per_type_eval=20",
                "generator.n_per_type_train=40", "generator.n_per_type_val=10",
                "qc.min_genes_per_cell=20", "report.umap=false", "report.fidelity=false"]


def _run_args(data, out, *extra):
    args = ["run", str(data), "--label-key", LABEL, "--out", str(out), "--quiet"]
    for s in [*RUN_SETTINGS, *extra]:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """An input file and a finished run on it (copy the run directory before changing it)."""
    from cellsynth.data.simulate import write_atlas

    root = tmp_path_factory.mktemp("finished")
    data = write_atlas(root / "atlas.h5ad", 600, 200, 4, seed=0, label_key=LABEL)
    assert main(_run_args(data, root / "run")) == 0
    return data, root / "run"


def _stages(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["stages"]


def test_a_replaced_input_file_reruns_from_the_data_stage(finished_run, tmp_path, caplog):
    from cellsynth.data.simulate import write_atlas

    data, template = finished_run
    out = tmp_path / "run"
    shutil.copytree(template, out)
    recorded = _stages(out)["data"]["input"]
    assert recorded["path"] == str(data.resolve()) and len(recorded["sha256"]) == 64
    # the same bytes with a new modification time: hashed again, the same, so all skipped
    data.touch()
    caplog.clear()
    assert main(_run_args(data, out)) == 0
    assert caplog.text.count("done before with the same settings, skipped") == 7
    # other cells under the same name: the data stage and everything after it run again
    other = write_atlas(tmp_path / "other.h5ad", 600, 200, 4, seed=1, label_key=LABEL)
    shutil.copyfile(other, data)
    caplog.clear()
    try:
        assert main(_run_args(data, out)) == 0
    finally:
        write_atlas(data, 600, 200, 4, seed=0, label_key=LABEL)  # for the others
    assert "stage data: the input file changed" in caplog.text
    assert "skipped" not in caplog.text
    assert _stages(out)["data"]["input"]["sha256"] != recorded["sha256"]


def test_a_deleted_stage_output_reruns_that_stage(finished_run, tmp_path, caplog):
    data, template = finished_run
    out = tmp_path / "run"
    shutil.copytree(template, out)
    (out / "explain" / "shap.json").unlink()
    caplog.clear()
    assert main(_run_args(data, out)) == 0
    assert "stage explain: its output explain/shap.json is missing; running again" in caplog.text
    assert caplog.text.count("skipped") == 6 and (out / "explain" / "shap.json").is_file()
    (out / "data" / "preprocessed.h5ad").unlink()
    caplog.clear()
    assert main(_run_args(data, out)) == 0
    assert "stage data: its output data/preprocessed.h5ad is missing; running again" in caplog.text
    assert "skipped" not in caplog.text and (out / "data" / "preprocessed.h5ad").is_file()


def test_the_input_digest_is_computed_once_per_file_state(tmp_path):
    from cellsynth.resume import input_digest

    path = tmp_path / "x.h5ad"
    path.write_bytes(b"cells")
    first = input_digest(path)
    assert input_digest(path, {**first, "sha256": "cached"})["sha256"] == "cached"  # not read
    path.write_bytes(b"other")  # size kept, time changed: read again
    assert input_digest(path, {**first, "sha256": "cached"})["sha256"] not in ("cached",
                                                                              first["sha256"])


def test_a_corrupt_manifest_is_set_aside_and_every_stage_runs(tmp_path, caplog):
    from cellsynth.config import RunConfig
    from cellsynth.resume import ResumePlan
    from cellsynth.runtime import Manifest

    path = tmp_path / "manifest.json"
    for bad in ("{not json", "[1, 2]", '{"stages": 3}', "\udcff"):
        path.write_text(bad, errors="surrogateescape")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            manifest = Manifest(path)
        assert manifest.data == {"stages": {}}
        assert "is corrupt" in caplog.text and "every stage runs again" in caplog.text
        assert (tmp_path / "manifest.json.corrupt").read_bytes() == bad.encode(errors="surrogateescape")
        plan = ResumePlan(manifest, RunConfig(), set())
        assert all(plan.runs(stage) for stage in ("data", "features", "evaluation"))


def test_input_change_is_told_apart_from_a_settings_change(tmp_path, caplog):
    from cellsynth.config import RunConfig
    from cellsynth.resume import ResumePlan
    from cellsynth.runtime import Manifest

    manifest = Manifest(tmp_path / "manifest.json")
    given = {"path": "/d/a.h5ad", "size": 10, "mtime_ns": 1, "sha256": "a" * 64}
    plan = ResumePlan(manifest, RunConfig(), set(), inputs={"data": given})
    manifest.data["stages"]["data"] = {"status": "done", "config_hash": plan.hash("data"),
                                       "input": given}
    caplog.set_level(logging.INFO)
    assert not ResumePlan(manifest, RunConfig(), set(), inputs={"data": given}).runs("data")
    changed = {**given, "size": 12, "sha256": "b" * 64}
    assert ResumePlan(manifest, RunConfig(), set(), inputs={"data": changed}).runs("data")
    assert "the input file changed (/d/a.h5ad: 10 bytes before, 12 now)" in caplog.text
    assert "WARNING" not in caplog.text  # the file edited: said as any other reason
    another = {**changed, "path": "/d/b.h5ad"}  # another file: the whole run is replaced, warned
    assert ResumePlan(manifest, RunConfig(), set(), inputs={"data": another}).runs("data")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "now /d/b.h5ad, was /d/a.h5ad" in warned[0].getMessage()
    assert "every result in" in warned[0].getMessage()
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell = 3
    assert ResumePlan(manifest, cfg, set(), inputs={"data": given}).runs("data")
    assert "stage data: its settings changed; running again" in caplog.text


# -- 2: one run per directory -------------------------------------------------------------------

_HOLD = ("import sys; from cellsynth.runtime import RunLock; lock = RunLock(sys.argv[1]); "
         "lock.acquire(); print('held', flush=True); sys.stdin.readline()")


def test_a_second_run_on_a_directory_in_use_stops_at_once(tmp_path, capsys, caplog):
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"is in use by another cellsynth run (process {holder.pid}" in err
        assert "\n" not in err and "Traceback" not in err
        # nothing written but the refused attempt's log lines (cli.cmd_run opens run.log first)
        assert set(p.name for p in out.iterdir()) <= {"run.lock", "run.log"}
    finally:
        holder.stdin.close()  # the holder ends without releasing: a stale lock is left
        holder.wait(timeout=30)
    assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid

    from cellsynth.config import RunConfig
    from cellsynth.pipeline.context import RunContext

    with caplog.at_level(logging.WARNING):
        ctx = RunContext(RunConfig(), out)
    assert f"taking over the stale lock {out / 'run.lock'} of process {holder.pid}" in caplog.text
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid()
    ctx.close()
    assert not (out / "run.lock").exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    from cellsynth import config, pipeline

    cfg = config.load(None, [f"dataset.path='{tmp_path / 'missing.h5ad'}'"])
    with pytest.raises(CellsynthError):
        pipeline.run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "manifest.json").is_file()
    assert not (tmp_path / "run" / "run.lock").exists()


# -- 6: paths -----------------------------------------------------------------------------------

def _one_line_exit_2(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellsynth: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_out_that_is_a_file_or_the_input_is_refused(atlas_file, tmp_path, capsys):
    before = atlas_file.read_bytes()
    _one_line_exit_2(["run", str(atlas_file), "--out", str(atlas_file), "--quiet"], capsys,
                     "is an existing file, not a directory")
    assert atlas_file.read_bytes() == before
    inside = tmp_path / "run" / "data" / "preprocessed.h5ad"
    inside.parent.mkdir(parents=True)
    shutil.copyfile(atlas_file, inside)
    _one_line_exit_2(["run", str(inside), "--out", str(tmp_path / "run"), "--quiet"], capsys,
                     "lies where the run in")
    evaluate_out = tmp_path / "fidelity.txt"
    evaluate_out.write_text("x")
    _one_line_exit_2(["evaluate", "--real", str(atlas_file), "--synthetic", str(atlas_file),
                      "--label-key", LABEL, "--out", str(evaluate_out)], capsys,
                     "is an existing file")


def test_a_config_that_is_not_utf8_or_not_toml_is_one_line(tmp_path, capsys):
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[dataset]\nlabel_key = 'cellule_\xe9'\n".encode("latin-1"))
    _one_line_exit_2(["run", "--config", str(latin), "--out", str(tmp_path / "r")], capsys,
                     "is not UTF-8 text")
    garbage = tmp_path / "bad.toml"
    garbage.write_text("[dataset\nlabel_key = \n")
    _one_line_exit_2(["run", "--config", str(garbage), "--out", str(tmp_path / "r")], capsys,
                     "is not valid TOML")
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00")
    _one_line_exit_2(["config", "show", "--config", str(binary)], capsys, "not UTF-8")


@pytest.mark.parametrize("planted", ["metrics", "results.md", "data/qc.json", ".write-test"])
def test_a_symlink_planted_in_a_run_directory_is_never_written_through(planted, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep")
    out = tmp_path / "run"
    link = out / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside if planted == "metrics" else victim)
    _one_line_exit_2(["run", "--out", str(out), "--quiet"], capsys, "is a symbolic link to",
                     str(link))
    assert victim.read_text() == "keep" and sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not (out / "run.lock").exists() and not (out / "manifest.json").exists()


# -- 3: every value checked, not a sample -------------------------------------------------------

def test_fractional_cells_after_the_sample_are_named_in_memory_and_out_of_core(monkeypatch,
                                                                               tmp_path):
    import scipy.sparse as sp

    from cellsynth import config
    from cellsynth.data import io
    from cellsynth.data.chunked import preprocess_backed
    from cellsynth.data.qc import preprocess
    from cellsynth.errors import DataError

    adata = simulate_atlas(400, 120, 3, seed=0, label_key=LABEL)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    x = sp.vstack([x[:-30], x[-30:] * 0.37]).tocsr()  # the last batch scaled: fractional
    adata.X = x
    path = tmp_path / "scaled.h5ad"
    adata.write_h5ad(path)
    monkeypatch.setattr(io, "_PROBE_VALUES", 500)  # the sample: whole numbers, taken as counts
    cfg = config.load(None, [f"dataset.label_key='{LABEL}'"])
    fractional = int((np.diff(x[-30:].indptr) > 0).sum())
    with pytest.raises(DataError) as err:
        preprocess(adata, cfg.dataset, cfg.qc, cfg.split)
    message = str(err.value)
    assert f"{fractional} cells hold fractional values" in message and "\n" not in message
    assert repr(str(adata.obs_names[-30])) in message
    with pytest.raises(DataError) as err:
        preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split, out_path=tmp_path / "pre.h5ad",
                          chunk_size=64)
    assert str(err.value) == message  # the same answer, chunk by chunk
    assert not (tmp_path / "pre.h5ad").exists()


def test_an_os_error_on_a_given_path_is_one_line_not_a_traceback(monkeypatch, capsys):
    from cellsynth.data import simulate

    def refuse(path, *args, **kwargs):
        raise NotADirectoryError(20, "Not a directory", str(path))
    monkeypatch.setattr(simulate, "write_atlas", refuse)
    _one_line_exit_2(["simulate", "--out", "/some/file/x.h5ad"], capsys,
                     "/some/file/x.h5ad: Not a directory")


def test_a_directory_of_another_kind_as_out_is_refused(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "mine.csv").write_text("keep")
    (project / "notes.txt").write_text("keep")
    _one_line_exit_2(["run", "--out", str(project), "--quiet"], capsys,
                     "is a non-empty directory that is not a cellsynth run directory",
                     "data, notes.txt")
    assert sorted(p.name for p in (project / "data").iterdir()) == ["mine.csv"]


def test_an_anndata_given_to_cs_run_is_not_a_foreign_file(tmp_path):
    from cellsynth import config
    from cellsynth.outputs import check_out

    out = tmp_path / "from_memory"
    out.mkdir()
    (out / "input.h5ad").write_bytes(b"")  # what cs.run writes before the run starts
    (out / "run.log").write_text("")
    check_out(out, config.load(None, [f"dataset.path='{out / 'input.h5ad'}'"]))
    (out / "notes.txt").write_text("")
    with pytest.raises(CellsynthError, match="not a cellsynth run directory"):
        check_out(out, config.load(None, []))


def test_labels_that_look_continuous_or_are_missing(tmp_path, capsys, caplog):
    """A label column of numbers written as text is refused as continuous; cells without a
    label are left out with a count by fit, run and evaluate alike (not a type named 'nan')."""
    from cellsynth.cli import main
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(300, 60, 3, seed=1)
    a.obs["score"] = [f"{v:.4f}" for v in np.random.default_rng(0).random(a.n_obs)]
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    assert main(["fit", str(path), "--label-key", "score", "--out", str(tmp_path / "m")]) == 2
    assert "looks continuous" in capsys.readouterr().err
    labels = a.obs["cell_type"].astype(object)
    labels.iloc[:9] = np.nan
    a.obs["cell_type"] = labels
    a.write_h5ad(path)
    from cellsynth.evaluation import compare

    caplog.set_level(logging.WARNING, logger="cellsynth")
    result = compare(path, path, label_key="cell_type", max_cells=100)
    assert result["n_cells"]["real"]["total"] == 300
    assert "9 cells have no label in obs['cell_type'] and are left out" in caplog.text
    per_type = result["synthetic_vs_real"]["per_type"]
    assert per_type and "nan" not in per_type


def test_every_generator_directory_is_checksummed(tmp_path):
    """Class 9 for the other generators: nb (and the reference model, scvi) write checksums
    of every file they save; a changed file is a one-line error naming it; a reference model
    saved under its old name 'seed' still loads."""
    import json

    from cellsynth.config import FeaturesConfig, SeedVAEConfig
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.errors import ModelFileError
    from cellsynth.models.nb import NegBinBaseline
    from cellsynth.models.registry import load_generator
    from cellsynth.models.seed_counts import SeedGenerator

    a = simulate_atlas(300, 60, 3, seed=2)
    nb = NegBinBaseline()
    nb.fit(a, "cell_type")
    nb.save(tmp_path / "nb")
    sums = json.loads((tmp_path / "nb" / "checksums.json").read_text())
    assert {"params.safetensors", "genes.json", "config.json"} <= set(sums)
    assert load_generator(tmp_path / "nb").labels == nb.labels
    genes = json.loads((tmp_path / "nb" / "genes.json").read_text())
    (tmp_path / "nb" / "genes.json").write_text(json.dumps(genes[::-1]))
    with pytest.raises(ModelFileError, match=r"genes\.json changed after the model was saved"):
        load_generator(tmp_path / "nb")

    ref = SeedGenerator(SeedVAEConfig(n_embed=4, n_hidden=[16], n_latent=2, max_epochs=1,
                                      device="cpu"), FeaturesConfig(n_components=5))
    ref.fit(a, "cell_type")
    ref.save(tmp_path / "ref")
    assert "vae/weights.safetensors" in json.loads((tmp_path / "ref" / "checksums.json").read_text())
    meta = json.loads((tmp_path / "ref" / "config.json").read_text())
    meta["model"] = "seed"  # as saved before the rename
    (tmp_path / "ref" / "config.json").write_text(json.dumps(meta))
    (tmp_path / "ref" / "checksums.json").unlink()  # an older save had none
    assert load_generator(tmp_path / "ref").labels == ref.labels


@pytest.mark.parametrize("seed", ["-1", str(2**70), "1.5"])
def test_a_seed_out_of_range_is_refused_before_work(seed, tmp_path, capsys):
    from cellsynth.cli import main

    for argv in (["generate", str(tmp_path), "--n-per-type", "5", "--out", str(tmp_path / "x")],
                 ["fit", str(tmp_path / "a.h5ad"), "--label-key", "c", "--out", str(tmp_path)],
                 ["simulate", "--out", str(tmp_path / "s.h5ad")]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--seed", seed])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--seed" in err and "Traceback" not in err


def test_run_checks_the_disk_before_it_generates(tmp_path, monkeypatch, capsys):
    """`cellsynth run` estimates each generated file's size as `generate` does and stops, with
    the estimate and the free space, before it makes cells a full disk could not hold."""
    from collections import namedtuple

    from test_pipeline import FAST

    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage  # the generated cells' folder alone is full

    def disk_usage(path):
        return usage(10**6, 10**6, 1000) if Path(path).name == "synthetic" else real(path)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    args = ["run", "--out", str(tmp_path / "run"), "--quiet"]
    for s in [*FAST, "dataset.demo_cells=600", "dataset.demo_genes=200",
              "qc.min_genes_per_cell=20", "report.fidelity=false", "report.umap=false"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"cells would take about [\d.,]+ [kMG]B .* has 1\.0 kB free", err), err
    assert not list((tmp_path / "run").glob("synthetic/*.h5ad"))


def test_prefetched_keeps_order_raises_in_place_and_stops_early():
    """The background producer of chunks written while the next is drawn (pipeline.models)."""
    import threading

    from cellsynth.pipeline.output import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def fails():
        yield 1
        yield 2
        raise RuntimeError("drawing failed")

    got = []
    with pytest.raises(RuntimeError, match="drawing failed"):
        for x in prefetched(fails()):
            got.append(x)
    assert got == [1, 2]
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    it = prefetched(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the caller stops: the producer stops too, a few items ahead at most
    assert not any(t.name == "cellsynth-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 2


# -- sweep 2: no command's output destroys a file cellsynth did not write -----------------------

def test_no_output_replaces_a_file_that_cellsynth_did_not_write(kang_path, tmp_path, capsys):
    """report, simulate, generate and fit refuse an existing output of another kind (the data,
    a run's manifest, a model's weights, a directory of other files), before any work; their
    own earlier outputs are replaced, so rerunning a command works, and a refit leaves no file
    of the previous model behind."""
    data = tmp_path / "data.h5ad"
    shutil.copy(kang_path, data)
    before = data.read_bytes()

    def run(*args: str) -> tuple[int, str]:
        rc = main([*args, "--quiet"] if args[0] in ("fit", "simulate", "generate") else list(args))
        return rc, capsys.readouterr().err

    model = tmp_path / "model"
    assert run("fit", str(data), "--label-key", LABEL, "--model", "nb", "--out", str(model))[0] == 0
    cells = tmp_path / "cells.h5ad"
    assert run("generate", str(model), "--n-per-type", "3", "--out", str(cells))[0] == 0
    assert run("generate", str(model), "--n-per-type", "4", "--out", str(cells))[0] == 0  # again
    assert ad.read_h5ad(cells).n_obs == 20
    for args in (("generate", str(model), "--n-per-type", "3", "--out", str(data)),
                 ("simulate", "--cells", "50", "--genes", "30", "--types", "2", "--out", str(data)),
                 ("report", str(tmp_path), "--out", str(data))):
        rc, err = run(*args)
        assert rc == 2 and "Traceback" not in err, args
    assert data.read_bytes() == before  # the data, untouched
    run_dir = tmp_path / "run"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "manifest.json").write_text('{"stages": {}}')
    rc, err = run("report", str(run_dir), "--out", str(run_dir / "manifest.json"))
    assert rc == 2 and "is not an HTML report that cellsynth wrote" in err
    rc, err = run("fit", str(data), "--label-key", LABEL, "--model", "nb", "--out", str(run_dir))
    assert rc == 2 and "not a saved model (it holds manifest.json, metrics)" in err
    rc, err = run("fit", str(data), "--label-key", LABEL, "--model", "cvae", "--out", str(model),
                  "--set", "cvae.max_epochs=1")
    assert rc == 0, err  # a refit replaces the model directory whole
    assert json.loads((model / "config.json").read_text())["model"] == "CVAE"
    assert {p.name for p in model.iterdir()} == set(json.loads(
        (model / "checksums.json").read_text())) | {"checksums.json", "run_config.toml"}


def test_an_output_nothing_can_be_written_under_is_refused_before_any_work(kang_path, tmp_path,
                                                                          capsys):
    """fit, generate, evaluate, simulate and run refuse an output path under a file, or in a
    place where no file can be created, before any work (a fit found it only once trained);
    a new path several folders deep is fine."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    model = tmp_path / "model"
    assert main(["fit", str(kang_path), "--label-key", LABEL, "--model", "nb", "--out",
                 str(model), "--quiet"]) == 0
    capsys.readouterr()
    commands = {
        "fit": ["fit", str(kang_path), "--label-key", LABEL, "--model", "nb", "--out"],
        "generate": ["generate", str(model), "--n-per-type", "3", "--out"],
        "evaluate": ["evaluate", "--real", str(kang_path), "--synthetic", str(kang_path),
                     "--label-key", LABEL, "--out"],
        "simulate": ["simulate", "--cells", "50", "--genes", "30", "--types", "2", "--out"],
        "run": ["run", str(kang_path), "--label-key", LABEL, "--out"],
    }
    for name, argv in commands.items():
        target = a_file / ("x.h5ad" if name in ("generate", "simulate") else "x")
        assert main([*argv, str(target)]) == 2, name
        err = capsys.readouterr().err
        assert f"{a_file} is a file, so nothing can be written under it" in err, (name, err)
        assert "Traceback" not in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main([*commands["fit"], str(locked / "m")]) == 2
        assert "cannot write in" in capsys.readouterr().err
    deep = tmp_path / "a" / "b" / "cells.h5ad"
    assert main([*commands["generate"], str(deep), "--quiet"]) == 0 and deep.exists()


@pytest.mark.slow
def test_an_evaluation_on_few_or_unmatched_cells_gives_no_verdict_from_them(atlas_file, caplog):
    """Three synthetic cells, or synthetic types named otherwise than the real ones, must not
    read as indistinguishable; swapped inputs are said. (One halving of the gene-level test
    each: its numbers are not what this checks.)"""
    real = ad.read_h5ad(atlas_file)
    real = real[real.obs[LABEL].str.startswith("type_").to_numpy()].copy()
    other = simulate_atlas(600, 150, 3, seed=1, label_key=LABEL)
    other = other[other.obs[LABEL].str.startswith("type_").to_numpy()].copy()
    few = other[:3].copy()
    v = evaluation.compare(real, few, label_key=LABEL, max_cells=100, gene_repeats=1)["verdict"]["overall"]
    assert v["verdict"] == "too few cells" and "synthetic cells scored" in v["reason"]
    renamed = other.copy()
    renamed.obs[LABEL] = renamed.obs[LABEL].astype(str).str.upper()
    with pytest.raises(CellsynthError, match=r"no synthetic cell type is a real one.*'TYPE_00' "
                                             r"\(real: 'type_00'\)"):
        evaluation.compare(real, renamed, label_key=LABEL, max_cells=100, gene_repeats=1)
    some = other.copy()
    some.obs[LABEL] = np.where(some.obs[LABEL] == "type_00", "Type_00 ", some.obs[LABEL])
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        evaluation.compare(real, some, label_key=LABEL, max_cells=100, gene_repeats=1)
    assert "1 of the synthetic cell types with no real type of that name" in caplog.text
    assert "'Type_00 ' (real: 'type_00')" in caplog.text
    caplog.clear()
    generated = other.copy()
    generated.uns["cellsynth"] = {"model": "CVAE"}
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        evaluation.compare(generated, real, label_key=LABEL, max_cells=100, gene_repeats=1)
    assert "are --real and --synthetic swapped?" in caplog.text
    one = other[other.obs[LABEL] == "type_00"].copy()  # one of the three real types
    v = evaluation.compare(real, one, label_key=LABEL, max_cells=100, gene_repeats=1)["verdict"]
    assert v["absent"] == ["type_01", "type_02"]
    assert "2 of the 3 real cell types have no synthetic cells (type_01, type_02): the " \
           "verdict covers only the types generated" in v["warning"]
    assert "WARNING: 2 of the 3 real cell types" in "\n".join(verdict_lines(v))


def test_a_type_name_with_surrounding_spaces_is_found_and_a_typo_gets_a_suggestion(atlas_file):
    from cellsynth.models.nb import NegBinBaseline

    real = ad.read_h5ad(atlas_file)
    real = real[real.obs[LABEL].str.startswith("type_").to_numpy()].copy()
    real.obs[LABEL] = real.obs[LABEL].astype(str).str.replace("type_00", " type_00 ")
    gen = NegBinBaseline()
    gen.fit(real, LABEL, seed=0)
    syn = gen.sample({"type_00": 4, "type_01": 2}, seed=0)  # as a command line strips it
    assert list(syn.obs[LABEL]) == [" type_00 "] * 4 + ["type_01"] * 2
    with pytest.raises(CellsynthError, match=r"unknown cell type 'tpye_01' \(did you mean "
                                             r"'type_01'"):
        gen.sample({"tpye_01": 3}, seed=0)


def test_a_fit_leaves_out_empty_cells_and_warns_about_tiny_types(atlas_file, caplog):
    from cellsynth.cells import for_training

    real = ad.read_h5ad(atlas_file)
    real = real[real.obs[LABEL].str.startswith("type_").to_numpy()].copy()
    x = real.X.toarray()
    x[:20] = 0  # twenty cells without a count
    real.X = x
    labels = real.obs[LABEL].astype(str).to_numpy()
    labels[20:23] = "rare"  # a type of three cells
    real.obs[LABEL] = labels
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        cells = for_training(real, LABEL, seed=0)
    assert "leaving out 20 cells without a single count" in caplog.text
    assert "1 cell type(s) have fewer than 10 cells to learn from (rare: 3)" in caplog.text
    split = cells.obs["cellsynth_split"].to_numpy()
    assert (split[:20] == "none").all() and (split[20:] != "none").all()


def test_a_bad_seed_or_a_file_as_model_directory_is_a_clear_error(atlas_file, tmp_path):
    from cellsynth.models.nb import NegBinBaseline

    real = ad.read_h5ad(atlas_file)
    real = real[real.obs[LABEL].str.startswith("type_").to_numpy()].copy()
    gen = NegBinBaseline()
    gen.fit(real, LABEL, seed=0)
    for seed in (-1, 1.5, True, 2**63):
        with pytest.raises(CellsynthError, match=r"seed must be a whole number from 0 to 2\*\*63"):
            gen.sample({"type_01": 2}, seed=seed)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CellsynthError, match="is an existing file, not a directory; give a directory"):
        gen.save(tmp_path / "file")


def test_a_type_of_a_few_cells_is_never_cut_out_of_training():
    """Without a split column every generator fits on a random cut: stratified by type, so a
    type of one or two cells (here in every one of 50 seeds) stays in training instead of
    landing in validation whole and vanishing from the model."""
    import pandas as pd

    from cellsynth.cells import _training_split
    from cellsynth.models.base import split_masks
    from cellsynth.models.nb import NegBinBaseline

    a = simulate_atlas(300, 40, 3, seed=0)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    labels[:3] = ["pair", "pair", "single"]
    a.obs["cell_type"] = pd.Categorical(labels)
    for seed in range(50):
        train, val = split_masks(a, labels, seed=seed)
        assert train[:3].all() and not (train & val).any()
        assert 0.05 < val.mean() < 0.15
        assert (_training_split(a.obs, "cell_type", seed=seed, val_fraction=0.1)[:3]
                == "train").all()
    nb = NegBinBaseline()
    nb.fit(a, "cell_type", seed=7)
    assert {"pair", "single"} <= set(nb.labels)


def test_covariates_given_twice_or_to_another_generator_are_said(kang_path, tmp_path, capsys,
                                                                 caplog):
    """--covariates and a different MODEL.covariates (--set or --config) are refused like a
    seed given twice; the same list twice is fine; covariates set for a generator that is not
    the one fitted are named as unused, not silently dropped."""
    fit = ["fit", str(kang_path), "--label-key", LABEL, "--model", "nb", "--quiet", "--out"]
    rc = main([*fit, str(tmp_path / "a"), "--set", 'nb.covariates=["sample_id"]',
               "--covariates", "condition"])
    assert rc == 2
    assert "the covariates are given twice: --covariates condition and nb.covariates = " \
           "['sample_id']" in capsys.readouterr().err
    assert main([*fit, str(tmp_path / "b"), "--set", 'nb.covariates=["condition"]',
                 "--covariates", "condition"]) == 0
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert main([*fit, str(tmp_path / "c"), "--set", 'cvae.covariates=["condition"]']) == 0
    assert "cvae.covariates = ['condition'] is not used: this fits --model nb" in caplog.text


def test_generate_names_a_data_file_given_as_the_model_and_never_suggests_the_model_dir(
        kang_path, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", str(kang_path), "--label-key", LABEL, "--model", "nb", "--out",
                 str(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", str(kang_path), "--n-per-type", "3", "--out",
                 str(tmp_path / "x.h5ad")]) == 2
    assert f"{kang_path} is a file, not a model directory" in capsys.readouterr().err
    assert main(["generate", str(model), "--n-per-type", "3", "--out", str(model)]) == 2
    err = capsys.readouterr().err
    assert "is inside the model directory" in err and "synthetic.h5ad" not in err


def test_duplicate_gene_names_are_refused_by_every_fit(tmp_path):
    """A model matches genes by name (sampling, evaluation, get_latent): duplicate gene names
    are refused before training, in memory and from a file, by the CVAE and the other
    generators alike (they were trained on, and only evaluate refused the cells)."""
    from cellsynth.models.cvae import CVAE
    from cellsynth.models.nb import NegBinBaseline

    a = simulate_atlas(200, 40, 2, seed=2)
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    a.write_h5ad(tmp_path / "dup.h5ad")
    for data in (a, str(tmp_path / "dup.h5ad")):
        with pytest.raises(CellsynthError, match="duplicate gene names"):
            CVAE(data, label_key="cell_type").train(max_epochs=1)
    with pytest.raises(CellsynthError, match="duplicate gene names"):
        NegBinBaseline().fit(a, "cell_type")


def test_every_generator_takes_a_path_or_backed_data_and_refuses_use_before_fit(tmp_path):
    """fit takes an h5ad path or backed cells as the CVAE's does (nb said 'str' has no attribute
    'obs', backed data failed in scipy); saving or sampling a generator never fitted says so
    before anything is written (nb wrote half a model directory)."""
    from cellsynth.errors import NotTrainedError
    from cellsynth.models.controls import CopyGenerator
    from cellsynth.models.nb import NegBinBaseline

    path = tmp_path / "a.h5ad"
    simulate_atlas(300, 40, 3, seed=4).write_h5ad(path)
    want = NegBinBaseline()
    want.fit(ad.read_h5ad(path), "cell_type")
    for data in (str(path), path, ad.read_h5ad(path, backed="r")):
        got = NegBinBaseline()
        got.fit(data, "cell_type")
        assert got.labels == want.labels
        assert (got.sample({want.labels[0]: 20}, seed=1).X
                != want.sample({want.labels[0]: 20}, seed=1).X).nnz == 0
    with pytest.raises(CellsynthError, match="AnnData or the path"):
        NegBinBaseline().fit(np.zeros((3, 3)), "cell_type")
    for gen in (NegBinBaseline(), CopyGenerator()):
        with pytest.raises(NotTrainedError, match="not been fitted"):
            gen.save(tmp_path / "m")
        with pytest.raises(NotTrainedError, match="not been fitted"):
            gen.sample({"type_00": 3})
    assert not (tmp_path / "m").exists()


def test_get_latent_takes_backed_cells_and_names_a_gene_order(tmp_path):
    from cellsynth.models.cvae import CVAE

    path = tmp_path / "a.h5ad"
    simulate_atlas(300, 40, 3, seed=4).write_h5ad(path)
    from cellsynth.config import CVAEConfig

    model = CVAE(str(path), config=CVAEConfig(n_hidden=[16], n_latent=2, select="elbo",
                                              min_steps=0))
    model.train(max_epochs=1)
    z = model.get_latent(ad.read_h5ad(path, backed="r"))
    assert z.shape == (300, 2)
    with pytest.raises(CellsynthError, match="another order"):
        model.get_latent(ad.read_h5ad(path)[:, ::-1])


def test_evaluate_checks_its_arguments_first_and_reads_labels_as_a_fit_does(tmp_path, caplog):
    """cs.evaluate: a bad seed or max_cells and an output that is a file are refused before any
    work (out named as Python names it); a label written as the text 'nan' is a missing label,
    as a fit reads it, not a type called 'nan'."""
    import cellsynth as cs

    real = simulate_atlas(300, 50, 3, seed=1)
    fake = simulate_atlas(300, 50, 3, seed=2)
    for kw in ({"seed": -1}, {"seed": 1.5}, {"max_cells": 0.5}):
        with pytest.raises(CellsynthError, match=r"seed must be|max_cells must be"):
            cs.evaluate(real, fake, label_key="cell_type", **kw)
    (tmp_path / "taken.txt").write_text("x")
    with pytest.raises(CellsynthError, match=r"^out .* is an existing file"):
        cs.evaluate(real, fake, label_key="cell_type", out=tmp_path / "taken.txt")
    fake.obs["cell_type"] = fake.obs["cell_type"].astype(str)
    fake.obs.iloc[:40, fake.obs.columns.get_loc("cell_type")] = "nan"
    with caplog.at_level(logging.WARNING):
        result = cs.evaluate(real, fake, label_key="cell_type", max_cells=300)
    assert "nan" not in result.per_type.index
    assert "40 cells have no label" in caplog.text


def test_a_plan_given_to_sample_is_checked_as_a_request_is():
    """sample() also takes a plan [(type, level codes, n), ...] (what plan() returns): each
    entry is checked (an unknown type, a bad count, a level's name or a code out of range
    reached numpy or torch), and its unseen combinations are listed."""
    from cellsynth.models.nb import NegBinBaseline

    a = simulate_atlas(300, 40, 3, seed=4, n_conditions=2)
    model = NegBinBaseline(covariate_keys=["condition"])
    model.fit(a, "cell_type")
    t = model.labels[0]
    for plan, match in (([("NoSuch", (0,), 5)], "unknown cell type"),
                        ([(t, (0,), -5)], "positive integer"), ([(t, (0,), 2.5)], "positive"),
                        ([(t, ("stim",), 5)], "level codes"), ([(t, (9,), 5)], "level codes"),
                        ([(t, (-1,), 5)], "level codes"), ([(t, (), 5)], "level codes")):
        with pytest.raises(CellsynthError, match=match):
            model.sample(plan)
    want, _ = model.plan({t: 6}, {"condition": "stim"})
    got = model.sample(want, seed=3)
    assert got.n_obs == 6 and set(got.obs["condition"]) == {"stim"}


def test_normalised_values_rounded_to_counts_are_warned_about(caplog):
    """Counts normalised to one total and rounded pass the whole-number check; every fit warns
    that the totals are all alike (raw counts' totals vary), and real counts are not warned."""
    from cellsynth.cells import for_training
    from cellsynth.models.nb import NegBinBaseline

    a = simulate_atlas(300, 200, 3, seed=5)
    x = a.X.tocsr().astype(np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    b = a.copy()
    b.X = sp.diags(1e4 / lib) @ x
    b.X.data = np.round(b.X.data)
    for data, warned in ((a, False), (b, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            NegBinBaseline().fit(data, "cell_type")
            for_training(data, "cell_type", seed=0).close()
        assert caplog.text.count("look like normalised values rounded") == 2 * warned


def test_python_entry_points_refuse_bad_arguments_by_name(tmp_path):
    """cs.simulate with a fractional size, cs.run into an existing file, a split column of
    unknown values: one-line errors naming the fix (they were a TypeError about slices, a
    FileExistsError, and 'every cell lacks a label'); Evaluation.to_dict() is a copy."""
    import cellsynth as cs
    from cellsynth.config import CVAEConfig

    with pytest.raises(CellsynthError, match="n_cells must be a whole number"):
        cs.simulate(100.5, 50, 3)
    a = cs.simulate(300, 50, 3)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CellsynthError, match="is an existing file"):
        cs.run(a, out=tmp_path / "f.txt")
    b = a.copy()
    b.obs["cellsynth_split"] = "training"
    with pytest.raises(CellsynthError, match="holds 'training'"):
        cs.CVAE(b, config=CVAEConfig(n_hidden=[8], n_latent=2)).train(max_epochs=1)
    result = cs.evaluate(a[:150], a[150:], label_key="cell_type", max_cells=150)
    result.to_dict()["verdict"] = None
    assert result.verdict is not None


def test_mitochondrial_genes_are_found_by_symbols_where_the_names_are_ids(tmp_path, caplog):
    """CELLxGENE's layout: Ensembl IDs as var_names, symbols in var['feature_name'], counts in
    raw.X. The mitochondrial fraction is read from the symbols, in memory and out of core;
    without them the warning says the names look like IDs and how to mend it."""
    import logging

    import anndata as ad

    from cellsynth import config
    from cellsynth.data.chunked import preprocess_backed
    from cellsynth.data.qc import preprocess

    adata = simulate_atlas(400, 120, 3, seed=0, label_key=LABEL)
    cfg = config.load(None, [f"dataset.label_key='{LABEL}'", "qc.min_genes_per_cell=5"])
    want = preprocess(adata, cfg.dataset, cfg.qc, cfg.split)[0].obs["mito"]
    assert (want > 0).any()  # the simulated atlas has MT- genes
    symbols = adata.var_names.copy()
    cxg = adata.copy()
    cxg.var_names = [f"ENSG{i:011d}" for i in range(cxg.n_vars)]
    cxg.var["feature_name"] = symbols.to_numpy()
    cxg.raw = ad.AnnData(cxg.X.copy(), var=cxg.var.copy(), obs=cxg.obs[[]])
    path = tmp_path / "cxg.h5ad"
    cxg.write_h5ad(path)
    got = preprocess(cxg, cfg.dataset, cfg.qc, cfg.split)[0].obs["mito"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy())
    backed = ad.read_h5ad(preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split,
                                            out_path=tmp_path / "pre.h5ad", chunk_size=64)[0])
    np.testing.assert_allclose(backed.obs["mito"].to_numpy(), want.to_numpy())
    del cxg.raw, cxg.var["feature_name"]
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        preprocess(cxg, cfg.dataset, cfg.qc, cfg.split)
    assert "look like Ensembl IDs" in caplog.text and "feature_name" in caplog.text


def test_report_refuses_a_manifest_it_cannot_read_and_points_an_evaluation_to_to_html(tmp_path):
    """A garbled or empty manifest.json is no run: an error (exit 1), not an empty page; a
    folder cellsynth evaluate wrote is told where its HTML page comes from."""
    from cellsynth.cli import main

    for name, text in (("garbled", "garbage{"), ("empty", "{}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
        assert main(["report", str(tmp_path / name)]) != 0
        assert not (tmp_path / name / "report.html").exists()
    from cellsynth.errors import CellsynthError
    from cellsynth.report.html import write_report

    with pytest.raises(CellsynthError, match="cannot be read"):
        write_report(tmp_path / "garbled")
    with pytest.raises(CellsynthError, match="holds no run's stages"):
        write_report(tmp_path / "empty")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "fidelity.json").write_text("{}")
    with pytest.raises(CellsynthError, match=r"to_html\(path\)"):
        write_report(tmp_path / "ev")
