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
