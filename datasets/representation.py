"""Joint positions <-> the standard HumanML3D / KIT-ML feature vector, and the 12-channel joint format.

- `joints_to_features`: the standard extraction (`reference.md` §2.4, H3D `process_file`): uniform skeleton,
  floor, centring, face +Z, foot contacts, IK rotations, velocities. (T, J, 3) -> (T-1, D), D = 263 / 251.
- `features_to_joints`: the standard inverse `recover_from_ric` (§2.5). (..., T, D) -> (..., T, J, 3).
- `features_to_joint_format` / `joint_format_to_features`: the exactly invertible per-joint re-layout
  (..., T, D) <-> (..., T, J, 12) of ARCHITECTURE.md §6.1 (MoGenTS layout, reference §5.3, plus our root slot).
- `mirror_joints`: the left/right mirror that makes HumanML3D's `M<id>` clips (reference §1.1).

Feature layout for J joints (reference §2.1), row t = frame t and the transition t -> t+1:
    0            root angular velocity about y (half the yaw change, radians)
    1:3          root linear velocity (x, z), in the root frame of frame t+1
    3            root height
    4:4+3(J-1)   ric: joints 1..J-1 relative to the root (x, z), in the root frame of frame t
    ..+6(J-1)    joints 1..J-1 local rotations, 6D
    ..+3J        local velocities of all joints, in the root frame of frame t
    D-4:D        foot contacts [fid_l[0], fid_l[1], fid_r[0], fid_r[1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from datasets.registry import DATASETS, dataset_facts
from datasets.skeleton import (
    Skeleton,
    qbetween_np,
    qinv,
    qinv_np,
    qmul_np,
    qrot,
    qrot_np,
    quaternion_to_cont6d_np,
    skeleton_info,
)

__all__ = [
    "feature_dim", "num_joints", "target_offsets", "default_target_offsets", "joints_to_features",
    "extract_features", "FeatureExtraction", "features_to_joints", "features_to_joint_format",
    "joint_format_to_features", "mirror_joints", "JOINT_FORMAT_CHANNELS", "joint_feature_indices",
    "joint_format_gather_index",
]

JOINT_FORMAT_CHANNELS = 12   # ARCHITECTURE.md §6.1 / reference §5.3


def num_joints(dataset: str) -> int:
    """22 for "t2m" (HumanML3D), 21 for "kit" (KIT-ML) (`datasets.registry`)."""
    _known(dataset)
    return dataset_facts(dataset).joints


def feature_dim(dataset: str) -> int:
    """Feature width D = 12J - 1: 263 for "t2m", 251 for "kit" (`datasets.registry`)."""
    _known(dataset)
    return dataset_facts(dataset).dim


def _known(dataset: str) -> None:
    if dataset not in DATASETS:
        skeleton_info(dataset)       # the skeleton module's own error for an unknown name


def joint_feature_indices(joint: int, dataset: str = "t2m") -> list[int]:
    """The 12 feature dims of joint `joint` in its joint-format slot order (ARCHITECTURE.md §6.1).

    Joint j >= 1: ric (3), rot6d (6), local velocity (3). The root (j = 0): root data (dims 0:4), foot contacts
    (D-4:D), -1 for the zero pad channel, root local velocity (3). The one joint-layout helper: the joint format,
    the tokenizer's gather and the retriever's body parts all read it.
    """
    J = num_joints(dataset)
    if not 0 <= joint < J:
        raise ValueError(f"joint: expected an index in [0, {J}) for dataset {dataset!r}, got {joint}")
    flat, _ = _joint_format_index(dataset)
    return flat[joint * JOINT_FORMAT_CHANNELS:(joint + 1) * JOINT_FORMAT_CHANNELS].tolist()


# ----------------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------------


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _check_finite(x, name: str) -> None:
    finite = bool(torch.isfinite(x).all()) if _is_torch(x) else bool(np.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name}: contains NaN or Inf values; expected finite numbers")


def _as_array(x, name: str):
    if _is_torch(x):
        return x
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from err


def _check_joints(x, name: str, dataset: str, min_ndim: int, max_ndim: int | None, shape_text: str):
    x = _as_array(x, name)
    J = num_joints(dataset)
    ok = x.ndim >= min_ndim and (max_ndim is None or x.ndim <= max_ndim) and x.shape[-2:] == (J, 3)
    if not ok:
        hint = ""
        if dataset == "t2m" and x.ndim >= 2 and x.shape[-2] > J and x.shape[-1] == 3:
            hint = (f"; HumanML3D's joints/*.npy hold {x.shape[-2]} SMPL(-H) joints and the reference keeps the "
                    f"first {J}: pass {name}[..., :{J}, :]")
        raise ValueError(f"{name}: expected shape {shape_text} with J={J} joints for dataset {dataset!r}, "
                         f"got {tuple(x.shape)}{hint}")
    _check_finite(x, name)
    return x


# ----------------------------------------------------------------------------------------------------------------
# skeleton offsets
# ----------------------------------------------------------------------------------------------------------------


def target_offsets(joints, dataset: str = "t2m") -> np.ndarray:
    """Bone offsets (J, 3) float32 of a reference pose, as the standard skeleton's offsets-from-joints computes them.

    Args:
        joints: (J, 3) one frame of joint positions, or (T, J, 3) a clip, of which frame 0 is used (as the
            reference uses frame 0 of its example subject).
    Returns:
        (J, 3): raw rest direction × distance from each joint to its parent (row 0 is zero).
    """
    joints = _check_joints(joints, "joints", dataset, 2, 3, "(J, 3) or (T, J, 3)")
    if _is_torch(joints):
        joints = joints.detach().cpu().numpy()
    if joints.ndim == 3:
        joints = joints[0]
    return Skeleton.for_dataset(dataset).offsets_from_joints(joints)


def default_target_offsets(dataset: str = "t2m") -> np.ndarray:
    """The standard target skeleton (J, 3) float32: raw direction × the reference bone lengths (reference §2.2).

    Only known for "t2m" (HumanML3D subject 000021, frame 0). KIT-ML's target (03950_gt) bone lengths are not
    published as numbers, so for "kit" pass `target_offsets(pose)` of that clip's first frame instead.
    """
    info = skeleton_info(dataset)
    if info.target_bone_lengths is None:
        raise ValueError(
            f"default_target_offsets: the target bone lengths of dataset {dataset!r} are not known offline "
            "(KIT-ML's target is frame 0 of 03950_gt). Compute them with "
            "target_offsets(np.load('<KIT-ML>/joints/03950_gt.npy')[0], dataset='kit') and pass them as tgt_offsets.")
    offsets = info.raw_offsets.astype(np.float32).copy()
    offsets[1:] *= info.target_bone_lengths[:, None]
    return offsets


# ----------------------------------------------------------------------------------------------------------------
# joints -> features (reference §2.4)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureExtraction:
    """Everything `extract_features` computes; `features` is what `joints_to_features` returns."""

    features: np.ndarray          # (T-1, D) float32
    global_positions: np.ndarray  # (T, J, 3) float32: uniform skeleton, on the floor, centred, frame 0 facing +Z
    root_rotation: np.ndarray     # (T, 4) root quaternions of the IK (frame 0 = identity)
    quaternions: np.ndarray       # (T, J, 4) IK rotations


def _uniform_skeleton(positions: np.ndarray, tgt_offsets: np.ndarray, dataset: str) -> np.ndarray:
    """Retarget positions (T, J, 3) onto the target bone lengths (reference §2.4 step 1). Returns float64."""
    info = skeleton_info(dataset)
    skel = Skeleton(info.raw_offsets, info.kinematic_chain)
    src_offsets = skel.offsets_from_joints(positions[0])
    # the root is scaled by the ratio of two leg bones' lengths (max |component| of an axis-aligned offset)
    src_leg = np.abs(src_offsets[info.l_idx1]).max() + np.abs(src_offsets[info.l_idx2]).max()
    tgt_leg = np.abs(tgt_offsets[info.l_idx1]).max() + np.abs(tgt_offsets[info.l_idx2]).max()
    root_pos = positions[:, 0] * (tgt_leg / src_leg)
    # IK without smoothing; the IK's root rotation (quirks included) cancels in FK, which reuses it
    quats = skel.inverse_kinematics(positions, info.face_joint_idx, smooth_forward=False)
    return skel.forward_kinematics(quats, root_pos, offsets=tgt_offsets)


def extract_features(positions, tgt_offsets, feet_thre: float | None = None, dataset: str = "t2m"
                     ) -> FeatureExtraction:
    """The standard extraction with its intermediate results; see `joints_to_features`."""
    info = skeleton_info(dataset)
    J = info.num_joints
    positions = _check_joints(positions, "positions", dataset, 3, 3, "(T, J, 3), T >= 2")
    if _is_torch(positions):
        positions = positions.detach().cpu().numpy()
    if positions.shape[0] < 2:
        raise ValueError(f"positions: expected shape (T, J, 3) with T >= 2 frames (velocities need frame t+1), "
                         f"got {tuple(positions.shape)}")
    tgt = _as_array(tgt_offsets, "tgt_offsets")
    if tuple(tgt.shape) != (J, 3):
        raise ValueError(f"tgt_offsets: expected shape (J, 3) = ({J}, 3) for dataset {dataset!r} "
                         f"(use target_offsets(pose) or default_target_offsets()), got {tuple(tgt.shape)}")
    _check_finite(tgt, "tgt_offsets")
    tgt = (tgt.detach().cpu().numpy() if _is_torch(tgt) else tgt).astype(np.float32)
    leg = np.abs(tgt[info.l_idx1]).max() + np.abs(tgt[info.l_idx2]).max()
    if leg <= 0:
        raise ValueError(f"tgt_offsets: bones {info.l_idx1} and {info.l_idx2} have zero length; expected a real "
                         "skeleton (use target_offsets(pose) or default_target_offsets())")
    if feet_thre is None:
        feet_thre = info.feet_thre
    if not np.isfinite(feet_thre) or feet_thre < 0:
        raise ValueError(f"feet_thre: expected a finite number >= 0, got {feet_thre!r}")

    # 1. uniform skeleton
    positions = _uniform_skeleton(positions, tgt, dataset)
    # 2. floor: lowest joint of the whole clip to y = 0
    positions[:, :, 1] -= positions.min(axis=0).min(axis=0)[1]
    # 3. xz origin at the frame-0 root
    root_init = positions[0]
    positions = positions - root_init[0] * np.array([1, 0, 1])
    # 4. face +Z at frame 0, with the correct hip order (face_joint_idx = r_hip, l_hip, r_shoulder, l_shoulder)
    r_hip, l_hip, sdr_r, sdr_l = info.face_joint_idx
    across = (root_init[r_hip] - root_init[l_hip]) + (root_init[sdr_r] - root_init[sdr_l])
    across = across / np.sqrt((across ** 2).sum(axis=-1))
    forward = np.cross(np.array([[0, 1, 0]]), across[None], axis=-1)
    forward = forward / np.sqrt((forward ** 2).sum(axis=-1))[..., None]
    root_quat_init = qbetween_np(forward, np.array([[0, 0, 1]]))
    positions = qrot_np(np.ones(positions.shape[:-1] + (4,)) * root_quat_init, positions)   # float32 from here
    global_positions = positions.copy()

    # 5. foot contacts: squared 3D displacement (x, y and z) to the next frame below the threshold, strictly;
    # summed x + y + z in that order, as the reference writes it
    def contacts(fid):
        step = positions[1:, fid] - positions[:-1, fid]
        disp = step[..., 0] ** 2 + step[..., 1] ** 2 + step[..., 2] ** 2
        return (disp < np.array([feet_thre, feet_thre])).astype(np.float32)

    feet_l, feet_r = contacts(info.fid_l), contacts(info.fid_r)

    # 6-7. IK rotations with a smoothed facing direction (quirks in Skeleton.inverse_kinematics), 6D
    skel = Skeleton(info.raw_offsets, info.kinematic_chain)
    quats = skel.inverse_kinematics(positions, info.face_joint_idx, smooth_forward=True)
    cont6d = quaternion_to_cont6d_np(quats)
    r_rot = quats[:, 0].copy()

    # 8. root velocities: linear in the root frame of t+1; angular as arcsin of y of r_{t+1}·r_t^-1 (half angle).
    # [quirk] the product's w can be negative (qbetween keeps w >= 0, so r_t flips sign where the facing passes
    # 180° from frame 0) and arcsin ignores it: that row gets the wrong sign and recover_from_ric's yaw is off by
    # twice the turn from there on (HumanML3D issue #156). The released features and new_joints have it; keep it.
    velocity = qrot_np(r_rot[1:], positions[1:, 0] - positions[:-1, 0])
    r_velocity = np.arcsin(qmul_np(r_rot[1:], qinv_np(r_rot[:-1]))[:, 2:3])

    # 9. ric: root-relative x, z, rotated into the root frame of frame t (y stays absolute height)
    ric = positions.copy()
    ric[..., 0] -= ric[:, 0:1, 0]
    ric[..., 2] -= ric[:, 0:1, 2]
    ric = qrot_np(np.repeat(r_rot[:, None], J, axis=1), ric)

    # 10. local velocities of all joints in the root frame of frame t
    local_vel = qrot_np(np.repeat(r_rot[:-1, None], J, axis=1), global_positions[1:] - global_positions[:-1])

    # 11. concatenate rows 0..T-2
    T = len(positions)
    features = np.concatenate([
        r_velocity, velocity[:, [0, 2]], ric[:-1, 0, 1:2],
        ric[:-1, 1:].reshape(T - 1, -1),
        cont6d[:-1, 1:].reshape(T - 1, -1),
        local_vel.reshape(T - 1, -1),
        feet_l, feet_r,
    ], axis=-1).astype(np.float32)
    if not np.isfinite(features).all():
        frames = np.nonzero(~np.isfinite(features).all(axis=-1))[0]
        raise ValueError(
            f"positions: the extraction produced NaN at frames {frames[:5].tolist()}: a facing direction or a bone is "
            "exactly opposite its rest direction (the shortest-arc rotation is undefined there, the reference IK "
            "gives NaN too), or two joints coincide. Real motion does not hit this; check synthetic poses.")
    return FeatureExtraction(features=features, global_positions=global_positions,
                             root_rotation=r_rot, quaternions=quats)


def joints_to_features(positions, tgt_offsets, feet_thre: float | None = None, dataset: str = "t2m") -> np.ndarray:
    """The standard HumanML3D / KIT-ML feature extraction (reference §2.4).

    Args:
        positions:   (T, J, 3) joint positions, y up, metres (KIT: its own units), 20 fps (KIT 12.5)
        tgt_offsets: (J, 3) target skeleton offsets (`default_target_offsets()` / `target_offsets(pose)`)
        feet_thre:   contact threshold on the squared per-frame foot displacement; None = the dataset's
                     standard value (0.002 t2m, 0.05 kit)
    Returns:
        (T-1, D) float32 features, D = 263 (t2m) / 251 (kit)
    """
    return extract_features(positions, tgt_offsets, feet_thre, dataset).features


# ----------------------------------------------------------------------------------------------------------------
# features -> joints (reference §2.5, recover_from_ric)
# ----------------------------------------------------------------------------------------------------------------


def _check_features(x, name: str, dataset: str):
    x = _as_array(x, name)
    D = feature_dim(dataset)
    if x.ndim < 2 or x.shape[-1] != D:
        raise ValueError(f"{name}: expected shape (..., T, D) with D={D} for dataset {dataset!r}, "
                         f"got {tuple(x.shape)}")
    _check_finite(x, name)
    return x


def recover_root_rot_pos(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root quaternions (..., T, 4) and positions (..., T, 3) from features (..., T, D) (reference §2.5 steps 1-2)."""
    # half angles: theta_0 = 0, theta_t = sum of dim 0 over s < t; the quaternion has yaw 2·theta
    theta = torch.cumsum(torch.cat([torch.zeros_like(x[..., :1, 0]), x[..., :-1, 0]], dim=-1), dim=-1)
    zeros = torch.zeros_like(theta)
    r_quat = torch.stack([torch.cos(theta), zeros, torch.sin(theta), zeros], dim=-1)
    # root xz: velocity row s-1 was expressed in the root frame of frame s, so rotate it back by q_s^-1
    vel = torch.zeros(x.shape[:-1] + (3,), dtype=x.dtype, device=x.device)
    vel[..., 1:, 0] = x[..., :-1, 1]
    vel[..., 1:, 2] = x[..., :-1, 2]
    r_pos = torch.cumsum(qrot(qinv(r_quat), vel), dim=-2)
    r_pos[..., 1] = x[..., 3]
    return r_quat, r_pos


