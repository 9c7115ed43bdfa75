"""Stick-figure pictures of joint motions (T, J, 3), y up: contact sheets (PNG) and animations (GIF / MP4).

Orthographic side view: the image's horizontal axis is the motion's main horizontal direction of travel
(or the facing direction of frame 0 when the root barely moves), its vertical axis is y. Left limbs are red,
right limbs blue, the spine and head black, the floor y = 0 a faint grey line (as in the real_motion previews).

    plot_contact_sheet([joints_a, joints_b], "sheet.png", titles=["a", "b"])   # rows = motions, cols = frames
    plot_side_by_side(source, reconstruction, "recon.png", titles=["source", "reconstruction"])
    save_animation(joints, "motion.gif", fps=20, title="a person walks")

Files are written atomically (temporary file, then rename), so an existing picture is never left half-written.
"""

from __future__ import annotations

import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from datasets.skeleton import skeleton_info  # noqa: E402
from utils.atomic import atomic_path  # noqa: E402

__all__ = ["plot_contact_sheet", "plot_side_by_side", "save_animation", "save_animations", "render_frames",
           "mp4_available", "side_view_axis", "LEFT_COLOR",
           "RIGHT_COLOR", "SPINE_COLOR"]

LEFT_COLOR = "#d62728"    # red, as in the real_motion previews
RIGHT_COLOR = "#1f77b4"   # blue
SPINE_COLOR = "black"
GROUND_COLOR = "0.75"


def _as_joints(x, name: str, dataset: str) -> np.ndarray:
    """Validate one motion and return it as a float numpy array (T, J, 3)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    J = skeleton_info(dataset).num_joints
    if x.ndim != 3 or x.shape[1:] != (J, 3) or x.shape[0] < 1:
        raise ValueError(f"{name}: expected joint positions of shape (T, J, 3) with T >= 1 and J={J} for dataset "
                         f"{dataset!r}, got {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf values; expected finite joint positions")
    return x


def _chain_colors(dataset: str) -> list[tuple[list[int], str]]:
    """Each kinematic chain with its colour: by the side of its last joint (left red, right blue, else black)."""
    info = skeleton_info(dataset)
    out = []
    for chain in info.kinematic_chain:
        end = chain[-1]
        color = LEFT_COLOR if end in info.mirror_left else RIGHT_COLOR if end in info.mirror_right else SPINE_COLOR
        out.append((list(chain), color))
    return out


def side_view_axis(joints: np.ndarray, dataset: str = "t2m", min_travel: float = 0.3) -> np.ndarray:
    """Unit horizontal direction (x, z) used as the picture's horizontal axis.

    The principal direction of the root's horizontal path when it travels at least `min_travel` (same units as
    the joints), oriented along the travel; otherwise the facing direction of frame 0.
    """
    root = joints[:, 0, [0, 2]]
    travel = root - root[0]
    if np.linalg.norm(travel, axis=-1).max() >= min_travel:
        centred = root - root.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axis = vt[0]
        if np.dot(root[-1] - root[0], axis) < 0:
            axis = -axis
        return axis / np.linalg.norm(axis)
    info = skeleton_info(dataset)
    r_hip, l_hip, r_sh, l_sh = info.face_joint_idx
    across = joints[0, r_hip] - joints[0, l_hip] + joints[0, r_sh] - joints[0, l_sh]
    forward = np.cross([0.0, 1.0, 0.0], across)[[0, 2]]
    n = np.linalg.norm(forward)
    return forward / n if n > 1e-8 else np.array([0.0, 1.0])


def _project(joints: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(T, J, 3) -> (T, J, 2): (position along the horizontal axis, height)."""
    return np.stack([joints[..., 0] * axis[0] + joints[..., 2] * axis[1], joints[..., 1]], axis=-1)


def _limits(proj: np.ndarray, margin: float = 0.15) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = proj.reshape(-1, 2).min(axis=0), proj.reshape(-1, 2).max(axis=0)
    lo[1] = min(lo[1], 0.0)                      # always show the floor
    span = max(hi[0] - lo[0], hi[1] - lo[1], 1e-3)
    pad = margin * span
    return (lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)


