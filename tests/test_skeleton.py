"""datasets.skeleton: constants (reference.md §2.2), quaternion math (§2.3), IK/FK and their two quirks (§2.4)."""

import math

import numpy as np
import pytest
import torch

from datasets import skeleton as sk


def rest_pose(offsets: np.ndarray, parents: list[int]) -> np.ndarray:
    """Joints (J, 3) of the rest pose: each joint = its parent + its offset (computed without the FK code)."""
    joints = np.zeros((len(offsets), 3))
    for j in range(1, len(offsets)):
        joints[j] = joints[parents[j]] + offsets[j]
    return joints


def yaw_quat(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ constants


def test_t2m_parents_match_reference_list():
    assert sk.T2M_PARENTS == [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]


def test_kit_parents_follow_the_chains():
    assert sk.KIT_PARENTS == [-1, 0, 1, 2, 3, 3, 5, 6, 3, 8, 9, 0, 11, 12, 13, 14, 0, 16, 17, 18, 19]


@pytest.mark.parametrize("info,J", [(sk.T2M, 22), (sk.KIT, 21)])
def test_constant_shapes_and_unit_raw_directions(info, J):
    assert info.num_joints == J and info.raw_offsets.shape == (J, 3)
    np.testing.assert_array_equal(np.abs(info.raw_offsets[1:]).sum(-1), 1)     # axis-aligned unit directions
    assert sorted(j for c in info.kinematic_chain for j in c[1:]) == list(range(1, J))  # every joint once
    assert len(info.mirror_left) == len(info.mirror_right) == 8
    assert not set(info.mirror_left) & set(info.mirror_right)


def test_t2m_target_bone_lengths_and_processing_constants():
    assert sk.T2M.target_bone_lengths.shape == (21,)
    assert sk.T2M.target_bone_lengths[0] == pytest.approx(0.10307398)
    assert sk.T2M.target_bone_lengths[-1] == pytest.approx(0.26987633)
    assert (sk.T2M.l_idx1, sk.T2M.l_idx2, sk.T2M.fid_l, sk.T2M.fid_r) == (5, 8, [7, 10], [8, 11])
    assert sk.T2M.face_joint_idx == [2, 1, 17, 16] and sk.T2M.feet_thre == 0.002
    assert sk.T2M_JOINT_NAMES[sk.T2M.mirror_left[0]] == "left_hip"


def test_kit_processing_constants_of_t2m_motion_process():
    """KIT-ML constants as T2M scripts/motion_process.py sets them (reference §2.2)."""
    assert (sk.KIT.l_idx1, sk.KIT.l_idx2) == (17, 18)
    assert (sk.KIT.fid_l, sk.KIT.fid_r) == ([19, 20], [14, 15])
    assert sk.KIT.face_joint_idx == [11, 16, 5, 8] and sk.KIT.feet_thre == 0.05
    assert sk.KIT_RAW_OFFSETS[[5, 8, 11, 16]].tolist() == [[1, 0, 0], [-1, 0, 0], [1, 0, 0], [-1, 0, 0]]
    assert sk.KIT_RAW_OFFSETS[[14, 15, 19, 20], 2].tolist() == [1, 1, 1, 1]      # feet point forward


def test_left_joints_have_positive_x_in_t2m_rest_directions():
    for j in (1, 13):
        assert sk.T2M_RAW_OFFSETS[j, 0] == 1 and sk.T2M_RAW_OFFSETS[j + 1, 0] == -1


def test_unknown_dataset_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"dataset: expected one of \['kit', 't2m'\].*'humanml'"):
        sk.skeleton_info("humanml")


# ------------------------------------------------------------------------------------------------ quaternions


def test_qmul_hamilton_units():
    i, j, k = (torch.eye(4, dtype=torch.float64)[n] for n in (1, 2, 3))
    torch.testing.assert_close(sk.qmul(i, j), k)
    torch.testing.assert_close(sk.qmul(j, i), -k)
    torch.testing.assert_close(sk.qmul(i, i), -torch.eye(4, dtype=torch.float64)[0])


