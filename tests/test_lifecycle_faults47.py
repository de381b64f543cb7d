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
    stages = describe(run)["stages"]
    assert stages["features"]["status"] == "done"
    status = stages["generator"]["status"]
    assert status.startswith("done, but its output generator/weights.safetensors is missing")
    assert "1 more" in status and "the next run redoes it" in status
    (run / "features" / "genes.json").write_text("[1, 2]")  # replaced by another size
    assert "changed since it was written" in describe(run)["stages"]["features"]["status"]
