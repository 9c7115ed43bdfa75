"""BVH export: forward kinematics of the written file gives back the joints; the reader follows the BVH conventions."""
from __future__ import annotations

import numpy as np
import pytest

from utils.bvh import (BVHError, bvh_forward_kinematics, bvh_roundtrip_error, read_bvh, solve_skeleton,
                       skeleton_forward_kinematics, write_bvh)


def test_real_clips_round_trip_through_the_file(real_motion_dir, tmp_path):
    """Real clips (HumanML3D joints: fixed bone lengths): the file reproduces them to well under a millimetre."""
    worst_mean, worst_max = 0.0, 0.0
    for f in sorted((real_motion_dir / "joints").glob("*.npy")):
        joints = np.load(f)
        path = write_bvh(joints, tmp_path / f"{f.stem}.bvh")
        mean, mx = bvh_roundtrip_error(joints, path)
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, mx)
        motion = read_bvh(path)
        assert len(motion.data) == len(joints) and motion.frame_time == pytest.approx(1 / 20)
    assert worst_mean < 0.1 and worst_max < 2.0          # measured: 0.06 mm mean, 1.71 mm max (README, BVH)


def test_generated_style_joints_round_trip_within_the_stated_tolerance(mini_root, tmp_path):
    """Joints recovered from features (what generation produces: bone lengths drift a little) round-trip within
    6 mm mean, 25 mm max per sequence (measured on 148 mini motions: 1.1 mm mean, worst sequence 4.4 mm mean,
    worst joint 17.3 mm; BENCHMARKS.md "BVH export")."""
    from datasets.representation import features_to_joints

    for name in sorted((mini_root / "new_joint_vecs").glob("*.npy"))[:6]:
        joints = features_to_joints(np.load(name))
        mean, mx = bvh_roundtrip_error(joints, write_bvh(joints, tmp_path / "m.bvh"))
        assert mean < 6.0 and mx < 25.0, (name.name, mean, mx)


def test_solved_skeleton_has_the_sequences_bone_lengths_and_the_standard_rest_pose(real_motion_dir):
    joints = np.load(sorted((real_motion_dir / "joints").glob("*.npy"))[0])
    skel = solve_skeleton(joints)
    lengths = np.linalg.norm(joints[:, 4] - joints[:, 1], axis=-1).mean()     # left thigh
    assert np.linalg.norm(skel.offsets[4]) == pytest.approx(lengths, rel=1e-6)
    assert skel.offsets[4] / np.linalg.norm(skel.offsets[4]) == pytest.approx([0, -1, 0], abs=1e-6)   # points down
    np.testing.assert_allclose(skeleton_forward_kinematics(skel), joints, atol=2e-3)
    rot = skel.local.reshape(-1, 3, 3)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)


def test_reader_applies_channels_in_their_order_by_hand(tmp_path):
    """Root at (1, 2, 3) rotated 90° about Z; its child offset (10, 0, 0) lands at (1, 12, 3)."""
    text = """HIERARCHY
ROOT a
{
\tOFFSET 0 0 0
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
\tJOINT b
\t{
\t\tOFFSET 10 0 0
\t\tCHANNELS 3 Zrotation Yrotation Xrotation
\t\tEnd Site
\t\t{
\t\t\tOFFSET 1 0 0
\t\t}
\t}
}
MOTION
Frames: 2
Frame Time: 0.05
1 2 3 90 0 0 0 0 0
0 0 0 0 90 0 0 0 0
"""
    path = tmp_path / "hand.bvh"
    path.write_text(text)
    pos = bvh_forward_kinematics(read_bvh(path))
    np.testing.assert_allclose(pos[0], [[1, 2, 3], [1, 12, 3]], atol=1e-9)
    np.testing.assert_allclose(pos[1], [[0, 0, 0], [0, 0, -10]], atol=1e-9)    # 90° about Y: +x -> -z


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(BVHError, match=r"joints must have shape \(T, 22, 3\)"):
        write_bvh(np.zeros((10, 21, 3)), tmp_path / "x.bvh")
    with pytest.raises(BVHError, match="NaN"):
        write_bvh(np.full((4, 22, 3), np.nan), tmp_path / "x.bvh")
    bad = tmp_path / "bad.bvh"
    bad.write_text("HELLO\n")
    with pytest.raises(BVHError, match=r"bad\.bvh:1: expected 'HIERARCHY'"):
        read_bvh(bad)
    assert not (tmp_path / "x.bvh").exists()


@pytest.mark.slow
def test_blender_imports_the_file_and_agrees_with_our_forward_kinematics(real_motion_dir, tmp_path):
    """Debian's Blender (3.4) imports the BVH headless; its bone heads equal our forward kinematics (< 0.01 cm)."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("blender is not installed (apt-get install blender)")
    joints = np.load(real_motion_dir / "joints" / "climb0_up.npy")
    path = write_bvh(joints, tmp_path / "clip.bvh")
    script = Path(__file__).resolve().parents[1] / "utils" / "blender_bvh_check.py"
    subprocess.run([blender, "-b", "--factory-startup", "--python", str(script), "--", str(path),
                    str(tmp_path / "out.json"), "0", "100"], check=True, capture_output=True, timeout=300)
    out = json.loads((tmp_path / "out.json").read_text())
    motion = read_bvh(path)
    fk = bvh_forward_kinematics(motion)
    assert out["bones"] == 22 and out["frames"] == len(joints) and out["fps"] == 20
    for frame in ("0", "100"):
        got = np.array([out["positions"][frame][n] for n in motion.names])
        np.testing.assert_allclose(got, fk[int(frame)], atol=1e-2)
