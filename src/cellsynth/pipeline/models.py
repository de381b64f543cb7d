"""The classifier, generator and experiments stages: XGBoost on real cells, the generator,
and experiments (a) real/real, (b) the real classifier on generated cells, (c) a classifier
trained on generated cells tested on real ones."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .. import keys as K
from ..cells import Cells
from ..classify.xgb import Classifier, train_classifier
from ..config import save
from ..data.qc import normalise_log1p
from ..data.store import write_h5ad
from ..errors import CellsynthError, DataError, listed
from ..features.pca import PCAModel
from ..metrics.classification import classification_report, summary_row, to_coarse, write_report
from ..models.base import check_memory, package_version, request
from ..models.registry import load_generator, make_generator
from ..models.seed import SeedCVAE
from ..outputs import write_json
from .context import RunContext
from .data import Split, read_groups, stage_groups
from .output import check_disk, provenance, write_cells

logger = logging.getLogger(__name__)


def score(y_true, y_pred, groups: dict[str, str], out: Path, name: str,
          classes: list[str]) -> dict:  # fmt: skip
    """Fine and coarse reports of one experiment, written as ``{name}_*`` and ``{key}_summary.json``.

    Every class the classifier knows (``classes``) has a row, one without true cells with
    support 0 (said, and out of the macro average), so no type is missing from the tables.
    """
    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    labels = sorted(set(map(str, classes)) | set(y_true.tolist()) | set(y_pred.tolist()))
    unscored = sorted(set(labels) - set(y_true.tolist()))
    if unscored:
        logger.warning("%s: %d type(s) have no cells to score (support 0 in the per-class "
                       "tables, left out of the macro average): %s", name, len(unscored),
                       listed(unscored, 10))
    fine = classification_report(y_true, y_pred, labels)
    coarse = classification_report(to_coarse(y_true, groups), to_coarse(y_pred, groups),
                                   sorted(set(to_coarse(labels, groups).tolist())))
    write_report(fine, out, f"{name}_fine")
    write_report(coarse, out, f"{name}_coarse")
    summary = {"fine": summary_row(fine), "coarse": summary_row(coarse),
               "unscored": unscored}  # said under results.md's tables
    write_json(out / f"{name[0]}_summary.json", summary)
    return summary


def fit_classifier(ctx: RunContext, train: Split, val: Split, seed_name: str) -> Classifier:
    """XGBoost here, or on a Dask cluster (``classifier.backend = "dask"``)."""
    c = ctx.cfg.classifier
    if c.backend == "dask":
        from ..classify.dask import train_classifier_dask

        return train_classifier_dask(train.x, train.y, val.x, val.y, c, seed=ctx.seed(seed_name),
                                     scheduler=c.dask_scheduler, n_workers=c.dask_workers)
    return train_classifier(train.x, train.y, val.x, val.y, c, seed=ctx.seed(seed_name))  # fmt: skip


def stage_classifier(ctx: RunContext, splits: dict[str, Split], types: list[str],
                     dropped: list[str]) -> tuple[Classifier, dict[str, str]]:
    """The classifier on real training cells, scored on the test cells (experiment a); and the
    coarse groups (``data/groups.json``), chosen here: the first stage that reads them
    (``dropped``: the types QC removed)."""
    if not ctx.runs("classifier"):
        with ctx.read_back("classifier"):
            return Classifier.load(ctx.path("classifier")), read_groups(ctx)
    with ctx.stage("classifier"):
        groups = stage_groups(ctx, splits, types, dropped)
        clf = fit_classifier(ctx, splits["train"], splits["val"], "classifier")
        clf.save(ctx.path("classifier"))
        score(splits["test"].y, clf.predict(splits["test"].x), groups, ctx.path("metrics"),
              "a_real_real", clf.labels)
    return clf, groups


#: a line of a torchrun rank's log (``models.distributed.main``'s format)
_RANK_LINE = re.compile(
    r"^\d\d:\d\d:\d\d rank (\d+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")


def _relay(stream: Any) -> None:
    """The lines ``stream`` (the ranks' stderr) carries, logged here: a rank's log line at its
    level, by its logger (a cellsynth one: another library's is named in the message), so that
    this process's handlers take them as its own lines (the console at its level, ``--quiet``;
    ``run.log``; the heartbeat's clock); any other line (a traceback, torchrun's) as a
    warning."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\r\n")
        match = _RANK_LINE.match(line)
        if match is None:
            if line.strip():
                logger.warning("torchrun: %s", line)
            continue
        rank, level, name, message = match.groups()
        if not message.startswith("rank "):
            message = f"rank {rank}: {message}"
        if not (name == "cellsynth" or name.startswith("cellsynth.")):
            name, message = "cellsynth.models.distributed", f"{name}: {message}"
        logging.getLogger(name).log(getattr(logging, level), "%s", message)


