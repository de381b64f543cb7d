"""More of issue 6: bars (on stderr, only with ``cs.settings.progress``) in PCA fitting, SHAP,
fidelity, the ``nb`` and ``scvi`` generators, ``cellsynth evaluate`` / ``benchmark``; a timed line for a failed
stage and for the report; checkpoint settings left out of the stage hashes."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import keys as K
from cellsynth.cli import main
from cellsynth.config import ClassifierConfig, FeaturesConfig, RunConfig
from cellsynth.options import settings
from cellsynth.resume import ResumePlan
from cellsynth.runtime import Manifest

BAR = re.compile(r"\d+%\|")  # tqdm's "  40%|####  |"
TIMED = r"\d+(\.\d+)? s \(peak RSS \d+ MB\)"
LABEL = "cell_type"


def _counts(n_per_type: int = 40, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Poisson counts of 3 types that differ in their mean profile, split train/val/test."""
    rng = np.random.default_rng(seed)
    types = np.repeat(["a", "b", "c"], n_per_type)
    profile = rng.gamma(1.0, 2.0, size=(3, n_genes))
    x = rng.poisson(profile[np.searchsorted(["a", "b", "c"], types)]).astype(np.float32)
    obs = pd.DataFrame({LABEL: types}, index=[f"cell{i}" for i in range(len(types))])
    obs[K.SPLIT] = rng.choice(["train", "val", "test"], size=len(types), p=[0.7, 0.15, 0.15])
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=var)


# -- runtime: failed stages, the report, the stage hashes --------------------------------------


def test_failed_stage_logs_time_and_peak_memory(tmp_path, caplog):
    manifest = Manifest(tmp_path / "manifest.json")
    with caplog.at_level(logging.INFO, "cellsynth"), pytest.raises(RuntimeError, match="boom"):
        with manifest.stage("generator", "h"):
            raise RuntimeError("boom")
    assert re.search(rf"stage generator: failed after {TIMED}: RuntimeError", caplog.text)
    entry = json.loads((tmp_path / "manifest.json").read_text())["stages"]["generator"]
    assert entry["status"] == "failed" and entry["seconds"] >= 0 and entry["peak_rss_mb"] > 0


def test_failed_stage_raises_its_own_error_when_the_manifest_cannot_be_written(tmp_path, caplog):
    manifest = Manifest(tmp_path / "manifest.json")
    with pytest.raises(KeyError), caplog.at_level(logging.INFO, "cellsynth"):
        with manifest.stage("data"):
            manifest.path = tmp_path / "gone" / "file" / "manifest.json"
            (tmp_path / "gone").write_text("a file, not a folder")  # the write now fails
            raise KeyError("stage error")
    assert re.search(rf"stage data: failed after {TIMED}", caplog.text)


def test_report_writing_is_timed_like_a_stage(caplog):
    from cellsynth.runtime import timed

    with caplog.at_level(logging.INFO, "cellsynth"):
        with timed("report"):
            pass
        with pytest.raises(OSError), timed("report"):
            raise OSError("disk")
    assert re.search(rf"stage report: done in {TIMED}", caplog.text)
    assert re.search(rf"stage report: failed after {TIMED}: OSError", caplog.text)


def _hashes(tmp_path, cfg: RunConfig) -> dict[str, str]:
    return ResumePlan(Manifest(tmp_path / "manifest.json"), cfg, set()).hashes


def test_checkpoint_settings_do_not_change_stage_hashes(tmp_path):
    cfg = RunConfig()
    base = _hashes(tmp_path, cfg)
    ckpt = dataclasses.replace(cfg, cvae=dataclasses.replace(
        cfg.cvae, checkpoint_every=cfg.cvae.checkpoint_every + 7,
        checkpoint_seconds=cfg.cvae.checkpoint_seconds + 123.0))
    assert _hashes(tmp_path, ckpt) == base  # a finished generator is not retrained
    other = dataclasses.replace(cfg, cvae=dataclasses.replace(cfg.cvae, n_latent=cfg.cvae.n_latent + 1))
    changed = _hashes(tmp_path, other)
    assert changed["generator"] != base["generator"]  # every other cvae setting still counts
    assert changed["features"] == base["features"]
    assert dataclasses.asdict(ckpt)["cvae"]["checkpoint_every"] == cfg.cvae.checkpoint_every + 7


