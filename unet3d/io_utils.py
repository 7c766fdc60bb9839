"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the whole new one, never half.
The temporary files and folders Python's ``tempfile`` makes are private (0600 / 0700); what is
renamed into place gets the permissions the umask gives a new file or folder instead, as if it
had been written directly (a colleague on a shared results folder can read an export).
And the checks a command runs before it writes anything: can this output folder / file be written?
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unet3d.errors import UserError


class PathError(UserError, ValueError):
    """An output path that cannot be written; the message names the option (or file) and the path."""


def _check_ancestor(path: Path, what: str, start: Path) -> None:
    """The nearest existing one of ``start`` and its ancestors must be a writable folder."""
    p = start
    while not p.exists() and p != p.parent:
        if p.is_symlink():
            raise PathError(f"{what} {path}: {p} is a broken symbolic link")
        p = p.parent
    where = "" if p == path else f"{p} "
    if not p.is_dir():
        raise PathError(f"{what} {path}: {where}is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise PathError(f"{what} {path}: {where or 'the folder '}is not writable")


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Checks, creating nothing, that ``path`` is or can become a folder this process writes into.

    Call it before a command writes anything. ``what`` names the path for the user (the option,
    e.g. ``"--out"``). Returns ``Path(path)``.

    Raises:
        PathError: "<what> <path>: <reason>": the path, or a folder above it, is a file; or the
            nearest existing folder is not writable.
    """
    path = Path(path)
    _check_ancestor(path, what, path)
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """Checks, creating nothing, that the file ``path`` can be written (atomically, beside itself).

    Like :func:`check_writable_dir` for the file's folder; ``path`` itself must not be a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{what} {path}: is a folder, not a file")
    _check_ancestor(path, what, path.parent)
    return path


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc); elsewhere set
    and restored at once (under a lock: a thread creating a file in between would get 0o022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def public(path: str | Path) -> Path:
    """Gives ``path`` (made by ``tempfile``, private) the permissions of a file or folder created
    normally: 0o666 or 0o777 less the umask. Returns ``Path(path)``."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
    return path


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``target``; renames it onto ``target`` if the block succeeds.

    ``suffix`` keeps the extension some writers insist on (np.save adds ".npy", Keras wants ".keras").
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        public(tmp_path)  # (after the writer: one that recreates the file would undo it)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")
