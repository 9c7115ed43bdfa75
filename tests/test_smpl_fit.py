"""SMPL fitting (utils/smpl_fit.py) on the synthetic SMPL-format toy model (utils/smpl_toy.py), loaded by smplx."""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("smplx")

from utils.smpl_fit import (FIT_ROTATION_JOINTS, HUMANML3D_TO_AMASS, SMPLModelNotFound,  # noqa: E402
                            axis_angle_to_matrix, find_smpl_model_file, fit_smpl, load_smpl_data, load_smpl_model,
                            load_smpl_npz, main, matrix_to_axis_angle, save_smpl_npz, smpl_forward)
from utils.smpl_toy import TOY_PARENTS, toy_smpl_arrays, write_toy_smpl_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_smpl")
    write_toy_smpl_model(out)
    return out


@pytest.fixture(scope="module")
def toy_model(toy_dir):
    return load_smpl_model(toy_dir)


def _rot(axis, deg):
    axis = np.asarray(axis, dtype=np.float64)
    return axis / np.linalg.norm(axis) * np.deg2rad(deg)


def _known_motion(T=24):
    """A smooth known SMPL motion of the toy model: every fitted joint swings (knees and elbows bend the natural
    way), the rest stay at the identity; betas and a walking translation."""
    rng = np.random.default_rng(3)
    t = np.linspace(0, 1, T)[:, None]
    pose = np.zeros((T, 24, 3))
    for j in FIT_ROTATION_JOINTS:
        a, b = rng.normal(size=3) * 0.25, rng.normal(size=3) * 0.25
        pose[:, j] = a + b * np.sin(2 * np.pi * t)
    pose[:, 4] = pose[:, 5] = 0.0
    pose[:, 4, 0] = pose[:, 5, 0] = 0.3 + 0.5 * (1 + np.sin(2 * np.pi * t[:, 0])) / 2    # knees: +x bends back
    pose[:, 18] = pose[:, 19] = 0.0
    pose[:, 18, 1], pose[:, 19, 1] = -0.8, 0.8                                          # elbows: forearm forward
    pose[:, 0] = _rot([0.2, 1.0, 0.1], 40) + _rot([0, 1, 0], 60) * t                     # turning
    transl = np.concatenate([0.3 * t, 0.9 + 0.02 * np.sin(6 * t), 1.2 * t], axis=-1)
    betas = np.array([0.8, -0.5, 0.3, 0.0, 0.6, 0.0, -0.4, 0.0, 0.2, 0.0])
    return pose.astype(np.float32), transl.astype(np.float32), betas.astype(np.float32)


