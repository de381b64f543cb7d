"""Runs that resume: finished stages are skipped, changed or forced ones redone, a killed run
restarts from its last finished stage, and training goes on from its last checkpoint with the
weights an uninterrupted fit would have reached."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cellsynth.cli import main
from cellsynth.config import CVAEConfig, SeedVAEConfig
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import CellsynthError
from cellsynth.models import CVAE, SeedCVAE, _checkpoint
from test_pipeline import FAST

# the fidelity metrics (most of a tiny run's time) are tested elsewhere; resuming is per stage
TINY = [*FAST, "dataset.demo_cells=600", "dataset.demo_genes=200", "qc.min_genes_per_cell=20",
        "report.fidelity=false"]


def _args(out, *extra):
    args = ["run", "--out", str(out), "--quiet"]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    return args


def _stages(out):
    return json.loads((out / "manifest.json").read_text())["stages"]


@pytest.mark.slow
def test_second_run_skips_finished_stages(tmp_path, caplog):
    assert main(_args(tmp_path)) == 0
    first = _stages(tmp_path)
    summary = (tmp_path / "metrics" / "summary.json").read_text()
    caplog.clear()
    assert main(_args(tmp_path)) == 0
    assert caplog.text.count("done before with the same settings, skipped") == 7
    assert _stages(tmp_path) == first  # nothing re-ran
    assert (tmp_path / "metrics" / "summary.json").read_text() == summary

    # settings refused before a stage runs (a generator that needs the cells in memory, with
    # the cells on disk) change nothing: config.toml and the manifest still describe the run
    config, manifest = ((tmp_path / f).read_text() for f in ("config.toml", "manifest.json"))
    assert main(_args(tmp_path, "dataset.backed=true", "generator.model='nb'")) == 2
    assert (tmp_path / "config.toml").read_text() == config
    assert (tmp_path / "manifest.json").read_text() == manifest

    # a classifier setting redoes what uses the classifier, not data, features or the generator
    caplog.clear()
    assert main(_args(tmp_path, "classifier.max_depth=2")) == 0
    assert "max_depth = 2" in (tmp_path / "config.toml").read_text()  # a rerun records its own
    again = _stages(tmp_path)
    for stage in ("data", "features", "generator"):
        assert again[stage] == first[stage], stage
    for stage in ("classifier", "experiments", "explain"):
        assert again[stage]["config_hash"] != first[stage]["config_hash"], stage
    assert "stage classifier: start" in caplog.text

    # --force redoes a stage whose settings did not change; a file its earlier run wrote and
    # this one does not (another generator's table, say) is removed, not left as this run's
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["stages"]["explain"]["outputs"].append("explain/earlier.csv")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "explain" / "earlier.csv").write_text("an earlier run's\n")
    caplog.clear()
    assert main([*_args(tmp_path, "classifier.max_depth=2"), "--force", "explain"]) == 0
    assert "stage explain: start" in caplog.text and "stage generator: start" not in caplog.text
    assert not (tmp_path / "explain" / "earlier.csv").exists()
    assert "removed explain/earlier.csv, which its earlier run wrote" in caplog.text

    # an output cut short or replaced since its stage wrote it (same name, another size) is
    # found as a missing one is: that stage runs again
    shap = tmp_path / "explain" / "shap_genes.csv"
    shap.write_text(shap.read_text()[:50])
    caplog.clear()
    assert main(_args(tmp_path, "classifier.max_depth=2")) == 0
    assert "its output explain/shap_genes.csv changed since it was written" in caplog.text
    assert "stage explain: start" in caplog.text and "stage classifier: start" not in caplog.text


def test_unknown_force_stage(tmp_path, capsys):
    assert main([*_args(tmp_path), "--force", "training"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def _checkpoint_epoch(path) -> int:
    """Epochs done in the training checkpoint at ``path`` (0 when there is none yet)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads(f.metadata()["cellsynth_checkpoint"])["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_killed_during_training_resumes_from_its_checkpoint(tmp_path, caplog):
    """A run killed mid-training keeps its finished stages and its last training checkpoint; the
    rerun goes on from that checkpoint's epoch, not from epoch 0."""
    epochs = 12
    training = [f"cvae.max_epochs={epochs}", f"cvae.patience={epochs}", "cvae.batch_size=16",
                "cvae.checkpoint_seconds=0"]  # fmt: skip
    ckpt = tmp_path / "generator" / "checkpoint" / "cvae.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cellsynth.cli", *_args(tmp_path, *training)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if _checkpoint_epoch(ckpt) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run finished or timed out before its second training checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = _stages(tmp_path)
    assert before["generator"]["status"] == "running"
    assert not (tmp_path / "results.md").exists()
    done = _checkpoint_epoch(ckpt)
    assert 2 <= done < epochs

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert main(_args(tmp_path, *training)) == 0  # the same settings: resumed
    assert f"resuming CVAE training from epoch {done} " in caplog.text
    after = _stages(tmp_path)
    for stage in ("data", "features", "classifier"):
        assert after[stage] == before[stage], stage  # not redone
    assert after["generator"]["status"] == "done"
    history = json.loads((tmp_path / "generator" / "history.json").read_text())
    assert history["resumed_from"] == done and history["epochs"] == epochs
    assert len(history["val_loss"]) == epochs  # the killed run's epochs kept, not run again
    assert not ckpt.parent.exists()  # removed once the stage finished
    assert (tmp_path / "results.md").is_file()


# ---------------------------------------------------------------------------------------------
# training checkpoints, in process


class Interrupted(Exception):
    """Stands for a kill right after a checkpoint was written."""


def interrupt_after(monkeypatch, epoch: int, error: type[BaseException] = Interrupted) -> None:
    """Make the training loop die (``error``; Ctrl-C is
    ``KeyboardInterrupt``) right after writing the checkpoint of ``epoch`` epochs."""
    write = _checkpoint.Checkpoint.write

    def write_then_die(self, tensors, meta):
        write(self, tensors, meta)
        if meta["epoch"] == epoch:
            raise error

    monkeypatch.setattr(_checkpoint.Checkpoint, "write", write_then_die)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def atlas():
    return simulate_atlas(n_cells=300, n_genes=80, n_types=3, label_key="cell_type", seed=1)


def cvae_config(**changes) -> CVAEConfig:
    base = dict(n_embed=8, n_hidden=[32, 16], n_latent=4, max_epochs=6, batch_size=64,
                patience=100, checkpoint_seconds=0.0, balanced_sampling=True, device="cpu")
    return CVAEConfig(**{**base, **changes})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ref = b.state_dict()
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)


