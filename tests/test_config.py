from __future__ import annotations

import typing
from pathlib import Path

import pytest

from cellsynth import config, config_rules, config_sources
from cellsynth.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_are_the_reference_where_they_do_not_grow_with_the_atlas():
    cfg = config.RunConfig()
    # 2,500 PCs and every training cell in XGBoost cost days at E-ANND-5's size: the defaults
    # are scanpy's 50 PCs and a cap sized from the training set, the reference's in its preset
    assert cfg.features.n_components == 50 and cfg.classifier.max_cells_per_class == "auto"
    reference = config.load(EXAMPLES / "e-annd-5.toml")
    assert reference.features.n_components == 2500
    assert reference.classifier.max_cells_per_class == 0
    assert cfg.classifier.n_estimators == 500
    assert cfg.seed_vae.n_hidden == [2048, 1024, 512, 256]
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.7, 0.1, 0.2)


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('seed = 3\n[features]\nn_components = 10\n[dataset]\nis_normalised = true\n')
    cfg = config.load(p, ["seed_vae.n_hidden=[8, 4]", "dataset.label_key=cell_type2", "seed=5"])
    assert cfg.seed == 5
    assert cfg.features.n_components == 10
    assert cfg.dataset.is_normalised is True
    assert cfg.seed_vae.n_hidden == [8, 4]
    assert cfg.dataset.label_key == "cell_type2"


