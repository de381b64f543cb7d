"""What every stage of a run reads: the settings, the run directory, seeds, manifest."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..cells import is_large
from ..config import RunConfig, read_toml, save, to_dict
from ..data.groups import groups_file
from ..data.io import check_file
from ..errors import CellsynthError, ConfigError, ModelFileError, listed
from ..outputs import check_links, check_out, write_json
from ..paths import expand_user
from ..resume import ResumePlan, input_digest
from ..runtime import Manifest, RunLock, environment
from ..seeds import derive_seed

logger = logging.getLogger(__name__)

#: the generators that train from cells on disk
BACKED_GENERATORS = ("cvae",)


@dataclass
class RunContext:
    """One run: its settings, directory, seeds and manifest, set once.

    Parameters
    ----------
    cfg
        The resolved settings.
    out
        The run directory.
    force
        Stages to redo, and so everything after them.
    command
        The command line that started the run (recorded in the manifest), or None.
    """

    cfg: RunConfig
    out: Path
    force: set[str] = field(default_factory=set)
    command: str | None = None

    def __post_init__(self) -> None:
        self.out = expand_user(self.out, "out")  # every write below goes to the expanded path
        check_links(self.out)  # before anything is written (the write probe included)
        check_out(self.out, self.cfg)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise CellsynthError(f"cannot write to the output directory {self.out} "
                                 f"({exc.strerror}); choose another with --out") from None
        self.lock = RunLock(self.out)
        self.lock.acquire()  # before anything is written: one run per directory
        try:
            self.manifest = Manifest(self.out / "manifest.json")
            # a rerun's settings replace the recorded ones when it first changes an output (or
            # finishes): one refused before any stage ran leaves the directory as it was
            self._recorded = False
            if not self.manifest.data["stages"]:
                self.record_config()
            self._check_demo_over_data()
            self._warn_edited_config()
            self.plan = ResumePlan(self.manifest, self.cfg, self.force, inputs=self._inputs())
            if self._recorded and self.plan.forced_record():  # a new directory's, from the start
                self.manifest.set_meta(forced=self.plan.forced_record())
            self.backed = out_of_core(self.cfg)
        except BaseException:
            self.close()
            raise

    def record_config(self) -> None:
        """Write the run's settings (``config.toml``, the manifest's ``config`` and
        ``environment``), once: before the first stage that runs, or at the end of a run that
        reran none."""
        if not self._recorded:
            # the input's path resolved: the file replays from any folder
            save(with_resolved_path(self.cfg), self.out / "config.toml")
            # this run's --force, kept until it ends: the same command goes on after a stop
            self.manifest.data.pop("forced", None)
            plan = getattr(self, "plan", None)  # none yet when a new directory is recorded
            forced = plan.forced_record() if plan is not None else None
            self.manifest.set_meta(config=to_dict(self.cfg), environment=environment(),
                                   command=self.command, **({"forced": forced} if forced else {}))
            self._recorded = True

    def end(self) -> None:
        """Every stage is done: this run's ``--force`` is spent (a later run given it starts
        its stages over)."""
        if self.manifest.data.pop("forced", None) is not None:
            write_json(self.manifest.path, self.manifest.data)

    def _check_demo_over_data(self) -> None:
        """Refuse the embedded demo atlas (no ``dataset.path``) in a directory whose data stage
        read a user's file, unless the data stage is forced: ``cellsynth run --out RUN`` given
        no data reads as "go on with RUN" and would replace every result there with the
        demo's."""
        if self.cfg.dataset.path or "data" in self.force:
            return
        entry = self.manifest.data["stages"].get("data", {})
        read = entry.get("input") if isinstance(entry, dict) else None
        if not isinstance(read, dict) or not read.get("path"):
            return
        import shlex

        out = shlex.quote(str(self.out))
        raise ConfigError(
            f"{self.out} holds a run of {read['path']}; this run is given no data "
            "(no dataset.path) and would run the embedded demo atlas there, replacing every "
            f"result of that run; to go on with it give its data: cellsynth run "
            f"{shlex.quote(str(read['path']))} --out {out} (or --config "
            f"{shlex.quote(str(self.out / 'config.toml'))}); for the demo give another --out, "
            "or --force data to replace that run")

    def _warn_edited_config(self) -> None:
        """Warn when ``config.toml`` was edited by hand since the run wrote it and this run's
        settings differ from the edits: the file is rewritten with this run's settings, and
        edits made there are used only when given with ``--config``."""
        path, recorded = self.out / "config.toml", self.manifest.data.get("config")
        if not path.is_file() or not isinstance(recorded, dict):
            return
        try:
            edited = _flat(read_toml(path))
        except CellsynthError:  # not TOML now: it is rewritten, as any file of the run
            edited = {}
        before, now = _flat(recorded), _flat(to_dict(self.cfg))
        lost = [f"{key} = {value!r} there, {now[key]!r} in this run" for key, value in
                edited.items() if key != "dataset.path" and key in before and key in now
                and value != before[key] and value != now[key]]  # fmt: skip
        if lost:
            logger.warning("%s was edited since the run wrote it (%s); this run's settings "
                           "replace it: to run with the file's, give --config %s", path,
                           listed(lost, 4, sep="; "), path)

    def _inputs(self) -> dict[str, dict]:
        """The digests of the files the user names: the data stage's ``dataset.path`` (the demo
        atlas has none: its settings are its identity) and the classifier stage's
        ``dataset.groups`` file, so a file edited in place reruns what read it; each reuses the
        one recorded before when the file's size and time are unchanged."""
        # the data file checked here, before any stage is planned: a file moved away or
        # unmounted must not mark the finished stages stale (they would all run again once it
        # is back), nor read as "its settings changed"
        files = {"data": self._data_file() if self.cfg.dataset.path else None,
                 "classifier": groups_file(self.cfg.dataset.groups)}
        out = {}
        for stage, path in files.items():
            if path is None or not path.is_file():
                continue  # a groups file: the classifier stage says it is missing
            known = self.manifest.data["stages"].get(stage, {}).get("input")
            out[stage] = input_digest(path, known if isinstance(known, dict) else None)
        return out

    def close(self) -> None:
        """Release the run directory's lock (at the end of the run, also after an error)."""
        self.lock.release()

    @property
    def label_key(self) -> str:
        return self.cfg.dataset.label_key

    def seed(self, name: str) -> int:
        """The seed of one use (``"pca"``, ``"generator"``...), derived from the run's seed."""
        return derive_seed(self.cfg.seed, name)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def runs(self, stage: str) -> bool:
        """Whether ``stage`` must run (not done before with the same settings); ask once."""
        return self.plan.runs(stage)

    @contextmanager
    def stage(self, name: str):
        """Run stage ``name`` timed into the manifest; yields its manifest entry."""
        self.record_config()
        if self.plan.begin(name) and name in ("data", "features", "generator"):
            # a forced stage the generator's training uses starts its training over: the
            # checkpoint goes as the stage begins (not again when a stopped run goes on)
            shutil.rmtree(self.path("generator", "checkpoint"), ignore_errors=True)
        with self.manifest.stage(name, self.plan.hash(name)) as entry:
            if name in self.plan.inputs:
                entry["input"] = self.plan.inputs[name]
            yield entry

    def _data_file(self) -> Path:
        """``dataset.path``, ``~`` expanded; one that is not there is refused now (what it
        holds, the data stage checks)."""
        path = expand_user(self.cfg.dataset.path)
        if not path.exists():
            check_file(path)  # its one-line error: where it was looked for
        return path

    @contextmanager
    def read_back(self, name: str):
        """Read back what stage ``name`` wrote in an earlier run: a file there that cannot be
        read (damaged in place, same size, or written by something else) is a one-line error
        naming ``--force``, never a traceback or the reader's own advice for a user's file."""
        try:
            yield
        except MemoryError:
            raise
        except Exception as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, CellsynthError):
                why = why.split("; ")[0]  # what was wrong: the fix is this one
            elif not isinstance(exc, OSError):
                why = f"{type(exc).__name__}: {why}"
            raise ModelFileError(
                f"cannot read back what stage {name} wrote in {self.out} earlier ({why[:300]}); "
                f"rerun with --force {name} to redo it and the stages after it") from exc