def run_process_group(cmd: list[Any], grace: float = 30.0,
                      env: dict[str, str] | None = None, relay: bool = False) -> int:
    """Run ``cmd`` in a process group of its own and return its exit status; when this process
    is stopped meanwhile (Ctrl-C, SIGTERM from a scheduler: an exception here), the whole group
    is stopped too, SIGTERM then SIGKILL after ``grace`` seconds. ``subprocess.run`` would kill
    only ``torchrun``, whose workers then trained on, wrote outputs and removed the checkpoint
    the stopped run was to resume from. With ``relay`` its stderr is logged here
    (:func:`_relay`): inherited, the ranks' lines ignored ``--quiet`` and never reached
    ``run.log``."""
    proc = subprocess.Popen(cmd, start_new_session=True, env=env,
                            stderr=subprocess.PIPE if relay else None)
    reader = None
    if relay:
        reader = threading.Thread(target=_relay, args=(proc.stderr,), daemon=True,
                                  name="cellsynth-torchrun-log")
        reader.start()
    try:
        code = proc.wait()
        if reader is not None:
            reader.join(timeout=30)  # its last lines (a failure's) before the caller's error
        return code
    except BaseException:
        _stop_group(proc, grace)
        logger.warning("stopped the distributed training's processes (%s)", cmd[0])
        raise


def _stop_group(proc: Any, grace: float) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL to what is left of it after ``grace`` s, or
    at once when the wait is itself interrupted: a stopped command's signal is raised again
    every ``cli_signals.REPEAT_SIGNAL_SECONDS`` while it runs on, so a rank that ignores
    SIGTERM would otherwise outlive the run."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader: a zombie still counts as a member
                os.killpg(proc.pid, 0)  # raises once no process of the group is left
                time.sleep(0.1)
        finally:  # the grace over, or the wait interrupted: what is left is killed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.poll()


def _fit_cvae_distributed(ctx: RunContext, cells: Cells, checkpoint_dir: Path) -> Any:
    """Train the CVAE with DistributedDataParallel in ``torchrun`` processes; load the result."""
    from ..models.cvae import CVAE
    from ..models.distributed import PARENT_ENV, torchrun_command

    work = ctx.path("generator_ddp")
    work.mkdir(parents=True, exist_ok=True)
    rows = cells.split_rows()
    write_h5ad(cells.to_memory(np.sort(np.concatenate([rows["train"], rows["val"]]))),
               work / "fit_on.h5ad")  # atomic, and refused before HDF5 where the disk lacks room
    save(ctx.cfg, work / "run.toml")
    cmd = torchrun_command(work / "fit_on.h5ad", ctx.label_key, work / "model",
                           nproc_per_node=ctx.cfg.cvae.nproc_per_node, config=work / "run.toml",
                           seed=ctx.seed("generator"), checkpoint_dir=checkpoint_dir,
                           checkpoint_key=ctx.plan.hash("features"),
                           launcher="cellsynth.models._torchrun")  # fmt: skip
    logger.info("torchrun: %s", " ".join(map(str, cmd)))
    if run_process_group(cmd, env={**os.environ, PARENT_ENV: str(os.getpid())},
                         relay=True) != 0:
        raise CellsynthError(f"distributed CVAE training failed; see the torchrun lines above "
                             f"(command: {' '.join(map(str, cmd))})")
    return CVAE.load(work / "model")


