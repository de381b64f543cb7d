"""Faults found in session 47's own review (each test fails without its fix)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from cellsynth import config


def test_a_settings_file_is_never_left_half_written(tmp_path, monkeypatch):
    """config.save wrote config.toml in place: a full disk or a kill mid-write left half of the
    settings where the whole had been (and a rerun read them)."""
    path = tmp_path / "config.toml"
    config.save(config.RunConfig(), path)
    before = path.read_text()
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    cfg = config.RunConfig(cvae={"max_epochs": 7})
    with pytest.raises(Exception):  # noqa: B017 - the disk-full error, whatever its type
        config.save(cfg, path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left


def test_a_benchmark_stopped_while_scoring_reuses_the_fit_it_saved(tmp_path, monkeypatch):
    """A benchmark stopped after a generator's fit was saved (while its privacy audit or TSTR
    ran) fitted that generator again from scratch when rerun; it reads the saved fit back, and
    the page is the one an uninterrupted run writes."""
    from cellsynth import benchmark, evaluation
    from cellsynth.data.simulate import simulate_atlas

    data = tmp_path / "tiny.h5ad"
    simulate_atlas(300, 120, 3, seed=3).write_h5ad(data)
    sets = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]
    evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "whole", overrides=sets,
                             command="t", reuse=True)
    real_tstr = benchmark.tstr

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "tstr", stopped)
    out = tmp_path / "bench"
    with pytest.raises(KeyboardInterrupt):
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="t",
                                 reuse=True)
    assert (out / "tiny" / "models" / "nb.fit.json").is_file()
    monkeypatch.setattr(benchmark, "tstr", real_tstr)

    def fail(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(benchmark, "make_generator", fail)
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="t", reuse=True)

    def row(where):
        kept = json.loads((where / "tiny" / "results" / "nb.json").read_text())["row"]
        timed = {"fit_seconds", "generate_cells_per_second"}  # two fits' clocks
        return {k: v for k, v in kept.items() if k not in timed}

    assert row(out) == row(tmp_path / "whole")
    # other settings: the saved fit is not theirs
    with pytest.raises(AssertionError, match="fitted again"):
        evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "bench", command="t",
                                 overrides=[*sets, "seed=5"], reuse=True)


def test_an_atlas_evaluation_keeps_the_cells_each_type_needs_for_its_verdict():
    """The evaluation stage subsampled an atlas's test cells by share: at report.max_cells =
    3,000 over 126 types most types kept a handful of cells, too few for a verdict of their
    own (40: the floor's two halves of 20). Each type now keeps 40 (or all it has) at least."""
    import numpy as np

    from cellsynth.data.split import stratified_subsample
    from cellsynth.metrics.verdict import MIN_TYPE_CELLS, TYPE_EVAL_CELLS

    rng = np.random.default_rng(0)
    sizes = np.maximum(5, (20000 * rng.dirichlet(np.full(126, 0.3))).astype(int))
    labels = np.repeat([f"t{i:03d}" for i in range(126)], sizes)
    rng.shuffle(labels)
    judged = sizes >= 2 * MIN_TYPE_CELLS

    def kept(idx):
        return np.array([(labels[idx] == f"t{i:03d}").sum() for i in range(126)])

    by_share = kept(stratified_subsample(labels, 3000, seed=1))
    assert (by_share[judged] < 2 * MIN_TYPE_CELLS).sum() > 20  # the fault's picture
    picked = stratified_subsample(labels, 3000, seed=1, floor=TYPE_EVAL_CELLS)
    assert len(set(picked)) == len(picked)
    counts = kept(picked)
    assert (counts >= np.minimum(sizes, TYPE_EVAL_CELLS)).all() and (counts <= sizes).all()
    # the others keep their share: the largest as many as without a floor
    assert counts[np.argmax(sizes)] == by_share[np.argmax(sizes)] > TYPE_EVAL_CELLS
    assert (counts == np.maximum(by_share, np.minimum(sizes, TYPE_EVAL_CELLS))).all()
    # under the cap every cell, with or without a floor; floor 0 is the share as it was
    assert (stratified_subsample(labels[:500], 3000, seed=1, floor=40) == np.arange(500)).all()
    assert (stratified_subsample(labels, 3000, seed=1, floor=0)
            == stratified_subsample(labels, 3000, seed=1)).all()


def test_many_small_combinations_are_generated_together_with_the_cells_of_one_at_a_time(
        monkeypatch):
    """A request of thousands of small combinations (a synthetic twin of an atlas with many
    donors) was decoded one combination at a time: a few hundred cells a second, each piece a
    decoder call and a draw. Consecutive combinations of a type now share a chunk, and the
    cells are those the piece-by-piece draw gives (same noise, each piece its own stream)."""
    import numpy as np

    from cellsynth.config import CVAEConfig
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models import _draws, sampling
    from cellsynth.models.cvae import CVAE

    a = simulate_atlas(600, 80, 3, seed=0, n_donors=12, n_conditions=2, doublet_rate=0)
    model = CVAE(a, label_key="cell_type", covariate_keys=["donor", "condition"],
                 config=CVAEConfig(n_hidden=[32], n_latent=4, max_epochs=2, select="elbo"))
    model.train(max_epochs=2)
    comp = a.obs.groupby(["cell_type", "donor", "condition"], observed=True).size()
    request = comp[comp > 0].rename("n").reset_index()
    request["n"] = np.minimum(request["n"], 7)
    calls = []
    real = _draws.nb_csr_seeded
    monkeypatch.setattr(_draws, "nb_csr_seeded",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    together = model.sample(request, seed=3)
    assert len(calls) <= 3 * 4  # a chunk per type (and flags), not one per combination

    def one_at_a_time(self, code, group, rng, latent, key):
        return sampling.stack_rows([_draws.sample_counts(self.module, code, n, rng, latent, cov,
                                                         unseen_level=key[2], any_type=key[1])
                                    for cov, n in group])

    monkeypatch.setattr(sampling.GenerationMixin, "_sample_group", one_at_a_time)
    apart = model.sample(request, seed=3)
    assert together.n_obs == apart.n_obs == request["n"].sum()
    assert (together.obs == apart.obs).all().all()
    diff = abs(together.X - apart.X)
    assert diff.nnz <= 1e-4 * np.prod(together.shape)  # float rounding of batched matmuls


def test_an_scvi_network_too_large_for_memory_is_refused_before_any_work(monkeypatch):
    """scvi.n_hidden = 1000000 (or many layers) went to scvi-tools and stopped in torch's
    allocator with a traceback: the CVAE's check of the network's training memory now covers
    scvi, naming its own settings."""
    pytest.importorskip("scvi")
    import cellsynth as cs
    from cellsynth import runtime
    from cellsynth.config import ScviConfig
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.errors import ConfigError

    atlas = simulate_atlas(200, 60, 2, seed=0, doublet_rate=0)
    monkeypatch.setattr(runtime, "available_memory", lambda: 1e6)  # 1 MB free
    gen = cs.ScviGenerator(atlas, "cell_type", config=ScviConfig(n_hidden=100_000, n_layers=2))
    with pytest.raises(ConfigError, match=r"scvi.n_hidden = 100000, scvi.n_layers = 2, "
                                          r"scvi.n_latent = 10 over 60 inputs.*n_hidden = 128, "
                                          r"n_layers = 1, n_latent = 10"):
        gen.fit(atlas, "cell_type", seed=0)


def test_a_privacy_audit_of_few_cells_says_it_is_weak_instead_of_a_plain_not_flagged():
    """With a few dozen cells a side an attack is flagged only above an AUC of 0.6-0.7, and
    the audit said "privacy: not flagged" as it does on thousands: a weak audit read as no
    leak. It now says how weak it was (the flag's AUC) and how to make it stronger."""
    import cellsynth as cs
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.metrics.privacy import PrivacyResult
    from cellsynth.metrics.privacy_counts import WEAK_AUDIT_AUC, average_audits
    from cellsynth.metrics.verdict_text import verdict_lines

    a = simulate_atlas(260, 100, 2, seed=0, doublet_rate=0.0, uninformative_rate=0.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    train, test = a[:200].copy(), a[200:].copy()
    synth = simulate_atlas(200, 100, 2, seed=5, doublet_rate=0.0, uninformative_rate=0.0)
    synth.obs["cell_type"] = synth.obs["cell_type"].astype(str)
    result = cs.evaluate(train, synth, label_key="cell_type", heldout=test, seed=0)
    privacy = result.privacy
    assert not privacy["flagged"]
    weak = [c for c in privacy["caveats"] if c.startswith("a weak audit")]
    assert len(weak) == 1 and "flagged only above AUC 0." in weak[0]
    assert any("a weak audit" in line for line in verdict_lines(result.verdict, privacy=privacy))

    def audit(n, auc=0.5):
        from cellsynth.metrics.privacy import auc_threshold

        threshold, se = auc_threshold(n, n)
        attack = {"auc": auc, "threshold": threshold, "flagged": auc > threshold,
                  "se_null": se, "n_members": n, "n_nonmembers": n}
        return PrivacyResult({"exact_share": 0.0, "exact_duplicates": 0, "exact_source": "x"},
                             {"distance": attack}, None, None, "cells", False, [], {})

    assert auc_of(audit(60)) > WEAK_AUDIT_AUC and average_audits([audit(60)]).caveats
    assert average_audits([audit(2000)]).caveats == []  # thousands a side: strong enough
    assert not any("weak" in c for c in average_audits([audit(60, 0.95)]).caveats)  # flagged


def auc_of(result):
    return max(a["threshold"] for a in result.attacks.values())


def test_fit_with_a_whole_preset_as_config_says_which_settings_it_does_not_use(tmp_path, caplog):
    """`cellsynth fit DATA --config examples/PRESET.toml` dropped the preset's QC, split and
    classifier settings and its dataset.path without a word (the same given with --set are
    refused): it now warns of them, and that the DATA argument is the data."""
    from cellsynth.cli import main
    from cellsynth.data.simulate import simulate_atlas

    data = tmp_path / "a.h5ad"
    simulate_atlas(200, 60, 2, seed=0, doublet_rate=0.0).write_h5ad(data)
    preset = tmp_path / "preset.toml"
    preset.write_text('seed = 3\n[dataset]\npath = "other.h5ad"\nlabel_key = "cell_type"\n'
                      '[qc]\nmin_genes_per_cell = 5\n[classifier]\nmax_depth = 4\n'
                      '[nb]\nmin_cells = 5\n')
    with caplog.at_level("WARNING"):
        assert main(["fit", str(data), "--label-key", "cell_type", "--model", "nb", "--config",
                     str(preset), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    said = caplog.text
    assert "dataset.path = 'other.h5ad'" in said and "reads the argument DATA" in said
    assert "does not use qc.min_genes_per_cell, classifier.max_depth (it reads [nb]" in said
    assert "label_key" not in said.split("does not use")[1].split("(")[0]  # the same: fine
    assert "nb.min_cells" not in said and "seed" not in said.split("does not use")[1].split("(")[0]


def test_nb_says_a_fallback_once_not_at_every_sample(caplog):
    """A run's nb generates three times (experiments b and c, c's validation cells) and warned
    three times that the same combinations fall back to their type's fit; a model warns of a
    combination once, later samples of it log it at INFO, a new one warns again."""
    import logging

    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models.nb import NegBinBaseline

    a = simulate_atlas(400, 60, 2, seed=0, doublet_rate=0.0, n_conditions=2)
    a.obs["cellsynth_split"] = "train"
    model = NegBinBaseline(covariate_keys=["condition"], min_cells=10_000)  # every one falls back
    model.fit(a, "cell_type")

    def warned(**request):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cellsynth"):
            model.sample(**request, seed=1)
        said = [r for r in caplog.records if "drawn from their type's fit" in r.getMessage()]
        assert len(said) == 1
        return said[0].levelno == logging.WARNING

    assert warned(request={"type_00": 5}, where={"condition": "stim"})
    assert not warned(request={"type_00": 7}, where={"condition": "stim"})  # said already
    assert warned(request={"type_00": 5}, where={"condition": "ctrl"})  # a new one


def test_a_run_with_the_scvi_generator_without_scvi_tools_stops_before_any_stage(
        tmp_path, monkeypatch, capsys):  # fmt: skip
    """`cellsynth run --set generator.model=scvi` without scvi-tools ran the data, features and
    classifier stages (an atlas's hour) before the generator stage asked for the extra. It is
    said before the data stage, with the other way out."""
    import sys

    from cellsynth.cli import main

    monkeypatch.setitem(sys.modules, "scvi", None)  # `import scvi` fails as when not installed
    out = tmp_path / "run"
    assert main(["run", "--set", "generator.model=scvi", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the scvi generator needs scvi-tools" in err, err
    assert err.strip().endswith("or choose another generator.model"), err
    assert not (out / "data").exists()


def test_an_scvi_batch_of_one_cell_is_refused_with_the_settings(tmp_path, capsys):
    """scvi.batch_size = 1 passed the settings' checks and was refused only by the fit (after
    the data, features and classifier stages of a run): its range starts at 2."""
    from cellsynth.cli import main

    out = tmp_path / "run"
    assert main(["run", "--set", "scvi.batch_size=1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "scvi.batch_size" in err and "2" in err, err
    assert not (out / "data").exists()
