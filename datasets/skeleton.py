"""Skeleton constants, quaternion math, inverse and forward kinematics of the HumanML3D pipeline.

Everything here reproduces the standard HumanML3D / KIT-ML skeleton code (`reference.md` §2.2-2.4) so that
features computed with `datasets.representation` match the released `new_joint_vecs` files:

- the constants of the 22-joint SMPL skeleton (HumanML3D, "t2m") and the 21-joint MMM skeleton (KIT-ML, "kit");
- quaternion helpers on `(w, x, y, z)`, Hamilton product, in torch and (through torch float32) numpy;
- `Skeleton`: bone offsets from a pose, pure-swing IK to per-joint quaternions, and FK, with the two
  reference quirks (swapped hip order in the IK's facing direction, arm chains rooted at the root rotation).

Shapes: T frames, J joints; quaternions are (..., 4), positions (..., 3). Axes: y up; after
canonicalisation the character faces +z and its left is +x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

# ----------------------------------------------------------------------------------------------------------------
# Constants (reference.md §2.2, H3D: paramUtil.py)
# ----------------------------------------------------------------------------------------------------------------

T2M_JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]

# unit direction of each joint's bone in the rest pose, joint 0 ... 21 (reference §2.2)
T2M_RAW_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0],
     [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1],
     [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0]]
)
T2M_KINEMATIC_CHAIN = [[0, 2, 5, 8, 11], [0, 1, 4, 7, 10], [0, 3, 6, 9, 12, 15], [9, 14, 17, 19, 21],
                       [9, 13, 16, 18, 20]]
# bone lengths (m) of joints 1..21 in frame 0 of HumanML3D's example subject 000021 (reference §2.2)
T2M_TARGET_BONE_LENGTHS = np.array(
    [0.10307398, 0.10988338, 0.13156822, 0.3936232, 0.39018822, 0.14319019, 0.43243298, 0.42564338,
     0.05736481, 0.1433818, 0.14941907, 0.21936001, 0.13748679, 0.14338283, 0.1030392, 0.131614,
     0.12298436, 0.25683987, 0.26309177, 0.26601183, 0.26987633], dtype=np.float32
)

# MMM names as used by TEMOS-derived code (reference §2.2); T2M's left/right labels conflict with them (§9.14)
KIT_JOINT_NAMES = [
    "root", "BP", "BT", "BLN", "BUN", "LS", "LE", "LW", "RS", "RE", "RW", "LH", "LK", "LA", "LMrot", "LF",
    "RH", "RK", "RA", "RMrot", "RF",
]
KIT_RAW_OFFSETS = np.array(
    [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0], [-1, 0, 0],
     [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1], [-1, 0, 0], [0, -1, 0],
     [0, -1, 0], [0, 0, 1], [0, 0, 1]]
)
KIT_KINEMATIC_CHAIN = [[0, 11, 12, 13, 14, 15], [0, 16, 17, 18, 19, 20], [0, 1, 2, 3, 4], [3, 5, 6, 7],
                       [3, 8, 9, 10]]


def parents_from_chain(kinematic_chain: Sequence[Sequence[int]], num_joints: int) -> list[int]:
    """Parent index of every joint (-1 for the root), derived from the kinematic chains."""
    parents = [-1] * num_joints
    for chain in kinematic_chain:
        for parent, child in zip(chain[:-1], chain[1:]):
            parents[child] = parent
    return parents


T2M_PARENTS = parents_from_chain(T2M_KINEMATIC_CHAIN, 22)
KIT_PARENTS = parents_from_chain(KIT_KINEMATIC_CHAIN, 21)


@dataclass(frozen=True)
class SkeletonInfo:
    """The per-dataset constants of the standard feature extraction (reference §2.1-2.2)."""

    name: str
    joint_names: list[str]
    raw_offsets: np.ndarray          # (J, 3) unit rest directions
    kinematic_chain: list[list[int]]
    parents: list[int]
    face_joint_idx: list[int]        # [r_hip, l_hip, r_shoulder, l_shoulder] as the reference orders them
    fid_l: list[int]                 # foot joints whose contacts come first in the feature vector
    fid_r: list[int]
    l_idx1: int                      # the two bones whose lengths set the root scale of the uniform skeleton
    l_idx2: int
    feet_thre: float                 # squared per-frame displacement below which a foot is in contact
    mirror_right: list[int]          # joints swapped with mirror_left by the left/right mirror
    mirror_left: list[int]
    target_bone_lengths: np.ndarray | None   # (J-1,) lengths of joints 1..J-1 of the default target, if known

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


T2M = SkeletonInfo(
    name="t2m",
    joint_names=T2M_JOINT_NAMES,
    raw_offsets=T2M_RAW_OFFSETS,
    kinematic_chain=T2M_KINEMATIC_CHAIN,
    parents=T2M_PARENTS,
    face_joint_idx=[2, 1, 17, 16],   # reference §2.2
    fid_l=[7, 10],
    fid_r=[8, 11],
    l_idx1=5,                        # the bones into joints 5 and 8 (right thigh, right shin), reference §2.2
    l_idx2=8,
    feet_thre=0.002,
    mirror_right=[2, 5, 8, 11, 14, 17, 19, 21],   # reference §1.1
    mirror_left=[1, 4, 7, 10, 13, 16, 18, 20],
    target_bone_lengths=T2M_TARGET_BONE_LENGTHS,
)

KIT = SkeletonInfo(
    name="kit",
    joint_names=KIT_JOINT_NAMES,
    raw_offsets=KIT_RAW_OFFSETS,
    kinematic_chain=KIT_KINEMATIC_CHAIN,
    parents=KIT_PARENTS,
    face_joint_idx=[11, 16, 5, 8],   # reference §2.2 (T2M: scripts/motion_process.py)
    fid_l=[19, 20],                  # T2M's labels; the MMM names say these are the right foot (§9.14)
    fid_r=[14, 15],
    l_idx1=17,
    l_idx2=18,
    feet_thre=0.05,
    # left/right pairs by MMM name: shoulder/elbow/wrist 5-7 <-> 8-10, hip..foot 11-15 <-> 16-20
    # (derived from the chains; the reference's KIT mirror code was not available to check against)
    mirror_right=[8, 9, 10, 16, 17, 18, 19, 20],
    mirror_left=[5, 6, 7, 11, 12, 13, 14, 15],
    target_bone_lengths=None,        # KIT target (03950_gt) bone lengths are not available offline (reference §2.2)
)

SKELETONS = {"t2m": T2M, "kit": KIT}


def skeleton_info(dataset: str) -> SkeletonInfo:
    """Constants of `dataset` ("t2m" = HumanML3D 22 joints, "kit" = KIT-ML 21 joints)."""
    if dataset not in SKELETONS:
        raise ValueError(f"dataset: expected one of {sorted(SKELETONS)} (t2m = HumanML3D, kit = KIT-ML), "
                         f"got {dataset!r}")
    return SKELETONS[dataset]


# ----------------------------------------------------------------------------------------------------------------
# Quaternions, (w, x, y, z), Hamilton product (reference §2.3). Torch versions work on any float dtype and
# device; the `_np` versions go through torch float32 like the reference, which is what makes features match
# the released data to ~1e-5.
# ----------------------------------------------------------------------------------------------------------------


def qmul(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Hamilton product q·r of (..., 4) quaternions (same shape).

    The four products of each component are summed left to right in the reference's order (H3D
    common/quaternion.py forms the outer product r_i·q_j and adds its terms in the order below). Float addition
    is not associative: another order differs in the last bit for about a third of the components, which the
    float32 extraction then carries into the features.
    """
    w1, x1, y1, z1 = q.unbind(-1)
    w2, x2, y2, z2 = r.unbind(-1)
    return torch.stack((
        w2 * w1 - x2 * x1 - y2 * y1 - z2 * z1,
        w2 * x1 + x2 * w1 - y2 * z1 + z2 * y1,
        w2 * y1 + x2 * z1 + y2 * w1 - z2 * x1,
        w2 * z1 - x2 * y1 + y2 * x1 + z2 * w1,
    ), dim=-1)


