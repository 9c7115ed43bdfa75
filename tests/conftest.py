"""Shared pytest fixtures.

- `mini_root`: a small procedural mini dataset (48 motions, seed 0) in the HumanML3D layout, written once per
  test session into a temporary folder (about 2 s). Treat it as read-only.
- `real_motion_dir`: the real mocap fixture clips `<repo>/../shared/data/real_motion` (skips when absent).
- `one_thread`: torch on one thread for a whole test module, restored afterwards. Tiny models run many times faster
  on one thread than on several contended ones (shared CPU, no OpenMP contention). Use it with
  `pytestmark = pytest.mark.usefixtures("one_thread")`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI_NUM_MOTIONS = 48
MINI_SEED = 0


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory) -> Path:
    """Path of a 48-motion mini dataset (seed 0), shared by the whole session; do not modify it."""
    from datasets.mini import write_mini_dataset

    out = tmp_path_factory.mktemp("mini_dataset") / "mini"
    write_mini_dataset(out, num_motions=MINI_NUM_MOTIONS, seed=MINI_SEED)
    return out


@pytest.fixture(scope="session")
def real_motion_dir() -> Path:
    """Folder of the real mocap fixtures (joints/<name>.npy (T, 22, 3), texts/, all.txt)."""
    path = (REPO_ROOT / ".." / "shared" / "data" / "real_motion").resolve()
    if not (path / "joints").is_dir():
        pytest.skip(f"real motion fixtures not found at {path} (expected <repo>/../shared/data/real_motion)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """torch.set_num_threads(1) for the module using it; the previous thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_upstream(mini_root, tmp_path_factory) -> dict:
    """{"tokenizer", "retriever"}: checkpoint paths of a tiny tokenizer (T'×7 map) and a tiny retriever (with its
    database) trained for 2 steps on `mini_root` (tests.tiny_stages.train_tiny_upstream); treat as read-only."""
    from tests.tiny_stages import train_tiny_upstream

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_upstream(mini_root, tmp_path_factory.mktemp("tiny_upstream"))
    finally:
        torch.set_num_threads(before)
