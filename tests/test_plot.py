"""utils.plot: contact sheets, side-by-side pictures and animations of joint motions (T, J, 3)."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import representation as rep
from datasets.skeleton import KIT, T2M
from utils import plot

OFFSETS = rep.default_target_offsets("t2m")


def rest_pose(offsets, parents):
    joints = np.zeros((len(offsets), 3))
    for j in range(1, len(offsets)):
        joints[j] = joints[parents[j]] + offsets[j]
    return joints - [0, joints[:, 1].min(), 0]           # feet on the floor


def walk(direction, T=30, speed=0.05):
    """Rest pose (facing +Z) translated along the horizontal unit vector `direction` (x, z)."""
    step = speed * np.array([direction[0], 0.0, direction[1]])
    return rest_pose(OFFSETS, T2M.parents)[None] + np.arange(T)[:, None, None] * step


def load(path) -> Image.Image:
    """Open an image and close its file (all frames of a GIF are counted before closing)."""
    with Image.open(path) as img:
        img.load()
        n = getattr(img, "n_frames", 1)
        info = dict(img.info)
        out = img.copy()
    out.n_frames_total, out.info = n, info
    return out


def count_colour(img: Image.Image, rgb, tol=40) -> int:
    a = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=-1) < tol).sum())


RED, BLUE = (214, 39, 40), (31, 119, 180)


def test_side_view_axis_follows_travel_or_facing():
    np.testing.assert_allclose(plot.side_view_axis(walk((1.0, 0.0))), [1, 0], atol=1e-9)
    d = np.array([math.cos(2.0), math.sin(2.0)])
    np.testing.assert_allclose(plot.side_view_axis(walk(d)), d, atol=1e-9)
    still = walk((1.0, 0.0), speed=0.0)
    np.testing.assert_allclose(plot.side_view_axis(still), [0, 1], atol=1e-9)    # the rest pose faces +Z


def test_contact_sheet_grid_size_and_limb_colours(tmp_path):
    motions = [walk((1.0, 0.0)), torch.from_numpy(walk((0.0, 1.0), T=12))]
    out = plot.plot_contact_sheet(motions, tmp_path / "sheet.png", titles=["walk x", "walk z"], frames=4)
    img = load(out)
    assert img.size == (round(1.7 * 4 * 80), round(2.3 * 2 * 80))     # columns = frames, rows = motions
    assert count_colour(img, RED) > 50 and count_colour(img, BLUE) > 50
    wider = load(plot.plot_contact_sheet(motions, tmp_path / "sheet6.png", frames=6))
    assert wider.size[0] > img.size[0] and wider.size[1] == img.size[1]


def test_contact_sheet_accepts_one_motion_and_kit(tmp_path):
    offsets = KIT.raw_offsets * 100.0
    kit = rest_pose(offsets, KIT.parents)[None].repeat(5, axis=0)
    out = plot.plot_contact_sheet(kit, tmp_path / "kit.png", dataset="kit", frames=3)
    assert load(out).size == (round(1.7 * 3 * 80), round(2.3 * 80))


def test_side_by_side_has_two_rows_in_both_call_forms(tmp_path):
    a, b = walk((1.0, 0.0)), walk((1.0, 0.0), T=20)
    p1 = plot.plot_side_by_side(a, b, tmp_path / "sbs.png", titles=["source", "reconstruction"])
    p2 = plot.plot_side_by_side([a, b], ["source", "reconstruction"], tmp_path / "sbs2.png", dataset="t2m",
                                title="step 10")
    for p in (p1, p2):
        assert load(p).size == (round(1.7 * 6 * 80), round(2.3 * 2 * 80))


def test_gif_animation_has_one_frame_per_motion_frame(tmp_path):
    joints = walk((1.0, 0.0), T=40)
    out = plot.save_animation(joints, tmp_path / "walk.gif", fps=20, title="walk")
    with Image.open(out) as img:
        assert img.n_frames == 40 and img.info["duration"] == 50
        img.seek(20)
        frame = img.convert("RGB")
    assert count_colour(frame, RED) > 10 and count_colour(frame, BLUE) > 10


def test_mp4_has_one_frame_per_motion_frame_and_matches_the_gif(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio_ffmpeg

    joints = walk((1.0, 0.0), T=30)
    gif, mp4 = plot.save_animations(joints, [tmp_path / "walk.gif", tmp_path / "walk.mp4"], fps=20, title="walk")
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    assert len(frames) == 30 and meta["fps"] == 20
    assert meta["size"][0] % 16 == 0 and meta["size"][1] % 16 == 0          # padded for yuv420p
    with Image.open(gif) as img:
        img.seek(15)
        ref = np.asarray(img.convert("RGB")).astype(float)
    h, w = ref.shape[:2]
    # H.264 is lossy: the same picture within a few grey levels on average
    assert np.abs(frames[15][:h, :w].astype(float) - ref).mean() < 6.0


def test_mp4_without_imageio_ffmpeg_falls_back_to_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "mp4_available", lambda: False)
    with pytest.warns(UserWarning, match="imageio-ffmpeg is not installed"):
        out = plot.save_animation(walk((1.0, 0.0), T=5), tmp_path / "walk.mp4")
    assert out == tmp_path / "walk.gif" and load(out).n_frames_total == 5
    with pytest.warns(UserWarning, match="skipping the .mp4"):
        outs = plot.save_animations(walk((1.0, 0.0), T=5), [tmp_path / "a.gif", tmp_path / "a.mp4"])
    assert outs == [tmp_path / "a.gif"] and not (tmp_path / "a.mp4").exists()


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"joints_list\[1\]: expected .*\(T, J, 3\).*J=22.*got \(5, 21, 3\)"):
        plot.plot_contact_sheet([walk((1, 0)), np.zeros((5, 21, 3))], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"titles: expected one title per motion \(2\), got 1"):
        plot.plot_contact_sheet([walk((1, 0)), walk((1, 0))], tmp_path / "x.png", titles=["a"])
    with pytest.raises(ValueError, match=r"path: expected a \.gif or \.mp4"):
        plot.save_animation(walk((1, 0)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"frames: expected an integer >= 1"):
        plot.plot_contact_sheet([walk((1, 0))], tmp_path / "x.png", frames=0)


def test_a_failed_render_leaves_an_existing_file_untouched(tmp_path):
    target = tmp_path / "keep.png"
    target.write_bytes(b"old picture")
    bad = walk((1, 0))
    bad[3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="joints_list\\[0\\]: contains NaN"):
        plot.plot_contact_sheet([bad], target)
    assert target.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]          # no temporary file left behind


def test_real_clips_after_round_trip(real_motion_dir, tmp_path):
    names = ["climb2_down", "omomo_sub3_largebox_003", "climb4_crawl"]
    motions = [rep.features_to_joints(rep.joints_to_features(np.load(real_motion_dir / "joints" / f"{n}.npy"),
                                                             OFFSETS)) for n in names]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                     # no matplotlib layout warnings
        out = plot.plot_contact_sheet(motions, tmp_path / "real.png", titles=names)
    img = load(out)
    assert img.size == (round(1.7 * 6 * 80), round(2.3 * 3 * 80))
    assert count_colour(img, RED) > 200 and count_colour(img, BLUE) > 200


def test_cli_renders_features_and_joints_files(tmp_path, capsys):
    joints = walk((1.0, 0.0), T=20)
    np.save(tmp_path / "joints.npy", joints)
    np.save(tmp_path / "feats.npy", rep.joints_to_features(joints, OFFSETS))
    plot.main([str(tmp_path / "joints.npy"), str(tmp_path / "feats.npy"), "--out", str(tmp_path / "s.png"),
               "--frames", "3"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "s.png")
    assert load(tmp_path / "s.png").size == (round(1.7 * 3 * 80), round(2.3 * 2 * 80))
    np.save(tmp_path / "bad.npy", np.zeros((20, 100)))
    capsys.readouterr()
    assert plot.main([str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m utils.plot: ") and len(err.splitlines()) == 1
    assert re.search(r"bad\.npy: expected joints \(T, J, 3\) or features \(T, 263\)", err)


def test_cli_names_a_nan_joints_file_in_one_line(tmp_path, capsys):
    joints = walk((1.0, 0.0), T=20)
    joints[5, 3, 1] = np.nan
    np.save(tmp_path / "nan_joints.npy", joints)
    assert plot.main([str(tmp_path / "nan_joints.npy"), "--out", str(tmp_path / "n.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan_joints.npy: contains NaN or Inf values (1 entries)" in err
    assert not (tmp_path / "n.png").exists()


@pytest.mark.parametrize("suffix,magic", [(".jpg", b"\xff\xd8\xff"), (".jpeg", b"\xff\xd8\xff"),
                                          (".png", b"\x89PNG")])
def test_contact_sheet_bytes_match_the_suffix(tmp_path, suffix, magic):
    out = plot.plot_contact_sheet([walk((1.0, 0.0), T=10)], tmp_path / f"s{suffix}", frames=2)
    assert out.read_bytes()[:len(magic)] == magic


def test_contact_sheet_refuses_an_unknown_suffix_before_drawing(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"expected an image file name ending in \.png, \.jpg"):
        plot.plot_contact_sheet([walk((1.0, 0.0), T=10)], tmp_path / "s.bmp", frames=2)
    np.save(tmp_path / "j.npy", walk((1.0, 0.0), T=10))
    assert plot.main([str(tmp_path / "j.npy"), "--out", str(tmp_path / "s.txt")]) == 1
    assert "--out" in capsys.readouterr().err and not (tmp_path / "s.txt").exists()


def test_follow_limits_centre_each_frame_on_the_root_with_one_width():
    # two joints: the root walks 0 -> 3 m along the axis at height 1; a hand reaches 0.5 m ahead of it at height 1.5
    T = 4
    proj = np.zeros((T, 2, 2))
    proj[:, 0, 0] = np.arange(T)
    proj[:, 0, 1] = 1.0
    proj[:, 1, 0] = np.arange(T) + 0.5
    proj[:, 1, 1] = 1.5
    xlims, ylim = plot.follow_limits(proj, margin=0.1, min_half_width=0.2)
    np.testing.assert_allclose(xlims, np.stack([np.arange(T) - 0.55, np.arange(T) + 0.55], axis=-1))
    # heights 0 (floor always shown) .. 1.5, padded by 10 % of 1.5; the 3 m of travel does not stretch them
    np.testing.assert_allclose(ylim, (-0.15, 1.65))
    xlims, _ = plot.follow_limits(proj, margin=0.1, min_half_width=1.0)
    np.testing.assert_allclose(xlims[:, 1] - xlims[:, 0], 2.0)