def test_qrot_quarter_turn_about_y_takes_x_to_minus_z():
    v = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sk.qrot(yaw_quat(math.pi / 2), v), torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))


def test_qrot_matches_rotation_matrix_and_qinv_undoes_it():
    g = torch.Generator().manual_seed(0)
    q = sk.qnormalize(torch.randn(5, 7, 4, generator=g, dtype=torch.float64))
    v = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    rotated = sk.qrot(q, v)
    torch.testing.assert_close(rotated, (sk.quaternion_to_matrix(q) @ v[..., None])[..., 0])
    torch.testing.assert_close(sk.qrot(sk.qinv(q), rotated), v)
    torch.testing.assert_close(sk.qmul(q, sk.qinv(q)), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(5, 7, 4))


def test_qbetween_is_the_shortest_arc():
    z = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    x = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sk.qbetween(z, x), yaw_quat(math.pi / 2))      # +Z -> +X: +90° about y
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 50, 3, generator=g, dtype=torch.float64)
    q = sk.qbetween(a, b)
    torch.testing.assert_close(sk.qrot(q, a / a.norm(dim=-1, keepdim=True)), b / b.norm(dim=-1, keepdim=True))
    torch.testing.assert_close((q[..., 1:] * a).sum(-1), torch.zeros(50, dtype=torch.float64))   # axis ⟂ a


def test_quaternion_to_matrix_of_yaw():
    c, s = math.cos(0.3), math.sin(0.3)
    expected = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    torch.testing.assert_close(sk.quaternion_to_matrix(yaw_quat(0.3)), expected)
    torch.testing.assert_close(sk.quaternion_to_matrix(2.5 * yaw_quat(0.3)), expected)   # s = 2/|q|²


def test_cont6d_is_the_first_two_columns_and_round_trips():
    m = sk.quaternion_to_matrix(yaw_quat(0.3))
    torch.testing.assert_close(sk.quaternion_to_cont6d(yaw_quat(0.3)),
                               torch.stack([m[0, 0], m[1, 0], m[2, 0], m[0, 1], m[1, 1], m[2, 1]]))
    q = sk.qnormalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    torch.testing.assert_close(sk.cont6d_to_matrix(sk.quaternion_to_cont6d(q)), sk.quaternion_to_matrix(q))
    torch.testing.assert_close(sk.cont6d_to_matrix(3.0 * sk.quaternion_to_cont6d(q)), sk.quaternion_to_matrix(q))


def test_qmul_sums_each_component_in_the_reference_order():
    """H3D common/quaternion.py forms the products t_ij = r_i·q_j and sums them left to right:
    w = t00 - t11 - t22 - t33, x = t01 + t10 - t23 + t32, y = t02 + t13 + t20 - t31, z = t03 - t12 + t21 + t30.
    In float32 the order decides the last bit, so it is pinned here."""
    tiny = 2.0 ** -30
    q = torch.tensor([1.0, 0.5, tiny, 1.0])
    r = torch.tensor([1.0, 0.5, 1.0, 1.0])
    # x = ((0.5 + 0.5) - 1) + 2^-30 = 2^-30 exactly; adding the tiny term before the -1 would round it away
    # w = ((1 - 0.25) - 2^-30) - 1 = -0.25, y = ((2^-30 + 0.5) + 1) - 0.5 = 1, z = ((1 - 2^-31) + 0.5) + 1 = 2.5
    assert sk.qmul(q, r).tolist() == [-0.25, tiny, 1.0, 2.5]
    rng = np.random.default_rng(3)
    qn, rn = (rng.normal(size=(2000, 4)).astype(np.float32) for _ in range(2))
    t = rn[:, :, None] * qn[:, None, :]                                        # t[:, i, j] = r_i q_j, float32
    expected = np.stack([t[:, 0, 0] - t[:, 1, 1] - t[:, 2, 2] - t[:, 3, 3],
                         t[:, 0, 1] + t[:, 1, 0] - t[:, 2, 3] + t[:, 3, 2],
                         t[:, 0, 2] + t[:, 1, 3] + t[:, 2, 0] - t[:, 3, 1],
                         t[:, 0, 3] - t[:, 1, 2] + t[:, 2, 1] + t[:, 3, 0]], axis=-1)
    np.testing.assert_array_equal(sk.qmul_np(qn, rn), expected)


