"""A run directory's life under misuse (session 47's lifecycle sweep): rerunning a run with
no data, `cellsynth info` and `cellsynth report` on a run whose files changed since."""

from __future__ import annotations

import json
from pathlib import Path

from cellsynth.cli import main


def _manifest(run: Path, stages: dict) -> str:
    run.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"stages": stages, "config": {}, "environment": {"cellsynth": "0.1.0"}})
    (run / "manifest.json").write_text(text)
    return text


def test_a_run_given_no_data_does_not_replace_a_run_of_a_users_file(tmp_path, capsys) -> None:
    # `cellsynth run --out RUN` (meaning: go on with RUN) ran the demo atlas there and
    # replaced every result of the run on the user's file, with an INFO line only
    run = tmp_path / "my run é"
    data = tmp_path / "atlas.h5ad"
    text = _manifest(run, {"data": {"status": "done", "config_hash": "0" * 16, "input": {
        "path": str(data), "size": 1, "mtime_ns": 1, "sha256": "0" * 64}}})
    assert main(["run", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"holds a run of {data}" in err and "demo" in err and "--force data" in err
    assert str(data) in err.split("give its data")[1]  # the command that goes on with it
    assert (run / "manifest.json").read_text() == text  # nothing replaced
    assert not (run / "config.toml").exists() and not (run / "data").exists()


def test_info_says_a_done_stage_whose_files_were_deleted_is_not_whole(tmp_path) -> None:
    # `rm -r RUN/generator` then `cellsynth info RUN`: the generator was 'done', as if its
    # model were there; the next run redoes it
    from cellsynth.info import describe

    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    (run / "features" / "genes.json").write_text("[]")
    _manifest(run, {
        "features": {"status": "done", "outputs": ["features/genes.json"],
                     "sizes": {"features/genes.json": 2}},
        "generator": {"status": "done", "outputs": ["generator/weights.safetensors",
                                                    "generator/config.json"]}})
    (run / "metrics").mkdir()
    (run / "metrics" / "summary.json").write_text('{"a": {"fine": {"f1_macro": 0.9}}}')
    described = describe(run)
    assert "f1_macro_note" not in described  # the F1s are still this run's
    stages = described["stages"]
    assert stages["features"]["status"] == "done"
    status = stages["generator"]["status"]
    assert status.startswith("done, but its output generator/weights.safetensors is missing")
    assert "1 more" in status and "the next run redoes it" in status
    (run / "features" / "genes.json").write_text("[1, 2]")  # replaced by another size
    assert "changed since it was written" in describe(run)["stages"]["features"]["status"]


def test_settings_the_generator_does_not_read_keep_the_trained_generator(tmp_path) -> None:
    # `--set generator.n_per_type_eval=500` (read by the experiments stage only) or a setting
    # of another model's section (scvi.n_hidden with generator.model = "cvae") retrained the
    # generator: hours on an atlas, for nothing
    from cellsynth import config
    from cellsynth.resume import STAGES, ResumePlan
    from cellsynth.runtime import Manifest

    def plan(*overrides: str) -> ResumePlan:
        return ResumePlan(Manifest(tmp_path / "manifest.json"),
                          config.load(overrides=list(overrides)), set())

    def done(keys: dict[str, str]) -> None:
        _manifest(tmp_path, {name: {"status": "done", "config_hash": keys[name]}
                             for name in STAGES})

    done(plan().hashes)
    for setting in ("scvi.n_hidden=64", "seed_vae.n_latent=3", "nb.min_cells=5"):
        assert not [s for s in STAGES if plan(setting).runs(s)], setting
    counts = plan("generator.n_per_type_eval=5")
    assert [s for s in STAGES if counts.runs(s)] == ["experiments", "evaluation"]
    done(plan().hashes)
    ran = plan("cvae.n_latent=3")  # the model's own settings: the generator trains again
    assert [s for s in STAGES if ran.runs(s)] == ["generator", "experiments", "evaluation"]
    done(plan().earlier)  # a run kept by an earlier version: its stages are still done
    assert not [s for s in STAGES if plan().runs(s)]


def test_a_stage_redone_for_its_settings_names_the_settings(tmp_path, caplog) -> None:
    # a rerun with one setting changed logged 'its settings changed; running again' and left
    # the user to guess which of a config's hundred settings it was
    import dataclasses
    import logging

    from cellsynth import config
    from cellsynth.resume import STAGES, ResumePlan
    from cellsynth.runtime import Manifest

    keys = ResumePlan(Manifest(tmp_path / "manifest.json"), config.load(), set()).hashes
    text = json.dumps({"stages": {name: {"status": "done", "config_hash": keys[name]}
                                  for name in STAGES},
                       "config": dataclasses.asdict(config.load())})
    with caplog.at_level(logging.INFO, logger="cellsynth.pipeline"):
        for stage, settings in (("data", ["qc.iqr_factor=2.0"]),
                                ("generator", ["cvae.n_latent=3", "generator.n_per_type_eval=7"])):
            (tmp_path / "manifest.json").write_text(text)
            plan = ResumePlan(Manifest(tmp_path / "manifest.json"),
                              config.load(overrides=settings), set())
            assert plan.runs(stage)
    assert "stage data: its settings changed (qc.iqr_factor: 1.5 before, 2.0 now)" in caplog.text
    # the generator's own: not the counts of generated cells, which it does not read
    assert "stage generator: its settings changed (cvae.n_latent: 32 before, 3 now)" in \
        caplog.text


def test_info_on_a_folder_with_another_programs_manifest_is_refused(tmp_path, capsys) -> None:
    # `cellsynth info DIR` where DIR/manifest.json is another program's: 'kind: run' with no
    # stages and 'cellsynth: None', as if it were an empty run (the report refuses it)
    for text in ('{"name": "my-app", "version": 2}', "[1, 2]"):
        (tmp_path / "manifest.json").write_text(text)
        assert main(["info", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "holds no run's stages" in err and "written by cellsynth run" in err


def test_a_hand_edited_config_toml_that_a_rerun_replaces_is_warned(tmp_path, caplog) -> None:
    # edit RUN/config.toml by hand, then `cellsynth run DATA --out RUN`: the run used its
    # own settings and rewrote the file, the edits gone without a word
    import dataclasses
    import logging

    from cellsynth import config
    from cellsynth.pipeline.context import RunContext

    recorded = dataclasses.asdict(config.load())
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"stages": {"data": {"status": "done"}}, "config": recorded}))
    config.save(config.load(), tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    (tmp_path / "config.toml").write_text(text.replace("max_depth = 6", "max_depth = 2"))
    with caplog.at_level(logging.WARNING):
        RunContext(config.load(), tmp_path).close()  # this run: the default, 6
        assert "config.toml was edited since the run wrote it (classifier.max_depth = 2 " \
               "there, 6 in this run)" in caplog.text and "give --config" in caplog.text
        caplog.clear()  # the file given with --config: its edits are this run's, no warning
        RunContext(config.load(tmp_path / "config.toml"), tmp_path).close()
        assert "edited" not in caplog.text


def test_info_names_the_runs_data_and_whether_it_changed_since(tmp_path) -> None:
    # `cellsynth info RUN` did not say which data file the run was on, nor that the file had
    # been replaced or moved since (the next run redoes every stage, or cannot find it)
    import os

    from cellsynth.info import describe

    data = tmp_path / "atlas é.h5ad"
    data.write_bytes(b"12345")
    st = data.stat()
    _manifest(tmp_path / "run", {"data": {"status": "done", "input": {
        "path": str(data), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "0"}}})
    assert describe(tmp_path / "run")["data"] == str(data)
    data.write_bytes(b"another file")
    assert "changed since the run read it" in describe(tmp_path / "run")["data"]
    os.remove(data)
    assert "not there now" in describe(tmp_path / "run")["data"]


def test_a_runs_generator_its_run_no_longer_calls_done_is_warned(tmp_path, caplog) -> None:
    # a run rerun with other settings and stopped before its generator trained: `cellsynth
    # generate RUN/generator` (cs.load_model) used the earlier run's model without a word,
    # though RUN/config.toml now describes another
    import logging

    import cellsynth as cs
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models import NegBinBaseline

    model = NegBinBaseline()
    model.fit(simulate_atlas(n_cells=200, n_genes=40, n_types=2, seed=0), "cell_type")
    model.save(tmp_path / "run" / "generator")
    with caplog.at_level(logging.WARNING):
        for status, warned in (("done", False), ("failed", True), ("stale", True)):
            _manifest(tmp_path / "run", {"generator": {"status": status}})
            caplog.clear()
            cs.load_model(tmp_path / "run" / "generator")
            assert ("saved by an earlier run" in caplog.text) == warned, status
    assert "generator stage is stale since" in caplog.text
