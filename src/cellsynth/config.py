"""Typed configuration: one dataclass per stage, nested in :class:`RunConfig`.

Loaded from TOML, overridden from the command line (``--set vae.n_latent=32``), validated
before any long work starts, and saved (resolved) next to every output.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from .config_rules import apply_overrides, check_ranges, fix_hint, from_dict, ranged, within
from .errors import ConfigError
from .outputs import write_text

logger = logging.getLogger(__name__)

#: labels starting with one of these are dropped (E-ANND-5's uninformative annotations)
DEFAULT_UNINFORMATIVE = ("DOUBLET", "LOW_Q", "False", "PLACENTAL_CONTAMINANTS", "UNKNOWN")


#: old generator names -> their names now (still accepted, with a warning)
MODEL_ALIASES = {"seed": "reference"}

#: the one saved model (``config.json``'s ``model``) that no generator loads: the reference CVAE
#: a ``cellsynth run`` fits on its PCA features (``generator.model = "reference"``), which draws
#: points of that run's PCA, not cells
PCA_SPACE_MODEL = "SeedCVAE"

#: the config section of each generator's own settings (``copy``: none); "seed" is the
#: reference's old name
MODEL_SECTIONS = {"cvae": "cvae", "reference": "seed_vae", "seed": "seed_vae", "scvi": "scvi",
                  "scvi-pp": "scvi", "nb": "nb", "copy": None}
#: the generators that condition on covariates, and the section holding their ``covariates``
COVARIATE_SECTIONS = {"cvae": "cvae", "nb": "nb", "scvi": "scvi"}


def covariates_of(cfg: RunConfig, model: str) -> list[str]:
    """The covariates generator ``model`` conditions on: its section's ``covariates``
    (``cvae.covariates``, ``nb.covariates``, ``scvi.covariates``); ``[]`` for the others."""
    section = COVARIATE_SECTIONS.get(canonical_model(model))
    return list(getattr(cfg, section).covariates) if section else []


def unused_covariates(cfg: RunConfig, model: str) -> dict[str, list[str]]:
    """The ``covariates`` of generator sections other than ``model``'s, where set: settings a
    fit of ``model`` does not use (``fit`` and ``run`` say so)."""
    own = COVARIATE_SECTIONS.get(MODEL_ALIASES.get(model, model))  # no second rename warning
    return {s: list(getattr(cfg, s).covariates) for s in sorted(set(COVARIATE_SECTIONS.values()))
            if s != own and getattr(cfg, s).covariates}


def canonical_model(name: str) -> str:
    """The generator's name now: ``"seed"`` -> ``"reference"`` (logged as renamed)."""
    if name in MODEL_ALIASES:
        logger.warning("the generator %r was renamed %r (the old name read like the seed "
                       "setting); write generator.model = \"%s\" or --model %s", name,
                       MODEL_ALIASES[name], MODEL_ALIASES[name], MODEL_ALIASES[name])
        return MODEL_ALIASES[name]
    return name


#: ``dataset.groups`` values that name no file: the packaged mappings
#: (``cellsynth/data/groups/<name>.tsv``) and "auto" (types grouped by mean training features)
PACKAGED_GROUPS = ("e-annd-5",)
AUTO_GROUPS = "auto"


def groups_is_file(spec: str) -> bool:
    """Whether ``dataset.groups = spec`` names a mapping file (not "", "auto" or packaged)."""
    return bool(spec) and spec != AUTO_GROUPS and spec not in PACKAGED_GROUPS


