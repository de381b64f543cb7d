"""Bad input of every kind: a one-line CellsynthError naming the problem and the fix.

Each test uses a small hand-made AnnData (60 cells x 30 genes of Poisson counts, 3 types) and
checks that the error comes before any long work, as a single line (CLI: exit status 2 and one
``cellsynth: error:`` line on stderr), and, where something was written before, that it is intact.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _http_server import start
from cellsynth import config
from cellsynth.cli import main
from cellsynth.data.download import download_url
from cellsynth.data.io import check_shape, find_counts, read
from cellsynth.data.labels import check_label
from cellsynth.data.qc import preprocess
from cellsynth.errors import CellsynthError, ConfigError, DataError, DownloadError, ModelFileError
from cellsynth.models.base import check_genes
from cellsynth.models.nb import NegBinBaseline
from cellsynth.models.registry import load_generator

LABEL = "cell_type"
TYPES = ("B cell", "NK cell", "T cell")


def make_adata(n_cells: int = 60, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Poisson counts with three cell types (in equal parts), unique cell and gene names."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    labels = [TYPES[i % len(TYPES)] for i in range(n_cells)]
    obs = pd.DataFrame({LABEL: pd.Categorical(labels)}, index=[f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    return ad.AnnData(X=x, obs=obs, var=var)


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def one_line(exc: BaseException, fragment: str) -> str:
    """The message is one line and holds ``fragment``."""
    message = str(exc)
    assert "\n" not in message, message
    assert fragment in message, message
    return message


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> str:
    """``main(argv)`` exits with 2 and prints exactly one error line holding ``fragment``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("cellsynth: error:")]
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    return lines[0]


def fit_argv(data: Path, out: Path, label: str = LABEL) -> list[str]:
    return ["fit", str(data), "--label-key", label, "--model", "nb", "--out", str(out), "--quiet"]