def qinv(q: torch.Tensor) -> torch.Tensor:
    """Conjugate of (..., 4) quaternions; the inverse for unit quaternions (the reference assumes unit)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def qrot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v (..., 3) by quaternions q (..., 4): v + 2·(w·(u×v) + u×(u×v)), u = q.xyz."""
    u = q[..., 1:]
    uv = torch.linalg.cross(u, v)          # broadcasts q's and v's leading dims
    uuv = torch.linalg.cross(u, uv)
    return v + 2 * (q[..., :1] * uv + uuv)


def qnormalize(q: torch.Tensor) -> torch.Tensor:
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def qbetween(v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Shortest-arc quaternion taking direction v0 (..., 3) to v1 (..., 3): w = |a||b| + a·b, xyz = a×b."""
    xyz = torch.cross(v0, v1, dim=-1)
    w = torch.sqrt((v0 ** 2).sum(-1, keepdim=True) * (v1 ** 2).sum(-1, keepdim=True)) + (v0 * v1).sum(-1, keepdim=True)
    return qnormalize(torch.cat([w, xyz], dim=-1))


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions -> (..., 3, 3) rotation matrices (standard formula with s = 2/|q|²)."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = torch.stack((
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ), dim=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_cont6d(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, [R00, R10, R20, R01, R11, R21] (reference §2.1)."""
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def quaternion_to_cont6d(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions -> (..., 6) continuous 6D rotations."""
    return matrix_to_cont6d(quaternion_to_matrix(q))


def cont6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): x = norm(a), z = norm(x × b), y = z × x, columns [x, y, z] (reference §2.1)."""
    a, b = d6[..., :3], d6[..., 3:6]
    x = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    z = torch.cross(x, b, dim=-1)
    z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def _f32(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).float()


def qmul_np(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """numpy qmul, computed in float32 as the reference does; broadcasts q and r."""
    q, r = torch.broadcast_tensors(_f32(q), _f32(r))
    return qmul(q, r).numpy()


def qinv_np(q: np.ndarray) -> np.ndarray:
    return qinv(_f32(q)).numpy()


def qrot_np(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """numpy qrot in float32; q (..., 4) broadcasts against v (..., 3)."""
    return qrot(_f32(q), _f32(v)).numpy()


def qbetween_np(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    v0, v1 = torch.broadcast_tensors(_f32(v0), _f32(v1))
    return qbetween(v0, v1).numpy()


def quaternion_to_matrix_np(q: np.ndarray) -> np.ndarray:
    return quaternion_to_matrix(_f32(q)).numpy()


def quaternion_to_cont6d_np(q: np.ndarray) -> np.ndarray:
    return quaternion_to_cont6d(_f32(q)).numpy()


def cont6d_to_matrix_np(d6: np.ndarray) -> np.ndarray:
    return cont6d_to_matrix(_f32(d6)).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Forward kinematics (reference §2.4 step 1)
# ----------------------------------------------------------------------------------------------------------------


def forward_kinematics(quats: torch.Tensor, root_pos: torch.Tensor, offsets: torch.Tensor,
                       kinematic_chain: Sequence[Sequence[int]]) -> torch.Tensor:
    """Batched torch FK with the reference's chain rule.

    For each chain, R starts at the **root** quaternion (also for the arm chains that branch off spine3: the
    [quirk] of reference §2.4 step 6, mirrored here so FK inverts the IK), and for each next joint k:
    R <- R·q_k, p_k = p_parent + rot(R, offset_k).

    Args:
        quats:    (..., J, 4) per-joint quaternions (joint 0 = root rotation)
        root_pos: (..., 3) root positions
        offsets:  (J, 3) or (..., J, 3) bone offsets
    Returns:
        (..., J, 3) joint positions
    """
    offsets = offsets.to(quats.dtype).expand(quats.shape[:-1] + (3,))
    joints: list[torch.Tensor | None] = [None] * quats.shape[-2]
    joints[0] = root_pos
    for chain in kinematic_chain:
        rot = quats[..., 0, :]
        for parent, child in zip(chain[:-1], chain[1:]):
            rot = qmul(rot, quats[..., child, :])
            joints[child] = qrot(rot, offsets[..., child, :]) + joints[parent]
    return torch.stack(joints, dim=-2)


class Skeleton:
    """The standard skeleton: raw rest directions + kinematic chains, offsets from a pose, IK and FK.

    numpy in, numpy out, with float32 quaternion math (reference §2.3), so that the feature extraction
    reproduces the released HumanML3D / KIT-ML features.
    """

    def __init__(self, raw_offsets: np.ndarray, kinematic_chain: Sequence[Sequence[int]]):
        self.raw_offsets = np.asarray(raw_offsets, dtype=np.float32)          # (J, 3)
        self.kinematic_chain = [list(c) for c in kinematic_chain]
        self.parents = parents_from_chain(self.kinematic_chain, len(self.raw_offsets))
        self.offsets: np.ndarray | None = None                               # (J, 3), set by offsets_from_joints / set_offsets

    @classmethod
    def for_dataset(cls, dataset: str) -> "Skeleton":
        info = skeleton_info(dataset)
        return cls(info.raw_offsets, info.kinematic_chain)

    @property
    def num_joints(self) -> int:
        return len(self.raw_offsets)

    def offsets_from_joints(self, joints: np.ndarray) -> np.ndarray:
        """Offsets of one pose (J, 3): raw direction × distance to the parent, float32. Also sets `self.offsets`.

        The distance is taken in the pose's own dtype with torch's 2-norm, as the reference does, then rounded to
        float32. For float32 poses numpy's norm differs from torch's in the last bit for about one bone in ten,
        and the uniform-skeleton scale of every feature inherits it.
        """
        joints = np.asarray(joints)
        if not np.issubdtype(joints.dtype, np.floating):
            joints = joints.astype(np.float64)
        bones = torch.from_numpy(np.ascontiguousarray(joints[1:] - joints[self.parents[1:]]))
        lengths = torch.linalg.vector_norm(bones, dim=-1).numpy()
        offsets = self.raw_offsets.copy()
        offsets[1:] = lengths[:, None].astype(np.float32) * self.raw_offsets[1:]
        self.offsets = offsets
        return offsets

    def set_offsets(self, offsets: np.ndarray) -> None:
        self.offsets = np.asarray(offsets, dtype=np.float32).copy()

    def inverse_kinematics(self, joints: np.ndarray, face_joint_idx: Sequence[int],
                           smooth_forward: bool = False) -> np.ndarray:
        """Pure-swing IK of positions (T, J, 3) -> per-joint quaternions (T, J, 4) (reference §2.4 step 6).

        Joint 0 holds the root rotation: the rotation taking the body's forward direction to +Z.
        """
        # [quirk] the reference unpacks face_joint_idx = [r_hip, l_hip, sdr_r, sdr_l] as
        # (l_hip, r_hip, sdr_r, sdr_l): with [2, 1, 17, 16] its across vector is (p1 - p2) + (p17 - p16), the hip
        # term has the opposite sign to the shoulder term. The released features depend on it (H3D issue #119).
        l_hip, r_hip, sdr_r, sdr_l = face_joint_idx
        across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, sdr_r] - joints[:, sdr_l])
        across = across / np.sqrt((across ** 2).sum(axis=-1))[:, None]
        # np.cross with an integer up vector promotes to float64, as in the reference
        forward = np.cross(np.array([[0, 1, 0]]), across, axis=-1)
        if smooth_forward:
            # the facing direction is Gaussian-smoothed over time, sigma 20 frames, edges repeated ("nearest")
            forward = gaussian_filter1d(forward, 20, axis=0, mode="nearest")
        forward = forward / np.sqrt((forward ** 2).sum(axis=-1))[:, None]

        target = np.array([[0, 0, 1]]).repeat(len(forward), axis=0)
        root_quat = qbetween_np(forward, target)
        # the reference forces the root rotation of frame 0 to identity, whatever the facing; features
        # therefore describe frame 0 in the frame of the step-4 canonicalisation (which faced +Z already).
        # (Active in MoMask's copy of common/skeleton.py and in the HumanML3D forks; one version of HumanML3D's own
        # file has the line commented out, see H3D issue #45. Without it row 0 of every clip changes.)
        root_quat[0] = np.array([1.0, 0.0, 0.0, 0.0])

        quats = np.zeros(joints.shape[:-1] + (4,))
        quats[:, 0] = root_quat
        for chain in self.kinematic_chain:
            # [quirk] every chain starts from the root rotation, also the arm chains that branch off spine3
            # (H3D issue #119): collar rotations are relative to the root. FK uses the same rule.
            rot = root_quat
            for parent, child in zip(chain[:-1], chain[1:]):
                u = self.raw_offsets[child][None].repeat(len(joints), axis=0)
                v = joints[:, child] - joints[:, parent]
                v = v / np.sqrt((v ** 2).sum(axis=-1))[:, None]
                local = qmul_np(qinv_np(rot), qbetween_np(u, v))
                quats[:, child] = local
                rot = qmul_np(rot, local)
        return quats

    def forward_kinematics(self, quats: np.ndarray, root_pos: np.ndarray,
                           offsets: np.ndarray | None = None) -> np.ndarray:
        """FK of quaternions (T, J, 4) and root positions (T, 3) -> positions (T, J, 3) (reference §2.4 step 1).

        Uses `offsets` (J, 3) or `self.offsets`. Positions accumulate in float64 as in the reference; the
        per-bone rotations are float32.
        """
        if offsets is None:
            if self.offsets is None:
                raise ValueError("Skeleton.forward_kinematics: no offsets; call offsets_from_joints / set_offsets "
                                 "or pass offsets=(J, 3)")
            offsets = self.offsets
        offsets = np.broadcast_to(np.asarray(offsets, dtype=np.float32), quats.shape[:-1] + (3,))
        joints = np.zeros(quats.shape[:-1] + (3,))
        joints[:, 0] = root_pos
        for chain in self.kinematic_chain:
            rot = quats[:, 0]            # [quirk] every chain starts from the root rotation (see IK)
            for parent, child in zip(chain[:-1], chain[1:]):
                rot = qmul_np(rot, quats[:, child])
                joints[:, child] = qrot_np(rot, offsets[:, child]) + joints[:, parent]
        return joints