def fit_generator(ctx: RunContext, cells: Cells, pca: PCAModel, splits: dict[str, Split],
                  types: list[str]) -> tuple[Any, dict]:  # fmt: skip
    """Train the configured generator: ``reference`` on PCA features (as the reference), the
    count-space ones on the cells' counts (training split, validation for early stopping).

    The reference model and the CVAE save training checkpoints in ``generator/checkpoint/`` and
    resume from them when they match (settings, data, seed, the features stage's hash)."""
    cfg, seed = ctx.cfg, ctx.seed("generator")
    ckpt = ctx.path("generator", "checkpoint")  # removed as a forced stage begins (ctx.stage)
    key = ctx.plan.hash("features")
    if cfg.generator.model == "reference":
        gen = SeedCVAE(pca.n_components, types, cfg.seed_vae)
        history = gen.fit(splits["train"].x, splits["train"].y, splits["val"].x, splits["val"].y,
                          seed=seed, checkpoint_dir=ckpt,
                          checkpoint_key=key)  # fmt: skip
        return gen, history
    if cfg.generator.model == "cvae" and cfg.cvae.distributed:
        gen = _fit_cvae_distributed(ctx, cells, ckpt)
        return gen, dict(gen.history)
    gen = make_generator(cfg.generator.model, cfg)
    if cfg.generator.model == "cvae":
        history = gen.fit(cells, seed=seed, checkpoint_dir=ckpt,
                          checkpoint_key=key)  # fmt: skip
    else:
        rows = cells.split_rows()
        fit_on = cells.to_memory(np.sort(np.concatenate([rows["train"], rows["val"]])))
        history = gen.fit(fit_on, ctx.label_key, seed=seed)
    return gen, history


def _drop_checkpoints(folder: Path) -> None:
    """The training checkpoints' folder, once the fit is done (a fit removes its checkpoint,
    but what a kill left in the folder, such as a write cut short, would stay): the save
    replaces ``generator/`` whole and refuses a folder that holds anything but a model."""
    if folder.is_dir():
        logger.debug("removing the training checkpoints' folder %s (%s)", folder,
                     ", ".join(sorted(p.name for p in folder.iterdir())) or "empty")
        shutil.rmtree(folder, ignore_errors=True)


def stage_generator(ctx: RunContext, cells: Cells, pca: PCAModel, splits: dict[str, Split],
                    types: list[str]) -> Any:  # fmt: skip
    """Train and save the generator (or load the one trained before)."""
    if not ctx.runs("generator"):
        with ctx.read_back("generator"):
            if ctx.cfg.generator.model == "reference":
                return SeedCVAE.load(ctx.path("generator"))
            return load_generator(ctx.path("generator"))
    with ctx.stage("generator") as entry:
        gen, history = fit_generator(ctx, cells, pca, splits, types)
        _drop_checkpoints(ctx.path("generator", "checkpoint"))
        gen.save(ctx.path("generator"))
        entry.update(model=ctx.cfg.generator.model, epochs=history.get("epochs"),
                     best_epoch=history.get("best_epoch"))
        write_json(ctx.path("generator", "history.json"), history)
    return gen


def _pca_adata(x: np.ndarray, y: np.ndarray, ctx: RunContext, seed: int) -> ad.AnnData:
    obs = pd.DataFrame({ctx.label_key: pd.Categorical(y)}, index=[f"syn{i}" for i in range(len(y))])
    var = pd.DataFrame(index=[f"PC{i + 1}" for i in range(x.shape[1])])
    a = ad.AnnData(X=x, obs=obs, var=var)
    a.uns[K.UNS] = {"version": package_version(), "model": "reference", "seed": seed,
                    "space": "PCA coordinates (the reference model generates in PCA space)"}
    return a


def _count_chunks(gen: Any, counts: dict[str, int], seed: int, out: Path | None):
    """The generated counts as CSR chunks, their ``obs`` and the provenance for
    ``uns['cellsynth']``; checks first that ``out``'s disk can hold them (when writing)."""
    if hasattr(gen, "sample_chunks"):  # one chunk in memory at a time
        plan, unseen = gen.plan(counts)
        chunks = (x for _, x in gen.sample_chunks(plan, seed=seed))
        if out is not None:
            _, chunks = check_disk(gen, plan, out.parent, chunks,
                                   hint="free disk space, choose another --out, or lower "
                                   "generator.n_per_type_train and n_per_type_eval")  # fmt: skip
        return chunks, gen.plan_obs(plan), provenance(gen, seed, unseen, plan)
    syn = gen.sample(counts, seed=seed)
    return iter([syn.X]), syn.obs.reset_index(drop=True), dict(syn.uns[K.UNS])