@pytest.fixture
def earlier_model(tmp_path: Path) -> Path:
    """A model directory from an earlier fit: a failed fit into it must leave it as it was."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text('{"model": "earlier", "format_version": 1}')
    (out / "earlier.txt").write_text("earlier output")
    return out


def assert_intact(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "earlier.txt"]
    assert (out / "earlier.txt").read_text() == "earlier output"


@pytest.fixture
def saved_nb(tmp_path: Path) -> Path:
    model = NegBinBaseline()
    model.fit(make_adata(), LABEL, seed=0)
    directory = tmp_path / "nb"
    model.save(directory)
    return directory


# --- 1, 2: the label column --------------------------------------------------------------------


def test_missing_label_column(tmp_path, capsys, earlier_model):
    data = write(make_adata(), tmp_path / "x.h5ad")
    cli_error(capsys, fit_argv(data, earlier_model, label="celltype"),
              "label column 'celltype' not in obs; columns are: cell_type; set dataset.label_key")
    assert_intact(earlier_model)


def test_numeric_label_column(tmp_path, capsys, earlier_model):
    a = make_adata()
    a.obs[LABEL] = np.arange(a.n_obs) % 3
    data = write(a, tmp_path / "x.h5ad")
    line = cli_error(capsys, fit_argv(data, earlier_model), "label column 'cell_type' is numeric")
    assert ".astype('string').astype('category') (missing values stay missing)" in line
    assert_intact(earlier_model)
    labels = a.obs[LABEL].astype(float)
    labels.iloc[:3] = np.nan
    a.obs[LABEL] = labels.astype("string").astype("category")  # the fix the message gives
    check_label(a, LABEL)
    assert a.obs[LABEL].isna().sum() == 3
    a.obs[LABEL] = (np.arange(a.n_obs) % 3).astype(float)  # clusters 0.0, 1.0: named "1"
    with pytest.raises(DataError, match=r"\.astype\('Int64'\)\.astype\('string'\)"):
        check_label(a, LABEL)
    a.obs[LABEL] = np.arange(a.n_obs) % 2 == 0  # True/False: mapped to names, not "False"
    with pytest.raises(DataError, match=r"is True/False \(bool\).*\.map\(\{True: 'positive'"):
        check_label(a, LABEL)


def test_missing_labels_written_as_text(tmp_path, capsys):
    """A missing label written as text ("nan", as .astype(str) writes NaN) is no cell type:
    cellsynth fit leaves such cells out as it leaves out NaN; a generator's own fit on an
    AnnData refuses unlabelled cells instead of learning a type called "nan"."""
    a = make_adata()
    labels = a.obs[LABEL].astype(object)
    labels.iloc[:4] = np.nan
    labels.iloc[4] = "None"
    a.obs[LABEL] = labels.astype(str).astype("category")
    data = write(a, tmp_path / "x.h5ad")
    assert main(fit_argv(data, tmp_path / "model")) == 0
    assert load_generator(tmp_path / "model").labels == sorted(TYPES)
    with pytest.raises(DataError, match=r"5 cells have no label in obs\['cell_type'\]"):
        NegBinBaseline().fit(a, LABEL)
    from cellsynth.models.cvae import CVAE

    assert CVAE(a, label_key=LABEL).labels == sorted(TYPES)


# --- 3, 4, 5: values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(-1.0, "holds negative values"), (np.nan, "holds NaN or infinite values"),
     (np.inf, "holds NaN or infinite values")],
    ids=["negative", "nan", "infinite"],
)
def test_bad_values(tmp_path, capsys, earlier_model, value, fragment):
    a = make_adata()
    a.X[3, 4] = value
    data = write(a, tmp_path / "x.h5ad")
    cli_error(capsys, fit_argv(data, earlier_model), fragment)
    assert_intact(earlier_model)
    with pytest.raises(DataError) as info:  # the same check in QC
        preprocess(a, *_sections())
    one_line(info.value, fragment)


def _sections():
    cfg = config.load(None, [])
    return cfg.dataset, cfg.qc, cfg.split


# --- 6: normalised data where counts are needed, and the reverse --------------------------------


def test_normalised_where_counts_needed(tmp_path, capsys, earlier_model):
    a = make_adata()
    a.X = np.log1p(a.X / a.X.sum(axis=1, keepdims=True) * 1e4)
    with pytest.raises(DataError) as info:
        NegBinBaseline().fit(a, LABEL)
    one_line(info.value, "needs raw counts")
    assert "give the unnormalised counts" in str(info.value)
    data = write(a, tmp_path / "x.h5ad")
    cli_error(capsys, fit_argv(data, earlier_model), "needs raw counts")
    assert_intact(earlier_model)


def test_said_counts_but_normalised():
    a = make_adata()
    a.X = np.log1p(a.X)
    with pytest.raises(DataError) as info:
        find_counts(a, False)
    one_line(info.value, "dataset.is_normalised = false but X holds non-integer values")


def test_said_normalised_but_counts_is_accepted():
    """``is_normalised=True`` on integer X is taken at its word (no counts found), not refused."""
    expr = find_counts(make_adata(), True)
    assert expr.counts is None and expr.normalised


# --- 7, 8, 9, 10: shape and names ---------------------------------------------------------------


def test_zero_cells(tmp_path, capsys, earlier_model):
    data = write(make_adata()[:0].copy(), tmp_path / "x.h5ad")
    cli_error(capsys, fit_argv(data, earlier_model), "has 0 cells and 30 genes; an atlas needs both")
    assert_intact(earlier_model)


def test_zero_genes(tmp_path, capsys, earlier_model):
    data = write(make_adata()[:, :0].copy(), tmp_path / "x.h5ad")
    cli_error(capsys, fit_argv(data, earlier_model), "has 60 cells and 0 genes; an atlas needs both")
    assert_intact(earlier_model)


def test_duplicate_cell_names():
    a = make_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.obs_names = ["cell_0", *a.obs_names[:-1]]
    with pytest.raises(DataError) as info:
        check_shape(a, "x.h5ad")
    one_line(info.value, "duplicate cell names ('cell_0')")
    assert "obs_names_make_unique()" in str(info.value)


def test_duplicate_gene_names():
    a = make_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.var_names = ["gene_0", *a.var_names[:-1]]
    with pytest.raises(DataError) as info:
        check_shape(a, "x.h5ad")
    one_line(info.value, "duplicate gene names ('gene_0')")
    assert "var_names_make_unique()" in str(info.value)


# --- 11: a type with a single cell --------------------------------------------------------------


def test_single_cell_type():
    a = make_adata()
    labels = a.obs[LABEL].astype(str).to_numpy()
    labels[0] = "Rare"
    a.obs[LABEL] = pd.Categorical(labels)
    dataset, qc, split = _sections()
    assert qc.on_single_cell_type == "error"
    with pytest.raises(DataError) as info:
        preprocess(a, dataset, qc, split)
    one_line(info.value, "1 cell type(s) have a single cell ('Rare')")
    assert 'qc.on_single_cell_type = "drop"' in str(info.value)


# --- 12, 13: a model asked for what it does not know ---------------------------------------------


def test_unknown_type_requested(saved_nb, tmp_path, capsys):
    model = load_generator(saved_nb)
    with pytest.raises(DataError) as info:
        model.sample({"Macrophage": 5})
    one_line(info.value, "unknown cell type 'Macrophage'; known types: ['B cell', 'NK cell', 'T cell']")
    out = tmp_path / "syn.h5ad"  # cells generated earlier: a failed generate leaves them
    earlier = make_adata()
    earlier.uns["cellsynth"] = {"model": "earlier"}
    earlier.write_h5ad(out)
    before = out.read_bytes()
    cli_error(capsys, ["generate", str(saved_nb), "--types", "Macrophage=5", "--out", str(out),
                       "--quiet"], "unknown cell type 'Macrophage'")
    assert out.read_bytes() == before


def test_genes_differ(saved_nb):
    model = load_generator(saved_nb)
    other = make_adata()
    other.var_names = [f"other_{j}" for j in range(other.n_vars)]
    with pytest.raises(DataError) as info:
        check_genes(model.genes, other)
    one_line(info.value, "genes differ from the model's 30")
    assert "adata[:, model.genes]" in str(info.value)


# --- 14, 15: damaged files ----------------------------------------------------------------------


def test_truncated_h5ad(tmp_path):
    """Every reader of an h5ad (anndata's, and the h5py one of obs-only reads such as
    generate --like) gives the same one-line error for a file cut short."""
    from cellsynth.data.store import H5adFile

    data = write(make_adata(), tmp_path / "x.h5ad")
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 2])
    for reader in (read, H5adFile):
        with pytest.raises(DataError) as info:
            reader(data)
        one_line(info.value, "could not be read as h5ad")
        assert "truncated or corrupt" in str(info.value)


def test_compressed_and_10x_files_are_named_with_their_conversion(tmp_path):
    import gzip

    import h5py

    plain = write(make_adata(), tmp_path / "x.h5ad")
    packed = tmp_path / "x.h5ad.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(DataError) as info:
        read(packed)
    one_line(info.value, "is compressed (gzip); uncompress it first (e.g. gunzip x.h5ad.gz)")
    hidden = tmp_path / "zipped.h5ad"  # compressed under an h5ad's name: known by its bytes
    hidden.write_bytes(packed.read_bytes())
    with pytest.raises(DataError, match=r"is compressed \(gzip\)"):
        read(hidden)
    table = tmp_path / "table.h5ad"
    table.write_text("cell,gene_1,gene_2\nc1,0,3\n")
    with pytest.raises(DataError, match=r"is a text file \(a CSV or TSV table\?\).*sc\.read_csv"):
        read(table)
    loom = tmp_path / "cells.loom"
    with h5py.File(loom, "w") as f:  # loom's layout: matrix, row_attrs, col_attrs
        f.create_dataset("matrix", data=np.ones((3, 2)))
        f.create_group("row_attrs")
        f.create_group("col_attrs")
    with pytest.raises(DataError, match=r"is a loom file.*sc\.read_loom"):
        read(loom)
    tenx = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(tenx, "w") as f:  # 10x's layout: a "matrix" group, no obs
        f.create_group("matrix").create_dataset("data", data=np.arange(3))
    with pytest.raises(DataError) as info:
        read(tenx)
    one_line(info.value, "is a 10x Genomics .h5 matrix, not an h5ad")
    assert "sc.read_10x_h5" in str(info.value)


def test_scaled_x_with_counts_in_raw_trains_on_the_counts(caplog):
    """scanpy's layout after sc.pp.scale: X centred (negative values), counts in raw.X."""
    a = make_adata()
    counts = a.X.copy()
    a.raw = a.copy()
    dense = np.asarray(sp.csr_matrix(counts).todense(), dtype=np.float32)
    a.X = (dense - dense.mean(0)) / (dense.std(0) + 1e-6)
    with caplog.at_level("WARNING"):
        assert find_counts(a).counts == "raw.X"
    assert "X is not expression" in caplog.text and "negative values" in caplog.text
    with pytest.raises(DataError, match="negative values"):
        find_counts(a, is_normalised=False)  # the user says X holds counts: it does not
    del a.raw
    with pytest.raises(DataError, match="negative values"):  # nowhere else to look
        find_counts(a)