@dataclass
class DatasetConfig:
    path: str = ""  # h5ad file; "" = the embedded demo atlas (simulated, no download)
    label_key: str = "cell_type"  # obs column with the fine cell type
    # obs column naming each cell's donor (or sample): with split.heldout_donors, the privacy
    # audit also attacks at donor level ("": none)
    donor_key: str = ""
    # what X holds: "auto" detects counts, or log-normalised values where there are none (and
    # refuses counts with round-off or noise, and normalised values never log-transformed);
    # true takes X as log-normalised values, false as counts
    is_normalised: Literal["auto", True, False] = "auto"
    # fine -> coarse mapping (the coarse tables): a TSV (fine<TAB>coarse) or JSON file path,
    # a packaged name ("e-annd-5"), "auto" (types clustered by mean training features), or ""
    # (the h5ad's uns["celltype_groups"] where it has one; else none)
    groups: str = ""
    doublet_key: str = "predicted_doublets"  # obs column flagging doublets; skipped when absent
    mito_key: str = "mito"  # obs column with the mitochondrial fraction; computed when absent
    n_genes_key: str = "n_genes"  # obs column with genes detected per cell; computed when absent
    uninformative_prefixes: list[str] = field(default_factory=lambda: list(DEFAULT_UNINFORMATIVE))
    backed: Literal["auto", True, False] = "auto"  # open the h5ad backed (files over 2 GB on auto)
    # `cellsynth fit` / cs.fit: drop genes with no count in the training cells (run's QC
    # filters genes by qc.min_cells_per_gene instead; a CVAE(adata) made in Python keeps every
    # gene of its AnnData, as scvi-tools' models do)
    drop_undetected_genes: bool = True
    demo_cells: int = ranged("[1, inf)", 3000)  # size of the embedded demo atlas when path is ""
    demo_genes: int = ranged("[1, inf)", 2000)
    demo_types: int = ranged("[2, inf)", 8)


@dataclass
class QCConfig:
    min_genes_per_cell: int = ranged("[0, inf)", 100)  # cells detecting fewer genes are removed
    # genes detected in fewer training cells are removed
    min_cells_per_gene: int = ranged("[0, inf)", 100)
    # per-type IQR fences on mito (upper) and genes per cell (both)
    iqr_factor: float = ranged("[0, inf)", 1.5)
    # types with fewer training cells are dropped (with a warning)
    min_cells_per_type: int = ranged("[2, inf)", 10)
    on_single_cell_type: Literal["error", "drop"] = "error"  # a type with one cell cannot be split
    # normalise each cell to this many counts, then log1p
    target_sum: float = ranged("(0, inf)", 1e4)
    # genes whose normalised variance (train) is lower go
    variance_threshold: float = ranged("[0, inf)", 0.01)
    chunk_size: int = ranged("[1, inf)", 10_000)  # cells per chunk when scanning the matrix


@dataclass
class SplitConfig:
    train: float = ranged("(0, 1)", 0.7)
    val: float = ranged("(0, 1)", 0.1)  # the reference's "eval" split, used for early stopping
    test: float = ranged("(0, 1)", 0.2)
    # donors (dataset.donor_key) whose every cell is a test cell, chosen from the seed; the
    # other donors' cells are split by the fractions. 0: every donor in every split. The
    # privacy audit's donor level needs held-out donors absent from training (its AUC over
    # donors can pass its threshold only with about 7 or more donors on each side)
    heldout_donors: int = ranged("[0, inf)", 0)


@dataclass
class FeaturesConfig:
    # scanpy's default; the reference's 2,500 (examples/e-annd-5.toml) makes XGBoost's time
    # grow 50-fold. Clamped to what the data allow, with a warning
    n_components: int = ranged("[1, inf)", 50)
    # class-balanced subsample the PCA is fitted on
    max_cells_per_class: int = ranged("[1, inf)", 5000)
    scale: bool = False  # standard-scale genes before the PCA


@dataclass
class ClassifierConfig:
    n_estimators: int = ranged("[1, inf)", 500)  # boosting rounds at most
    max_depth: int = ranged("[1, 2**31)", 6)  # XGBoost reads a 32-bit integer
    subsample: float = ranged("(0, 1]", 0.9)
    colsample_bytree: float = ranged("(0, 1]", 0.9)
    learning_rate: float = ranged("(0, 1]", 0.05)
    # L1 and L2 penalties; XGBoost reads a 32-bit float (above about 3.4e38, an error)
    reg_alpha: float = ranged("[0, 1e30]", 1.0)
    reg_lambda: float = ranged("[0, 1e30]", 1.0)
    early_stopping_rounds: int = ranged("[1, inf)", 10)  # on the validation split
    balanced_weights: bool = True  # class-balanced sample weights
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    # cap on training cells per class; 0 = no cap; "auto": no cap up to 100,000 training cells,
    # above that the class-balanced cap that keeps 100,000 (rare types whole, common ones cut)
    max_cells_per_class: int | Literal["auto"] = ranged("[0, inf)", "auto")
    # cells per batch XGBoost reads through a DataIter; 0 = one array (memmaps: 100,000)
    chunk_size: int = ranged("[0, inf)", 0)
    n_jobs: int = ranged("[0, 2**31)", 0)  # threads; 0 = OMP_NUM_THREADS, else the cores this process may use
    backend: Literal["local", "dask"] = "local"  # dask: xgboost.dask on a Dask cluster
    dask_scheduler: str = ""  # scheduler address (tcp://host:8786); "" = a local cluster
    # workers of the local cluster when no scheduler is given
    dask_workers: int = ranged("[1, inf)", 2)


