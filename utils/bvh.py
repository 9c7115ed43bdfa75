"""BVH export of joint positions, and a small BVH reader with forward kinematics to check it.

    write_bvh(joints (T, J, 3), path, dataset="t2m", fps=None)    positions -> a BVH file (atomic write)
    solve_skeleton(joints, dataset) -> BVHSkeleton                rest offsets + per-frame local rotations
    read_bvh(path) -> BVHMotion;  bvh_forward_kinematics(motion) -> (T, J, 3) positions

The skeleton is the dataset's kinematic tree (`datasets.skeleton`: 22 SMPL joints for HumanML3D, 21 MMM joints for
KIT-ML). How the file is made from positions alone:
- **Rest offsets.** A joint with one child gets the standard rest direction of that bone (`*_RAW_OFFSETS`) times the
  bone's mean length over the sequence. The children of a joint with several children (the pelvis: both hips and
  the spine; the upper spine: the neck and both collars) are a rigid group in the source skeletons, so their rest
  offsets are the group's own shape, found by generalised Procrustes over all frames and turned upright with the
  standard directions. The rest pose is therefore close to the standard T-pose and has the sequence's proportions.
- **Rotations.** Per frame, a joint with several children gets the rotation that best maps its rest group onto the
  observed one (Kabsch); a joint with one child gets the smallest rotation, relative to its parent, that points its
  rest bone along the observed bone (so no spurious twist is added); a leaf keeps its parent's orientation. The
  root also gets a translation channel.
- **Units and rate.** Offsets and translations are written in centimetres (HumanML3D metres × 100, KIT-ML
  millimetres × 0.1), the frame time is 1/20 s for HumanML3D and 1/12.5 s for KIT-ML (`datasets.registry`).
  Channels: the root `Xposition Yposition Zposition Zrotation Yrotation Xrotation`, the others
  `Zrotation Yrotation Xrotation` (the common ZYX order; R = Rz·Ry·Rx). Axes as in the data: y up.

Forward kinematics of the written file gives back the input joints up to the bones' length changes within the
sequence (a BVH has fixed bone lengths) and the deformation of the rigid groups; `bvh_roundtrip_error` measures it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from datasets.registry import dataset_facts
from datasets.skeleton import skeleton_info
from utils.atomic import atomic_write_text

CM_PER_UNIT = {"t2m": 100.0, "kit": 0.1}        # joints in metres (HumanML3D) or millimetres (KIT-ML) -> cm
END_SITE_CM = 5.0                                # length of a leaf's end site, along its bone
_MOD = "utils/bvh.py"


class BVHError(ValueError):
    """A file that is not a BVH this reader understands, or joints that cannot be written."""


@dataclass
class BVHSkeleton:
    """A solved skeleton: names (J,), parents (J,), rest offsets (J, 3) from the parent, in the joints' unit, and the
    motion: root positions (T, 3) and local rotation matrices (T, J, 3, 3)."""
    names: list[str]
    parents: list[int]
    offsets: np.ndarray
    root: np.ndarray
    local: np.ndarray


@dataclass
class BVHMotion:
    """What `read_bvh` returns: names, parents, offsets (J, 3), channel names per joint, frame time (s) and the
    motion data (T, total channels), in the file's units."""
    names: list[str]
    parents: list[int]
    offsets: np.ndarray
    channels: list[list[str]]
    frame_time: float
    data: np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Solving rotations from positions
# ----------------------------------------------------------------------------------------------------------------