def test_corrupt_h5ad_not_hdf5(tmp_path):
    data = tmp_path / "x.h5ad"
    data.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError) as info:
        read(data)
    one_line(info.value, "is not an h5ad (HDF5) file")


def test_truncated_download(tmp_path):
    payload = np.random.default_rng(0).bytes(200_000)
    server, state, base = start(payload)
    try:
        state.cut_after = 50_000
        dest = tmp_path / "x.h5ad"
        with pytest.raises(DownloadError) as info:
            download_url(f"{base}/x.h5ad", dest, timeout=5.0, chunk_size=1 << 14)
    finally:
        server.shutdown()
        server.server_close()
    one_line(info.value, f"truncated at 50000 of {len(payload)} bytes")
    assert not dest.exists()  # no half file under the final name
    assert dest.with_suffix(".h5ad.part").stat().st_size == 50_000  # kept for a resume


# --- 16, 17: config -----------------------------------------------------------------------------


def test_unknown_config_key(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        config.load(None, ["vae.n_latent=3"])
    one_line(info.value, "unknown config key 'vae'")
    toml = tmp_path / "c.toml"
    toml.write_text("[qc]\nmin_cell_per_type = 5\n")
    with pytest.raises(ConfigError) as info:
        config.load(toml)
    one_line(info.value, "min_cell_per_type")
    cli_error(capsys, ["run", "--out", str(tmp_path / "o"), "--quiet", "--set", "vae.n_latent=3"],
              "unknown config key 'vae'")


def test_wrong_config_type(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        config.load(None, ["features.n_components=many"])
    one_line(info.value, "must be int")
    toml = tmp_path / "c.toml"
    toml.write_text("[qc]\non_single_cell_type = 3\n")
    with pytest.raises(ConfigError) as info:
        config.load(toml)
    one_line(info.value, "qc.on_single_cell_type must be one of")
    cli_error(capsys, ["run", "--out", str(tmp_path / "o"), "--quiet",
                       "--set", "features.n_components=many"], "must be int")


# --- 18, 19: output --------------------------------------------------------------------------


def test_output_not_writable(tmp_path, capsys):
    """Under a regular file (chmod does not stop root, who runs these tests)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("earlier output")
    cli_error(capsys, ["run", "--out", str(blocker / "run"), "--quiet"],
              f"{blocker} is a file, so nothing can be written under it")
    assert blocker.read_text() == "earlier output"


def test_generate_never_writes_over_what_it_reads(tmp_path, capsys):
    """--out is refused, before any work, where it would replace the --like input, the request
    file or the model's own files, or is a directory (no part file left behind)."""
    data = write(make_adata(), tmp_path / "x.h5ad")
    model = tmp_path / "model"
    assert main(fit_argv(data, model)) == 0
    before = {p.name: p.read_bytes() for p in (data, *model.iterdir())}
    gen = ["generate", str(model), "--quiet"]
    cli_error(capsys, [*gen, "--like", str(data), "--out", str(data)],
              f"--out {data} is the input file {data}: writing would replace it")
    request = tmp_path / "request.tsv"
    request.write_text(f"{LABEL}\tn\nalpha\t3\n")
    cli_error(capsys, [*gen, "--request", str(request), "--out", str(request)], "is the input file")
    for inside in (model / "weights.safetensors", model / "cells.h5ad"):
        cli_error(capsys, [*gen, "--n-per-type", "2", "--out", str(inside)],
                  "is inside the model directory")
    cli_error(capsys, [*gen, "--n-per-type", "2", "--out", str(tmp_path)],
              f"--out {tmp_path} is a directory; give the .h5ad file to write")
    assert {p.name: p.read_bytes() for p in (data, *model.iterdir())} == before
    assert not list(tmp_path.glob("*.part"))


def test_disk_full_while_saving_model(tmp_path, capsys, monkeypatch):
    import cellsynth.models.nb as nb

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nb, "save_file", full)
    data = write(make_adata(), tmp_path / "x.h5ad")
    line = cli_error(capsys, fit_argv(data, tmp_path / "model"), "disk full")
    assert "--out" in line


def test_disk_full_while_writing_json(tmp_path, monkeypatch):
    from cellsynth import outputs

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    earlier = tmp_path / "m.json"
    earlier.write_bytes(b'{"a": 0}')
    with pytest.raises(CellsynthError) as info:
        outputs.write_json(earlier, {"a": 1})
    one_line(info.value, "disk full")
    assert earlier.read_bytes() == b'{"a": 0}'  # the earlier output is intact


# --- 20, 21: saved model directories ------------------------------------------------------------


def test_model_dir_missing_file(saved_nb):
    (saved_nb / "params.safetensors").unlink()
    with pytest.raises(ModelFileError) as info:
        load_generator(saved_nb)
    one_line(info.value, "params.safetensors is missing")
    assert "not a complete" in str(info.value)  # its checksums.json lists it: read first


def test_model_dir_missing_config(saved_nb, tmp_path, capsys):
    (saved_nb / "config.json").unlink()
    cli_error(capsys, ["generate", str(saved_nb), "--n-per-type", "5", "--out",
                       str(tmp_path / "syn.h5ad"), "--quiet"], "config.json is missing")
    assert not (tmp_path / "syn.h5ad").exists()


def test_model_dir_tampered_labels(saved_nb):
    labels = json.loads((saved_nb / "labels.json").read_text())
    (saved_nb / "labels.json").write_text(json.dumps([*labels, "Extra"]))
    with pytest.raises(ModelFileError) as info:
        load_generator(saved_nb)
    one_line(info.value, "must hold mu and theta of shape (4, 30)")
    assert "the files come from different models" in str(info.value)


def test_model_dir_tampered_params(saved_nb):
    path = saved_nb / "params.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelFileError) as info:
        load_generator(saved_nb)
    # the checksums, read first, name the file that changed (without them: "cannot be read")
    one_line(info.value, "params.safetensors changed after the model was saved")


def test_model_dir_unsupported_version(saved_nb):
    meta = json.loads((saved_nb / "config.json").read_text())
    meta["format_version"] = 999
    (saved_nb / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError) as info:
        load_generator(saved_nb)
    one_line(info.value, "has format version 999; this cellsynth reads version 1")


def test_sparse_negative_counts_in_layer():
    """Negative values hidden in a sparse ``layers['counts']`` are refused too."""
    a = make_adata()
    a.X = np.log1p(a.X)
    counts = sp.csr_matrix(np.expm1(a.X))
    counts.data[0] = -2.0
    a.layers["counts"] = counts
    with pytest.raises(DataError) as info:
        find_counts(a)
    one_line(info.value, "layers['counts'] holds negative values")


def test_an_output_named_for_another_format_is_refused(saved_nb, tmp_path, capsys):
    """`generate --out cells.csv` would write an h5ad under a CSV's name (and `simulate` the
    same, `report` HTML under a PDF's): refused before any work, naming the format to use."""
    cli_error(capsys, ["generate", str(saved_nb), "--n-per-type", "5", "--out",
                       str(tmp_path / "cells.csv"), "--quiet"],
              "in the .h5ad format, not .csv; give a path ending in .h5ad")
    cli_error(capsys, ["simulate", "--cells", "50", "--genes", "30", "--types", "2", "--out",
                       str(tmp_path / "atlas.zarr"), "--quiet"], "not .zarr")
    for name, said in (("cells", "its name has no suffix; give a path ending in .h5ad, "
                                 "e.g. {}.h5ad"),
                       ("cells.h5ad.gz", "not .gz; give a path ending in .h5ad, e.g. {}"),
                       ("-", "to a file, not to standard output")):
        out = "-" if name == "-" else str(tmp_path / name)
        like = str(tmp_path / name.removesuffix(".gz"))
        cli_error(capsys, ["generate", str(saved_nb), "--n-per-type", "5", "--out", out,
                           "--quiet"], said.format(like))
    assert not list(tmp_path.glob("cells*")) and not list(tmp_path.glob("atlas*"))
    # an earlier output is said to be replaced only once the request is known to be good
    earlier = str(tmp_path / "earlier.h5ad")
    assert main(["generate", str(saved_nb), "--n-per-type", "3", "--out", earlier]) == 0
    capsys.readouterr()
    assert main(["generate", str(saved_nb), "--types", "no such type=3", "--out", earlier]) == 2
    assert "replacing" not in capsys.readouterr().err
    assert main(["generate", str(saved_nb), "--n-per-type", "4", "--out", earlier]) == 0
    assert f"replacing {earlier}" in capsys.readouterr().err
    made_by = ad.read_h5ad(earlier).uns["cellsynth"]  # which model made them
    assert made_by["model_path"] == str(Path(saved_nb).resolve())
    assert len(made_by["model_sha256"]) == 64
    from cellsynth.report.html import write_report

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"stages": {}}')
    with pytest.raises(CellsynthError, match=r"in the \.html format, not \.pdf"):
        write_report(tmp_path / "run", tmp_path / "report.pdf")


