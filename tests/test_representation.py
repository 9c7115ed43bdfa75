"""datasets.representation: the standard extraction (reference.md §2.4), its inverse (§2.5), joint format (§6.1)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import representation as rep
from datasets.skeleton import KIT, T2M, qinv_np, qrot_np

T2M_OFFSETS = rep.default_target_offsets("t2m")
# left leg: knee + ankle bones hang straight down; the lowest joints (ankles, toes) stand on the floor
T2M_PELVIS_HEIGHT = 0.3936232 + 0.43243298


def rest_pose(offsets: np.ndarray, parents: list[int]) -> np.ndarray:
    """Joints (J, 3) of the rest pose, facing +Z: each joint = its parent + its offset."""
    joints = np.zeros((len(offsets), 3))
    for j in range(1, len(offsets)):
        joints[j] = joints[parents[j]] + offsets[j]
    return joints


def yaw(angle: float) -> np.ndarray:
    """Rotation matrix about +y taking +Z towards +X."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def standing(T: int = 10) -> np.ndarray:
    return np.repeat(rest_pose(T2M_OFFSETS, T2M.parents)[None], T, axis=0)


def walk_along_x(speed: float, T: int = 60, scale: float = 1.0) -> np.ndarray:
    """A rigid rest pose (bones × scale) facing +X, translated by `speed` per frame along +X, 1 m above y = 0.5."""
    pose = rest_pose(T2M_OFFSETS * scale, T2M.parents) @ yaw(math.pi / 2).T + np.array([3.0, 0.5, -2.0])
    return pose[None] + np.arange(T)[:, None, None] * np.array([speed, 0.0, 0.0])


def turn_in_place(omega: float, T: int) -> np.ndarray:
    pose = rest_pose(T2M_OFFSETS, T2M.parents)
    return np.stack([pose @ yaw(omega * t).T for t in range(T)])


def recover_all_frames(features: np.ndarray, dataset: str = "t2m") -> np.ndarray:
    """recover_from_ric (T-1 frames) plus the last raw frame from the last local-velocity row: (T, J, 3)."""
    J = rep.num_joints(dataset)
    joints = rep.features_to_joints(features, dataset)
    theta = features[:-1, 0].sum()
    q = np.array([math.cos(theta), 0.0, math.sin(theta), 0.0])
    lv = features[-1, 4 + 9 * (J - 1):4 + 9 * (J - 1) + 3 * J].reshape(J, 3)
    last = joints[-1] + qrot_np(np.tile(qinv_np(q), (J, 1)), lv)
    return np.concatenate([joints, last[None]], axis=0)


def crosses_half_turn(root_rotation: np.ndarray) -> bool:
    """Whether the root quaternion's y flips sign near |y| = 1 (facing passes 180° from frame 0)."""
    y = root_rotation[:, 2]
    flip = np.sign(y[1:]) != np.sign(y[:-1])
    return bool(np.any(flip & (np.abs(y[1:]) > 0.9)))


# ------------------------------------------------------------------------------------------------ sizes, offsets


def test_feature_dim_and_num_joints():
    assert (rep.feature_dim("t2m"), rep.num_joints("t2m")) == (263, 22)
    assert (rep.feature_dim("kit"), rep.num_joints("kit")) == (251, 21)


def test_default_target_offsets_are_direction_times_reference_bone_length():
    off = rep.default_target_offsets("t2m")
    assert off.shape == (22, 3) and off.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(off[1:], axis=-1), T2M.target_bone_lengths, rtol=1e-7)
    np.testing.assert_array_equal(off[4], np.array([0, -0.3936232, 0], dtype=np.float32))   # left knee hangs down
    np.testing.assert_array_equal(off[0], [0, 0, 0])


def test_default_target_offsets_for_kit_explains_what_to_pass():
    with pytest.raises(ValueError, match=r"'kit'.*target_offsets\(.*03950_gt"):
        rep.default_target_offsets("kit")