def test_numpy_helpers_compute_in_float32_and_agree_with_torch():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    v = rng.normal(size=(6, 3))
    out = sk.qrot_np(q, v)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, sk.qrot(torch.from_numpy(q), torch.from_numpy(v)).numpy(), atol=1e-6)
    assert sk.qmul_np(q, sk.qinv_np(q)).dtype == np.float32
    np.testing.assert_allclose(sk.qmul_np(q, sk.qinv_np(q)), np.tile([1, 0, 0, 0], (6, 1)), atol=1e-6)
    np.testing.assert_allclose(sk.cont6d_to_matrix_np(sk.quaternion_to_cont6d_np(q)), sk.quaternion_to_matrix_np(q),
                               atol=1e-6)


# ------------------------------------------------------------------------------------------------ IK / FK


def test_offsets_from_joints_are_direction_times_parent_distance():
    info = sk.T2M
    offsets = info.raw_offsets * np.concatenate([[0], info.target_bone_lengths])[:, None]
    pose = rest_pose(offsets, info.parents)
    got = sk.Skeleton.for_dataset("t2m").offsets_from_joints(pose)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, offsets, atol=1e-7)


def test_offsets_from_a_float32_pose_use_torch_norm_in_float32_like_the_reference(real_motion_dir):
    """The reference takes each bone length with torch.norm in the pose's dtype; numpy's float32 norm differs in
    the last bit for some bones, which would change the uniform-skeleton scale of every feature."""
    pose = np.load(real_motion_dir / "joints" / "climb3_down.npy")[0]
    assert pose.dtype == np.float32
    parents = sk.T2M.parents
    expected = np.array([torch.norm(torch.from_numpy(pose[j] - pose[parents[j]]), p=2, dim=0).item()
                         for j in range(1, 22)], dtype=np.float32)
    # (np.linalg.norm gives 5 of these 21 lengths 1 ulp apart on the machine this was written on)
    got = sk.Skeleton.for_dataset("t2m").offsets_from_joints(pose)
    np.testing.assert_array_equal(np.abs(got[1:]).max(axis=-1), expected)
    np.testing.assert_array_equal(got[1:], expected[:, None] * sk.T2M_RAW_OFFSETS[1:])


def test_fk_of_ik_reproduces_real_positions(real_motion_dir):
    joints = np.load(real_motion_dir / "joints" / "climb0_up.npy")[:40]
    skel = sk.Skeleton.for_dataset("t2m")
    offsets = skel.offsets_from_joints(joints[0])
    quats = skel.inverse_kinematics(joints, sk.T2M.face_joint_idx, smooth_forward=True)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=-1), 1.0, atol=1e-5)
    back = skel.forward_kinematics(quats, joints[:, 0], offsets)
    np.testing.assert_allclose(back, joints, atol=2e-5)       # the clip's bones have constant length


def test_torch_fk_agrees_with_numpy_fk_and_is_batched(real_motion_dir):
    joints = np.load(real_motion_dir / "joints" / "climb4_crawl.npy")[:30]
    skel = sk.Skeleton.for_dataset("t2m")
    offsets = skel.offsets_from_joints(joints[0])
    quats = skel.inverse_kinematics(joints, sk.T2M.face_joint_idx)
    expected = skel.forward_kinematics(quats, joints[:, 0], offsets)
    q = torch.from_numpy(quats).reshape(3, 10, 22, 4)
    got = sk.forward_kinematics(q, torch.from_numpy(joints[:, 0]).double().reshape(3, 10, 3),
                                torch.from_numpy(offsets), sk.T2M_KINEMATIC_CHAIN)
    assert got.shape == (3, 10, 22, 3)
    np.testing.assert_allclose(got.reshape(30, 22, 3).numpy(), expected, atol=1e-6)