def test_names_that_differ_only_by_surrounding_spaces_are_refused(tmp_path):
    """'B cell' and 'B cell ' are one type split in two: a fit (nb, cvae), the pipeline's QC and
    a covariate's levels refuse them, naming the twins and the fix; the stripped column fits."""
    from cellsynth.models.cvae import CVAE

    a = make_adata()
    a.obs[LABEL] = pd.Categorical([t + (" " if i % 2 else "") for i, t in enumerate(a.obs[LABEL])])
    for fit in (lambda: NegBinBaseline().fit(a, LABEL, seed=0),
                lambda: CVAE(a, label_key=LABEL),
                lambda: preprocess(a, *_sections())):
        with pytest.raises(DataError) as info:
            fit()
        one_line(info.value, "differ only by surrounding spaces ('B cell', 'B cell ', ")
        assert f"adata.obs['{LABEL}'].str.strip()" in str(info.value)
    a.obs[LABEL] = a.obs[LABEL].str.strip().astype("category")  # the fix the error gives
    NegBinBaseline().fit(a, LABEL, seed=0)
    a.obs["condition"] = ["stim", "stim ", "ctrl"] * 20
    with pytest.raises(DataError) as info:
        NegBinBaseline(covariate_keys=["condition"]).fit(a, LABEL, seed=0)
    one_line(info.value, "obs['condition'] holds covariate levels that differ only by")
    # one name in two Unicode forms (composed and decomposed): refused alike, with the fix
    a.obs["condition"] = ["na\u00efve", "nai\u0308ve", "ctrl"] * 20
    with pytest.raises(DataError) as info:
        NegBinBaseline(covariate_keys=["condition"]).fit(a, LABEL, seed=0)
    one_line(info.value, "obs['condition'] holds covariate levels that are one name written in "
                         "two Unicode forms ('nai\\u0308ve', 'na\\xefve')")
    assert "unicodedata.normalize('NFC', s)" in str(info.value)