# -- bars with settings.progress, none without ---------------------------------------------------


def _bars(capsys, desc: str, run) -> None:
    """``run(True)`` (progress bars on) shows a bar named ``desc`` on stderr and nothing on
    stdout; ``run(False)`` shows none."""
    capsys.readouterr()
    run(True)
    cap = capsys.readouterr()
    assert re.search(rf"{desc}: +100%\|", cap.err), cap.err[-2000:]
    assert not BAR.search(cap.out)
    run(False)
    cap = capsys.readouterr()
    assert not BAR.search(cap.err) and not BAR.search(cap.out), cap.err[-2000:]


def _with(progress: bool, call):
    """``call()`` with progress bars on or off."""
    with settings.override(progress=progress):
        return call()


def test_settings_progress_rejects_other_values():
    from cellsynth.errors import CellsynthError

    before = settings.progress
    with pytest.raises(CellsynthError, match="True, False or 'auto'"):
        settings.progress = "yes"
    assert settings.progress == before
    with settings.override(progress=True):
        assert settings.show_progress()
    assert settings.progress == before


def test_nb_bars(capsys):
    from cellsynth.models.nb import NegBinBaseline

    a = _counts()
    model = NegBinBaseline()
    _bars(capsys, "nb fit", lambda p: _with(p, lambda: model.fit(a, LABEL, seed=0)))
    _bars(capsys, "nb sample", lambda p: _with(p, lambda: model.sample({"a": 30, "b": 5}, seed=1)))
    one = _with(True, lambda: model.sample({"a": 30, "b": 5}, seed=1))
    two = model.sample({"a": 30, "b": 5}, seed=1)
    assert (one.X != two.X).nnz == 0  # the bar changes nothing


@pytest.mark.parametrize("exact", [True, False])
def test_pca_fit_bar_counts_every_pass(capsys, monkeypatch, exact):
    from cellsynth.features import pca as pca_mod

    if not exact:
        monkeypatch.setattr(pca_mod, "EXACT_MAX_GENES", 10)  # the randomized SVD's 6 passes
        monkeypatch.setattr(pca_mod, "EXACT_MAX_CELLS", 0)
    monkeypatch.setattr(pca_mod, "_BLOCK_ROWS", 16)
    a = _counts()
    x = sp.csr_matrix(np.log1p(a.X.toarray()))
    labels = a.obs[LABEL].to_numpy()
    cfg = FeaturesConfig(n_components=5)

    def fit(p):
        return _with(p, lambda: pca_mod.fit_pca(x, labels, list(a.var_names), cfg, seed=0))

    _bars(capsys, "PCA fit", fit)
    fit(True)
    err = capsys.readouterr().err
    n_passes = 2 if exact else 6
    total = re.findall(r"PCA fit: +100%\|[^|]*\| *([\d.]+)/([\d.]+)", err)
    assert total and total[-1][0] == total[-1][1] == str(x.shape[0] * n_passes), err[-500:]


def test_shap_bar(capsys):
    from cellsynth.classify import train_classifier
    from cellsynth.explain import explain_type

    rng = np.random.default_rng(0)
    y = np.array(["u", "v", "w"])[rng.integers(0, 3, 300)]
    x = rng.normal(size=(300, 6)).astype(np.float32)
    x[y == "w", 2] += 4
    cfg = ClassifierConfig(n_estimators=10, max_depth=3, device="cpu", n_jobs=1)
    clf = train_classifier(x[:200], y[:200], x[200:], y[200:], cfg, seed=0)
    genes = [f"g{i}" for i in range(6)]
    _bars(capsys, "SHAP", lambda p: _with(p, lambda: explain_type(clf, x, "w", np.eye(6), genes)))


def test_fidelity_bars(capsys):
    from cellsynth.metrics.fidelity import fidelity_report, real_floor
    from cellsynth.metrics.space import fit_space

    real, syn = _counts(seed=0), _counts(seed=1)
    labels = real.obs[LABEL].to_numpy()
    space = fit_space(real.X, labels, list(real.var_names), n_pcs=5, seed=0)

    def report(p):
        return _with(p, lambda: fidelity_report(space, real.X, labels, syn.X,
                                                syn.obs[LABEL].to_numpy(), seed=0))

    _bars(capsys, "fidelity per type", report)
    report(True)
    assert re.search(r"C2ST: +\d+%\|", capsys.readouterr().err)  # the overall test's folds
    _bars(capsys, "fidelity per type", lambda p: _with(p, lambda: real_floor(space, real.X, labels, seed=0)))
    assert report(True) == report(False)  # the bars change nothing


