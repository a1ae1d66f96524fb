"""Atomic file and folder writes.

A reader must never see a half-written file or folder: every writer here puts its
output in a hidden temporary sibling (``.<name>.tmp-<pid>``) first and then moves it
into place with ``os.replace``, which is atomic on POSIX and Windows within one
filesystem. A crash leaves at most a stale hidden temporary, never a valid-looking
partial result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def tmp_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """Hidden sibling of ``path`` for staging: ``<dir>/.<name>.<tag>-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then move it to ``path`` in one step.

    Usage::

        with atomic_directory("out/traj_0") as tmp:
            (tmp / "a.txt").write_text("...")

    If the body raises, the temporary is deleted and ``path`` is left untouched. An
    existing ``path`` is first renamed aside (``.<name>.old-<pid>``), the new folder
    renamed in, and only then the old one deleted, so at no moment does ``path`` hold
    a mix of old and new files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = tmp_sibling(path), tmp_sibling(path, "old")
    _remove(tmp)  # stale leftover of a crashed process that had our pid
    tmp.mkdir()
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            _remove(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)  # put the previous folder back
            raise
    finally:
        _remove(tmp)
        _remove(old)