def test_one_absurd_count_is_refused_not_learned(caplog):
    """A count of 1e9 among cells of ~60 counts set the nb means and the CVAE's libraries
    (generated cells of 1e8 counts); a fit refuses it, in memory and read from disk alike."""
    from cellsynth.cells import for_training

    a = make_adata()
    a.X[2, 3] = 1e9
    with pytest.raises(DataError) as info:
        NegBinBaseline().fit(a, LABEL, seed=0)
    one_line(info.value, "1 cell(s) have a total count over 1,000 times the median cell's")
    with pytest.raises(DataError, match="over 1,000 times the median"):
        for_training(a, LABEL, seed=0)
    b = make_adata()
    b.X = b.X * 1e6  # every cell scaled up alike: warned, as counts no sequencing gives
    with caplog.at_level("WARNING"):
        NegBinBaseline().fit(b, LABEL, seed=0)
    assert "are these counts scaled up?" in caplog.text


def test_a_cvae_built_on_normalised_data_says_so_at_once():
    """scvi-tools' habit, CVAE(adata, label_key): a log-normalised X without counts elsewhere
    was accepted here and refused only at train()."""
    from cellsynth.models.cvae import CVAE

    a = make_adata()
    a.X = np.log1p(a.X / a.X.sum(1, keepdims=True) * 1e4).astype(np.float32)
    with pytest.raises(DataError) as info:
        CVAE(a, label_key=LABEL)
    one_line(info.value, "this generator needs raw counts")
    a.layers["counts"] = make_adata().X  # with the counts beside it, it builds
    assert CVAE(a, label_key=LABEL).labels == sorted(TYPES)


def test_counts_kept_in_a_layer_without_x_are_found(tmp_path):
    """An AnnData whose X is None (counts in layers['counts'] alone): fit took it, evaluate
    said 'has no X'. Both readers (in memory, and an h5ad read with h5py) find the layer."""
    from cellsynth.data.store import H5adFile

    a = make_adata()
    counts = a.X.copy()
    a.layers["counts"] = counts
    a.X = None
    assert find_counts(a).counts == "layers/counts"
    with H5adFile(write(a, tmp_path / "x.h5ad")) as h5:
        assert find_counts(h5).counts == "layers/counts"
    del a.layers["counts"]
    with pytest.raises(DataError) as info:
        find_counts(a)
    one_line(info.value, "no X and no counts in layers['counts'] or raw.X")


def test_every_count_is_checked_not_a_sample(tmp_path):
    """Non-integer values after the first million stored ones are still refused (the nb
    baseline once checked a prefix), naming the cells."""
    x = np.ones((1_200, 1_000), dtype=np.float32)  # 1.2 M stored values
    x[-2:, :10] = 0.5
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(
        {LABEL: pd.Categorical([TYPES[i % 3] for i in range(1_200)])},
        index=[f"c{i}" for i in range(1_200)]))
    with pytest.raises(DataError) as info:
        NegBinBaseline().fit(adata, LABEL)
    one_line(info.value, "cells at rows 1198, 1199")


def test_counts_with_a_few_fractional_values_say_so_not_normalised(tmp_path, capsys):
    """Counts with a few non-integer values (ambient correction, noise) are not called
    normalised data: the error says what they look like and how to mend them."""
    adata = make_adata(200)
    adata.X[:3] *= 0.97
    assert find_counts(adata).counts is None and "not whole numbers" in find_counts(adata).note
    path = write(adata, tmp_path / "noisy.h5ad")
    cli_error(capsys, ["fit", str(path), "--label-key", LABEL, "--out", str(tmp_path / "m"),
                       "--quiet"], "ambient-corrected or noisy counts? round them (np.rint)")
    from cellsynth.models.cvae import CVAE

    with pytest.raises(DataError, match="not whole numbers"):
        CVAE(adata, label_key=LABEL)
    normalised = make_adata(200)
    normalised.X = np.log1p(normalised.X / normalised.X.sum(1, keepdims=True) * 1e4)
    assert find_counts(normalised).note == ""  # normalised data are still called so