def follow_limits(proj: np.ndarray, margin: float = 0.15, min_half_width: float = 0.6) -> tuple[np.ndarray, tuple[float, float]]:
    """Per-frame horizontal windows that follow the root, all of one width, and one vertical range.

    A travelling motion drawn in one fixed window shrinks the figure to a few pixels; a window centred on each
    frame's root keeps the body large while the tick labels still show where along the path it is.

    Args:
        proj: (T, J, 2) projected joints (position along the axis, height)
    Returns:
        xlims (T, 2) per-frame (left, right), and the shared (bottom, top)
    """
    root_x = proj[:, 0, 0]
    reach = np.abs(proj[..., 0] - root_x[:, None]).max()
    lo, hi = min(proj[..., 1].min(), 0.0), proj[..., 1].max()       # always show the floor
    pad = margin * max(hi - lo, 1e-3)
    ylim = (lo - pad, hi + pad)
    half = max(reach * (1.0 + margin), min_half_width)
    return np.stack([root_x - half, root_x + half], axis=-1), ylim


def _draw_pose(ax, pose2d: np.ndarray, dataset: str, lw: float = 2.0) -> list:
    lines = []
    for chain, color in _chain_colors(dataset):
        (line,) = ax.plot(pose2d[chain, 0], pose2d[chain, 1], color=color, lw=lw, solid_capstyle="round")
        lines.append(line)
    return lines


def plot_contact_sheet(joints_list: Sequence, path: str | os.PathLike, titles: Sequence[str] | None = None,
                       dataset: str = "t2m", frames: int = 6, fps: float = 20.0) -> Path:
    """One image grid: rows = motions, columns = `frames` evenly spaced frames of each motion.

    Args:
        joints_list: motions, each (T, J, 3) numpy or torch, y up
        path:        output image; its suffix chooses the format (.png, .jpg / .jpeg, .pdf, .svg)
        titles:      one title per motion (row), or None
        frames:      columns per row
        fps:         only for the "t = ... s" labels (20 for HumanML3D)
    Returns:
        the path written
    """
    if isinstance(joints_list, np.ndarray) or hasattr(joints_list, "dim"):
        # one motion (T, J, 3) or a stack of motions (N, T, J, 3)
        joints_list = [joints_list] if joints_list.ndim == 3 else list(joints_list)
    motions = [_as_joints(j, f"joints_list[{i}]", dataset) for i, j in enumerate(joints_list)]
    if not motions:
        raise ValueError("joints_list: expected at least one motion (T, J, 3), got an empty list")
    if titles is not None and len(titles) != len(motions):
        raise ValueError(f"titles: expected one title per motion ({len(motions)}), got {len(titles)}")
    if int(frames) < 1:
        raise ValueError(f"frames: expected an integer >= 1, got {frames!r}")
    frames = int(frames)
    image_format = _image_format(path)

    fig, axes = plt.subplots(len(motions), frames, figsize=(1.7 * frames, 2.3 * len(motions)), squeeze=False,
                             dpi=80)
    for r, joints in enumerate(motions):
        axis = side_view_axis(joints, dataset)
        proj = _project(joints, axis)
        xlims, ylim = follow_limits(proj)
        idx = np.unique(np.linspace(0, len(joints) - 1, frames).round().astype(int))
        for c in range(frames):
            ax = axes[r, c]
            ax.set_ylim(*ylim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            if c >= len(idx):
                ax.axis("off")
                continue
            t = idx[c]
            ax.set_xlim(*xlims[t])
            ax.axhline(0.0, color=GROUND_COLOR, lw=1.0, zorder=0)
            ax.plot(proj[:, 0, 0], np.zeros(len(proj)), color=GROUND_COLOR, lw=3.0, alpha=0.4, zorder=0)
            _draw_pose(ax, proj[t], dataset)
            ax.set_title(f"t = {t / fps:.1f} s (frame {t})", fontsize=7)
            if c > 0:
                ax.set_yticklabels([])
        label = titles[r] if titles is not None else f"motion {r}"
        axes[r, 0].set_ylabel(f"{textwrap.fill(label, 30)}\n({len(joints)} frames)", fontsize=7)
    fig.suptitle("side view along the main direction of travel, window following the root; "
                 "red = left, blue = right, black = spine, grey = root path",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=image_format)
    finally:
        plt.close(fig)
    return path


IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def _image_format(path: str | os.PathLike) -> str:
    """The matplotlib format of an output path, from its suffix (so a .jpg holds JPEG bytes, not PNG)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"path: expected an image file name ending in {', '.join(IMAGE_FORMATS)}, got {str(path)!r}")
    return IMAGE_FORMATS[suffix]


def plot_side_by_side(a, b, path: str | os.PathLike, titles: Sequence[str] = ("source", "reconstruction"),
                      dataset: str = "t2m", frames: int = 6, title: str = "") -> Path:
    """Two motions (T, J, 3) as two rows of one contact sheet, for reconstruction-vs-source pictures.

    Also accepts the form `plot_side_by_side([a, b], titles, path, ...)`. The rows show the same frame
    indices (those of the shorter motion).
    """
    if isinstance(a, (list, tuple)) and len(a) == 2 and not isinstance(b, (np.ndarray,)) and not hasattr(b, "dim"):
        (a, b), titles = a, b              # plot_side_by_side([source, recon], titles, path)
    a = _as_joints(a, "a", dataset)
    b = _as_joints(b, "b", dataset)
    if titles is None or len(titles) != 2:
        raise ValueError(f"titles: expected two titles (one per motion), got {titles!r}")
    T = min(len(a), len(b))
    titles = [f"{title} {t}".strip() for t in titles]
    return plot_contact_sheet([a[:T], b[:T]], path, titles=titles, dataset=dataset, frames=frames)


def mp4_available() -> bool:
    """Whether .mp4 animations can be written: the `imageio-ffmpeg` package (its own ffmpeg binary) is installed."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def render_frames(joints, dataset: str = "t2m", fps: float = 20.0, title: str = "") -> list[np.ndarray]:
    """The animation's frames: joints (T, J, 3) -> T images (H, W, 3) uint8, side view, prompt and time as title."""
    joints = _as_joints(joints, "joints", dataset)
    if not fps > 0:
        raise ValueError(f"fps: expected a number > 0, got {fps!r}")
    axis = side_view_axis(joints, dataset)
    proj = _project(joints, axis)
    xlim, ylim = _limits(proj)
    width = 3.2
    height = float(np.clip(width * (ylim[1] - ylim[0]) / (xlim[1] - xlim[0]), 1.6, 4.0)) + 0.4
    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)
    ax.axhline(0.0, color=GROUND_COLOR, lw=1.0, zorder=0)
    ax.plot(proj[:, 0, 0], np.zeros(len(proj)), color=GROUND_COLOR, lw=3.0, alpha=0.4, zorder=0)
    lines = _draw_pose(ax, proj[0], dataset)
    chains = [c for c, _ in _chain_colors(dataset)]
    label = ax.set_title("", fontsize=7)
    fig.tight_layout()
    # draw the static background once and blit only the skeleton and the label per frame (matplotlib's animation
    # writers redraw the whole figure, axes and ticks included, several times per frame: ~10x slower)
    try:
        for artist in (*lines, label):
            artist.set_visible(False)
        fig.canvas.draw()
        background = fig.canvas.copy_from_bbox(fig.bbox)
        for artist in (*lines, label):
            artist.set_visible(True)
        images = []
        for t in range(len(joints)):
            fig.canvas.restore_region(background)
            for line, chain in zip(lines, chains):
                line.set_data(proj[t, chain, 0], proj[t, chain, 1])
                fig.draw_artist(line)
            label.set_text(f"{title}  t = {t / fps:.2f} s (frame {t})".strip())
            fig.draw_artist(label)
            images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    finally:
        plt.close(fig)
    return images