def test_resumed_cvae_equals_uninterrupted(atlas, tmp_path, monkeypatch, caplog):
    cfg = cvae_config()
    whole = CVAE(config=cfg)
    whole.fit(atlas, "cell_type", seed=4)

    ckpt = tmp_path / "checkpoint"
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        interrupt_after(m, 3)
        CVAE(config=cfg).fit(atlas, "cell_type", seed=4, checkpoint_dir=ckpt)
    path = ckpt / "cvae.safetensors"
    with safe_open(str(path), framework="pt") as f:  # plain tensors and a JSON header
        meta = json.loads(f.metadata()["cellsynth_checkpoint"])
        assert {"model.embed.weight", "rng.torch", "rng.data"} <= set(f.keys())
    assert meta["epoch"] == 3 and len(meta["history"]["val_loss"]) == 3

    torch.manual_seed(99)  # the random states are the checkpoint's, not whatever is here
    resumed = CVAE(config=cfg)
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        hist = resumed.fit(atlas, "cell_type", seed=4, checkpoint_dir=ckpt)
    assert "resuming CVAE training from epoch 3" in caplog.text
    assert hist["resumed_from"] == 3 and hist["epochs"] == 6
    assert hist["train_loss"] == whole.history["train_loss"]
    assert hist["val_loss"] == whole.history["val_loss"]
    assert hist["best_epoch"] == whole.history["best_epoch"]
    assert_same_weights(resumed.module, whole.module)  # latent mixture included
    assert not ckpt.exists()  # removed once training finished
    a = resumed.sample({resumed.labels[0]: 30}, seed=0)
    b = whole.sample({whole.labels[0]: 30}, seed=0)
    assert (a.X != b.X).nnz == 0


