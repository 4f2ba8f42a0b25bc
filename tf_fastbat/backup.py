"""Backups on disk: each one a folder `step-<global step>` committed by an atomic rename; the newest two are kept
and a corrupt newest one is skipped for the one before it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from typing import Callable, Dict, List, Optional

import numpy as np

from tf_fastbat.errors import UsageError

KEEP = 2
FORMAT = 1
_NAME = re.compile(r"step-(\d{10})")
_ARRAYS = "variables.npz"
_MANIFEST = "manifest.json"
_KERAS_METADATA = "training_metadata.json"  # what keras.callbacks.BackupAndRestore wrote before


class BackupError(UsageError):
    """No usable backup where one was expected, or a backup that does not fit this run; the message says which."""


@dataclasses.dataclass(frozen=True)
class Backup:
    """One backup read back: its folder, the run state it records and its arrays by name."""

    path: str
    state: Dict
    arrays: Dict[str, np.ndarray]

    def file(self, name: str) -> Optional[str]:
        """The path of a file stored beside the arrays (e.g. best.keras), or None if the backup has none."""
        path = os.path.join(self.path, name)
        return path if os.path.isfile(path) else None


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))


def _fsync_dir(path: str) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (files are only ever replaced by rename, never rewritten, so sharing is safe), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def place_file(source: str, target: str) -> None:
    """Put `source` at `target` atomically (a link or copy in the target's folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".partial-{os.getpid()}-{os.path.basename(target)}")
    if os.path.exists(temporary):
        os.remove(temporary)
    _link_or_copy(source, temporary)
    os.replace(temporary, target)


def folders(directory: str) -> List[str]:
    """Committed backup folders in `directory`, newest (highest step) first."""
    if not os.path.isdir(directory):
        return []
    names = sorted((n for n in os.listdir(directory) if _NAME.fullmatch(n)), reverse=True)
    return [os.path.join(directory, n) for n in names]


def write(directory: str, step: int, arrays: Dict[str, np.ndarray], state: Dict,
          files: Optional[Dict[str, str]] = None) -> str:
    """Write directory/step-<step> (arrays, state, and `files` {name: source path} linked in); returns its path.

    Everything goes to a temporary folder, is fsynced, and the folder is renamed into place: a kill leaves either
    the complete backup or only a `.partial-*` folder that readers ignore.
    """
    os.makedirs(directory, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=directory, prefix=".partial-")
    final = os.path.join(directory, f"step-{int(step):010d}")
    try:
        with open(os.path.join(temporary, _ARRAYS), "wb") as out:
            np.savez(out, **arrays)
            out.flush()
            os.fsync(out.fileno())
        for name, source in (files or {}).items():
            _link_or_copy(source, os.path.join(temporary, name))
        stored = sorted(os.listdir(temporary))
        manifest = {"format": FORMAT, "step": int(step), "state": state,
                    "crc32": {name: _crc(array) for name, array in arrays.items()},
                    "sizes": {name: os.path.getsize(os.path.join(temporary, name)) for name in stored}}
        with open(os.path.join(temporary, _MANIFEST), "w") as out:
            json.dump(manifest, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(temporary)
        if os.path.exists(final):  # left by a run that was killed and resumed from an earlier backup
            stale = tempfile.mkdtemp(dir=directory, prefix=".stale-")
            os.replace(final, os.path.join(stale, "old"))
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(temporary, final)
        _fsync_dir(directory)
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
    prune(directory)
    return final


def prune(directory: str, keep: int = KEEP) -> None:
    """Delete all but the `keep` newest backups, and folders left by interrupted writes."""
    for path in folders(directory)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(directory):
        if name.startswith((".partial-", ".stale-")) and os.path.isdir(os.path.join(directory, name)):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def read(path: str) -> Backup:
    """One backup, every array checked against the CRC-32 and every file against the size recorded when written."""
    with open(os.path.join(path, _MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    for name, size in manifest["sizes"].items():
        actual = os.path.getsize(os.path.join(path, name))
        if actual != size:
            raise ValueError(f"{name} has {actual} bytes, {size} were written")
    with np.load(os.path.join(path, _ARRAYS), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    if set(arrays) != set(manifest["crc32"]):
        raise ValueError(f"{_ARRAYS} does not hold the arrays its manifest lists")
    for name, array in arrays.items():
        if _crc(array) != manifest["crc32"][name]:
            raise ValueError(f"array {name} fails its CRC-32 check")
    return Backup(path, manifest["state"], arrays)


def newest(directory: str, warn: Callable[[str], None]) -> Optional[Backup]:
    """The newest readable backup in `directory`, None if there is none; each unreadable newer one costs one warning.

    A folder of backups none of which reads is a BackupError: starting over would silently discard the run.
    """
    candidates = folders(directory)
    if not candidates and os.path.exists(os.path.join(directory, _KERAS_METADATA)):
        raise BackupError(f"{directory} holds a Keras BackupAndRestore backup of an older tf_fastbat, which did not "
                          "record the data position; move that folder away to start the run over")
    for index, path in enumerate(candidates):
        try:
            return read(path)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            fallback = "using the previous one" if index + 1 < len(candidates) else "no older backup is left"
            warn(f"backup {path} is unreadable ({type(error).__name__}: {error}); {fallback}")
    if candidates:
        raise BackupError(f"no readable backup in {directory}; move that folder away to start the run over")
    return None