def _angle_deg(aa_a, aa_b):
    r = axis_angle_to_matrix(aa_a).swapaxes(-1, -2) @ axis_angle_to_matrix(aa_b)
    return np.rad2deg(np.arccos(np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def test_toy_model_loads_in_smplx_with_its_rest_joints(toy_model):
    arrays = toy_smpl_arrays()
    assert toy_model.num_betas == 10 and toy_model.parents[1:].tolist() == TOY_PARENTS[1:]
    joints, verts = smpl_forward(toy_model, np.zeros((1, 3)), np.zeros((1, 69)), np.zeros((1, 3)), np.zeros(10))
    np.testing.assert_allclose(joints[0], arrays["v_template"][:24], atol=1e-6)
    assert verts.shape == (1, 208, 3) and np.asarray(toy_model.faces).shape == (276, 3)


def test_elbow_rotation_moves_the_wrist_by_the_closed_form(toy_model):
    # left elbow (18) turned -90° about y: the forearm (rest along +x) points forward (+z), same length
    body = np.zeros((1, 69))
    body[0, 3 * 17:3 * 18] = _rot([0, 1, 0], -90)
    joints, _ = smpl_forward(toy_model, np.zeros((1, 3)), body, np.zeros((1, 3)), np.zeros(10), vertices=False)
    rest = toy_smpl_arrays()["v_template"][:24]
    fore = rest[20] - rest[18]
    expected = rest[18] + np.array([-fore[2], fore[1], fore[0]])        # R_y(-90°) (x, y, z) = (-z, y, x)
    np.testing.assert_allclose(joints[0, 20], expected, atol=1e-6)


def test_analytic_init_is_exact_for_a_rigidly_moved_rest_pose(toy_model):
    rest = toy_smpl_arrays()["v_template"][:22]
    r = axis_angle_to_matrix(_rot([0.3, 1.0, -0.2], 75))
    joints = ((rest - rest[0]) @ r.T + rest[0] + np.array([0.5, 0.1, -2.0]))[None].repeat(3, axis=0)
    fit = fit_smpl(joints.astype(np.float32), model=toy_model, iters=0, fit_shape=False, progress=False)
    assert fit.error_max_mm < 0.01
    assert _angle_deg(fit.global_orient[0], matrix_to_axis_angle(r)) < 0.01
    np.testing.assert_allclose(fit.body_pose, 0.0, atol=1e-4)


def test_fit_recovers_a_known_pose_shape_and_translation(toy_model):
    pose, transl, betas = _known_motion()
    target, _ = smpl_forward(toy_model, pose[:, 0], pose[:, 1:].reshape(len(pose), -1), transl, betas,
                             vertices=False)
    fit = fit_smpl(target[:, :22], model=toy_model, iters=150, progress=False)
    # stated tolerances: joints to 1 mm mean / 3 mm max, root orientation 1°, betas 0.05, translation 2 mm
    assert fit.error_mean_mm < 1.0 and fit.error_max_mm < 3.0, fit.summary()
    assert _angle_deg(fit.global_orient, pose[:, 0]).max() < 1.0
    np.testing.assert_allclose(fit.betas, betas, atol=0.05)
    np.testing.assert_allclose(fit.transl, transl, atol=2e-3)
    # the knees (bent 17-46° in every frame) bend backwards, as in the known motion
    rest = toy_smpl_arrays()["v_template"][:24]
    for knee, ankle in ((4, 7), (5, 8)):
        shin = (rest[ankle] - rest[knee]) / np.linalg.norm(rest[ankle] - rest[knee])
        assert ((axis_angle_to_matrix(fit.body_pose[:, 3 * (knee - 1):3 * knee]) @ shin)[:, 2] < -0.1).all()
    # no flips: no local rotation turns more per frame than the known motion's fastest one (13°) plus 5°
    def turn_deg(body):
        local = axis_angle_to_matrix(body.reshape(len(pose), 23, 3))
        step = np.einsum("tjab,tjab->tj", local[1:], local[:-1])    # trace(R_t+1^T R_t) = 1 + 2 cos(angle)
        return np.rad2deg(np.arccos(np.clip((step - 1) / 2, -1, 1)))

    assert turn_deg(fit.body_pose).max() < turn_deg(pose[:, 1:]).max() + 5.0
    # joints no position can see stay at the identity (feet, head, wrists, hands)
    for j in (10, 11, 15, 20, 21, 22, 23):
        np.testing.assert_allclose(fit.body_pose[:, 3 * (j - 1):3 * j], 0.0, atol=1e-6)


def test_fit_of_a_real_clip_lowers_the_error(toy_model, real_motion_dir):
    joints = np.load(sorted((real_motion_dir / "joints").glob("*.npy"))[0])[:40]
    fit = fit_smpl(joints, model=toy_model, iters=30, progress=False)
    template = fit_smpl(joints, model=toy_model, iters=0, progress=False)     # analytic pose on the template body
    # the toy body's proportions differ from the mocap subject's, so the error cannot reach 0 (BENCHMARKS.md:
    # about 30 mm); shape and pose fitting must still cut the template's error by 40 %
    assert fit.error_mean_mm < 0.6 * template.error_mean_mm, (fit.summary(), template.summary())
    assert fit.joints.shape == (40, 22, 3) and fit.error_per_joint_mm.shape == (22,)
    assert np.isfinite(fit.seconds) and fit.seconds > 0


def test_npz_layout_round_trips(toy_model, tmp_path):
    pose, transl, betas = _known_motion(6)
    target, _ = smpl_forward(toy_model, pose[:, 0], pose[:, 1:].reshape(6, -1), transl, betas, vertices=False)
    fit = fit_smpl(target[:, :22], model=toy_model, iters=5, progress=False)
    path = save_smpl_npz(fit, tmp_path / "m.npz", up="y")
    with np.load(path) as d:
        assert d["poses"].shape == (6, 72) and d["trans"].shape == (6, 3) and d["betas"].shape == (10,)
        assert str(d["gender"]) == "neutral" and float(d["mocap_framerate"]) == 20.0
        np.testing.assert_array_equal(d["poses"], fit.poses)
        np.testing.assert_allclose(d["fit_error_per_joint_mm"], fit.error_per_joint_mm, rtol=1e-6)
    back = load_smpl_npz(path, up="y")
    for name in ("global_orient", "body_pose", "transl", "betas", "rest_pelvis"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name))
    wide = save_smpl_npz(fit, tmp_path / "h.npz", up="y", pose_dims=156)
    with np.load(wide) as d:
        assert d["poses"].shape == (6, 156)
        np.testing.assert_array_equal(d["poses"][:, :66], fit.poses[:, :66])
        assert not d["poses"][:, 66:].any()


def test_z_up_file_poses_the_body_in_the_amass_frame(toy_model, tmp_path):
    pose, transl, betas = _known_motion(5)
    target, _ = smpl_forward(toy_model, pose[:, 0], pose[:, 1:].reshape(5, -1), transl, betas, vertices=False)
    fit = fit_smpl(target[:, :22], model=toy_model, iters=10, progress=False)
    z = load_smpl_npz(save_smpl_npz(fit, tmp_path / "z.npz"), up="z")        # default file: z up, read as is
    joints_z, _ = smpl_forward(toy_model, z.global_orient, z.body_pose, z.transl, z.betas, vertices=False)
    # (x, y, z)_amass = (-x, z, y)_humanml3d
    np.testing.assert_allclose(joints_z[:, :22], fit.joints @ HUMANML3D_TO_AMASS.T, atol=1e-4)
    np.testing.assert_allclose(joints_z[:, :22, 2], fit.joints[..., 1], atol=1e-4)
    y = load_smpl_npz(tmp_path / "z.npz", up="y")                             # and back to y up
    np.testing.assert_allclose(y.transl, fit.transl, atol=1e-5)
    assert _angle_deg(y.global_orient, fit.global_orient).max() < 1e-3


def test_missing_model_says_where_to_get_smpl(tmp_path, capsys):
    with pytest.raises(SMPLModelNotFound, match="smpl.is.tue.mpg.de"):
        find_smpl_model_file(tmp_path)
    joints = tmp_path / "j.npy"
    np.save(joints, np.zeros((4, 22, 3), np.float32))
    with pytest.raises(SystemExit) as exc:
        main([str(joints), "--smpl-model-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "https://smpl.is.tue.mpg.de" in err and "smpl/SMPL_NEUTRAL.pkl" in err and "--smpl-model-dir" in err


def test_cli_rejects_joints_of_the_wrong_shape(tmp_path, toy_dir, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 21, 3), np.float32))
    with pytest.raises(SystemExit) as exc:
        main([str(bad), "--smpl-model-dir", str(toy_dir), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.npy" in err and "(T, 22, 3)" in err


def test_cli_writes_npz_meshes_and_preview(tmp_path, toy_dir, toy_model, capsys):
    pose, transl, betas = _known_motion(4)
    target, _ = smpl_forward(toy_model, pose[:, 0], pose[:, 1:].reshape(4, -1), transl, betas, vertices=False)
    src = tmp_path / "walk.npy"
    np.save(src, target[:, :22])
    fit = main([str(src), "--smpl-model-dir", str(toy_dir), "--iters", "20", "--device", "cpu", "--quiet",
                "--obj-dir", str(tmp_path / "obj"), "--obj-every", "2", "--preview", str(tmp_path / "p.png")])
    with np.load(tmp_path / "walk_smpl.npz") as d:
        assert d["poses"].shape == (4, 72) and str(d["up_axis"]) == "z"
    objs = sorted((tmp_path / "obj").glob("*.obj"))
    assert [p.name for p in objs] == ["frame_0000.obj", "frame_0002.obj"]
    lines = objs[0].read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == 208 and sum(line.startswith("f ") for line in lines) == 276
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert fit.error_mean_mm < 2.0
    out = capsys.readouterr().out
    assert f"joint error mean {fit.error_mean_mm:.1f} mm, max {fit.error_max_mm:.1f} mm" in out
    assert f"left_wrist {fit.error_per_joint_mm[20]:.1f}" in out


def test_official_style_chumpy_pickle_loads_without_chumpy(tmp_path, monkeypatch):
    # an SMPL .pkl as released: some arrays are chumpy objects (state {'x': array}); chumpy is not installed
    ch_module = types.ModuleType("chumpy.ch")

    class Ch:
        pass

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_module.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch_module)
    arrays = toy_smpl_arrays()
    wrapped = dict(arrays)
    for key in ("shapedirs", "v_template"):
        obj = Ch()
        obj.x = arrays[key]
        wrapped[key] = obj
    path = tmp_path / "smpl" / "SMPL_NEUTRAL.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(wrapped, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")
    data = load_smpl_data(find_smpl_model_file(tmp_path))
    np.testing.assert_array_equal(data["shapedirs"], arrays["shapedirs"])
    model = load_smpl_model(tmp_path)
    assert torch.allclose(model.v_template, torch.as_tensor(arrays["v_template"], dtype=torch.float32))


def test_bad_joints_raise_a_named_error(toy_model):
    with pytest.raises(ValueError, match=r"joints: expected HumanML3D joints of shape \(T, 22, 3\)"):
        fit_smpl(np.zeros((5, 22)), model=toy_model, progress=False)
    with pytest.raises(ValueError, match="finite"):
        fit_smpl(np.full((5, 22, 3), np.nan, np.float32), model=toy_model, progress=False)


def test_analytic_init_bends_knees_and_elbows_the_natural_way(toy_model):
    # the elbows bend 60° while the upper arms are twisted 120° about themselves: the minimal-twist swing alone would
    # bend the forearms backwards; the init twists the upper arms so that every hinge bends its natural way
    pose, transl, _ = _known_motion(8)
    pose[:, 16] = _rot([1, 0, 0], 120)
    pose[:, 17] = _rot([-1, 0, 0], 120)
    target, _ = smpl_forward(toy_model, pose[:, 0], pose[:, 1:].reshape(8, -1), transl, np.zeros(10),
                             vertices=False)
    fit = fit_smpl(target[:, :22], model=toy_model, iters=0, fit_shape=False, progress=False)
    assert fit.error_max_mm < 0.01
    rest = toy_smpl_arrays()["v_template"][:24]
    for joint, child, sign in ((4, 7, -1), (5, 8, -1), (18, 20, 1), (19, 21, 1)):
        r = axis_angle_to_matrix(fit.body_pose[:, 3 * (joint - 1):3 * joint])
        bone = (rest[child] - rest[joint]) / np.linalg.norm(rest[child] - rest[joint])
        assert ((r @ bone)[:, 2] * sign > 0.1).all(), joint        # clearly bent the natural way


@pytest.mark.parametrize("flags, named", [(["--device", "tpu9"], "--device"), (["--iters", "-1"], "--iters"),
                                          (["--obj-every", "0"], "--obj-every")])
def test_cli_rejects_bad_flags_in_one_line(tmp_path, toy_dir, capsys, flags, named):
    joints = tmp_path / "j.npy"
    np.save(joints, np.zeros((4, 22, 3), np.float32))
    with pytest.raises(SystemExit) as exc:
        main([str(joints), "--smpl-model-dir", str(toy_dir), "--quiet", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err


def test_npz_model_with_extra_object_arrays_loads(tmp_path):
    # converted model files may carry pickled extras (e.g. 'bs_style'); they are skipped, never unpickled
    path = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(path, **toy_smpl_arrays(), bs_style=np.array([{"lbs": 1}], dtype=object))
    data = load_smpl_data(path)
    assert "bs_style" not in data and data["shapedirs"].shape == (208, 3, 10)