def test_checkpoint_of_other_settings_is_not_resumed(atlas, tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "checkpoint"
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        interrupt_after(m, 2)
        CVAE(config=cvae_config()).fit(atlas, "cell_type", seed=4,
                                       checkpoint_dir=ckpt)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cellsynth"):  # another learning rate
        hist = CVAE(config=cvae_config(lr=2e-3, max_epochs=3)).fit(
            atlas, "cell_type", seed=4, checkpoint_dir=ckpt)  # fmt: skip
    assert "written with other settings, data or seed; training from the start" in caplog.text
    assert "resuming" not in caplog.text and "resumed_from" not in hist
    assert hist["epochs"] == 3 and not ckpt.exists()

    ckpt.mkdir()  # an unreadable file: a warning, then a fresh start
    (ckpt / "cvae.safetensors").write_bytes(b"not a checkpoint")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        hist = CVAE(config=cvae_config(max_epochs=2)).fit(
            atlas, "cell_type", seed=4, checkpoint_dir=ckpt)  # fmt: skip
    assert "cannot read the training checkpoint" in caplog.text and "resumed_from" not in hist


def test_checkpoint_that_does_not_fit_says_delete_it(atlas, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        interrupt_after(m, 2)
        CVAE(config=cvae_config()).fit(atlas, "cell_type", seed=4,
                                       checkpoint_dir=ckpt)  # fmt: skip
    monkeypatch.setattr(_checkpoint.Checkpoint, "read",  # a matching key but other shapes
                        lambda self: ({"model.x": torch.zeros(1)}, {"epoch": 2}))  # fmt: skip
    with pytest.raises(CellsynthError, match=r"does not fit this CVAE .*; delete it and run again"):
        CVAE(config=cvae_config()).fit(atlas, "cell_type", seed=4,
                                       checkpoint_dir=ckpt)  # fmt: skip


def test_checkpoints_follow_the_settings(atlas, tmp_path, monkeypatch):
    epochs = []
    write = _checkpoint.Checkpoint.write

    def record(self, tensors, meta):
        epochs.append(meta["epoch"])
        write(self, tensors, meta)

    monkeypatch.setattr(_checkpoint.Checkpoint, "write", record)
    CVAE(config=cvae_config(checkpoint_every=2, max_epochs=7)).fit(
        atlas, "cell_type", seed=0, checkpoint_dir=tmp_path / "a")  # fmt: skip
    assert epochs == [2, 4, 6]  # never after the last epoch
    epochs.clear()
    CVAE(config=cvae_config(checkpoint_seconds=3600.0)).fit(
        atlas, "cell_type", seed=0, checkpoint_dir=tmp_path / "b")  # fmt: skip
    assert epochs == []  # not an hour yet
    CVAE(config=cvae_config(checkpoint_every=0)).fit(
        atlas, "cell_type", seed=0, checkpoint_dir=tmp_path / "c")  # fmt: skip
    assert epochs == []


def test_resumed_seed_cvae_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The reference model: its one-cycle learning-rate schedule is restored too."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    y, yv = np.array(labels * 60), np.array(labels * 20)
    X = (rng.normal(size=(len(y), 12)) + 3 * (y[:, None] == "a")).astype(np.float32)
    Xv = (rng.normal(size=(len(yv), 12)) + 3 * (yv[:, None] == "a")).astype(np.float32)
    cfg = SeedVAEConfig(n_embed=4, n_hidden=[16], n_latent=4, max_epochs=5, batch_size=32,
                        patience=100, device="cpu")  # fmt: skip
    whole = SeedCVAE(12, labels, cfg)
    whole.fit(X, y, Xv, yv, seed=2)
    monkeypatch.setattr("cellsynth.models.seed.CHECKPOINT_SECONDS", 0.0)
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        interrupt_after(m, 2)
        SeedCVAE(12, labels, cfg).fit(X, y, Xv, yv, seed=2,
                                      checkpoint_dir=tmp_path)  # fmt: skip
    resumed = SeedCVAE(12, labels, cfg)
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        hist = resumed.fit(X, y, Xv, yv, seed=2, checkpoint_dir=tmp_path)
    assert "resuming seed CVAE training from epoch 2" in caplog.text
    assert hist["resumed_from"] == 2 and hist["val_loss"] == whole.history["val_loss"]
    assert_same_weights(resumed.module, whole.module)



def test_checkpoint_keeps_best_weights_of_an_earlier_epoch(tmp_path):
    """The early-stopping state: best weights from before the last epoch, and the patience count."""
    from cellsynth.models import _training as tr

    def objects():
        net = torch.nn.Linear(3, 2)
        return net, torch.optim.AdamW(net.parameters(), lr=0.1), tr.EarlyStopping(patience=5)

    net, opt, stopper = objects()
    stopper.step(1.0, 0, net)  # the best epoch
    best = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.ones(4, 3)).sum().backward()
    opt.step()  # the weights move on, the loss does not improve
    stopper.step(2.0, 1, net)
    history = {"train_loss": [1.0, 2.0], "val_loss": [1.0, 2.0]}
    ckpt = _checkpoint.Checkpoint(tmp_path, "k")
    generator = torch.Generator().manual_seed(0)
    state = _checkpoint.TrainingState(net, opt, None, generator, stopper, history)
    ckpt.write(*state.capture(2, 1.5, "k"))

    net2, opt2, stopper2 = objects()
    hist2: dict = {}
    state2 = _checkpoint.TrainingState(net2, opt2, None, torch.Generator(), stopper2, hist2)
    epoch, seconds = state2.restore(ckpt.read())
    assert (epoch, seconds) == (2, 1.5) and hist2 == history
    assert (stopper2.best_epoch, stopper2.best_loss, stopper2.wait) == (0, 1.0, 1)
    for k, v in best.items():
        torch.testing.assert_close(stopper2.best_state[k], v, rtol=0, atol=0)
        torch.testing.assert_close(net2.state_dict()[k], net.state_dict()[k], rtol=0, atol=0)
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


def test_a_rerun_leaves_no_earlier_evaluation_file(tmp_path):
    """Files the evaluation stage wrote under earlier settings (covariates, fidelity, UMAP) are
    removed when it runs again, so the report never shows an earlier run's section."""
    assert main(_args(tmp_path)) == 0
    stale = [tmp_path / "metrics" / "covariates.json", tmp_path / "metrics" / "fidelity.json",
             tmp_path / "features" / "umap.csv"]  # fmt: skip
    for path in stale:
        path.write_text("{}")
    assert main([*_args(tmp_path), "--force", "evaluation"]) == 0
    assert not [p for p in stale if p.exists()]  # TINY: no fidelity, no UMAP, no covariates
    assert (tmp_path / "report.html").is_file()


@pytest.mark.slow
def test_a_rerun_that_fails_marks_what_it_would_redo_stale(tmp_path, capsys):
    """A rerun whose new QC settings fail leaves the later stages' earlier results on disk:
    the manifest calls them stale and `cellsynth info` says the F1s are an earlier run's."""
    from cellsynth.info import describe

    assert main(_args(tmp_path)) == 0
    assert "f1_macro_note" not in describe(tmp_path)
    assert main(_args(tmp_path, "qc.min_genes_per_cell=100000")) == 2
    stages = _stages(tmp_path)
    assert stages["data"]["status"] == "failed"
    assert {stages[s]["status"] for s in ("features", "generator", "evaluation")} == {"stale"}
    assert "from an earlier run" in describe(tmp_path)["f1_macro_note"]
    assert main(_args(tmp_path)) == 0  # the earlier settings again: every stage done anew
    assert {s["status"] for s in _stages(tmp_path).values()} == {"done"}


def test_the_input_is_known_by_its_content_and_recorded_by_its_full_path(tmp_path, monkeypatch):
    """The same file named two ways (``atlas.h5ad``, ``./atlas.h5ad``) keeps every stage's key,
    so a rerun skips them; config.toml names it by its full path (it replays from any
    folder) and the manifest records the command that started the run."""
    import tomllib

    from cellsynth import config
    from cellsynth.pipeline.context import RunContext

    data = tmp_path / "in"
    data.mkdir()
    (data / "atlas.h5ad").write_bytes(b"some bytes")
    monkeypatch.chdir(data)
    keys = []
    for i, spelled in enumerate(("atlas.h5ad", "./atlas.h5ad", str(data / "atlas.h5ad"))):
        cfg = config.load(overrides=[f"dataset.path='{spelled}'"])
        ctx = RunContext(cfg, tmp_path / f"run{i}", command=f"cellsynth run {spelled}")
        try:
            ctx.record_config()
            keys.append(ctx.plan.hashes)
        finally:
            ctx.close()
        saved = tomllib.loads((tmp_path / f"run{i}" / "config.toml").read_text())
        assert saved["dataset"]["path"] == str(data / "atlas.h5ad")
        manifest = json.loads((tmp_path / f"run{i}" / "manifest.json").read_text())
        assert manifest["command"] == f"cellsynth run {spelled}"
    assert keys[0] == keys[1] == keys[2]
    (data / "atlas.h5ad").write_bytes(b"other bytes")  # the content is what counts
    ctx = RunContext(config.load(overrides=["dataset.path='atlas.h5ad'"]), tmp_path / "run3")
    ctx.close()
    assert ctx.plan.hashes["data"] != keys[0]["data"]
