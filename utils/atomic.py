"""Atomic file writes: a file is either its old self or completely written, never half-written (ARCHITECTURE.md §3).

Every writer of the project (checkpoints, config.yaml, eval reports, dataset caches, databases, PNGs, the GloVe and
evaluator exports) goes through this module:

    with atomic_open(path, "wb") as f:          # a file object
        torch.save(obj, f)
    with atomic_path(path) as tmp:              # a temp path, for writers that want a file name (savefig, np.save)
        fig.savefig(tmp)
    atomic_write_text(path, text); atomic_write_bytes(path, data)

The data goes to a temp file in the target's folder (same file system, so the rename is atomic), is fsync'ed, gets
the permissions a plain `open` would give it (0666 minus the umask), and is moved onto the target with `os.replace`;
the folder is fsync'ed so the rename survives a crash. On any error the temp file is removed and the target is left
as it was. The temp file is hidden (`.<name>.<random>.tmp<suffix>`) and keeps the target's suffix, so writers that
choose a format by suffix (matplotlib, `np.save`) see the right one.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (POSIX); silently skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp path beside `path` (same suffix) for the block to create; when the block ends without
    error, move it onto `path`.

    The target's folder is created if needed. The temp file is created by the writer, so it gets the permissions of
    a plain `open`. On an exception the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` when the block ends without error. `mode`: "w" / "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"utils/atomic.py: atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), encoding=encoding) as f:     # "x": never an existing file
            yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