def test_target_offsets_of_a_pose_round_trip_and_use_frame_zero_of_a_clip():
    pose = rest_pose(T2M_OFFSETS, T2M.parents)
    np.testing.assert_allclose(rep.target_offsets(pose), T2M_OFFSETS, atol=1e-7)
    clip = np.stack([pose, pose * 2.0])
    np.testing.assert_allclose(rep.target_offsets(clip), T2M_OFFSETS, atol=1e-7)
    np.testing.assert_allclose(rep.target_offsets(torch.from_numpy(pose * 2.0)), T2M_OFFSETS * 2.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ hand-made motions


def test_standing_still_gives_zero_velocities_four_contacts_and_rest_rotations():
    feats = rep.joints_to_features(standing(10), T2M_OFFSETS)
    assert feats.shape == (9, 263) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:, 0:3], 0, atol=1e-7)               # root angular + linear velocity
    np.testing.assert_allclose(feats[:, 193:259], 0, atol=1e-7)           # local velocities of all joints
    np.testing.assert_array_equal(feats[:, 259:263], 1)                   # both feet in contact
    np.testing.assert_allclose(feats[:, 3], T2M_PELVIS_HEIGHT, atol=1e-6)  # root height above the floor
    # ric of the left hip: +x 0.103 beside the pelvis at pelvis height; rotations: identity 6D for every joint
    np.testing.assert_allclose(feats[0, 4:7], [0.10307398, T2M_PELVIS_HEIGHT, 0], atol=1e-6)
    np.testing.assert_allclose(feats[:, 67:193].reshape(9, 21, 6), np.broadcast_to([1, 0, 0, 0, 1, 0], (9, 21, 6)),
                               atol=1e-6)


@pytest.mark.parametrize("speed,contact", [(0.05, 0.0), (0.04, 1.0)])   # 0.05² > 0.002 > 0.04²
def test_straight_walk_along_x_faces_z_with_root_velocity_along_z(speed, contact):
    feats = rep.joints_to_features(walk_along_x(speed), T2M_OFFSETS)
    assert feats.shape == (59, 263)
    np.testing.assert_allclose(feats[:, 0], 0, atol=1e-6)                 # no turning
    np.testing.assert_allclose(feats[:, 1], 0, atol=1e-6)                 # root velocity x (after facing +Z)
    np.testing.assert_allclose(feats[:, 2], speed, atol=1e-6)             # root velocity z = speed per frame
    lv = feats[:, 193:259].reshape(59, 22, 3)
    np.testing.assert_allclose(lv, np.broadcast_to([0, 0, speed], lv.shape), atol=1e-6)
    np.testing.assert_array_equal(feats[:, 259:263], contact)
    np.testing.assert_allclose(feats[:, 3], T2M_PELVIS_HEIGHT, atol=1e-6)   # floor removed the 0.5 m offset


def test_uniform_skeleton_scales_the_root_by_the_leg_ratio():
    """A walker with all bones 1.25× the target: positions are retargeted, so the root speed shrinks by 1/1.25."""
    ex = rep.extract_features(walk_along_x(0.05, scale=1.25), T2M_OFFSETS)
    np.testing.assert_allclose(ex.features[:, 2], 0.05 / 1.25, atol=1e-6)
    g = ex.global_positions
    lengths = np.linalg.norm(g[:, 1:] - g[:, T2M.parents[1:]], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(T2M.target_bone_lengths, lengths.shape), atol=1e-6)


def test_foot_contact_uses_the_squared_3d_step_including_height():
    """A rigid vertical hop: the contact test is |p(t+1) - p(t)|² < feet_thre over x, y and z, not the ground plane."""
    steps = np.array([0.05, 0.04, -0.04, -0.05])                 # 0.05² > 0.002 > 0.04²
    clip = standing(5) + np.concatenate([[0.0], np.cumsum(steps)])[:, None, None] * np.array([0.0, 1.0, 0.0])
    feats = rep.joints_to_features(clip, T2M_OFFSETS)
    np.testing.assert_array_equal(feats[:, 259:263], np.repeat([[0.0], [1.0], [1.0], [0.0]], 4, axis=1))
    np.testing.assert_allclose(feats[:, 1:3], 0, atol=1e-6)      # no horizontal root motion


def test_foot_contacts_are_left_then_right_with_a_strict_threshold():
    """Swing the straight left leg forward about the left hip: dims 259:261 (L ankle, L foot) lose contact, the still
    right foot keeps it (dims 261:263). A step exactly equal to feet_thre is not a contact (strict <)."""
    pose = rest_pose(T2M_OFFSETS, T2M.parents)
    frames = []
    for t in range(6):
        c, s = math.cos(0.1 * t), math.sin(0.1 * t)
        rot_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])     # takes -y (down) towards +z (forward)
        f = pose.copy()
        f[[4, 7, 10]] = (pose[[4, 7, 10]] - pose[1]) @ rot_x.T + pose[1]
        frames.append(f)
    ex = rep.extract_features(np.stack(frames), T2M_OFFSETS)
    np.testing.assert_array_equal(ex.features[:, 259:263], np.broadcast_to([0.0, 0.0, 1.0, 1.0], (5, 4)))
    step = ex.global_positions[1, 7] - ex.global_positions[0, 7]      # float32, as the extraction computes it
    d = float(step[0] ** 2 + step[1] ** 2 + step[2] ** 2)
    assert 0.0065 < d < 0.0071                                    # chord of 0.1 rad on the 0.826 m straight leg, squared
    assert rep.joints_to_features(np.stack(frames), T2M_OFFSETS, feet_thre=d)[0, 259] == 0.0
    assert rep.joints_to_features(np.stack(frames), T2M_OFFSETS, feet_thre=np.nextafter(d, 1.0))[0, 259] == 1.0


