"""Atomic file and folder writes: a crash mid-write never leaves a file a later load half-accepts."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import SplitPluginError


def _umask_mode(full: int) -> int:
    """`full` (0o666 for files, 0o777 for folders) less the process umask: what open/mkdir would give.

    Temporary files and folders are created private (0600 / 0700); they get this mode before
    they are renamed into place, so colleagues read a report as they would any other file.
    """
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return full & ~mask


def _publish_modes(folder: Path) -> None:
    """Give a temporary folder and everything in it the umask's modes (some writers, e.g.
    safetensors, create private files)."""
    file_mode, dir_mode = _umask_mode(0o666), _umask_mode(0o777)
    os.chmod(folder, dir_mode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise SplitPluginError(f"{path} is an existing folder; nothing was written: give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_replaceable(path: str | os.PathLike, owned: Iterable[str] | None = None,
                      what: str = "save") -> None:
    """Refuse to replace a file, or (with `owned`) a folder holding files other than a previous save."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SplitPluginError(f"{path} is an existing file, not a folder; nothing was written: "
                               f"choose a folder path for the {what}")
    if owned is None or not path.is_dir():
        return
    foreign = sorted(p.name for p in path.iterdir() if p.name not in set(owned))
    if foreign:
        raise SplitPluginError(f"{path} already holds files that are not a previous {what} "
                               f"({foreign[:5]}); nothing was written: choose a new or empty folder")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owned: Iterable[str] | None = None,
               what: str = "save") -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` (old one removed).

    The swap is two renames: the old folder moves aside, the new one moves in (if that fails
    the old one moves back). A hard crash between them leaves the old folder intact under a
    `.old` name and never a half-written `path`.
    An existing file at `path` is never replaced; with `owned` (the names a save writes) neither
    is a folder holding anything else, so a user's folder is never swept away.
    """
    path = Path(path)
    check_replaceable(path, owned, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        check_replaceable(path, owned, what)
        _publish_modes(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