def generate(ctx: RunContext, gen: Any, cells: Cells, pca: PCAModel, counts: dict[str, int],
             seed: int, name: str, write: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Generate cells, write them to ``synthetic/{name}.h5ad`` (when ``write``), and return them
    in the classifier's PCA space. Counts are made, written, normalised and projected one chunk
    at a time; the projection is held like the cells' own features (a memmap out of core)."""
    path = ctx.path("synthetic", f"{name}.h5ad")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(gen, SeedCVAE):
        x, y = gen.sample(counts, seed=seed)
        if write:
            write_h5ad(_pca_adata(x, y, ctx, seed), path)  # atomic: .part, then renamed
        return x, y
    pairs = request(counts, gen.labels)
    y = np.repeat(np.array([t for t, _ in pairs], dtype=object), [n for _, n in pairs])

    def fill(z: np.ndarray) -> None:
        chunks, obs, uns = _count_chunks(gen, counts, seed, path if write else None)
        pos = 0

        def projected():
            nonlocal pos
            for x in chunks:
                n = x.shape[0]
                pca.transform(normalise_log1p(x, ctx.cfg.qc.target_sum),
                              chunk_size=ctx.cfg.qc.chunk_size, out=z[pos:pos + n])
                pos += n
                yield x

        if write:
            write_cells(path, projected(), obs, gen.genes, uns,
                        annotation=getattr(gen, "gene_annotation", None))
        else:
            for _ in projected():
                pass

    z = cells.per_cell_array(ctx.path("synthetic", f"{name}_pca.npy"), (len(y), pca.n_components),
                             fill)  # fmt: skip
    return z, y.astype(str)


def _sizes_hint(sizes: dict[str, int]) -> str:
    return (": lower generator.n_per_type_eval, n_per_type_train and n_per_type_val (now "
            f"{sizes['eval']:,}, {sizes['train']:,} and {sizes['val']:,} cells per type); "
            "a rerun keeps the trained generator")


def check_experiment_memory(sizes: dict[str, int], types: list[str], n_components: int,
                            on_disk: bool) -> None:  # fmt: skip
    """Refuse, before any cell is generated, experiment sets (``sizes``: cells per type of
    each) whose labels, PCA points and the (c) classifier's copy of its training points would
    not fit in memory (a huge ``generator.n_per_type_train`` held 16 GB of labels for a minute,
    then failed with numpy's MemoryError traceback); out of core the points are on disk."""
    n = {name: k * len(types) for name, k in sizes.items()}
    label = 8 + 4 * max(map(len, types))  # the object array of names and its str copy
    point = 4 * n_components  # float32
    need = sum(n.values()) * (label + (0 if on_disk else point)) \
        + (n["train"] + n["val"]) * point  # xgboost's own copy
    check_memory(need, sum(n.values()), _sizes_hint(sizes))


def stage_experiments(ctx: RunContext, gen: Any, cells: Cells, pca: PCAModel, clf: Classifier,
                      splits: dict[str, Split], types: list[str], groups: dict[str, str]) -> None:
    """Experiments (b) and (c) on generated cells."""
    if not ctx.runs("experiments"):
        return
    with ctx.stage("experiments"):
        g = ctx.cfg.generator
        sizes = {"eval": g.n_per_type_eval, "train": g.n_per_type_train, "val": g.n_per_type_val}
        check_experiment_memory(sizes, types, pca.n_components, cells.on_disk)
        syn = {}
        for name, n in sizes.items():
            try:
                syn[name] = generate(ctx, gen, cells, pca, dict.fromkeys(types, n),
                                     ctx.seed(f"generate-{name}"), name, write=name != "val")
            except DataError as exc:  # a generator's own memory check: which setting to lower
                if not str(exc).endswith("ask for fewer cells"):
                    raise
                raise DataError(f"{exc}{_sizes_hint(sizes)}") from None
        metrics = ctx.path("metrics")
        x_b, y_b = syn["eval"]
        score(y_b, clf.predict(x_b), groups, metrics, "b_real_synthetic", clf.labels)
        clf_syn = fit_classifier(ctx, Split(*syn["train"]), Split(*syn["val"]),
                                 "classifier-synthetic")  # fmt: skip
        clf_syn.save(ctx.path("classifier_synthetic"))
        score(splits["test"].y, clf_syn.predict(splits["test"].x), groups, metrics,
              "c_synthetic_real", clf_syn.labels)