def test_values_that_are_neither_counts_nor_log_normalised_are_not_read_as_either(tmp_path, capsys):
    """Counts stored with float round-off (x / s * s) and counts per 10,000 never
    log-transformed were read by a run as log-normalised values (PCA and the classifier on
    linear-scale counts, without a word); fit called the round-off counts normalised. Each
    is refused with what it looks like and the fix; dataset.is_normalised = true keeps them."""
    counts = make_adata(200)
    x = counts.X.copy()
    size = (x.sum(1, keepdims=True) / np.median(x.sum(1))).astype(np.float32)
    rounded = counts.copy()
    rounded.X = sp.csr_matrix((x / size * size).astype(np.float32))
    assert not np.all(np.mod(rounded.X.data, 1) == 0)  # the round-off is there
    cp10k = counts.copy()
    cp10k.X = sp.csr_matrix((x / x.sum(1, keepdims=True) * 1e4).astype(np.float32))
    cfg = config.load(overrides=["generator.model='reference'", "qc.min_genes_per_cell=1",
                                 "qc.min_cells_per_gene=1", "qc.min_cells_per_type=5"])
    for adata, said in ((rounded, "raw counts stored with round-off or a little noise"),
                        (cp10k, "normalised values that are not log-transformed")):
        with pytest.raises(DataError, match=said):
            preprocess(adata.copy(), cfg.dataset, cfg.qc, cfg.split)
        path = write(adata, tmp_path / "x.h5ad")
        cli_error(capsys, ["fit", str(path), "--label-key", LABEL, "--out", str(tmp_path / "m"),
                           "--quiet"], said)
    with pytest.raises(DataError, match=r"round them \(adata\.X\.data = np\.rint"):
        preprocess(rounded.copy(), cfg.dataset, cfg.qc, cfg.split)
    told = config.load(overrides=["dataset.is_normalised=true", "qc.min_genes_per_cell=1",
                                  "qc.min_cells_per_gene=1", "qc.min_cells_per_type=5"])
    pre, _ = preprocess(cp10k.copy(), told.dataset, told.qc, told.split)  # taken at its word
    assert pre.n_obs == 200


@pytest.mark.parametrize("key", ["", "a/b", "donor", "predicted_doublets"])
def test_simulate_refuses_a_label_column_it_cannot_keep(tmp_path, capsys, key):
    from cellsynth.data.simulate import simulate_atlas

    with pytest.raises(ConfigError):
        simulate_atlas(50, 30, 2, label_key=key, n_donors=2)
    cli_error(capsys, ["simulate", "--cells", "50", "--genes", "30", "--types", "2", "--label-key",
                       key, "--out", str(tmp_path / "s.h5ad")], "--label-key")
    assert not (tmp_path / "s.h5ad").exists()


def test_empty_layer_widths_are_refused_by_the_config():
    for key in ("cvae.n_hidden", "seed_vae.n_hidden"):
        with pytest.raises(ConfigError, match=rf"{key} must hold at least one value"):
            config.load(None, [f"{key}=[]"])


def test_a_run_directory_given_as_a_model_points_to_its_generator(tmp_path):
    run = tmp_path / "run"
    (run / "generator").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ModelFileError, match="is a run directory, not a saved generator: it has no"):
        load_generator(run)
    (run / "generator" / "config.json").write_text('{"model": "nb"}')
    with pytest.raises(ModelFileError, match=r"give .*run/generator, the generator it saved"):
        load_generator(run)


