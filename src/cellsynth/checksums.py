"""A model directory's ``checksums.json``: the sha256 of every file its save wrote, checked
when it is read (by ``load`` and by ``cellsynth info``). Kept apart from the models so that
checking a directory imports no torch."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .errors import ModelFileError

logger = logging.getLogger(__name__)

#: sha256 of every file a model directory's save wrote, checked on load
CHECKSUMS_FILE = "checksums.json"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path, names: list[str] | None = None) -> None:
    """``checksums.json`` over the files ``names`` of ``directory`` (relative paths), or, by
    default, every file below it (sub-folders too)."""
    directory = Path(directory)
    if names is None:
        names = [p.relative_to(directory).as_posix() for p in directory.rglob("*")
                 if p.is_file() and not p.is_symlink()]  # fmt: skip
    sums = {name: sha256_file(directory / name) for name in sorted(names)
            if name != CHECKSUMS_FILE}  # fmt: skip
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1))


def verify_checksums(directory: str | Path) -> None:
    """Check the files ``checksums.json`` lists against their recorded sha256; a changed or
    missing one is a one-line :class:`ModelFileError` naming it. A directory without the file
    (saved by an older cellsynth) is accepted with a warning."""
    directory = Path(directory)
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        logger.warning("%s has no %s (deleted, or saved by an older cellsynth): its files "
                       "cannot be checked for changes; save the model again to add it",
                       directory, CHECKSUMS_FILE)
        return
    try:
        sums = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        sums = None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise ModelFileError(f"{path} is corrupt; save the model again")
    for name, expected in sums.items():
        file = directory / name
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not inside or not file.is_file():
            raise ModelFileError(f"{file} is missing (it is listed in {CHECKSUMS_FILE}); "
                                 f"{directory} is not a complete save: copy the whole directory "
                                 "or save again")
        if sha256_file(file) != expected:
            raise ModelFileError(f"{file} changed after the model was saved (its sha256 differs "
                                 f"from {CHECKSUMS_FILE}); restore the file or save the model again")