@dataclass
class GeneratorConfig:
    # the generator: "cvae" (count-space CVAE), "nb" (per-type negative binomial), "reference"
    # (the reference project's CVAE on PCA features; "seed" is its old name), "scvi"
    model: Literal["cvae", "nb", "reference", "scvi", "seed"] = "cvae"
    # experiment (b): cells per type scored by the real classifier
    n_per_type_eval: int = ranged("[1, 10**12]", 1000)  # at most MAX_REQUEST a request
    # experiment (c): cells per type to train a classifier on
    n_per_type_train: int = ranged("[1, 10**12]", 2000)
    # experiment (c): cells per type for its early stopping
    n_per_type_val: int = ranged("[1, 10**12]", 100)

    def __post_init__(self) -> None:
        self.model = canonical_model(self.model)


@dataclass
class SeedVAEConfig:
    """The reference CVAE on PCA features."""

    n_embed: int = ranged("[1, inf)", 64)  # class embedding size
    n_hidden: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256],
                                  metadata=within("[1, inf)"))  # encoder
    n_latent: int = ranged("[1, inf)", 512)
    dropout_rate: float = ranged("[0, 1)", 0.25)
    lr: float = ranged("(0, inf)", 1e-3)  # one-cycle peak learning rate
    weight_decay: float = ranged("[0, inf)", 1e-3)  # AdamW
    batch_size: int = ranged("[1, inf)", 256)
    max_epochs: int = ranged("[1, inf)", 100)
    patience: int = ranged("[0, inf)", 5)  # early stopping on validation loss
    kl_start: float = ranged("[0, 1]", 0.1)  # KL weight annealed from this to 1
    kl_anneal_epochs: int = ranged("[0, inf)", 10)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class CVAEConfig:
    """The count-space conditional VAE (cellsynth's main generator)."""

    # encoder; decoder mirrors it
    n_hidden: list[int] = field(default_factory=lambda: [512, 256], metadata=within("[1, inf)"))
    n_latent: int = ranged("[1, inf)", 32)
    # cell-type embedding size (encoder and decoder condition)
    n_embed: int = ranged("[1, inf)", 32)
    # obs columns the model also conditions on (donor, condition, batch...), each categorical
    # with an embedding of its own, so combinations never seen in training can be generated
    covariates: list[str] = field(default_factory=list)
    n_covariate_embed: int = ranged("[1, inf)", 8)  # embedding size of each covariate
    # whether the decoder sees the type embedding. false (as scVI): the type lives in z and a
    # covariate's effect is a function of the cell's state, shared by types of similar states,
    # so a response shared by the types carries over to a combination never seen in training,
    # but a type-specific one is borrowed from other types. A level a type's training cells
    # lacked also gets, either way, the effect the types that have it share, as a gene scale of
    # generated means (models._levels.transferred_effects), which undoes most borrowing. Held-out
    # MMD without that carried effect (Kang's CD14+ Monocytes x stim; the simulated design's
    # type_00 x stim): true 0.51 and 0.063, false 0.24 and 0.22 (scvi 0.30, pooling 0.071);
    # with it (holdout.benchmark_holdout, cvae only): true 0.52 and 0.031, false 0.43 and 0.030
    decode_labels: bool = True
    # the share of training cells whose decoder sees a learned "some type" input instead of
    # their type (with covariates; 0: off). A combination no training cell had is then decoded
    # that way: the type from z, its covariates' effect as learned at that state over every
    # type, while seen combinations keep their type's decoder. Like decode_labels = false it
    # carries a shared response over and borrows other types' own programs too (held-out MMD at
    # 0.2, as above: without the carried effect 0.33 and 0.17, with it 0.49 and 0.032)
    label_dropout: float = ranged("[0, 1)", 0.0)
    dropout_rate: float = ranged("[0, 1)", 0.1)
    likelihood: Literal["nb", "zinb", "gaussian"] = "nb"
    prior: Literal["conditional", "standard"] = "conditional"  # p(z | type), learned, or N(0, I)
    # inverse dispersion of the NB: one per gene and cell type ("gene-label") or per gene
    dispersion: Literal["gene", "gene-label"] = "gene-label"
    # "moments": train on a Poisson likelihood (correlated programs must go through z, not into
    # per-gene over-dispersion), then fit the NB dispersion by moments around the decoded means
    # (likelihood "nb" only); "learned": the dispersion is a trained parameter
    dispersion_fit: Literal["learned", "moments"] = "moments"
    lr: float = ranged("(0, inf)", 1e-3)
    weight_decay: float = ranged("[0, inf)", 1e-6)
    batch_size: int = ranged("[1, inf)", 256)
    # auto: about 10,000 optimiser steps, at most 400 epochs: min(400, 10,000 x batch_size /
    # training cells), at least 1 (400 up to 6,400 cells at batch 256; 5 at E-ANND-5's 533k)
    max_epochs: int | Literal["auto"] = ranged("[1, inf)", "auto")
    # which epoch is kept: "fidelity", the one whose generated cells are closest to the
    # validation cells (two-sample AUC, checked about every 100 optimiser steps, at most 20 times);
    # "elbo", the best validation ELBO (what "fidelity" falls back to with fewer than 20
    # validation cells, validation cells read from disk, or data-parallel training)
    select: Literal["fidelity", "elbo"] = "fidelity"
    # "fidelity": a later check within this AUC of the lowest so far is kept instead, the most
    # trained of the epochs the check cannot tell apart (on a few hundred validation cells the
    # check is flat for dozens of epochs while the cells, measured on the test split, still
    # improve: Kang 0.61 at the first low check, 0.54-0.57 at the later ones within 0.01).
    # 0 (the lowest check) is a trade, measured twice on the five shared data sets
    # (`benchmarks/fidelity.py --models cvae`, Kang and pancreas over 3 fits): the test split's
    # pooled two-sample AUC lower on all five in one, on three in the other (pbmc4k 0.565 ->
    # 0.536, pancreas 0.606 -> 0.595; kidney kept the same epoch, CBMC +0.004) and Kang's
    # re-draw attack 0.558 -> 0.547, but the mean per-type AUC higher on Kang
    # (0.529 -> 0.574) and pancreas (0.606 -> 0.621) in both measurements: the less trained
    # epoch the pooled check picks has not learned the small types' cells as well
    select_tolerance: float = ranged("[0, 1]", 0.01)
    # early stopping: epochs ("elbo") or checks ("fidelity": about 500 optimiser steps) without
    # gain...
    patience: int = ranged("[0, inf)", 5)
    # ...but not before this many optimiser steps (small data: few per epoch; "elbo" only: the
    # fidelity checks are spaced in optimiser steps, and on small data the extra steps cost
    # time and were never kept: pancreas ran 363 epochs for a kept epoch of 65-98)
    min_steps: int = ranged("[0, inf)", 1000)
    # an epoch improves only by beating the best validation loss by more than this fraction
    # (atlases: the loss creeps down by ~0.05% an epoch for the whole budget; 0.001 stops it)
    min_improvement: float = ranged("[0, 1)", 0.0)
    kl_start: float = ranged("[0, 1]", 0.0)  # KL weight annealed from this to 1 (times kl_weight)
    kl_anneal_epochs: int = ranged("[0, inf)", 20)
    # KL weight after the warm-up: 1 trains on the ELBO; below 1 keeps more of each cell in z
    # (sampling draws z from the fitted mixture, not the prior). Early stopping stays on the ELBO
    kl_weight: float = ranged("(0, inf)", 1.0)
    balanced_sampling: bool = False  # class-balanced mini-batches
    distributed: bool = False  # train with torch.distributed (DDP) under torchrun
    # torchrun processes on this machine when distributed
    nproc_per_node: int = ranged("[1, inf)", 2)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the dense layers' matmuls while training: "bfloat16" runs them in bfloat16 (weights,
    # losses and the output logits stay float32: mixed precision; generation, the sampler's fit
    # and the selection checks decode in float32); "auto" picks it where the device multiplies
    # bfloat16 natively (a CPU with AVX512-BF16 or AMX, a GPU that supports it), else float32.
    # float32 by default: bfloat16 trains 1.4-1.9x faster on such a CPU, but its generated
    # cells were further from real ones gene by gene (ARCHITECTURE.md, invariants)
    precision: Literal["auto", "float32", "bfloat16"] = "float32"
    # training checkpoints (pipeline runs): a killed `cellsynth run` resumes training from the
    # last one; write one after every this many epochs; 0 = never
    checkpoint_every: int = ranged("[0, inf)", 1)
    # ...and at least this many seconds after the previous one
    checkpoint_seconds: float = ranged("[0, inf)", 60.0)

    def validate(self) -> CVAEConfig:
        """Check ranges and settings that only work together; raise :class:`ConfigError`."""
        check_ranges(self, "cvae.")
        if self.dispersion_fit == "moments" and self.likelihood != "nb":
            raise ConfigError(
                f"cvae.dispersion_fit = \"moments\" fits a negative binomial's dispersion, but "
                f"cvae.likelihood is {self.likelihood!r}: change cvae.dispersion_fit to "
                f"\"learned\" (or cvae.likelihood to \"nb\"); {fix_hint('cvae.dispersion_fit')}"
            )
        if self.label_dropout > 0 and not self.decode_labels:
            raise ConfigError(
                "cvae.label_dropout replaces the type in the decoder's input, but "
                "cvae.decode_labels = false leaves the type out of the decoder: set one of "
                f"them, not both; {fix_hint('cvae.label_dropout')}")
        return self