def test_a_combination_asked_twice_is_refused_not_summed(tmp_path):
    """As --types refuses a type named twice, a request table or file does too, naming the
    rows (a table) or the lines (a file)."""
    from cellsynth.pipeline.generate import read_request

    model = NegBinBaseline()
    model.fit(make_adata(), LABEL)
    table = pd.DataFrame({LABEL: ["B cell", "T cell", "B cell "], "n": [5, 3, 5]})
    with pytest.raises(DataError) as info:
        model.sample(table)
    one_line(info.value, "request rows 1 and 3 both ask for B cell")
    path = tmp_path / "request.tsv"
    path.write_text(f"{LABEL}\tn\nB cell\t5\nT cell\t3\n\nT cell\t2\n")
    with pytest.raises(DataError) as info:
        read_request(path, LABEL)
    one_line(info.value, "lines 3 and 5: the same combination twice")
    # a .csv that is not comma-separated is told the suffix decides; UTF-16 to save as UTF-8
    semi = tmp_path / "request.csv"
    semi.write_text(f"{LABEL};n\nB cell;5\n")
    with pytest.raises(DataError, match=r"comma-separated: its name ends in \.csv"):
        read_request(semi, LABEL)
    wide = tmp_path / "wide.tsv"
    wide.write_text(f"{LABEL}\tn\nB cell\t5\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"is not UTF-8 text .*save it as UTF-8"):
        read_request(wide, LABEL)
    for text, line in ((f"{LABEL}\tn\nB cell\t-3\n", "line 2: n must be 0 or more"),
                       (f"{LABEL}\tn\nB cell\t2\n \t4\n", "line 3: no cell type")):
        path.write_text(text)
        with pytest.raises(DataError, match=line):
            read_request(path, LABEL)
    path.write_text(f"{LABEL}\tn\nB cell\t0\nT cell\t4\n")  # a row of 0 is left out
    assert model.plan(read_request(path, LABEL))[0] == [("T cell", (), 4)]


def test_types_that_differ_only_by_case_are_warned(caplog):
    import logging

    adata = make_adata()
    adata.obs[LABEL] = pd.Categorical(np.where(np.arange(60) < 10, "b cell",
                                               adata.obs[LABEL].astype(str)))
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        NegBinBaseline().fit(adata, LABEL)
    assert caplog.text.count("differ only by case ('B cell', 'b cell')") == 1


@pytest.mark.parametrize(("column", "fix"), [("cell_id", "condition on a column with a few levels"),
                                             ("age", "bin it first")])
def test_a_covariate_with_a_level_per_cell_is_refused(column, fix):
    """A covariate of cell identifiers (or numbers kept as text) has about one training cell a
    level: refused with the fix, for the CVAE and the nb baseline alike (it once crashed when
    no validation cell had a level seen in training)."""
    from cellsynth.models.cvae import CVAE

    adata = make_adata(120)
    adata.obs[column] = [f"c{i}" if column == "cell_id" else str(20 + i) for i in range(120)]
    with pytest.raises(DataError) as info:
        CVAE(adata, label_key=LABEL, covariate_keys=[column]).train(max_epochs=1)
    one_line(info.value, fix)
    with pytest.raises(DataError, match="levels in"):
        NegBinBaseline(covariate_keys=[column]).fit(adata, LABEL)


def test_a_missing_donor_column_is_refused_before_qc(caplog):
    """Before QC reads a single count (on an atlas, minutes): with a label column QC would
    refuse later (a type of one cell) the donor column is still what is named."""
    import logging

    adata = make_adata()
    adata.obs[LABEL] = adata.obs[LABEL].cat.add_categories(["lone"])
    adata.obs.loc[adata.obs_names[0], LABEL] = "lone"
    cfg = config.load(None, [f"dataset.label_key={LABEL}", "dataset.donor_key=patient"])
    with caplog.at_level(logging.INFO, logger="cellsynth"), pytest.raises(DataError) as info:
        preprocess(adata, cfg.dataset, cfg.qc, cfg.split, seed=0)
    one_line(info.value, "donor column 'patient' (dataset.donor_key) not in obs; columns are: "
                         f"{LABEL}")
    assert "expression:" not in caplog.text  # the counts were not looked at


def test_a_whole_count_written_as_a_float_is_one_count_everywhere():
    """5.0 cells reads as 5 in a dict, a table, a request file and --types alike (a table's
    count column turns float as soon as one value is missing); 5.5 is refused in each."""
    import numpy as np

    from cellsynth.cli import _parse_types
    from cellsynth.models._training import check_counts
    from cellsynth.pipeline.generate import parse_count

    assert check_counts({"B": 5.0, "T": np.float32(2)}, ["B", "T"]) == {"B": 5, "T": 2}
    assert all(type(n) is int for n in check_counts({"B": np.int64(3)}, ["B"]).values())
    for bad in (5.5, float("nan"), float("inf"), True, "5"):
        with pytest.raises(DataError, match="positive integer"):
            check_counts({"B": bad}, ["B"])
    assert [parse_count(t) for t in ("5", "5.0", " 12 ", "1e3")] == [5, 5, 12, 1000]
    for bad in ("5.5", "inf", "nan", "many", ""):
        with pytest.raises(ValueError):
            parse_count(bad)
    assert _parse_types("B cells=5.0,NK=2") == {"B cells": 5, "NK": 2}
    with pytest.raises(CellsynthError, match="must be an integer"):
        _parse_types("B cells=2.5")


def test_a_name_typed_in_another_unicode_form_is_the_same_name():
    """'naïve' with a combining diaeresis (NFD, as some keyboards and file systems write it)
    names the type and the covariate level written composed (NFC)."""
    import unicodedata

    from cellsynth.data.levels import LevelLookup
    from cellsynth.models._training import known_label

    nfc = "T/NK, naïve"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc and known_label(nfd, ["B", nfc]) == nfc
    assert LevelLookup(["ctrl", nfc]).code(f" {nfd} ") == 1


def test_a_run_of_a_dozen_cells_finishes_with_what_it_can_score(tmp_path, caplog, capsys):
    """12 cells of 2 types: the run finishes and says what it skipped (the UMAP, fidelity on
    one test cell) instead of failing at its last stage (umap-learn's ValueError); 4 cells
    leave no test cell, refused after QC with what to change."""
    import logging

    import cellsynth as cs
    from cellsynth.cli import main
    from test_pipeline import FAST

    path = tmp_path / "few.h5ad"
    cs.simulate(12, 200, 2, seed=0).write_h5ad(path)
    args = ["run", str(path), "--label-key", "cell_type", "--quiet"]
    for s in [*FAST, "qc.min_cells_per_type=2", "qc.min_genes_per_cell=1",
              "qc.min_cells_per_gene=1", "cvae.max_epochs=2", "report.umap=true"]:
        args += ["--set", s]
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert "UMAP skipped" in caplog.text and "fidelity skipped" in caplog.text
    assert (tmp_path / "run" / "report.html").is_file()
    cs.simulate(4, 200, 2, seed=0).write_h5ad(path)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "run4")]) == 2
    assert "after QC the test split holds no cells" in capsys.readouterr().err


def test_a_run_checks_its_covariate_columns_before_qc(tmp_path, capsys, caplog):
    """A covariate column that is not there, or a number of many values, stops a run before
    QC (it was found after the classifier had trained); a covariate setting of another
    generator than the one run is said not to be used."""
    import logging

    import cellsynth as cs
    from cellsynth.cli import main

    a = cs.simulate(300, 150, 3, seed=0)
    a.obs["age"] = np.random.default_rng(0).normal(size=a.n_obs)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    base = ["run", str(path), "--label-key", "cell_type", "--quiet", "--out"]
    for cov, message in ((["nope"], "covariate column 'nope' not in obs"),
                         (["age"], "covariate 'age' is numeric with 300 distinct values")):
        out = tmp_path / cov[0]
        assert main([*base, str(out), "--set", f"cvae.covariates={json.dumps(cov)}"]) == 2
        assert message in capsys.readouterr().err
        stages = json.loads((out / "manifest.json").read_text())["stages"]
        assert stages["data"]["status"] == "failed" and "classifier" not in stages
    from types import SimpleNamespace

    from cellsynth import config
    from cellsynth.pipeline.data import check_covariates

    cfg = config.load(None, ['cvae.covariates=["age"]', "generator.model='nb'"])
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        check_covariates(SimpleNamespace(cfg=cfg, label_key="cell_type"), a.obs)
    assert "cvae.covariates = ['age'] is not used: generator.model = nb" in caplog.text


