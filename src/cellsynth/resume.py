"""Resuming a run: the pipeline's stages, the settings and input files each stage's key
covers, and which stages of a run directory can be skipped (:class:`ResumePlan`). The
manifest it reads and writes is :class:`cellsynth.runtime.Manifest`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import MODEL_SECTIONS
from .errors import ConfigError, listed
from .outputs import write_json

if TYPE_CHECKING:
    from .runtime import Manifest

logger = logging.getLogger("cellsynth.pipeline")


#: the pipeline's stages in order: the config sections each reads, and the stages it uses
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data": (("seed", "dataset", "qc", "split"), ()),
    "features": (("features",), ("data",)),
    "classifier": (("classifier", "groups"), ("features",)),  # groups: dataset.groups
    "generator": (("generator", "seed_vae", "cvae", "nb", "scvi"), ("features",)),
    "experiments": (("generator", "classifier"), ("classifier", "generator")),
    "explain": (("explain",), ("classifier",)),
    "evaluation": (("report",), ("experiments",)),
}

#: the stages that read a file the user names, and the setting naming it (hashed by content)
INPUT_SETTINGS = {"data": ("dataset", "path"), "classifier": ("groups", "spec")}

#: settings that change how a stage runs, not what it produces: left out of the stage hashes, so
#: changing them does not redo a finished stage (how often training checkpoints are written)
UNHASHED: dict[str, tuple[str, ...]] = {"cvae": ("checkpoint_every", "checkpoint_seconds"),
                                      "dataset": ("drop_undetected_genes",)}  # fit only

#: settings added after results were kept, with the value that does what the code did before
#: them: hashed only when set to something else, so adding one keeps every kept result valid
ADDED: dict[str, dict[str, Any]] = {
    "cvae": {"kl_weight": 1.0, "min_improvement": 0.0, "dispersion_fit": "learned",
             "select": "elbo", "covariates": [], "n_covariate_embed": 8,
             "decode_labels": True, "label_dropout": 0.0},
    "nb": {"covariates": [], "min_cells": 20},
    "scvi": {"covariates": []},
    "dataset": {"donor_key": ""},
    "split": {"heldout_donors": 0},
}


def hashed_settings(cfg: Any) -> dict[str, Any]:
    """The config as a dict without the :data:`UNHASHED` settings, nor the :data:`ADDED` ones
    at their earlier behaviour's value: what results depend on."""
    config = dataclasses.asdict(cfg)
    if isinstance(config.get("dataset"), dict) and "groups" in config["dataset"]:
        # dataset.groups: read by the classifier stage on, so its own pseudo-section ({} when
        # empty); the data stage keeps the "" it hashed before, so kept results stay valid
        spec = config["dataset"]["groups"]
        config["dataset"] = {**config["dataset"], "groups": ""}
        config["groups"] = {"spec": spec} if spec else {}
    for section, keys in UNHASHED.items():
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k not in keys}
    for section, before in ADDED.items():
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items()
                               if k not in before or v != before[k]}  # fmt: skip
    return config


