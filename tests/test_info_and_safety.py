"""`cellsynth info`, and the package never pickles."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import pytest

from cellsynth.cli import main
from cellsynth.errors import CellsynthError
from cellsynth.info import describe

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cellsynth"


def test_info_h5ad(kang_path, capsys):
    info = describe(kang_path)
    assert info["kind"] == "h5ad"
    assert (info["n_cells"], info["n_genes"]) == (1556, 1267)
    assert info["X"] == "raw counts"
    assert "cell_type" in info["label_columns"]
    assert main(["info", str(kang_path)]) == 0
    assert "n_cells: 1556" in capsys.readouterr().out


def test_info_names_a_models_covariates_and_their_levels(tmp_path, capsys):
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.models.nb import NegBinBaseline

    adata = simulate_atlas(400, 60, 3, seed=0, n_conditions=2)
    model = NegBinBaseline(covariate_keys=["condition"])
    model.fit(adata, "cell_type", seed=0)
    model.save(tmp_path / "nb")
    info = describe(tmp_path / "nb")
    assert info["kind"] == "model" and info["covariates"] == {"condition": "ctrl, stim"}
    plain = NegBinBaseline()
    plain.fit(adata, "cell_type", seed=0)
    plain.save(tmp_path / "plain")
    assert describe(tmp_path / "plain")["covariates"] == "none"
    assert main(["info", str(tmp_path / "nb")]) == 0
    assert "covariates:\n  condition: ctrl, stim" in capsys.readouterr().out


def test_info_errors(tmp_path):
    with pytest.raises(CellsynthError, match="does not exist"):
        describe(tmp_path / "nope")
    with pytest.raises(CellsynthError, match="neither a run directory"):
        describe(tmp_path)
    training = tmp_path / "generator"  # a run's generator while it trains
    (training / "checkpoint").mkdir(parents=True)
    with pytest.raises(CellsynthError, match="training has not finished"):
        describe(training)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{not json")  # a corrupt file: named, no traceback
    with pytest.raises(CellsynthError, match=r"manifest\.json is corrupt"):
        describe(run)
    (run / "manifest.json").write_text('{"stages": []}')  # JSON of another shape
    with pytest.raises(CellsynthError, match="not the ones cellsynth writes"):
        describe(run)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("\x00\x01")
    with pytest.raises(CellsynthError, match=r"config\.json is corrupt"):
        describe(model)


def _code_only(path: Path) -> str:
    """The file's code with strings and comments blanked (docstrings may name what is avoided)."""
    out = []
    with path.open("rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT, tokenize.ENCODING):
                continue
            out.append(tok.string if tok.type != tokenize.NEWLINE else "\n")
    return " ".join(out).replace(" \n ", "\n")


def test_code_only_sees_code_not_strings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""torch.load(weights_only=False)"""\nimport pickle  # joblib.load\n')
    text = _code_only(f)
    assert "weights_only" not in text and "joblib" not in text and "import pickle" in text
    g = tmp_path / "n.py"
    g.write_text("import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=True)\n")
    calls = re.findall(r"torch\s*\.\s*load\s*\(([^)]*)\)", _code_only(g))
    assert len(calls) == 2 and sum("weights_only" in c for c in calls) == 1


def test_no_pickle_anywhere_in_the_package():
    pattern = re.compile(
        r"^\s*(import (pickle|joblib|cloudpickle|dill)|from (pickle|joblib|cloudpickle|dill) )"
        r"|allow_pickle\s*=\s*True|weights_only\s*=\s*False|\bpickle\s*\.\s*load"
        r"|\bjoblib\s*\.\s*(load|dump)",
        re.MULTILINE,
    )
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = _code_only(path)
        offenders += [f"{path.name}: {m.group(0).strip()}" for m in pattern.finditer(text)]
        for call in re.finditer(r"torch\s*\.\s*load\s*\(([^)]*)\)", text):
            if not re.search(r"weights_only\s*=\s*True", call.group(1)):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
    assert offenders == []