def test_scvi_bar_follows_progress_and_goes_to_stderr(capsys):
    pytest.importorskip("scvi")
    from cellsynth.config import ScviConfig
    from cellsynth.models.scvi import ScviGenerator

    a = _counts(n_per_type=30, n_genes=40)
    model = ScviGenerator(ScviConfig(n_hidden=8, n_latent=2, max_epochs=2, batch_size=64))

    def fit(p):
        _with(p, lambda: model.fit(a, LABEL, seed=0))

    _bars(capsys, "SCVI", fit)
    fit(True)
    cap = capsys.readouterr()
    assert re.search(r"SCVI: +100%\|[^|]*\| *2/2", cap.err), cap.err[-2000:]
    assert "Epoch" not in cap.out and "Training" not in cap.out  # scvi's own bar: stdout
    _bars(capsys, "SCVI sample", lambda p: _with(p, lambda: model.sample({"a": 10}, seed=0)))


# -- the CLI: evaluate and benchmark follow --quiet and the terminal --------------------------------------


def _terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


@pytest.mark.slow
def test_evaluate_bars_on_a_terminal_and_not_with_quiet(tmp_path, monkeypatch, capsys):
    real, syn = tmp_path / "real.h5ad", tmp_path / "syn.h5ad"
    _counts(seed=0).write_h5ad(real)
    _counts(seed=1).write_h5ad(syn)
    args = ["evaluate", "--real", str(real), "--synthetic", str(syn), "--label-key", LABEL,
            "--out", str(tmp_path / "out")]  # fmt: skip
    _terminal(monkeypatch)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"fidelity per type: +100%\|", err), err[-2000:]
    assert re.search(r"PCA fit: +100%\|", err)
    assert main([*args, "--quiet"]) == 0
    assert not BAR.search(capsys.readouterr().err)


def test_benchmark_bars_follow_quiet_and_the_terminal(tmp_path, monkeypatch, capsys):
    from cellsynth.evaluation import runner as ev

    seen = []

    def fake_dataset(pre, models, cfg, out, **kw):
        seen.append(settings.show_progress())
        return {"rows": {}, "models": {}}

    monkeypatch.setattr(ev, "prepare", lambda path, cfg: _counts())
    monkeypatch.setattr(ev, "_check_inputs", lambda *a: None)  # no file: prepare is faked
    monkeypatch.setattr(ev, "benchmark_dataset", fake_dataset)
    monkeypatch.setattr(ev, "results_page", lambda *a, **k: "")
    args = ["benchmark", "--data", str(tmp_path / "x.h5ad"), "--models", "nb",
            "--label-key", LABEL, "--out", str(tmp_path / "bench")]  # fmt: skip
    _terminal(monkeypatch)
    assert main(args) == 0
    assert main([*args, "--quiet"]) == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert main(args) == 0
    assert seen == [True, False, False]


def test_a_hidden_bar_logs_where_a_long_loop_is(monkeypatch, caplog):
    """With no bar (a log file), a loop logs ``desc: n/total unit [...]`` every LOG_SECONDS
    once it has run that long, and nothing for a short loop; a shown bar logs nothing."""
    import logging
    import time

    from cellsynth import options

    monkeypatch.setattr(options, "LOG_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="cellsynth.progress")
    with options.settings.override(progress=False):
        for _ in options.progress_bar(range(6), desc="slow loop", unit="chunk"):
            time.sleep(0.03)
        lines = [r.getMessage() for r in caplog.records]
        assert 1 <= len(lines) <= 6 and all(m.startswith("slow loop: ") for m in lines)
        assert "/6 chunk" in lines[-1]
        caplog.clear()
        monkeypatch.setattr(options, "LOG_SECONDS", 3600.0)
        for _ in options.progress_bar(range(6), desc="short loop"):
            pass
        assert not caplog.records
        monkeypatch.setattr(options, "LOG_SECONDS", 0.0)
        for _ in options.progress_bar(range(3), desc="own log", log=False):
            time.sleep(0.01)
        assert not caplog.records  # the epoch loop logs its own lines