def test_benchmark_data_sets_of_one_name_are_refused_before_any_fit(tmp_path):
    """Two files of one name (or one file twice) would write one results folder; refused
    before any fit. Generator names are read as typed loosely ("CVAE", "cvae,,nb"); a path
    holding a quote is a path."""
    from cellsynth.evaluation import run_benchmark

    (tmp_path / "sub").mkdir()
    for p in (tmp_path / "a.h5ad", tmp_path / "sub" / "a.h5ad"):
        p.write_bytes(b"")
    with pytest.raises(DataError, match=r"two data sets are named 'a' .*file name of its own"):
        run_benchmark([str(tmp_path / "a.h5ad"), str(tmp_path / "sub" / "a.h5ad")], ["nb"],
                      tmp_path / "out")
    with pytest.raises(DataError, match="is given twice"):
        run_benchmark([str(tmp_path / "a.h5ad")] * 2, ["nb"], tmp_path / "out")
    with pytest.raises(DataError, match="no generator given"):
        run_benchmark([str(tmp_path / "a.h5ad")], ["", " "], tmp_path / "out")
    quoted = tmp_path / "it's.h5ad"
    quoted.write_bytes(b"")  # found where it is (the quote ended the TOML string: not found)
    with pytest.raises(DataError, match=r"it's\.h5ad is not an h5ad"):
        run_benchmark([str(quoted)], ["CVAE"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_type_name_with_a_line_break_and_a_single_type_are_refused_with_the_fix():
    """A line break in a type name split every verdict line that named it; data with one cell
    type were told to lower qc.min_cells_per_type, which cannot make a second."""
    from cellsynth.data.labels import check_spaced_names

    broken = make_adata()
    broken.obs[LABEL] = broken.obs[LABEL].astype(str).str.replace(TYPES[0], "CD8\nT")
    with pytest.raises(DataError, match=r"control characters \(line breaks...\): 'CD8\\nT'"):
        check_label(broken, LABEL)
    check_spaced_names(["B cell", "T\tcell"], LABEL, "cell types")  # a tab is kept
    one = make_adata(90)
    one.obs[LABEL] = pd.Categorical(["T"] * one.n_obs)
    cfg = config.load(overrides=["qc.min_genes_per_cell=1", "qc.min_cells_per_gene=1"])
    with pytest.raises(DataError, match=r"has one cell type after QC \('T'\).*cellsynth fit"):
        preprocess(one, cfg.dataset, cfg.qc, cfg.split)


def test_a_counts_layer_that_holds_no_counts_is_named(caplog):
    """layers['counts'] was used unchecked by a fit (a non-integer error that named X) while
    a run and an evaluation read the counts in X: the fit now does as they do, and says so."""
    import logging

    from cellsynth.data.io import training_source

    a = make_adata()
    a.layers["counts"] = np.log1p(a.X)  # X holds the counts
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        x, _ = training_source(a)
    assert x is a.X and "layers['counts'] holds non-integer values, not raw counts" in caplog.text
    a.X = np.log1p(a.X)  # and now X holds none either
    with pytest.raises(DataError) as info:
        training_source(a)
    one_line(info.value, "layers['counts'] holds non-integer values")


def test_a_cvae_on_scanpys_layout_has_raws_genes_from_the_start():
    """X a log-normalised subset of genes, the counts of every gene in raw.X: the CVAE trains
    on raw's genes, and said X's number of genes until it had trained."""
    from cellsynth.models.cvae import CVAE

    full = make_adata(60, 30)
    a = full[:, :12].copy()
    a.X = np.log1p(a.X)
    a.raw = full
    model = CVAE(a, label_key=LABEL)
    assert model.genes == list(full.var_names) and "n_genes=30" in repr(model)


def test_python_api_misuse_gets_the_packages_messages():
    """Seeds a fit's generators took raw (np.int64 refused by torch; -1, 2**64, None, a
    Generator: numpy's or torch's errors); latents of an untrained model (random weights, no
    word); a dict as config (AttributeError); a misspelt setting (accepted silently)."""
    import cellsynth as cs
    from cellsynth.errors import NotTrainedError
    from cellsynth.models.cvae import CVAE

    a = make_adata(60, 20)
    nb = NegBinBaseline()
    nb.fit(a, LABEL, seed=np.int64(3))  # a numpy integer is a seed
    for seed in (-1, 2**64, None, np.random.default_rng(0), 1.0):
        with pytest.raises(DataError, match="seed must be a whole number from 0 to 2"):
            NegBinBaseline().fit(a, LABEL, seed=seed)
        with pytest.raises(DataError, match="seed must be a whole number from 0 to 2"):
            CVAE(a, label_key=LABEL).train(max_epochs=1, seed=seed)
    with pytest.raises(NotTrainedError, match="cannot give latent representations"):
        CVAE(a, label_key=LABEL).get_latent(a)
    with pytest.raises(ConfigError, match="config is a dict; give a CVAEConfig"):
        CVAE(a, label_key=LABEL, config={"max_epochs": 2})
    before = cs.settings.progress
    try:
        with pytest.raises(AttributeError, match="progres"):
            cs.settings.progres = False
        cs.settings.progress = np.False_
        assert cs.settings.progress is False
    finally:
        cs.settings.progress = before


def test_a_list_setting_given_as_words_shows_the_list_to_write():
    from cellsynth import config
    from cellsynth.errors import ConfigError
    from cellsynth.models.cvae import CVAE

    with pytest.raises(ConfigError, match=r"""--set 'cvae.covariates=\["condition", "donor"\]'"""):
        config.load(None, ['cvae.covariates="condition,donor"'])
    a = make_adata()
    a.obs["condition"], a.obs["donor"] = "x", "d"
    with pytest.raises(DataError, match=r"give them as a list, covariate_keys=\['condition', "
                                        r"'donor'\]"):
        CVAE(a, label_key=LABEL, covariate_keys="condition,donor")
