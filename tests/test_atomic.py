"""utils/atomic.py: a failed write leaves the old file and no temp file; a good one replaces it with usual perms."""
from __future__ import annotations

import os

import pytest

from utils.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def test_write_text_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"          # the folder is created
    atomic_write_text(target, "old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_error_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_open(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_temp_path_keeps_the_suffix_and_file_gets_umask_permissions(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"png")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_block_that_writes_nothing_fails_and_keeps_the_target(tmp_path):
    target = tmp_path / "a.png"
    atomic_write_bytes(target, b"old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass                                  # the writer never created the temp file
    assert target.read_bytes() == b"old"