def test_ik_forces_the_root_rotation_of_frame_zero_to_identity():
    info = sk.T2M
    offsets = info.raw_offsets * np.concatenate([[0], info.target_bone_lengths])[:, None]
    pose = rest_pose(offsets, info.parents)
    c, s = math.cos(1.0), math.sin(1.0)
    turned = pose @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T          # facing 1 rad away from +Z
    quats = sk.Skeleton.for_dataset("t2m").inverse_kinematics(np.stack([turned, turned]), info.face_joint_idx)
    np.testing.assert_allclose(quats[0, 0], [1, 0, 0, 0])
    np.testing.assert_allclose(quats[1, 0], [math.cos(-0.5), 0, math.sin(-0.5), 0], atol=1e-6)  # facing -> +Z


def test_ik_quirk_hip_term_has_the_opposite_sign_to_the_shoulder_term():
    """[quirk] across = (p1 - p2) + (p17 - p16): with hips wider than shoulders the body reads as facing backwards."""
    info = sk.T2M
    offsets = info.raw_offsets * np.concatenate([[0], info.target_bone_lengths])[:, None]
    offsets[[1, 2], 0] *= 4.0                                                 # hips 0.85 m apart
    c, s = math.cos(0.3), math.sin(0.3)
    pose = rest_pose(offsets, info.parents) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T   # faces yaw 0.3
    correct = (pose[2] - pose[1]) + (pose[17] - pose[16])
    assert np.cross([0, 1, 0], correct) @ np.array([s, 0, c]) > 0             # the correct order: facing yaw 0.3
    quats = sk.Skeleton.for_dataset("t2m").inverse_kinematics(np.stack([pose, pose]), info.face_joint_idx)
    # quirked forward = -(sin .3, 0, cos .3); the rotation taking it to +Z is a yaw of pi - 0.3
    half = (math.pi - 0.3) / 2
    np.testing.assert_allclose(quats[1, 0], [math.cos(half), 0, math.sin(half), 0], atol=1e-6)


def test_ik_quirk_arm_chains_start_from_the_root_rotation():
    """[quirk] collar rotations are relative to the root, not to spine3: bending the spine leaves them unchanged."""
    info = sk.T2M
    offsets = info.raw_offsets * np.concatenate([[0], info.target_bone_lengths])[:, None]
    pose = rest_pose(offsets, info.parents)
    bent = pose.copy()
    c, s = math.cos(0.5), math.sin(0.5)
    # bend the spine forward at spine2 -> spine3 (joint 9); keep the arms' directions, move them with joint 9
    d = np.array([0.0, c, s]) * info.target_bone_lengths[8]
    shift = pose[6] + d - pose[9]
    for j in (9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21):
        bent[j] = pose[j] + shift
    quats = sk.Skeleton.for_dataset("t2m").inverse_kinematics(np.stack([bent, bent]), info.face_joint_idx)
    assert not np.allclose(quats[0, 9], [1, 0, 0, 0], atol=1e-3)               # spine3 is rotated
    for j in (13, 14, 16, 17):                                                 # collars and shoulders are not
        np.testing.assert_allclose(quats[0, j], [1, 0, 0, 0], atol=1e-6)
    back = sk.Skeleton.for_dataset("t2m").forward_kinematics(quats, np.stack([bent[0], bent[0]]), offsets)
    np.testing.assert_allclose(back[0], bent, atol=1e-6)                      # FK uses the same rule


def test_fk_without_offsets_says_how_to_set_them():
    with pytest.raises(ValueError, match="offsets_from_joints"):
        sk.Skeleton.for_dataset("kit").forward_kinematics(np.zeros((2, 21, 4)), np.zeros((2, 3)))