@dataclass
class NBConfig:
    """The per-type negative binomial baseline (``nb``)."""

    # obs columns fitted per combination of levels besides the type (donor, condition...), as
    # cvae.covariates; a combination with fewer than min_cells training cells, or none, is
    # generated from its type's fit
    covariates: list[str] = field(default_factory=list)
    min_cells: int = ranged("[2, inf)", 20)


@dataclass
class ScviConfig:
    """scvi-tools SCVI, used as its users would (optional extra ``cellsynth[scvi]``)."""

    # obs columns passed to SCVI.setup_anndata as categorical_covariate_keys (decoder inputs),
    # as cvae.covariates; generated cells are decoded with the requested levels
    covariates: list[str] = field(default_factory=list)
    n_hidden: int = ranged("[1, inf)", 128)
    n_latent: int = ranged("[1, inf)", 10)
    n_layers: int = ranged("[1, inf)", 1)
    gene_likelihood: Literal["nb", "zinb", "poisson"] = "zinb"
    max_epochs: int = ranged("[1, inf)", 200)
    # at least 2: scvi-tools' batch normalisation cannot train on a batch of one cell
    batch_size: int = ranged("[2, inf)", 128)
    early_stopping: bool = True


@dataclass
class ExplainConfig:
    cell_type: str = ""  # type to explain; "" = the most common training type
    n_top_genes: int = ranged("[1, inf)", 20)
    max_cells: int = ranged("[1, inf)", 2000)  # test cells of that type SHAP is computed on