def test_turn_in_place_gives_half_the_yaw_rate_in_dim_zero():
    omega = 0.02                       # rad per frame, turning +Z towards +X
    T = 140                            # 140 × 0.02 = 2.8 rad < pi: the facing never passes 180°
    feats = rep.joints_to_features(turn_in_place(omega, T), T2M_OFFSETS)
    # away from the clip ends (the facing is Gaussian-smoothed with sigma 20), r_{t+1}·r_t^-1 is a yaw of -omega
    np.testing.assert_allclose(feats[60:T - 61, 0], -omega / 2, atol=1e-5)
    np.testing.assert_allclose(feats[:, 1:3], 0, atol=1e-6)                # the root does not move
    # the ric of the rotating body stays (nearly) constant in the root frame in the interior
    np.testing.assert_allclose(feats[60:T - 61, 4:67], np.broadcast_to(feats[70, 4:67], (T - 121, 63)), atol=1e-4)


def test_quirk_dim_zero_flips_sign_where_the_facing_passes_180_degrees():
    """[quirk] arcsin of y of r_{t+1}·r_t^-1 ignores w < 0 (HumanML3D issue #156): one row has the wrong sign."""
    omega, T = 0.03, 200                # the facing passes pi between frames 104 and 105
    ex = rep.extract_features(turn_in_place(omega, T), T2M_OFFSETS)
    interior = ex.features[60:T - 61, 0]
    flipped = np.nonzero(interior > 0)[0] + 60
    assert flipped.tolist() == [104]
    np.testing.assert_allclose(ex.features[104, 0], omega / 2, atol=1e-5)
    np.testing.assert_allclose(np.delete(interior, 104 - 60), -omega / 2, atol=1e-5)
    assert crosses_half_turn(ex.root_rotation)
    # so recover_from_ric is exact before the flip and off after it, as in the released new_joints
    rec = rep.features_to_joints(ex.features)
    err = np.abs(rec - ex.global_positions[:-1]).max(axis=(1, 2))
    assert err[:105].max() < 1e-5 and err[106:].min() > 5e-3     # yaw off by 2·omega after the flip


def test_kit_walk_gives_251_dims_and_recovers():
    # KIT units are mm; shoulders (5, 8) wider than hips (11, 16) as in a real body
    lengths = [100, 150, 200, 100, 200, 300, 250, 200, 300, 250, 100, 420, 400, 60, 80, 100, 420, 400, 60, 80]
    offsets = (KIT.raw_offsets * np.array([0] + lengths)[:, None]).astype(np.float32)
    pose = rest_pose(offsets, KIT.parents)
    # jitter heights a little: the canonical KIT body faces -Z (below), and a bone exactly opposite its rest direction
    # has no defined shortest arc (the reference gives NaN there, we raise)
    pose[:, 1] += np.random.default_rng(0).normal(0.0, 5.0, size=21)
    pose = pose @ yaw(0.7).T                                     # feet point along yaw 0.7
    clip = pose[None] + np.arange(30)[:, None, None] * (20.0 * np.array([math.sin(0.7), 0.0, math.cos(0.7)]))
    ex = rep.extract_features(clip, rep.target_offsets(clip, "kit"), dataset="kit")   # its own skeleton: scale 1
    assert ex.features.shape == (29, 251)
    np.testing.assert_array_equal(ex.features[:, -4:], 0.0)           # 20² > kit threshold 0.05
    np.testing.assert_allclose(ex.features[:, 0], 0, atol=1e-6)
    # T2M's KIT face_joint_idx [11, 16, 5, 8] calls the MMM left hip "r_hip" (reference §2.2, §9.14), so the
    # canonical KIT body walks towards -Z
    np.testing.assert_allclose(ex.features[:, 1:3], np.broadcast_to([0, -20.0], (29, 2)), atol=1e-3)
    np.testing.assert_allclose(rep.features_to_joints(ex.features, "kit"), ex.global_positions[:-1], atol=1e-3)


