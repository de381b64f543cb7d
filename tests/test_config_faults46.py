"""Settings misuse (sweep 46): values too large for the 64-bit whole numbers every setting
becomes, networks too large for the machine, ... each refused as one line naming the setting."""

from __future__ import annotations

import re

import anndata as ad
import pytest

import cellsynth as cs
from cellsynth import config
from cellsynth.config import CVAEConfig, RunConfig
from cellsynth.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    return cs.simulate(120, 40, 3, seed=0)


@pytest.mark.parametrize("override", ["cvae.batch_size=1e30", "cvae.n_hidden=[1e30]",
                                      "cvae.n_latent=1e19", "qc.min_cells_per_gene=1e300"])
def test_a_whole_number_beyond_64_bits_is_refused_at_load(override):
    """1e30 passed every range ([1, inf)) and stopped the run later with a traceback (torch's
    overflow, HDF5's object dtype writing the model's settings)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}(\[0\])? must be a whole number below 2\*\*63"):
        config.load(None, [override])
    with pytest.raises(ConfigError, match="below 2"):
        RunConfig(cvae={"n_latent": 2**64}).validate()


def test_a_network_too_large_for_memory_is_refused_before_allocation(atlas, monkeypatch):
    """cvae.n_hidden = [1000000000] stopped a fit with the allocator's RuntimeError traceback."""
    from cellsynth import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: 1e6)  # 1 MB free
    with pytest.raises(ConfigError, match=r"cvae.n_hidden = \[100000\].*GB is available.*"
                                          r"--set cvae.n_hidden="):
        cs.CVAE(atlas, config=CVAEConfig(n_hidden=[100_000]))
    monkeypatch.undo()
    assert cs.CVAE(atlas, config=CVAEConfig(n_hidden=[16])).module is not None