def _children(parents: Sequence[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            kids[p].append(j)
    return kids


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotations (T, 3, 3) minimising Σ_k |R src_k − dst_tk|²; src (K, 3) or (T, K, 3), dst (T, K, 3)."""
    src = np.broadcast_to(src, dst.shape)
    h = np.einsum("tki,tkj->tij", src, dst)                                  # (T, 3, 3)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("tij,tjk->tik", vt.transpose(0, 2, 1), u.transpose(0, 2, 1))))
    fix = np.ones((len(d), 3))
    fix[:, 2] = d
    return np.einsum("tji,tj,tkj->tik", vt, fix, u)                          # V diag(1,1,d) Uᵀ


def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotations (T, 3, 3) taking unit vectors a (T, 3) to unit vectors b (T, 3)."""
    v = np.cross(a, b)
    c = np.einsum("ti,ti->t", a, b)
    s = np.linalg.norm(v, axis=-1)
    axis = np.where(s[:, None] > 1e-9, v / np.maximum(s, 1e-12)[:, None], _perpendicular(a))
    angle = np.arctan2(s, c)
    return Rotation.from_rotvec(axis * angle[:, None]).as_matrix()


def _perpendicular(a: np.ndarray) -> np.ndarray:
    other = np.where(np.abs(a[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    p = np.cross(a, other)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def _group_template(vectors: np.ndarray, rest_dirs: np.ndarray, iters: int = 8) -> np.ndarray:
    """The rigid shape (K, 3) of a group of bone vectors (T, K, 3), by generalised Procrustes, turned to best match
    the standard rest directions (K, 3) scaled by the mean lengths."""
    template = vectors[0]
    for _ in range(iters):
        rot = _kabsch(template, vectors)                                     # (T, 3, 3): template -> frame
        template = np.einsum("tji,tkj->ki", rot, vectors) / len(vectors)     # mean of Rᵀ x over frames
    standard = rest_dirs * np.linalg.norm(vectors, axis=-1).mean(0)[:, None]
    upright = _kabsch(template, standard[None])[0]
    return template @ upright.T


def solve_skeleton(joints: np.ndarray, dataset: str = "t2m") -> BVHSkeleton:
    """Rest offsets and per-frame local rotations that reproduce `joints` (T, J, 3) (see the module docstring)."""
    info = skeleton_info(dataset)
    joints = np.asarray(joints, dtype=np.float64)
    J = info.num_joints
    if joints.ndim != 3 or joints.shape[1:] != (J, 3) or len(joints) < 1:
        raise BVHError(f"{_MOD}: joints must have shape (T, {J}, 3) for dataset {dataset!r}, got {joints.shape}")
    if not np.isfinite(joints).all():
        raise BVHError(f"{_MOD}: joints contain NaN or inf values")
    parents, kids = list(info.parents), _children(info.parents)
    rest_dirs = np.asarray(info.raw_offsets, dtype=np.float64)
    T = len(joints)
    offsets = np.zeros((J, 3))
    bone = {j: joints[:, j] - joints[:, parents[j]] for j in range(1, J)}
    for p in range(J):
        if len(kids[p]) == 1:
            c = kids[p][0]
            offsets[c] = rest_dirs[c] * np.linalg.norm(bone[c], axis=-1).mean()
        elif len(kids[p]) > 1:
            group = np.stack([bone[c] for c in kids[p]], axis=1)             # (T, K, 3)
            offsets[kids[p]] = _group_template(group, rest_dirs[kids[p]])
    glob = np.zeros((T, J, 3, 3))
    local = np.zeros((T, J, 3, 3))
    for j in _topological(parents):                                          # parents before children
        parent_glob = glob[:, parents[j]] if parents[j] >= 0 else np.broadcast_to(np.eye(3), (T, 3, 3))
        if len(kids[j]) > 1:
            group = np.stack([bone[c] for c in kids[j]], axis=1)
            glob[:, j] = _kabsch(offsets[kids[j]], group)
        elif len(kids[j]) == 1:
            c = kids[j][0]
            rest = np.einsum("tij,j->ti", parent_glob, offsets[c])
            rest /= np.maximum(np.linalg.norm(rest, axis=-1, keepdims=True), 1e-12)
            target = bone[c] / np.maximum(np.linalg.norm(bone[c], axis=-1, keepdims=True), 1e-12)
            glob[:, j] = np.einsum("tij,tjk->tik", _between(rest, target), parent_glob)
        else:
            glob[:, j] = parent_glob
        local[:, j] = np.einsum("tji,tjk->tik", parent_glob, glob[:, j])    # parentᵀ · global
    return BVHSkeleton(names=list(info.joint_names), parents=parents, offsets=offsets, root=joints[:, 0].copy(),
                       local=local)


def _topological(parents: Sequence[int]) -> list[int]:
    order, seen = [], set()
    while len(order) < len(parents):
        for j, p in enumerate(parents):
            if j not in seen and (p < 0 or p in seen):
                order.append(j)
                seen.add(j)
    return order


def skeleton_forward_kinematics(skel: BVHSkeleton) -> np.ndarray:
    """(T, J, 3) joint positions of a solved skeleton."""
    T, J = skel.local.shape[:2]
    glob = np.zeros((T, J, 3, 3))
    pos = np.zeros((T, J, 3))
    for j in _topological(skel.parents):
        p = skel.parents[j]
        if p < 0:
            glob[:, j], pos[:, j] = skel.local[:, j], skel.root
        else:
            glob[:, j] = np.einsum("tij,tjk->tik", glob[:, p], skel.local[:, j])
            pos[:, j] = pos[:, p] + np.einsum("tij,j->ti", glob[:, p], skel.offsets[j])
    return pos


# ----------------------------------------------------------------------------------------------------------------
# Writing and reading files
# ----------------------------------------------------------------------------------------------------------------

def bvh_text(skel: BVHSkeleton, frame_time: float, scale: float) -> str:
    """The BVH file of a solved skeleton; lengths × `scale`."""
    kids = _children(skel.parents)
    lines = ["HIERARCHY"]

    def fmt(v) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    def emit(j: int, depth: int) -> None:
        pad = "\t" * depth
        if skel.parents[j] < 0:
            lines.append(f"ROOT {skel.names[j]}")
            lines.append("{")
            lines.append(f"\tOFFSET {fmt(np.zeros(3))}")
            lines.append("\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation")
        else:
            lines.append(f"{pad}JOINT {skel.names[j]}")
            lines.append(f"{pad}{{")
            lines.append(f"{pad}\tOFFSET {fmt(skel.offsets[j] * scale)}")
            lines.append(f"{pad}\tCHANNELS 3 Zrotation Yrotation Xrotation")
        if kids[j]:
            for c in kids[j]:
                emit(c, depth + 1)
        else:
            direction = skel.offsets[j] / max(np.linalg.norm(skel.offsets[j]), 1e-12)
            lines.append(f"{pad}\tEnd Site")
            lines.append(f"{pad}\t{{")
            lines.append(f"{pad}\t\tOFFSET {fmt(direction * END_SITE_CM)}")
            lines.append(f"{pad}\t}}")
        lines.append(f"{pad}}}")

    emit(skel.parents.index(-1), 0)
    order = _preorder(skel.parents)
    T = len(skel.root)
    euler = Rotation.from_matrix(skel.local[:, order].reshape(-1, 3, 3)).as_euler("ZYX", degrees=True)
    euler = euler.reshape(T, len(order), 3)
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {frame_time:.8f}"]
    for t in range(T):
        values = np.concatenate([skel.root[t] * scale, euler[t].reshape(-1)])
        lines.append(" ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


def _preorder(parents: Sequence[int]) -> list[int]:
    kids = _children(parents)
    out: list[int] = []

    def visit(j: int) -> None:
        out.append(j)
        for c in kids[j]:
            visit(c)

    visit(list(parents).index(-1))
    return out


def write_bvh(joints: np.ndarray, path: str | os.PathLike, dataset: str = "t2m", fps: float | None = None) -> Path:
    """Write joint positions (T, J, 3) (metres for HumanML3D, millimetres for KIT-ML) as a BVH file, atomically.

    `fps` defaults to the dataset's rate (20 / 12.5). Returns the path."""
    skel = solve_skeleton(joints, dataset)
    fps = float(fps or dataset_facts(dataset).fps)
    if not fps > 0:
        raise BVHError(f"{_MOD}: fps must be > 0, got {fps}")
    path = Path(path)
    atomic_write_text(path, bvh_text(skel, 1.0 / fps, CM_PER_UNIT[dataset]))
    return path


def read_bvh(path: str | os.PathLike) -> BVHMotion:
    """Parse a BVH file (hierarchy, offsets, channels, frames). Raises BVHError naming the file and line."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise BVHError(f"{_MOD}: cannot read {path}: {err}") from None
    names, parents, offsets, channels = [], [], [], []
    stack: list[int] = []
    i, pending_end = 0, False

    def bad(what: str) -> BVHError:
        return BVHError(f"{_MOD}: {path}:{i + 1}: {what}")

    if not tokens or tokens[0].strip() != "HIERARCHY":
        raise bad("expected 'HIERARCHY' on the first line")
    i = 1
    while i < len(tokens):
        words = tokens[i].split()
        i += 1
        if not words:
            continue
        key = words[0]
        if key in ("ROOT", "JOINT"):
            if len(words) < 2:
                raise bad(f"{key} without a name")
            names.append(words[1])
            parents.append(stack[-1] if stack else -1)
            offsets.append(np.zeros(3))
            channels.append([])
        elif key == "End":
            pending_end = True
        elif key == "{":
            stack.append(-2 if pending_end else len(names) - 1)
            pending_end = False
        elif key == "}":
            if not stack:
                raise bad("unbalanced '}'")
            stack.pop()
        elif key == "OFFSET":
            if len(words) != 4:
                raise bad("OFFSET needs 3 numbers")
            if stack and stack[-1] >= 0:
                offsets[stack[-1]] = np.array([float(w) for w in words[1:]])
        elif key == "CHANNELS":
            n = int(words[1])
            channels[stack[-1]] = words[2:2 + n]
        elif key == "MOTION":
            break
        else:
            raise bad(f"unexpected token {key!r}")
        if stack and stack[-1] == -2:
            pass
    parents = [p for p in parents]
    try:
        frames = int(tokens[i].split(":")[1])
        frame_time = float(tokens[i + 1].split(":")[1])
        data = np.array([[float(v) for v in line.split()] for line in tokens[i + 2:i + 2 + frames]])
    except (IndexError, ValueError):
        raise bad("expected 'Frames: N', 'Frame Time: s' and N lines of numbers after MOTION") from None
    if data.shape != (frames, sum(len(c) for c in channels)):
        raise bad(f"motion data has shape {data.shape}, expected ({frames}, {sum(len(c) for c in channels)})")
    return BVHMotion(names, parents, np.stack(offsets), channels, frame_time, data)


def bvh_forward_kinematics(motion: BVHMotion) -> np.ndarray:
    """(T, J, 3) joint positions of a parsed BVH, in the file's units (rotation channels in their stated order)."""
    T, J = len(motion.data), len(motion.names)
    pos = np.zeros((T, J, 3))
    glob = np.zeros((T, J, 3, 3))
    col = 0
    local = np.zeros((T, J, 3, 3))
    trans = np.zeros((T, J, 3))
    for j, chans in enumerate(motion.channels):
        values = motion.data[:, col:col + len(chans)]
        col += len(chans)
        rot_axes = "".join(c[0] for c in chans if c.endswith("rotation"))
        rot_vals = np.stack([values[:, k] for k, c in enumerate(chans) if c.endswith("rotation")], axis=1) \
            if rot_axes else np.zeros((T, 0))
        local[:, j] = (Rotation.from_euler(rot_axes.upper(), rot_vals, degrees=True).as_matrix()
                       if rot_axes else np.broadcast_to(np.eye(3), (T, 3, 3)))
        for k, c in enumerate(chans):
            if c.endswith("position"):
                trans[:, j, "XYZ".index(c[0])] = values[:, k]
    for j in range(J):                     # file order is a preorder: parents come first
        p = motion.parents[j]
        offset = motion.offsets[j] + trans[:, j]
        if p < 0:
            glob[:, j], pos[:, j] = local[:, j], offset
        else:
            glob[:, j] = np.einsum("tij,tjk->tik", glob[:, p], local[:, j])
            pos[:, j] = pos[:, p] + np.einsum("tij,tj->ti", glob[:, p], offset)
    return pos


def bvh_roundtrip_error(joints: np.ndarray, path: str | os.PathLike, dataset: str = "t2m") -> tuple[float, float]:
    """(mean, max) per-joint distance in mm between `joints` and the forward kinematics of the BVH at `path`
    (written from them), with the joints reordered from the file's order to the dataset's."""
    motion = read_bvh(path)
    pos = bvh_forward_kinematics(motion) / CM_PER_UNIT[dataset]
    order = [motion.names.index(n) for n in skeleton_info(dataset).joint_names]
    err = np.linalg.norm(pos[:, order] - np.asarray(joints), axis=-1) * dataset_facts(dataset).mm_per_unit
    return float(err.mean()), float(err.max())
