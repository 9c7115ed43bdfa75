"""Foot skating: how often a planted foot slides, and a simple cleanup (generate.py --foot-cleanup, off by default).

    skating_ratio(joints (T, J, 3), dataset="t2m", fps=None) -> float     fraction of frames with a sliding foot
    clean_foot_skate(joints, dataset="t2m", fps=None) -> joints           the body shifted so planted feet stay put

A foot joint (ankle and toe of each foot, `datasets.skeleton` fid_l / fid_r) is **in contact** when it is less than
5 cm above the sequence's floor (its lowest foot joint), and **skates** in a frame when it is in contact in that frame
and the one before and moves more than 2.5 cm horizontally between them (thresholds at 20 fps, scaled to the
dataset's rate; the usual definition of the text-to-motion literature). The skating ratio is the fraction of frame
transitions in which any foot skates.

The cleanup moves the whole body horizontally, frame by frame, by minus the mean slide of the joints planted in both
frames (so in single support the standing foot stays where it is, in double support the average does), and lifts a
planted joint that went below the floor back onto it. It changes the root trajectory only; the pose is untouched.
It does not solve leg IK, so a planted foot that the pose itself drags cannot be fixed.
"""
from __future__ import annotations

import numpy as np

from datasets.registry import dataset_facts
from datasets.skeleton import skeleton_info

CONTACT_HEIGHT_M = 0.05       # 5 cm above the floor
SKATE_STEP_M = 0.025          # 2.5 cm per frame at 20 fps
REFERENCE_FPS = 20.0


def _setup(joints, dataset: str, fps: float | None):
    joints = np.asarray(joints, dtype=np.float64)
    info = skeleton_info(dataset)
    if joints.ndim != 3 or joints.shape[1:] != (info.num_joints, 3):
        raise ValueError(f"utils/foot_skate.py: joints must have shape (T, {info.num_joints}, 3), got {joints.shape}")
    facts = dataset_facts(dataset)
    unit = 1000.0 / facts.mm_per_unit                 # metres -> the joints' unit
    fps = float(fps or facts.fps)
    feet = list(info.fid_l) + list(info.fid_r)
    return joints, feet, CONTACT_HEIGHT_M * unit, SKATE_STEP_M * unit * REFERENCE_FPS / fps


def _planted(joints: np.ndarray, feet: list[int], height: float) -> tuple[np.ndarray, float]:
    floor = joints[:, feet, 1].min()
    return joints[:, feet, 1] - floor < height, floor                      # (T, F)


def skating_ratio(joints, dataset: str = "t2m", fps: float | None = None) -> float:
    """Fraction of frame transitions (T − 1) in which a planted foot joint slides (module docstring)."""
    joints, feet, height, step = _setup(joints, dataset, fps)
    if len(joints) < 2:
        return 0.0
    planted, _ = _planted(joints, feet, height)
    both = planted[1:] & planted[:-1]                                       # (T-1, F)
    slide = np.linalg.norm(np.diff(joints[:, feet][:, :, [0, 2]], axis=0), axis=-1)   # (T-1, F)
    return float((both & (slide > step)).any(axis=1).mean())


def clean_foot_skate(joints, dataset: str = "t2m", fps: float | None = None) -> np.ndarray:
    """The joints (T, J, 3) with the body shifted so that planted feet do not slide (module docstring)."""
    joints, feet, height, _ = _setup(joints, dataset, fps)
    out = joints.copy()
    if len(joints) < 2:
        return out
    planted, floor = _planted(joints, feet, height)
    both = planted[1:] & planted[:-1]                                       # (T-1, F)
    delta = np.diff(joints[:, feet][:, :, [0, 2]], axis=0)                 # (T-1, F, 2)
    count = both.sum(axis=1, keepdims=True)
    slide = np.where(count > 0, (delta * both[..., None]).sum(axis=1) / np.maximum(count, 1), 0.0)   # (T-1, 2)
    shift = np.concatenate([np.zeros((1, 2)), np.cumsum(slide, axis=0)])     # (T, 2)
    out[:, :, 0] -= shift[:, None, 0]
    out[:, :, 2] -= shift[:, None, 1]
    low = out[:, feet, 1] < floor
    out[:, feet, 1] = np.where(low, floor, out[:, feet, 1])
    return out