class ResumePlan:
    """Which stages of a run directory can be skipped: done before with the same key.

    A stage's key (its hash) covers its own config sections, the keys of the stages it uses
    and, for a stage that reads a file the user gives (``inputs``: the data stage reads
    ``dataset.path``), that file's content digest (:func:`input_digest`). So a QC change or a
    replaced input file redoes everything, while a classifier change keeps the trained
    generator. A stage runs when forced, when its key changed, when a stage it uses ran, or
    when a file it wrote is gone; the log says which.
    """

    def __init__(self, manifest: Manifest, cfg: Any, force: set[str],
                 inputs: dict[str, dict[str, Any]] | None = None):  # fmt: skip
        unknown = set(force) - set(STAGES)
        if unknown:
            raise ConfigError(f"--force: unknown stage(s) {sorted(unknown)}; stages are: "
                              f"{', '.join(STAGES)}")
        self.manifest, self.force, self.ran = manifest, set(force), set()
        # the stages this run's --force redoes: those that a stopped run given the same --force
        # began are not begun again (the same command goes on with it, its checkpoint kept)
        self.requested, self.started = set(force), _begun(manifest.data.get("forced"), force)
        self.force -= self.started
        if self.started:
            logger.info("going on with the run stopped in %s with the same --force: stage(s) "
                        "%s, which it began again, are not started over (its training "
                        "checkpoint is kept; once this run ends, --force starts them over)",
                        manifest.path.parent, ", ".join(sorted(self.started)))
        # the settings the directory's last run recorded, taken before this run records its own
        self.before = _plain(manifest.data.get("config"))
        self.now = _plain(dataclasses.asdict(cfg))
        self.inputs = dict(inputs or {})
        config = hashed_settings(cfg)
        for name, digest in self.inputs.items():  # a file read is known by its content: the
            section, key = INPUT_SETTINGS[name]  # same file by any path
            if isinstance(config.get(section), dict):
                config[section] = {**config[section], key: digest["sha256"]}
        self.hashes = self._keys(config, narrow=True)
        # the keys before the generator's narrowed to its model's section: a stage done with
        # one is done with the same settings (they covered more), so kept results stay valid
        self.earlier = self._keys(config, narrow=False)

    def _keys(self, config: dict[str, Any], *, narrow: bool) -> dict[str, str]:
        """Each stage's key; ``narrow``: the generator stage's covers only what it reads."""
        hashes: dict[str, str] = {}
        for name, (sections, uses) in STAGES.items():
            # a section holding only ADDED settings at their old values (nb's) is left out,
            # so adding it keeps earlier keys
            settings = {k: config[k] for k in sections if config[k] != {}}
            if narrow and name == "generator":
                settings = _generator_settings(config, settings)
            key: dict[str, Any] = {"config": settings, "uses": [hashes[u] for u in uses]}
            if name in self.inputs:
                key["input"] = self.inputs[name]["sha256"]
            blob = json.dumps(key, sort_keys=True, default=str)
            hashes[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return hashes

    def forced_record(self) -> dict[str, list[str]] | None:
        """What the manifest keeps of this run's ``--force`` until the run ends (``forced``):
        the stages named and those begun again, so that the same command, rerun after a stop,
        goes on instead of starting them over; None for a run without ``--force``."""
        if not self.requested:
            return None
        return {"stages": sorted(self.requested), "started": sorted(self.started)}

    def begin(self, name: str) -> bool:
        """Record that stage ``name`` starts; whether it starts because of this run's
        ``--force`` (begun now, not by a stopped run given the same --force)."""
        if name not in self.force:
            return False
        self.started.add(name)
        if isinstance(self.manifest.data.get("forced"), dict):
            self.manifest.data["forced"] = self.forced_record()  # written as the stage starts
        return True

    def hash(self, name: str) -> str:
        return self.hashes[name]

    def runs(self, name: str) -> bool:
        """Whether ``name`` must run (and why, in the log when it was done before); logs the
        skip otherwise."""
        why = self._why(name)
        if why is None:
            logger.info("stage %s: done before with the same settings, skipped", name)
            return False
        self.ran.add(name)
        if name == "data" and why.startswith("the input file changed (now "):  # another data
            logger.warning("stage %s: %s; running again: every result in %s is replaced by "
                           "this file's", name, why, self.manifest.path.parent)
        elif why:
            logger.info("stage %s: %s; running again", name, why)
        self._mark_stale(name)
        return True

    def _mark_stale(self, name: str) -> None:
        """Mark every finished stage that uses ``name`` (directly or not) ``stale`` before it
        runs again: should this run stop, their results on disk are an earlier run's, and the
        manifest (``cellsynth info``, the report) says so."""
        after, stages, marked = {name}, self.manifest.data["stages"], False
        for other, (_, uses) in STAGES.items():
            if after.intersection(uses):
                after.add(other)
                if stages.get(other, {}).get("status") == "done":
                    stages[other]["status"] = "stale"
                    marked = True
        if marked:  # a first run has nothing to mark: no write
            write_json(self.manifest.path, self.manifest.data)

    def _why(self, name: str) -> str | None:
        """Why ``name`` runs ("" for a stage never finished before), None when it is skipped."""
        entry = self.manifest.data["stages"].get(name, {})
        done = entry.get("status") == "done"
        if name in self.force:
            return "--force" if done else ""
        upstream = sorted(self.ran.intersection(STAGES[name][1]))
        stale = entry.get("status") == "stale"
        if upstream:
            return f"stage {upstream[0]} ran" if done or stale else ""
        if not done:
            return "a stage it uses ran again since it finished" if stale else ""
        if entry.get("config_hash") not in (self.hashes[name], self.earlier[name]):
            if name in self.inputs and (entry.get("input") or {}).get("sha256") != \
                    self.inputs[name]["sha256"]:
                return f"the input file changed ({_input_change(entry.get('input'), self.inputs[name])})"
            changed = self._changed_settings(name)
            return f"its settings changed ({listed(changed, 4, sep='; ')})" if changed else \
                "its settings changed"
        changed = self.manifest.changed_outputs(name)
        if changed:
            more = f" (and {len(changed) - 1} more of its files)" if len(changed) > 1 else ""
            return f"its output {changed[0]}{more}"
        return None

    def _changed_settings(self, name: str) -> list[str]:
        """The settings stage ``name`` reads that differ from those the directory's last run
        recorded (``cvae.n_latent: 32 before, 16 now``); [] when none is known to."""
        if not isinstance(self.before, dict):
            return []
        sections = list(STAGES[name][0])
        if name == "generator":
            model = (self.now.get("generator") or {}).get("model")
            own = MODEL_SECTIONS.get(model)
            sections = ["generator", own] if own else sections
        pairs: list[tuple[str, Any, Any]] = []
        for section in sections:
            now, before = self.now.get(section), self.before.get(section)
            if section == "groups":  # dataset.groups, read by the classifier stage
                before = self.before.get("dataset")
                pairs.append(("dataset.groups", (before if isinstance(before, dict) else {})
                              .get("groups"), (self.now.get("dataset") or {}).get("groups")))
            elif not isinstance(now, dict):
                pairs.append((section, before, now))
            else:
                before = before if isinstance(before, dict) else {}
                for key, value in now.items():
                    skip = UNHASHED.get(section, ()) + (("groups",) if section == "dataset" else ())
                    if key in skip or (name == "generator" and section == "generator"
                                       and key != "model"):  # fmt: skip
                        continue
                    was = before.get(key, ADDED.get(section, {}).get(key))
                    pairs.append((f"{section}.{key}", was, value))
        return [f"{key}: {json.dumps(was)} before, {json.dumps(now)} now"
                for key, was, now in pairs if was != now]



def _generator_settings(config: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What the generator stage reads of ``settings`` (its sections): the model's name and
    its own section, not the other models' sections nor the counts of generated cells (read by
    the experiments stage), so changing those keeps the trained generator."""
    model = (config.get("generator") or {}).get("model")
    section = MODEL_SECTIONS.get(model)
    if section is None:
        return settings
    return {"generator": {"model": model},
            **({section: settings[section]} if section in settings else {})}


def _begun(record: Any, force: set[str]) -> set[str]:
    """The stages of ``force`` that a stopped run given the same ``--force`` began again (the
    manifest's ``forced`` ``record``); none when the record is another --force's or absent."""
    if not force or not isinstance(record, dict) or not isinstance(record.get("started"), list):
        return set()
    if record.get("stages") != sorted(force):
        return set()
    return force.intersection(s for s in record["started"] if isinstance(s, str))


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists): the manifest's form."""
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _input_change(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """How an input file differs from the one a stage read before, in words."""
    if not before:
        return f"{now['path']}: no record of the file read before"
    if before.get("path") != now["path"]:
        return f"now {now['path']}, was {before.get('path')}"
    if before.get("size") != now["size"]:
        return f"{now['path']}: {before.get('size')} bytes before, {now['size']} now"
    return (f"{now['path']}: same size, different content (sha256 "
            f"{str(before.get('sha256'))[:12]}... before, {now['sha256'][:12]}... now)")


def input_digest(path: str | Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity of an input file: ``path`` (resolved), ``size``, ``mtime_ns`` and the
    ``sha256`` of its bytes (matrix, obs and everything else in it).

    Hashing reads the whole file once (about a second a GB); ``known``, the digest recorded by
    an earlier run, is reused without reading when path, size and modification time match.
    """
    path = Path(path).expanduser().resolve()
    st = path.stat()
    ident = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if known and all(known.get(k) == v for k, v in ident.items()) and known.get("sha256"):
        return {**ident, "sha256": known["sha256"]}
    if st.st_size > 1 << 30:
        logger.info("hashing the input file %s (%.1f GB) to tell a changed file on resume; "
                    "once, while it stays unchanged", path, st.st_size / 1e9)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return {**ident, "sha256": digest.hexdigest()}