# ------------------------------------------------------------------------------------------------ real clips


def test_real_clips_round_trip(real_motion_dir):
    """joints -> features -> joints -> features on the real mocap clips.

    recover_from_ric returns the canonicalised `global_positions` (uniform skeleton, floor, centred, frame 0 facing
    +Z; step 4 of the extraction) minus the last frame. With that frame added back from the last local-velocity
    row, re-extraction reproduces the features (same floor, same smoothing window).
    """
    checked = 0
    for path in sorted((real_motion_dir / "joints").glob("*.npy")):
        joints = np.load(path)
        ex = rep.extract_features(joints, T2M_OFFSETS)
        assert ex.features.shape == (len(joints) - 1, 263), path.name
        g = ex.global_positions
        lengths = np.linalg.norm(g[:, 1:] - g[:, T2M.parents[1:]], axis=-1)
        np.testing.assert_allclose(lengths, np.broadcast_to(T2M.target_bone_lengths, lengths.shape), atol=1e-5)
        if crosses_half_turn(ex.root_rotation):
            continue                 # turns past 180°: recovery drifts after the quirk row (tested above)
        rec = rep.features_to_joints(ex.features)
        np.testing.assert_allclose(rec, g[:-1], atol=1e-5, err_msg=path.name)
        again = rep.joints_to_features(recover_all_frames(ex.features), T2M_OFFSETS)
        np.testing.assert_allclose(again, ex.features, atol=1e-4, err_msg=path.name)
        checked += 1
    assert checked >= 6              # 8 of the 12 fixture clips never pass 180°


def test_features_to_joints_is_batched_and_keeps_the_array_kind(real_motion_dir):
    feats = rep.joints_to_features(np.load(real_motion_dir / "joints" / "climb1_up.npy")[:50], T2M_OFFSETS)
    one = rep.features_to_joints(feats)
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (49, 22, 3)
    batch = torch.from_numpy(np.stack([feats, feats[::-1].copy()])).double()
    out = rep.features_to_joints(batch)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (2, 49, 22, 3)
    np.testing.assert_allclose(out[0].numpy(), one, atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), rep.features_to_joints(feats[::-1].copy()), atol=1e-5)


# ------------------------------------------------------------------------------------------------ joint format


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_joint_format_round_trip_is_exact_on_random_features(dataset):
    D, J = rep.feature_dim(dataset), rep.num_joints(dataset)
    x = torch.randn(3, 17, D, generator=torch.Generator().manual_seed(0))
    jf = rep.features_to_joint_format(x, dataset)
    assert jf.shape == (3, 17, J, 12)
    assert torch.equal(rep.joint_format_to_features(jf, dataset), x)
    xn = x.numpy()
    jfn = rep.features_to_joint_format(xn, dataset)
    assert isinstance(jfn, np.ndarray) and np.array_equal(jfn, jf.numpy())
    assert np.array_equal(rep.joint_format_to_features(jfn, dataset), xn)


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_joint_format_layout(dataset):
    """Root: ch 0:4 dims 0:4, ch 4:8 contacts, ch 8 zero, ch 9:12 root velocity; joint j: ric, rot6d, velocity."""
    D, J = rep.feature_dim(dataset), rep.num_joints(dataset)
    x = torch.arange(D, dtype=torch.float32) + 1.0          # value = dim index + 1
    jf = rep.features_to_joint_format(x, dataset)
    assert jf[0, :4].tolist() == [1, 2, 3, 4]
    assert jf[0, 4:8].tolist() == [D - 3, D - 2, D - 1, D]
    assert jf[0, 8].item() == 0
    vel0 = 4 + 9 * (J - 1)
    assert jf[0, 9:12].tolist() == [vel0 + 1, vel0 + 2, vel0 + 3]
    j = 5
    assert jf[j, 0:3].tolist() == [4 + 3 * (j - 1) + k + 1 for k in range(3)]
    assert jf[j, 3:9].tolist() == [4 + 3 * (J - 1) + 6 * (j - 1) + k + 1 for k in range(6)]
    assert jf[j, 9:12].tolist() == [vel0 + 3 * j + k + 1 for k in range(3)]


def test_joint_format_round_trip_on_real_features(real_motion_dir):
    feats = rep.joints_to_features(np.load(real_motion_dir / "joints" / "omomo_sub3_largebox_003.npy"), T2M_OFFSETS)
    x = torch.from_numpy(feats)
    assert torch.equal(rep.joint_format_to_features(rep.features_to_joint_format(x)), x)