@dataclass
class ReportConfig:
    umap: bool = True  # UMAP of real test and generated cells in the report (umap-learn)
    # cells per origin in the UMAP and the fidelity metrics (stratified; each type keeps 40, or
    # all it has, beyond it: the cells its own verdict needs, so many types can pass it)
    max_cells: int = ranged("[1, inf)", 3000)
    fidelity: bool = True  # fidelity metrics with the real-vs-real floor (count generators)
    # random halvings the gene-level AUCs and their floor average over: "auto" takes more the
    # fewer cells there are (up to 10 under 2,000 a side; one halving of a few hundred cells
    # moves the floor by several hundredths); 1 is the quickest, for a first look
    gene_repeats: int | Literal["auto"] = ranged("[1, inf)", "auto")


@dataclass
class RunConfig:
    """Every setting of a run: one section per stage, and the one seed.

    Load one from TOML with :func:`load` (``--set SECTION.KEY=VALUE`` overrides checked
    against each setting's type and declared range), or resolve the CLI's way with
    :func:`resolve`; ``cellsynth config show`` prints them with defaults and ranges.

    Parameters
    ----------
    seed
        The one seed every other seed is derived from (``seeds.derive_seed``).
    dataset, qc, split, features, classifier, generator, seed_vae, cvae, nb, scvi, explain, report
        The settings of each stage (:class:`DatasetConfig`, :class:`QCConfig`, ...), or a
        dict of some of them (``RunConfig(cvae={"max_epochs": 20})``), checked as a config
        file's table is.
    """

    seed: int = ranged("[0, 2**63)", 0)  # the one seed every other seed is derived from
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    seed_vae: SeedVAEConfig = field(default_factory=SeedVAEConfig)
    cvae: CVAEConfig = field(default_factory=CVAEConfig)
    nb: NBConfig = field(default_factory=NBConfig)
    scvi: ScviConfig = field(default_factory=ScviConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        # RunConfig(cvae={"max_epochs": 20}): a section given as a dict is read as a config
        # file's table is (keys, types and ranges checked; the settings left out at defaults)
        for f in dataclasses.fields(self):
            section = f.default_factory
            if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
                continue
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(self, f.name, from_dict(section, value, f"{f.name}."))
            elif not isinstance(value, section):
                raise ConfigError(f"RunConfig({f.name}=...) takes a {section.__name__} or a "
                                  f"dict of its settings (e.g. {f.name}={{...}}), got "
                                  f"{type(value).__name__}")

    def validate(self) -> RunConfig:
        """Check ranges and values a type cannot express; raise :class:`ConfigError` with the fix."""
        check_ranges(self)
        check_split(self.split, self.dataset.donor_key)
        self.cvae.validate()
        return self


def check_split(split: SplitConfig, donor_key: str) -> None:
    """Refuse fractions that are not positive or do not sum to 1, and held-out donors without a
    donor column (``dataset.donor_key``), with a :class:`ConfigError` that says the fix."""
    s = split
    if min(s.train, s.val, s.test) <= 0 or abs(s.train + s.val + s.test - 1) > 1e-6:
        raise ConfigError(
            f"split fractions must be positive and sum to 1, got train={s.train}, "
            f"val={s.val}, test={s.test} (sum {s.train + s.val + s.test:.6g}; the defaults are "
            f"0.7, 0.1 and 0.2); {fix_hint('split.train')} (and split.val, split.test)")
    if s.heldout_donors and not donor_key:
        raise ConfigError(
            f"split.heldout_donors = {s.heldout_donors} holds out whole donors, but "
            "dataset.donor_key names no donor column: set dataset.donor_key to the obs column "
            f"of each cell's donor, or split.heldout_donors to 0; {fix_hint('dataset.donor_key')}")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass (a section from a dict, checked: config_rules.from_dict), TOML


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a (nested) config dataclass, ready for TOML or JSON."""
    return dataclasses.asdict(cfg)


def run_config(data: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from a nested dict (``from_dict`` builds any section)."""
    return from_dict(RunConfig, data).validate()


def read_toml(path: str | Path) -> dict[str, Any]:
    """The nested dict of a TOML config file, or a :class:`ConfigError` saying what is wrong."""
    from .paths import expand_user, variables_hint

    path = expand_user(path, "config")  # ~/configs/atlas.toml, as every writer reads ~
    if not path.is_file():
        raise ConfigError(f"config file {path} " + ("is a folder" if path.is_dir() else
                          "does not exist" + variables_hint(path))
                          + "; give an existing --config file")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM (Windows editors) is no error
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} cannot be "
                          "decoded); give a TOML config saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}); give a readable "
                          "--config path") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return data


def load(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> RunConfig:
    """Load a TOML config (defaults where ``path`` is None), apply overrides, validate."""
    data = read_toml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return run_config(data)


def save(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as TOML, atomically (:func:`cellsynth.outputs.write_text`): a
    run killed mid-write leaves the settings file as it was, never half of it."""
    write_text(Path(path), toml_text(cfg))


def toml_text(cfg: RunConfig) -> str:
    """The resolved config as TOML text (what :func:`save` writes)."""
    return tomli_w.dumps(to_dict(cfg))