def _write_gif(images: list[np.ndarray], path: Path, fps: float) -> None:
    frames = [Image.fromarray(im) for im in images]
    # one palette for all frames (few colours: white, greys, red, blue, black), so frames don't flicker
    palette = frames[0].quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in frames]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=int(round(1000.0 / fps)), optimize=False)


def _write_mp4(images: list[np.ndarray], path: Path, fps: float) -> None:
    """H.264 through imageio-ffmpeg's bundled ffmpeg; frames padded (white) to a multiple of 16 for yuv420p."""
    import imageio_ffmpeg

    h, w = images[0].shape[:2]
    H, W = -(-h // 16) * 16, -(-w // 16) * 16
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), fps=fps, quality=8, macro_block_size=1,
                                             ffmpeg_log_level="error")
        writer.send(None)
        try:
            for im in images:
                if (H, W) != (h, w):
                    im = np.pad(im, ((0, H - h), (0, W - w), (0, 0)), constant_values=255)
                writer.send(np.ascontiguousarray(im))
        finally:
            writer.close()


def save_animations(joints, paths: Sequence[str | os.PathLike], dataset: str = "t2m", fps: float = 20.0,
                    title: str = "") -> list[Path]:
    """Animate one motion (T, J, 3) into each of `paths` (.gif: Pillow; .mp4: imageio-ffmpeg), rendering it once.

    Without imageio-ffmpeg (`pip install imageio-ffmpeg`) a .mp4 is skipped with a warning, and a lone .mp4 request
    writes a .gif next to it instead. Returns the paths written.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if p.suffix.lower() not in (".gif", ".mp4"):
            raise ValueError(f"path: expected a .gif or .mp4 file name, got {str(p)!r}")
    if not mp4_available() and any(p.suffix.lower() == ".mp4" for p in paths):
        gifs = [p for p in paths if p.suffix.lower() == ".gif"]
        fallback = [] if gifs else [paths[0].with_suffix(".gif")]
        warnings.warn(f"save_animation: imageio-ffmpeg is not installed (pip install imageio-ffmpeg), "
                      f"{'writing ' + str(fallback[0]) + ' instead of .mp4' if fallback else 'skipping the .mp4'}")
        paths = gifs + fallback
    images = render_frames(joints, dataset, fps, title)
    for p in paths:
        (_write_mp4 if p.suffix.lower() == ".mp4" else _write_gif)(images, p, fps)
    return paths


def save_animation(joints, path: str | os.PathLike, dataset: str = "t2m", fps: float = 20.0, title: str = "") -> Path:
    """Animate one motion (T, J, 3) as a GIF (Pillow) or, for a .mp4 path, an MP4 (imageio-ffmpeg).

    Without imageio-ffmpeg a .mp4 request writes a .gif next to it instead (with a warning). Returns the path written.
    """
    return save_animations(joints, [path], dataset, fps, title)[0]


def _load_motion(path: str, dataset: str) -> np.ndarray:
    """A .npy of joints (T, J, 3) or of raw (de-normalised) features (T, D) -> joints (T, J, 3)."""
    from datasets.representation import feature_dim, features_to_joints

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: expected a .npy array of joints (T, J, 3) or features (T, {feature_dim(dataset)}), "
                         f"could not read it ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric array, got dtype {x.dtype}")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{path}: contains NaN or Inf values ({int((~np.isfinite(x)).sum())} entries); expected "
                         f"finite joint positions or features")
    if x.ndim == 2 and x.shape[-1] == feature_dim(dataset):
        return features_to_joints(x.astype(np.float32), dataset)
    if x.ndim == 3:
        J = skeleton_info(dataset).num_joints
        if x.shape[1:] != (J, 3) or x.shape[0] < 1:
            raise ValueError(f"{path}: expected joints (T, {J}, 3) for dataset {dataset!r}, got {x.shape}")
        return x
    raise ValueError(f"{path}: expected joints (T, J, 3) or features (T, {feature_dim(dataset)}), got {x.shape}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a bad input file or output name is one line on stderr and exit code 1."""
    try:
        _main(argv)
    except (ValueError, OSError) as err:
        print(f"python -m utils.plot: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    return 0


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m utils.plot",
        description="Render motions (.npy of joints (T, J, 3) or raw features (T, 263|251)) as a PNG contact sheet "
                    "(one row per input) or, for a .gif/.mp4 output, an animation of the first input.")
    parser.add_argument("inputs", nargs="+", help=".npy files: joints (T, J, 3) or de-normalised features (T, D)")
    parser.add_argument("--out", required=True, help="output .png (contact sheet) or .gif / .mp4 (animation)")
    parser.add_argument("--dataset", default="t2m", choices=["t2m", "kit"], help="skeleton (default t2m)")
    parser.add_argument("--frames", type=int, default=6, help="columns of the contact sheet (default 6)")
    parser.add_argument("--fps", type=float, default=20.0, help="frame rate (default 20; KIT-ML 12.5)")
    parser.add_argument("--title", default="", help="animation title")
    args = parser.parse_args(argv)
    out_suffix = Path(args.out).suffix.lower()
    if out_suffix not in (".gif", ".mp4") and out_suffix not in IMAGE_FORMATS:      # before any rendering
        raise ValueError(f"--out {args.out}: expected an image ({', '.join(IMAGE_FORMATS)}) or animation (.gif, .mp4) "
                         f"file name")
    motions = [_load_motion(p, args.dataset) for p in args.inputs]
    if out_suffix in (".gif", ".mp4"):
        out = save_animation(motions[0], args.out, dataset=args.dataset, fps=args.fps, title=args.title)
    else:
        out = plot_contact_sheet(motions, args.out, titles=[Path(p).stem for p in args.inputs], dataset=args.dataset,
                                 frames=args.frames, fps=args.fps)
    print(out)


if __name__ == "__main__":
    sys.exit(main())