@pytest.mark.parametrize(("sets", "said"), [
    (["qc.min_cells_per_gene=100000"], r"--set qc.min_cells_per_gene: `cellsynth fit --model nb` "
                                       r"does not use this setting \(it reads \[nb\]"),
    (["seed_vae.n_latent=3"], "--set seed_vae.n_latent: `cellsynth fit --model nb` does not use"),
    (["dataset.label_key=foo"], "--set dataset.label_key='foo' and the argument --label-key"),
    (["dataset.path=other.h5ad"], "--set dataset.path='other.h5ad' and the argument DATA"),
])
def test_fit_refuses_a_set_it_would_ignore(atlas, tmp_path, capsys, sets, said):
    """`cellsynth fit --set qc.min_cells_per_gene=100000` fitted on every gene without a word
    and wrote the setting into the model's run_config.toml as if used."""
    from cellsynth.cli import main

    data = tmp_path / "a.h5ad"
    atlas.write_h5ad(data)
    fit = ["fit", str(data), "--label-key", "cell_type", "--model", "nb", "--quiet"]
    assert main([*fit, "--out", str(tmp_path / "m"), *(a for s in sets for a in ("--set", s))]) == 2
    assert re.search(said, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()
    used = ["qc.chunk_size=50", "nb.min_cells=5", f"dataset.path={data}", "seed=1"]
    assert main([*fit, "--out", str(tmp_path / "ok"), *(a for s in used for a in ("--set", s))]) == 0


@pytest.mark.parametrize(("override", "meant"), [
    ("cvae.lrr=1e-3", "cvae.lr"), ("qc.min_cell_per_gene=3", "qc.min_cells_per_gene"),
    ("cvea.lr=1e-3", "cvae"), ("seeds=1", "seed")])
def test_an_unknown_key_names_the_nearest_setting(override, meant):
    """A misspelt key was answered with the section's 31 valid keys and no pointer to the one
    meant."""
    with pytest.raises(ConfigError, match=rf"did you mean '{re.escape(meant)}'\?; valid keys"):
        config.load(None, [override])


def test_a_path_with_an_environment_variable_says_it_is_not_expanded(tmp_path, monkeypatch):
    """dataset.path = "$HOME/atlas.h5ad" in a config file was refused as a relative path that
    does not exist, with no word that $HOME is taken literally."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CS_ATLAS_DIR", str(tmp_path))
    (tmp_path / "c.toml").write_text('[dataset]\npath = "$CS_ATLAS_DIR/a.h5ad"\n')
    from cellsynth.cli import main
    from cellsynth.data.io import check_file

    with pytest.raises(DataError, match=rf"not expanded .*write \$CS_ATLAS_DIR out \({tmp_path}\)"):
        check_file("$CS_ATLAS_DIR/a.h5ad")
    with pytest.raises(ConfigError, match=r"config file \${CS_ATLAS_DIR}/c.toml does not exist; "
                                          "environment variables are not expanded"):
        config.read_toml("${CS_ATLAS_DIR}/c.toml")
    assert main(["run", "--config", "c.toml", "--out", "o", "--quiet"]) == 2
    with pytest.raises(DataError, match=r"a relative path, read from [^;]*; give the path"):
        check_file("a.h5ad")  # no variable: no note


def test_a_table_given_with_set_merges_into_the_section(tmp_path):
    """--set 'cvae={lr=0.5}' replaced the whole [cvae] of the config file (or of an earlier
    --set, or of a RunConfig given to cs.run): its n_latent = 3 went back to the default."""
    from cellsynth.api import _config
    from cellsynth.config_sources import resolve

    path = tmp_path / "c.toml"
    path.write_text("[cvae]\nn_latent = 3\n")
    for cfg in (config.load(path, ["cvae={lr=0.5}"]),
                config.load(None, ["cvae.n_latent=3", "cvae={lr=0.5}"]),
                resolve(None, None, None, ["cvae.n_latent=3", "cvae={lr=0.5}"])[0],
                _config(None, None, RunConfig(cvae={"n_latent": 3}), ["cvae={lr=0.5}"])):
        assert (cfg.cvae.n_latent, cfg.cvae.lr) == (3, 0.5)
    assert config.load(None, ["cvae={lr=0.5}", "cvae.lr=0.1"]).cvae.lr == 0.1  # later wins


@pytest.mark.parametrize("argv", [["run", "--set", "dataset.path="], ["run", ""],
                                  ["run", "--config", " "], ["config", "show", "--set", "seed="]])
def test_an_empty_value_from_an_unset_variable_is_refused(tmp_path, capsys, monkeypatch, argv):
    """`cellsynth run "$ATLAS"` or `--set dataset.path=$ATLAS` with ATLAS not set ran the demo
    atlas for minutes as if it were the data; `--config ""` said "config file . is a folder"."""
    from cellsynth.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "(a shell variable that is not set?)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert config.load(None, ["dataset.path=\"\""]).dataset.path == ""  # "" written out: kept


def test_a_value_where_a_section_goes_says_how_to_write_the_section(tmp_path):
    """`cvae = 3` in a config file (or --set cvae=3) said only "'cvae' must be a table of
    settings, got 3": no word of how a table is written."""
    path = tmp_path / "c.toml"
    path.write_text("cvae = 3\n")
    for args in ((path, []), (None, ["cvae=3"])):
        with pytest.raises(ConfigError, match=r"'cvae' is a section: .*\[cvae\] with KEY = VALUE "
                                              r"lines in a config file, or --set cvae\.KEY=VALUE"):
            config.load(*args)


def test_a_config_files_missing_data_names_both_folders_searched(tmp_path, monkeypatch, caplog):
    """A config elsewhere with path = "missing.h5ad" was refused naming the current folder
    only, though the config file's folder is searched too (and a groups file names both)."""
    from cellsynth.config_sources import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cf").mkdir()
    (tmp_path / "cf" / "c.toml").write_text('[dataset]\npath = "missing.h5ad"\n')
    with caplog.at_level("WARNING", logger="cellsynth"):
        resolve(None, None, "cf/c.toml")
    said = caplog.text
    assert "no such file in the current folder" in said and str(tmp_path / "cf") in said
    assert "read from the current folder, then from the config file's" in said


def test_a_scheduler_with_the_local_backend_is_refused_before_any_stage(tmp_path, capsys):
    """classifier.dask_scheduler = "tcp://..." with the default local backend trained the
    classifier here, the cluster unused, without a word."""
    from cellsynth.cli import main

    out = tmp_path / "r"
    assert main(["run", "--set", "classifier.dask_scheduler='tcp://10.0.0.1:8786'", "--out",
                 str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'is used only with classifier.backend = "dask"' in err
    assert not (out / "data").exists()