def features_to_joints(features, dataset: str = "t2m"):
    """The standard inverse `recover_from_ric` (reference §2.5).

    Args:
        features: (..., T, D) numpy or torch, D = 263 (t2m) / 251 (kit)
    Returns:
        (..., T, J, 3) joint positions, the same kind (numpy / torch) as the input; numpy float input keeps its
        dtype (other numpy dtypes become float32), torch keeps dtype and device.
    """
    x = _check_features(features, "features", dataset)
    J = num_joints(dataset)
    if _is_torch(x):
        t = x if x.is_floating_point() else x.float()
    else:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype if x.dtype in (np.float32, np.float64)
                                                  else np.float32))
    r_quat, r_pos = recover_root_rot_pos(t)
    ric = t[..., 4:4 + 3 * (J - 1)].reshape(t.shape[:-1] + (J - 1, 3))
    joints = qrot(qinv(r_quat)[..., None, :], ric)
    joints = joints + torch.stack([r_pos[..., 0], torch.zeros_like(r_pos[..., 0]), r_pos[..., 2]],
                                  dim=-1)[..., None, :]
    joints = torch.cat([r_pos[..., None, :], joints], dim=-2)
    return joints if _is_torch(x) else joints.numpy()


# ----------------------------------------------------------------------------------------------------------------
# joint format (ARCHITECTURE.md §6.1)
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _joint_format_index(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(J·12,) feature dim feeding each joint-format slot (-1 = zero pad) and its (D,) inverse."""
    J, D = num_joints(dataset), feature_dim(dataset)
    idx = np.full((J, JOINT_FORMAT_CHANNELS), -1, dtype=np.int64)
    rot0 = 4 + 3 * (J - 1)          # start of the 6D rotations
    vel0 = 4 + 9 * (J - 1)          # start of the local velocities (root first)
    # root slot (our change, ARCHITECTURE.md §3b): root data, contacts, pad, root local velocity
    idx[0, 0:4] = np.arange(0, 4)
    idx[0, 4:8] = np.arange(D - 4, D)
    idx[0, 9:12] = np.arange(vel0, vel0 + 3)
    for j in range(1, J):           # MoGenTS layout (reference §5.3)
        idx[j, 0:3] = np.arange(4 + 3 * (j - 1), 4 + 3 * j)
        idx[j, 3:9] = np.arange(rot0 + 6 * (j - 1), rot0 + 6 * j)
        idx[j, 9:12] = np.arange(vel0 + 3 * j, vel0 + 3 * j + 3)
    flat = idx.reshape(-1)
    inverse = np.full(D, -1, dtype=np.int64)
    inverse[flat[flat >= 0]] = np.nonzero(flat >= 0)[0]
    assert (inverse >= 0).all() and len(np.unique(flat[flat >= 0])) == D
    return flat, inverse


def joint_format_gather_index(dataset: str = "t2m") -> np.ndarray:
    """(J·12,) int64: for each joint-format slot the feature dim it reads, the pad slot pointing at index D
    (gather from the features with one zero column appended: a single differentiable index_select)."""
    flat, _ = _joint_format_index(dataset)
    return np.where(flat < 0, feature_dim(dataset), flat)


def features_to_joint_format(x, dataset: str = "t2m"):
    """(..., T, D) features -> (..., T, J, 12) joint format; a pure re-layout, numpy or torch.

    Joint j >= 1: ch 0:3 ric, 3:9 rot6d, 9:12 local velocity. Root: ch 0:4 root data (dims 0:4), 4:8 foot
    contacts (dims D-4:D), 8 zero, 9:12 root local velocity.
    """
    x = _as_array(x, "x")
    D, J = feature_dim(dataset), num_joints(dataset)
    if x.ndim < 1 or x.shape[-1] != D:
        raise ValueError(f"x: expected shape (..., T, D) with D={D} for dataset {dataset!r}, got {tuple(x.shape)}")
    flat, _ = _joint_format_index(dataset)
    pad = flat < 0
    src = np.where(pad, 0, flat)
    if _is_torch(x):
        out = x[..., torch.from_numpy(src).to(x.device)]
        out[..., torch.from_numpy(pad).to(x.device)] = 0
    else:
        out = x[..., src]
        out[..., pad] = 0
    return out.reshape(x.shape[:-1] + (J, JOINT_FORMAT_CHANNELS))


def joint_format_to_features(jf, dataset: str = "t2m"):
    """(..., T, J, 12) joint format -> (..., T, D) features; the exact inverse of `features_to_joint_format`
    (the pad channel is ignored)."""
    jf = _as_array(jf, "jf")
    J = num_joints(dataset)
    if jf.ndim < 2 or tuple(jf.shape[-2:]) != (J, JOINT_FORMAT_CHANNELS):
        raise ValueError(f"jf: expected shape (..., T, J, {JOINT_FORMAT_CHANNELS}) with J={J} for dataset "
                         f"{dataset!r}, got {tuple(jf.shape)}")
    _, inverse = _joint_format_index(dataset)
    flat = jf.reshape(jf.shape[:-2] + (J * JOINT_FORMAT_CHANNELS,))
    if _is_torch(jf):
        return flat[..., torch.from_numpy(inverse).to(jf.device)]
    return flat[..., inverse]


# ----------------------------------------------------------------------------------------------------------------
# mirror (reference §1.1)
# ----------------------------------------------------------------------------------------------------------------


def mirror_joints(joints, dataset: str = "t2m"):
    """Left/right mirror of joint positions (..., J, 3), numpy or torch: x is negated and the left/right joint
    pairs are swapped (how HumanML3D makes its `M<id>` clips, reference §1.1)."""
    joints = _check_joints(joints, "joints", dataset, 2, None, "(..., J, 3)")
    info = skeleton_info(dataset)
    perm = np.arange(info.num_joints)
    perm[info.mirror_right] = info.mirror_left
    perm[info.mirror_left] = info.mirror_right
    if _is_torch(joints):
        out = joints[..., torch.from_numpy(perm).to(joints.device), :].clone()
    else:
        out = joints[..., perm, :].copy()
    out[..., 0] = -out[..., 0]
    return out