def with_resolved_path(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``dataset.path`` and a ``dataset.groups`` file absolute (as read from the
    working folder), so a run's ``config.toml`` names the files it read wherever it is
    replayed from."""
    resolved = {}
    if cfg.dataset.path:
        resolved["path"] = str(Path(cfg.dataset.path).expanduser().resolve())
    if (groups := groups_file(cfg.dataset.groups)) is not None:
        resolved["groups"] = str(groups.resolve())
    if not resolved:
        return cfg
    return dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, **resolved))


def out_of_core(cfg: RunConfig) -> bool:
    """Whether a run reads its cells from disk: ``dataset.backed`` true, or ``"auto"`` and the
    file larger than ``data.io.BACKED_BYTES``."""
    return is_large(cfg.dataset.path, cfg.dataset.backed)


def check_backed(cfg: RunConfig) -> None:
    """Settings that cannot run with the cells on disk, refused before any work."""
    model = cfg.generator.model
    if model not in BACKED_GENERATORS:
        raise ConfigError(f"generator.model = {model} needs the data in memory; use cvae or "
                          "set dataset.backed = false")
    if cfg.cvae.distributed:
        raise ConfigError("cvae.distributed needs the data in memory; set cvae.distributed = "
                          "false or dataset.backed = false")
    if cfg.classifier.backend == "dask":
        raise ConfigError("classifier.backend = dask needs the data in memory; set "
                          "classifier.backend = local or dataset.backed = false")


def _flat(settings: dict) -> dict[str, object]:
    """A nested settings dict as ``{"section.key": value}`` (values as JSON gives them back)."""
    import json

    plain = json.loads(json.dumps(settings, default=str))
    out: dict[str, object] = {}
    for section, value in plain.items():
        if isinstance(value, dict):
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out