# ------------------------------------------------------------------------------------------------ mirror


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_mirror_twice_is_identity(dataset):
    J = rep.num_joints(dataset)
    x = np.random.default_rng(0).normal(size=(4, 9, J, 3)).astype(np.float32)
    np.testing.assert_array_equal(rep.mirror_joints(rep.mirror_joints(x, dataset), dataset), x)
    t = torch.from_numpy(x)
    assert torch.equal(rep.mirror_joints(rep.mirror_joints(t, dataset), dataset), t)


def test_mirror_swaps_left_and_right_and_negates_x():
    pose = rest_pose(T2M_OFFSETS, T2M.parents)
    m = rep.mirror_joints(pose)
    np.testing.assert_array_equal(m[2], pose[1] * [-1, 1, 1])    # the mirrored right hip is the left hip at -x
    np.testing.assert_array_equal(m[0], pose[0] * [-1, 1, 1])
    np.testing.assert_array_equal(m[15], pose[15] * [-1, 1, 1])


def test_mirrored_turn_turns_the_other_way():
    feats = rep.joints_to_features(turn_in_place(0.02, 140), T2M_OFFSETS)
    mirrored = rep.joints_to_features(rep.mirror_joints(turn_in_place(0.02, 140)), T2M_OFFSETS)
    np.testing.assert_allclose(mirrored[60:79, 0], -feats[60:79, 0], atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_argument_and_the_expected_shape():
    good = standing(5)
    with pytest.raises(ValueError, match=r"positions: expected shape \(T, J, 3\).*J=22.*got \(5, 21, 3\)"):
        rep.joints_to_features(good[:, :21], T2M_OFFSETS)
    with pytest.raises(ValueError, match=r"T >= 2.*got \(1, 22, 3\)"):
        rep.joints_to_features(good[:1], T2M_OFFSETS)
    bad = good.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="positions: contains NaN or Inf"):
        rep.joints_to_features(bad, T2M_OFFSETS)
    with pytest.raises(ValueError, match=r"tgt_offsets: expected shape \(J, 3\) = \(22, 3\).*got \(21, 3\)"):
        rep.joints_to_features(good, T2M_OFFSETS[:21])
    with pytest.raises(ValueError, match=r"features: expected shape \(\.\.\., T, D\) with D=263.*got \(4, 251\)"):
        rep.features_to_joints(np.zeros((4, 251)))
    with pytest.raises(ValueError, match="features: contains NaN or Inf"):
        rep.features_to_joints(torch.full((4, 263), float("inf")))
    with pytest.raises(ValueError, match=r"jf: expected shape \(\.\.\., T, J, 12\) with J=21"):
        rep.joint_format_to_features(np.zeros((4, 22, 12)), "kit")
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., T, D\) with D=251"):
        rep.features_to_joint_format(np.zeros((4, 263)), "kit")
    with pytest.raises(ValueError, match=r"joints: expected shape \(\.\.\., J, 3\) with J=21"):
        rep.mirror_joints(good, "kit")
    with pytest.raises(ValueError, match=r"got \(5, 52, 3\); HumanML3D's joints/\*\.npy hold 52 .*positions\[\.\.\., :22, :\]"):
        rep.joints_to_features(np.zeros((5, 52, 3)), T2M_OFFSETS)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        rep.feature_dim("humanml3d")


def test_degenerate_pose_raises_instead_of_returning_nan():
    """A bone exactly opposite its rest direction (here: a body turned exactly 180°) has no shortest arc."""
    with pytest.raises(ValueError, match=r"positions: the extraction produced NaN.*opposite"):
        rep.joints_to_features(standing(4) @ yaw(math.pi).T.round(), T2M_OFFSETS)


GOLDEN = Path(__file__).parent / "data" / "golden_climb1_up_60_t2m_features.npy"


def test_features_of_a_real_clip_match_the_golden_reference_values(real_motion_dir):
    """Regression pin: the first 60 frames of `climb1_up` give the stored (59, 263) features.

    The golden file was written by this code on 2026-11-30 and checked bit-for-bit (max |diff| 0.0) against an
    independent re-implementation of HumanML3D's `process_file` written for the audit (frame-0 root rotation reset
    to identity, reference.md §2.4). Any drift in the extraction (order of operations, quirks, dtypes) shows here.
    """
    joints = np.load(real_motion_dir / "joints" / "climb1_up.npy")[:60]
    feats = rep.joints_to_features(joints, T2M_OFFSETS)
    golden = np.load(GOLDEN)
    assert feats.shape == golden.shape == (59, 263)
    np.testing.assert_allclose(feats, golden, rtol=0, atol=1e-5)