def test_round_trip(tmp_path):
    cfg = config.load(None, ["qc.iqr_factor=2", "explain.cell_type=B"])
    config.save(cfg, tmp_path / "c.toml")
    again = config.load(tmp_path / "c.toml")
    assert config.to_dict(again) == config.to_dict(cfg)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("vae.n_latent=3", "unknown config key 'vae'"),
        ("dataset.covariates=['a']", r"'dataset.covariates' in \[dataset\]; did you mean "
                                     r"cvae.covariates"),
        ("features.n_comps=3", "valid keys: max_cells_per_class, n_components, scale"),
        ("features.n_components=ten", "features.n_components must be int"),
        ("features.n_components=2.5", "must be int"),
        ("classifier.device='gpu'", "must be one of"),
        ("features.scale=1", "must be true or false, got 1"),
        ("features.scale=True", r"got \"True\" \(str\) \(TOML writes true and false unquoted"),
        ("cvae.covariates=[donor]", r"a list of words quotes each one"),
        ("dataset.label_key=1", r"text is quoted in TOML; on the command line --set 'dataset"),
        ("split.train=0.9", "sum to 1"),
        ("seed_vae.batch_size=0", r"seed_vae.batch_size must be at least 1, got 0"),
        ("seed_vae.n_hidden=3", "must be a list"),
        ("seed", "section.key=value"),
        ("cvae.max_epochs=three", 'cvae.max_epochs must be int or "auto", got "three"'),
    ],
)
def test_bad_config_is_one_clear_line(override, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        config.load(None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[features\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    bom = tmp_path / "bom.toml"  # as Windows Notepad saves it, with CRLF line ends
    bom.write_bytes("\ufeff[cvae]\r\nn_latent = 12\r\n".encode())
    assert config.load(bom).cvae.n_latent == 12


@pytest.mark.parametrize("preset", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_preset_loads(preset):
    """Each preset in examples/ is a valid config: known keys, values of the right types."""
    cfg = config.load(EXAMPLES / preset)
    assert cfg.dataset.path and cfg.dataset.label_key


def test_the_laptop_preset_bounds_what_the_reference_preset_does_not():
    reference = config.load(EXAMPLES / "e-annd-5.toml")
    laptop = config.load(EXAMPLES / "e-annd-5-laptop.toml")
    assert laptop.dataset == reference.dataset  # the same data, read the same way
    assert laptop.features.n_components < reference.features.n_components
    assert laptop.classifier.max_cells_per_class > 0 == reference.classifier.max_cells_per_class
    assert isinstance(laptop.cvae.max_epochs, int) and laptop.generator.model == "cvae"


def test_resolve_uses_the_demo_preset_only_without_data():
    demo, sources = config_sources.resolve()
    assert demo.qc.min_cells_per_gene == 20 and sources["qc.min_cells_per_gene"] == "demo preset"
    assert sources["cvae.lr"] == "default"
    defaults = config.RunConfig()
    for given in ({"data": "my.h5ad"}, {"overrides": ["dataset.path=my.h5ad"]}):
        cfg, sources = config_sources.resolve(**given)
        assert cfg.dataset.path == "my.h5ad"
        assert cfg.qc.min_cells_per_gene == defaults.qc.min_cells_per_gene == 100  # not the demo's
        assert cfg.cvae.min_steps == defaults.cvae.min_steps
        assert "demo preset" not in sources.values()
        assert sources["dataset.path"] == ("argument" if "data" in given else "--set")
    assert set(sources) == set(config_sources.setting_names())


def test_resolve_layers_file_set_and_arguments(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[dataset]\npath = "a.h5ad"\nlabel_key = "x"\n[cvae]\nlr = 0.01\nn_latent = 8\n')
    cfg, sources = config_sources.resolve("b.h5ad", "y", p, ["cvae.lr=0.02"])
    assert (cfg.dataset.path, cfg.dataset.label_key, cfg.cvae.lr, cfg.cvae.n_latent) == (
        "b.h5ad", "y", 0.02, 8)
    assert sources["dataset.path"] == sources["dataset.label_key"] == "argument"
    assert sources["cvae.lr"] == "--set" and sources["cvae.n_latent"] == f"config {p}"
    assert sources["qc.target_sum"] == "default"
    with pytest.raises(ConfigError, match="given twice"):
        config_sources.resolve("b.h5ad", overrides=["dataset.path=c.h5ad"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cvae.dropout_rate=1.5", "cvae.dropout_rate must be in [0, 1), got 1.5"),
        ("cvae.dropout_rate=1", "cvae.dropout_rate must be in [0, 1), got 1.0"),
        ("cvae.batch_size=0", "cvae.batch_size must be at least 1, got 0"),
        ("cvae.n_latent=0", "cvae.n_latent must be at least 1, got 0"),
        ("cvae.lr=0", "cvae.lr must be positive (> 0), got 0.0"),
        ("cvae.lr=-1e-3", "cvae.lr must be positive (> 0), got -0.001"),
        ("cvae.max_epochs=0", "cvae.max_epochs must be at least 1, got 0"),
        ("cvae.n_hidden=[64, 0]", "cvae.n_hidden[1] must be at least 1, got 0"),
        ("qc.target_sum=0", "qc.target_sum must be positive (> 0), got 0.0"),
        ("split.train=1.5", "split.train must be in (0, 1), got 1.5"),
        ("split.test=0", "split.test must be in (0, 1), got 0.0"),
        ("seed=-1", "seed must be in [0, 2**63), got -1"),
        ("seed=9223372036854775807", None),
        ("classifier.subsample=0", "classifier.subsample must be in (0, 1], got 0.0"),
        ("classifier.max_cells_per_class=-1", "classifier.max_cells_per_class must be 0 or more"),
        ("qc.min_cells_per_type=1", "qc.min_cells_per_type must be at least 2, got 1"),
        ("cvae.lr=nan", "cvae.lr must be a finite number, got nan"),
        ("qc.iqr_factor=inf", "qc.iqr_factor must be a finite number, got inf"),
        ("cvae.checkpoint_seconds=-inf", "cvae.checkpoint_seconds must be a finite number"),
    ],
)
def test_ranges_are_checked_at_load(override, message):
    if message is None:  # the largest seed is accepted
        assert config.load(None, [override]).seed == 2**63 - 1
        return
    with pytest.raises(ConfigError) as info:
        config.load(None, [override])
    assert message in str(info.value) and "--set" in str(info.value)
    assert "\n" not in str(info.value)


def test_every_numeric_setting_declares_a_range_and_its_default_lies_in_it():
    cfg = config.RunConfig()
    for name in config_sources.setting_names():
        f, tp = config_sources.setting_field(name)
        numeric = {int, float} & set(typing.get_args(tp) or (tp,)) or tp == list[int]
        if numeric:
            rng = f.metadata.get("range")
            assert rng is not None, f"{name} declares no range"
            value = config_sources.get_setting(cfg, name)
            for v in value if isinstance(value, list) else [value]:
                assert v == "auto" or v in rng, name
            assert str(rng) in config_sources.rule(name)


def test_a_range_applies_to_sections_built_alone():
    """Model files build their sections with from_dict; CVAE(...) validates its config."""
    with pytest.raises(ConfigError, match=r"dropout_rate must be in \[0, 1\), got 2"):
        config_rules.from_dict(config.SeedVAEConfig, {"dropout_rate": 2.0})
    with pytest.raises(ConfigError, match=r"cvae\.n_latent must be at least 1, got 0"):
        config.CVAEConfig(n_latent=0).validate()
    bad = config.RunConfig()
    bad.cvae.dropout_rate = float("nan")
    with pytest.raises(ConfigError, match=r"cvae\.dropout_rate must be a finite number"):
        bad.validate()


def test_seed_is_an_alias_of_reference_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="cellsynth"):
        cfg = config.load(None, ["generator.model=seed"])
    assert cfg.generator.model == "reference"
    assert "renamed" in caplog.text and "'reference'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cellsynth"):
        assert config.load(None, ["generator.model=reference"]).generator.model == "reference"
    assert "renamed" not in caplog.text
    assert '"seed"' not in config_sources.rule("generator.model")
    with pytest.raises(ConfigError, match="must be one of"):
        config.load(None, ["generator.model=seeds"])


def test_saved_models_named_seed_still_load_by_name():
    from cellsynth.models.registry import GENERATORS, _name_of, get_generator
    from cellsynth.models.seed_counts import SeedGenerator

    assert "reference" in GENERATORS and "seed" not in GENERATORS
    assert _name_of("seed") == _name_of("SeedGenerator") == "reference"
    assert get_generator("seed") is get_generator("reference") is SeedGenerator


@pytest.mark.parametrize("override", ["cvae.lr=-1", "cvae.likelihood=\"poisson\"",
                                      "cvae.n_hidden=\"wide\"", "cvae.max_epochs=2.5",
                                      "cvae.likelihood=\"zinb\""])
def test_every_config_error_says_the_fix_as_the_caller_sets_it(override):
    """From a config file or --set: the --set form; inside config.hints (a Python call), the
    caller's own words, for ranges, types, choices and settings that only work together."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"fix it in the config file or with --set (?:{key}|"
                                          r"cvae\.dispersion_fit)=\.\.\.$"):
        config.load(None, [override])
    with config_rules.hints(lambda k: f"pass {k} as a keyword"), \
            pytest.raises(ConfigError, match=r"pass cvae\.\w+ as a keyword$") as info:
        config.load(None, [override])
    assert "--set" not in str(info.value)
    with pytest.raises(ConfigError, match=r"with --set"):  # the block's hint ends with it
        config.load(None, [override])


def test_a_relative_data_path_beside_the_config_file_is_found(tmp_path, monkeypatch):
    """A config kept with its data and run from another folder: a relative dataset.path that
    is not in the current folder but is beside the config file is that file; one in the
    current folder is still read from there (the presets' paths are from the repository)."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "data.h5ad").write_bytes(b"")
    cfg_file = tmp_path / "proj" / "run.toml"
    cfg_file.write_text('[dataset]\npath = "data.h5ad"\nlabel_key = "cell_type"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg, _ = config_sources.resolve(config_path=cfg_file)
    assert cfg.dataset.path == str((tmp_path / "proj" / "data.h5ad").resolve())
    (tmp_path / "elsewhere" / "data.h5ad").write_bytes(b"")
    assert config_sources.resolve(config_path=cfg_file)[0].dataset.path == "data.h5ad"

