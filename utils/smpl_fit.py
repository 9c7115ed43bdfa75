"""SMPL bodies from 22-joint motions: fit SMPL pose, translation and shape to joint positions with `smplx`.

HumanML3D's 22 joints are the first 22 joints of SMPL, in SMPL's order (pelvis, hips, spine, knees, ..., wrists), so a
generated motion (T, 22, 3) can be explained by an SMPL body whose joints land on it. `fit_smpl` finds, for all T
frames at once (one batched optimisation, CPU or CUDA):

- `global_orient` (T, 3) and `body_pose` (T, 69): axis-angle rotations of the 24 SMPL joints (optimised as 6D);
- `transl` (T, 3);
- optionally `betas` (B,) shared by the whole clip.

Three steps, all frames at once:

1. shape (with `fit_shape`): the betas whose rest skeleton has the clip's rigid distances (the 21 bone lengths and
   the edges of the pelvis and spine3 triangles, averaged over frames); Adam on 10 numbers, no frames involved.
2. analytic pose initialisation (no optimisation): walking the tree from the pelvis, each joint gets the global
   rotation that takes its rest-pose bones (the model's own rest joints, so SMPL's slanted hips and spine are
   respected) onto the target bones: a Kabsch fit where a joint has several child bones (pelvis: hips and spine;
   spine3: neck and collars), the shortest arc after the parent's rotation where it has one. Hips and shoulders are
   then twisted about their bone so that the knee / elbow below bends its natural way (a minimal-twist swing would
   bend a forearm backwards whenever the upper arm is rolled); the twist blends into the minimal one as the limb
   straightens, so it stays continuous. When the skeleton matches, this alone puts the joints on the targets.
   (The feature extraction's IK rotations are relative to the HumanML3D unit rest directions and root their arm
   chains at the pelvis, so they would need the same re-basing; they are not used.)
3. refinement: Adam (cosine-decayed learning rate, `iters` steps, the best iterate kept) on the 6D local rotations,
   the translation and the betas, minimising (squared errors in cm², averaged over frames and joints)

       |J_smpl(pose, betas)[:, :22] + transl - joints|²            data
     + w_smooth · |R_t+1 - R_t|²_F        local rotations over time     smoothness (damps unobservable twists)
     + w_pose   · |R - I|²_F              local rotations              pose prior towards the rest pose
     + w_bend   · relu(wrong-way bend)²   knees and elbows             knees bend backwards, elbows forwards only
     + w_betas  · |betas|²                                              shape prior (betas ~ N(0, I))

No prior needs a download (no GMM / VPoser). During the fit only the 24 joints go through the kinematic chain
(`smplx.lbs.batch_rigid_transform`, float64, on rest joints precomputed as a linear function of the betas); the
reported error comes from a full `smplx.SMPL` forward of the final axis-angle parameters, i.e. of what is saved.
(torch's L-BFGS was tried first: its strong-Wolfe line search returns a zero step after a few iterations on this
problem, even from a steepest-descent restart, so it is not used.)

Joints whose rotation moves none of the 22 targets (feet 10-11, head 15, wrists 20-21, hands 22-23) stay at the
identity: position-only data cannot see them (T2M-GPT #25 in users.md is this limitation).

Coordinates. The fit runs in the frame of the input joints: HumanML3D's, y up, metres, frame 0 facing +z, left = +x.
SMPL's canonical rest frame is y up and faces +z too, so a y-up fit needs no axis change. `save_smpl_npz` writes
`up="z"` by default, the AMASS convention (z up, what AMASS files and the Blender SMPL add-ons expect): the inverse of
HumanML3D's AMASS-to-HumanML3D map (x, y, z)_h = (-x, z, y)_amass (reference.md §1.1), i.e.
(x, y, z)_amass = (-x_h, z_h, y_h), a proper rotation. `up="y"` keeps the HumanML3D frame.

Model files. SMPL needs a licence: register and download at https://smpl.is.tue.mpg.de. `smplx` expects
`DIR/smpl/SMPL_NEUTRAL.pkl` (also `SMPL_MALE`, `SMPL_FEMALE`); `.npz` files with the same arrays are read too, and so
are files directly in DIR. The official `.pkl` files hold chumpy arrays; they are read here without chumpy (a
restricted unpickler that takes the array out of each chumpy object), so chumpy is never needed.

    fit = fit_smpl(joints, "body_models", gender="neutral", device="cuda")
    print(fit.error_mean_mm, fit.error_max_mm, fit.seconds)
    save_smpl_npz(fit, "motion_smpl.npz")                      # poses (T, 72), trans, betas, gender, mocap_framerate

CLI: `python -m utils.smpl_fit JOINTS.npy --smpl-model-dir DIR [--out OUT.npz] [--obj-dir D] [--preview P.png]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from datasets.skeleton import T2M_JOINT_NAMES, T2M_PARENTS, cont6d_to_matrix, matrix_to_cont6d
from utils.atomic import atomic_open, atomic_path

__all__ = ["SMPLFit", "SMPLModelNotFound", "FitWeights", "fit_smpl", "save_smpl_npz", "load_smpl_npz",
           "load_smpl_model", "find_smpl_model_file", "smpl_forward", "write_obj", "render_mesh_preview",
           "SMPL_PARENTS", "HUMANML3D_TO_AMASS", "main"]

SMPL_DOWNLOAD_URL = "https://smpl.is.tue.mpg.de"
NUM_SMPL_JOINTS = 24
NUM_FIT_JOINTS = 22           # HumanML3D joints = SMPL joints 0..21
FRAME_RATE = 20.0             # HumanML3D fps (reference §1.1)
# SMPL kinematic tree: the 22 HumanML3D parents, then the hands (22, 23) under the wrists (20, 21)
SMPL_PARENTS = list(T2M_PARENTS) + [20, 21]
# (x, y, z)_amass = HUMANML3D_TO_AMASS @ (x, y, z)_humanml3d; inverse of reference §1.1's y/z swap + x negation
HUMANML3D_TO_AMASS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
_KNEES = (4, 5)
SHAPE_STEPS = 300             # Adam steps of the shape stage (cheap: 24 joints, no frames)
_ELBOWS = (18, 19)


def _children(joint: int) -> list[int]:
    return [c for c in range(NUM_FIT_JOINTS) if SMPL_PARENTS[c] == joint]


# distances that SMPL keeps rigid: the 21 bones and the extra edges of the pelvis and spine3 triangles
_RIGID_PAIRS = [(c, SMPL_PARENTS[c]) for c in range(1, NUM_FIT_JOINTS)] + [(1, 2), (1, 3), (2, 3), (12, 13),
                                                                           (12, 14), (13, 14)]
# joints whose rotation moves at least one of the 22 targets; the others stay at the identity
FIT_ROTATION_JOINTS = [j for j in range(NUM_SMPL_JOINTS) if _children(j)]


class SMPLModelNotFound(FileNotFoundError):
    """No SMPL model file where one was expected; the message says where to get one and where to put it."""


def _missing_model_message(where: str, gender: str, looked: Sequence[Path]) -> str:
    tried = ", ".join(str(p) for p in looked)
    return (f"{where}: no SMPL model file for gender '{gender}' (looked for {tried}); SMPL needs a licence: register "
            f"and download it at {SMPL_DOWNLOAD_URL}, then place it as DIR/smpl/SMPL_{gender.upper()}.pkl "
            f"(the layout smplx.create expects; .npz with the same arrays also works) and pass --smpl-model-dir DIR")


def _import_smplx():
    try:
        import smplx
    except ImportError as err:   # pragma: no cover - smplx is in requirements.txt
        raise ImportError("utils/smpl_fit.py needs the smplx package: pip install smplx (no chumpy needed)") from err
    return smplx


# ----------------------------------------------------------------------------------------------------------------
# Model files
# ----------------------------------------------------------------------------------------------------------------


def find_smpl_model_file(model_dir: str | Path, gender: str = "neutral") -> Path:
    """The SMPL model file for `gender` under `model_dir` (or `model_dir` itself when it is a file).

    Looks, in order, for DIR/smpl/SMPL_<GENDER>.npz, DIR/smpl/SMPL_<GENDER>.pkl, DIR/SMPL_<GENDER>.npz and
    DIR/SMPL_<GENDER>.pkl. Raises `SMPLModelNotFound` with the download address and the expected layout.
    """
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"gender: expected 'neutral', 'male' or 'female', got {gender!r}")
    model_dir = Path(model_dir)
    if model_dir.is_file():
        return model_dir
    name = f"SMPL_{gender.upper()}"
    looked = [model_dir / "smpl" / f"{name}.npz", model_dir / "smpl" / f"{name}.pkl",
              model_dir / f"{name}.npz", model_dir / f"{name}.pkl"]
    for path in looked:
        if path.is_file():
            return path
    raise SMPLModelNotFound(_missing_model_message("--smpl-model-dir", gender, looked))


class _ChumpyArray:
    """Stand-in for chumpy objects met while unpickling an official SMPL .pkl (chumpy itself is not installed)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.state = state


class _NoChumpyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyArray
        if module.startswith("scipy.sparse.") and name.endswith("_matrix"):
            import scipy.sparse
            return getattr(scipy.sparse, name)      # old pickles name private modules (scipy.sparse.csc)
        return super().find_class(module, name)


def _unchumpy(value, key: str, path: Path):
    if isinstance(value, _ChumpyArray):
        x = value.state.get("x") if isinstance(value.state, dict) else None
        if x is None:
            raise ValueError(f"{path}: array '{key}' is a derived chumpy expression, not a plain array; convert the "
                             "file to .npz once on a machine with chumpy (np.savez(out, **{k: np.array(v)}))")
        return np.asarray(x)
    return value


def load_smpl_data(path: str | Path) -> dict:
    """The arrays of an SMPL model file (.npz or .pkl, official chumpy .pkl included) as a dict."""
    path = Path(path)
    if path.suffix == ".npz":
        out = {}
        with np.load(path, allow_pickle=False) as data:
            for k in data.files:
                try:
                    out[k] = data[k]
                except ValueError:      # object arrays (e.g. 'bs_style' strings of converted files): not needed
                    pass
    elif path.suffix == ".pkl":
        with open(path, "rb") as f:
            out = _NoChumpyUnpickler(f, encoding="latin1").load()
        if not isinstance(out, dict):
            raise ValueError(f"{path}: expected a pickled dict of SMPL arrays, got {type(out).__name__}")
        out = {k: _unchumpy(v, k, path) for k, v in out.items()}
    else:
        raise ValueError(f"{path}: expected an SMPL model file ending in .npz or .pkl")
    needed = ["v_template", "f", "J_regressor", "kintree_table", "weights", "shapedirs", "posedirs"]
    missing = [k for k in needed if k not in out]
    if missing:
        raise ValueError(f"{path}: not an SMPL model file, arrays {missing} missing (expected {needed})")
    kintree = np.asarray(out["kintree_table"])
    if kintree.shape != (2, NUM_SMPL_JOINTS):
        raise ValueError(f"{path}: kintree_table: expected shape (2, 24) (SMPL's 24 joints), got {kintree.shape}")
    parents = kintree[0].astype(np.int64)
    if parents[1:].tolist() != SMPL_PARENTS[1:]:
        raise ValueError(f"{path}: kintree_table: expected SMPL's parents {SMPL_PARENTS[1:]} for joints 1..23, "
                         f"got {parents[1:].tolist()}")
    return out


def load_smpl_model(model_dir: str | Path, gender: str = "neutral", device: str | torch.device = "cpu",
                    num_betas: int = 10):
    """An `smplx.SMPL` body model from `model_dir` (see `find_smpl_model_file`), on `device`, float32."""
    smplx = _import_smplx()
    from smplx.utils import Struct
    from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

    path = find_smpl_model_file(model_dir, gender)
    data = load_smpl_data(path)
    num_verts = np.asarray(data["v_template"]).shape[0]
    ids = smplx_vertex_ids["smplh"]
    if max(ids.values()) >= num_verts:
        # a model with fewer vertices than SMPL (tests): smplx's extra keypoints (nose, toes, ...) point past its
        # vertices; they are not used here, so point them at vertex 0
        ids = {k: 0 for k in ids}
    with contextlib.redirect_stdout(io.StringIO()):   # smplx prints a notice for 10-beta models (all SMPL releases)
        model = smplx.SMPL(str(path), data_struct=Struct(**data), gender=gender, num_betas=num_betas,
                           vertex_ids=ids, batch_size=1)
    model.model_file = str(path)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------------------------


def _shortest_arc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) taking unit vectors a (..., 3) onto unit vectors b (..., 3)."""
    v = torch.linalg.cross(a, b)
    c = (a * b).sum(-1)
    zero = torch.zeros_like(c)
    vx = torch.stack([zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0], -v[..., 1], v[..., 0], zero],
                     dim=-1).reshape(a.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand_as(vx)
    return eye + vx + vx @ vx / (1.0 + c).clamp_min(1e-6)[..., None, None]


def _kabsch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) best taking vectors src (..., K, 3) onto dst (..., K, 3) (least squares)."""
    h = dst.transpose(-1, -2) @ src                   # (..., 3, 3) = sum_k dst_k src_k^T
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(u @ vt))
    diag = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device)
    diag[..., 2] = d
    return u @ torch.diag_embed(diag) @ vt


# hips and shoulders: (child hinge, grandchild, the hinge's natural bend direction in the rest frame). Knees bend the
# shin backwards (-z), elbows the forearm forwards (+z) for SMPL's palms-down T-pose.
_HINGE_PARENTS = {1: (4, 7, (0.0, 0.0, -1.0)), 2: (5, 8, (0.0, 0.0, -1.0)),
                  16: (18, 20, (0.0, 0.0, 1.0)), 17: (19, 21, (0.0, 0.0, 1.0))}
_HINGE_EPS = 0.05     # below a bend of ~3° (sin) the limb counts as straight and keeps the minimal twist


def _axis_angle_rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotations (T, 3, 3) about unit axes (T, 3) by angles (T,)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(axis.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + s * k + (1 - c) * (k @ k)


def _hinge_twist(g: torch.Tensor, upper: torch.Tensor, joints: torch.Tensor, rest: torch.Tensor, j: int,
                 hinge: int, end: int, natural) -> torch.Tensor:
    """Twist the global rotation g (T, 3, 3) of hip / shoulder j about its bone `upper` (T, 3, unit) so that the
    hinge below it (knee / elbow) bends its natural way: g·natural is turned towards the bend direction of the
    lower limb. Continuous: blended with the minimal twist as the limb straightens (weight = sin of the bend)."""
    lower = joints[:, end] - joints[:, hinge]
    lower = lower / lower.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    u_r, l_r = rest[hinge] - rest[j], rest[end] - rest[hinge]
    rest_bend = torch.linalg.cross(u_r, l_r).norm() / (u_r.norm() * l_r.norm())   # sin of the rest pose's bend
    bend = lower - (lower * upper).sum(-1, keepdim=True) * upper          # |bend| = sin(bend angle)
    # the rest pose's own slight bend is no flexion: only the bend beyond it steers the twist
    size = bend.norm(dim=-1, keepdim=True)
    bend = bend / size.clamp_min(1e-9) * torch.relu(size - rest_bend)
    m = g @ torch.tensor(natural, dtype=g.dtype, device=g.device)        # (T, 3), perpendicular to upper
    v = bend + _HINGE_EPS * m
    angle = torch.atan2((torch.linalg.cross(m, v) * upper).sum(-1), (m * v).sum(-1))
    return _axis_angle_rotation(upper, angle) @ g


def analytic_init(joints: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Local rotations (T, 24, 3, 3) that pose the rest skeleton `rest` (24, 3) onto `joints` (T, 22, 3).

    Global rotation of each joint: Kabsch on its child bones where it has several, the shortest arc applied after
    the parent's rotation where it has one, the parent's where it has none (see the module docstring).
    """
    T = joints.shape[0]
    eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand(T, 3, 3)
    glob: list[torch.Tensor] = []
    local: list[torch.Tensor] = []
    for j in range(NUM_SMPL_JOINTS):
        parent_rot = glob[SMPL_PARENTS[j]] if j > 0 else eye
        kids = _children(j)
        if len(kids) >= 2:
            src = (rest[kids] - rest[j]).expand(T, -1, -1)
            dst = joints[:, kids] - joints[:, j:j + 1]
            g = _kabsch(src, dst)
        elif len(kids) == 1:
            a = parent_rot @ (rest[kids[0]] - rest[j])
            b = joints[:, kids[0]] - joints[:, j]
            b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            g = _shortest_arc(a / a.norm(dim=-1, keepdim=True), b) @ parent_rot
            if j in _HINGE_PARENTS:
                g = _hinge_twist(g, b, joints, rest, j, *_HINGE_PARENTS[j])
        else:
            g = parent_rot
        glob.append(g)
        local.append(parent_rot.transpose(-1, -2) @ g)
    return torch.stack(local, dim=1)


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle (float64), via scipy's robust conversion."""
    from scipy.spatial.transform import Rotation

    m = np.asarray(m, dtype=np.float64)
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(m.shape[:-2] + (3,))


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    aa = np.asarray(aa, dtype=np.float64)
    return Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(aa.shape[:-1] + (3, 3))


# ----------------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FitWeights:
    """Weights of the prior terms of the refinement, relative to the data term in cm² (see the module docstring)."""

    smooth: float = 1.0     # |R_t+1 - R_t|²_F: a 1 rad/s turn costs 0.005 per joint, 2 cm of error costs 4
    pose: float = 0.01      # |R - I|²_F: a 90° bend costs 0.04, i.e. (2 mm)² of joint error
    bend: float = 1.0       # relu(wrong-way component of the bent bone direction)²: a 30° wrong bend costs 0.25
    betas: float = 0.01     # |betas|²


@dataclass
class SMPLFit:
    """An SMPL fit of one motion. Arrays are numpy float32, y-up HumanML3D frame (see the module docstring).

    global_orient (T, 3) and body_pose (T, 69) are axis-angle; transl (T, 3) metres; betas (B,).
    joints (T, 22, 3) are the fitted SMPL joints; error_* compare them with the targets (mm).
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    transl: np.ndarray
    betas: np.ndarray
    gender: str
    rest_pelvis: np.ndarray                     # (3,) pelvis of the rest pose with these betas (for axis changes)
    joints: np.ndarray | None = None
    error_per_joint_mm: np.ndarray | None = None   # (22,) mean over frames
    error_mean_mm: float = float("nan")
    error_max_mm: float = float("nan")
    init_error_mean_mm: float = float("nan")
    seconds: float = float("nan")
    iters: int = 0
    fps: float = FRAME_RATE
    up: str = "y"
    model_file: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.transl.shape[0])

    @property
    def poses(self) -> np.ndarray:
        """(T, 72): global_orient then the 23 body joints, axis-angle (the SMPL / AMASS pose vector)."""
        return np.concatenate([self.global_orient, self.body_pose], axis=-1)

    def summary(self) -> str:
        return (f"SMPL fit of {self.num_frames} frames: joint error mean {self.error_mean_mm:.1f} mm, max "
                f"{self.error_max_mm:.1f} mm (init {self.init_error_mean_mm:.1f} mm), {self.iters} iterations in "
                f"{self.seconds:.2f} s")


def _check_joints(joints, name: str = "joints") -> np.ndarray:
    if torch.is_tensor(joints):
        joints = joints.detach().cpu().numpy()
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1] != NUM_FIT_JOINTS or joints.shape[2] != 3 or joints.shape[0] < 1:
        raise ValueError(f"{name}: expected HumanML3D joints of shape (T, 22, 3) (metres, y up), got "
                         f"{tuple(joints.shape)}")
    if not np.issubdtype(joints.dtype, np.floating) or not np.isfinite(joints).all():
        raise ValueError(f"{name}: expected finite float joint positions (T, 22, 3)")
    return joints.astype(np.float32)


class _JointModel:
    """The joint part of an SMPL model in float64: rest joints J(betas) = J_regressor (v_template + shapedirs betas)
    precomputed as j_template (24, 3) + j_dirs (24, 3, B) betas (linear, so exact), and the parents."""

    def __init__(self, model, dtype=torch.float64):
        reg = model.J_regressor.to(dtype)
        self.j_template = reg @ model.v_template.to(dtype)                              # (24, 3)
        self.j_dirs = torch.einsum("jv,vdb->jdb", reg, model.shapedirs.to(dtype))       # (24, 3, B)
        self.parents = model.parents
        self.dtype = dtype

    def rest(self, betas: torch.Tensor) -> torch.Tensor:
        """(N, 24, 3) rest-pose joints for betas (N, B)."""
        return self.j_template + torch.einsum("jdb,nb->njd", self.j_dirs, betas)

    def posed(self, rots: torch.Tensor, betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """(T, 24, 3) joints of local rotations rots (T, 24, 3, 3), betas (1, B), transl (T, 3); no vertices."""
        from smplx.lbs import batch_rigid_transform

        rest = self.rest(betas).expand(rots.shape[0], -1, -1)
        posed, _ = batch_rigid_transform(rots, rest, self.parents, dtype=self.dtype)
        return posed + transl[:, None]


def smpl_forward(model, global_orient, body_pose, transl, betas, chunk: int = 256, vertices: bool = True):
    """Full `smplx.SMPL` forward of axis-angle parameters (numpy or torch, T frames), chunked over frames.

    Returns (joints (T, 24, 3), vertices (T, V, 3) or None) as numpy float32.
    """
    dev = model.shapedirs.device

    def t(x):
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32, device=dev)

    go, bp, tr = t(global_orient), t(body_pose), t(transl)
    b = t(betas).reshape(1, -1)
    joints, verts = [], []
    with torch.no_grad():
        for s in range(0, go.shape[0], chunk):
            n = go[s:s + chunk].shape[0]
            out = model(global_orient=go[s:s + chunk], body_pose=bp[s:s + chunk], transl=tr[s:s + chunk],
                        betas=b.expand(n, -1), return_verts=vertices)
            joints.append(out.joints[:, :NUM_SMPL_JOINTS].cpu())
            if vertices:
                verts.append(out.vertices.cpu())
    return torch.cat(joints).numpy(), (torch.cat(verts).numpy() if vertices else None)


def _errors_mm(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
    d = np.linalg.norm(pred[:, :NUM_FIT_JOINTS] - target, axis=-1) * 1000.0     # (T, 22)
    return d.mean(axis=0), float(d.mean()), float(d.max())


def fit_smpl(joints, model_dir: str | Path | None = None, *, model=None, gender: str = "neutral",
             device: str | torch.device = "cpu", iters: int = 100, fit_shape: bool = True, num_betas: int = 10,
             weights: FitWeights | None = None, lr: float = 0.002, progress: bool = True,
             cpu_threads: int | None = 1) -> SMPLFit:
    """Fit SMPL to HumanML3D joints (T, 22, 3), y up, metres, all frames at once.

    Args:
        joints:    (T, 22, 3) joint positions (numpy or torch)
        model_dir: folder with the SMPL files (`find_smpl_model_file`); or pass a loaded `model`
        model:     an `smplx.SMPL` (from `load_smpl_model`), used instead of model_dir
        device:    "cpu", "cuda", ... (the model is moved there)
        iters:     refinement steps (Adam over all frames at once; one progress-bar step each); 0 = shape stage
                   skipped too, i.e. the analytic initialisation on the template body only
        fit_shape: also fit the clip's betas (else betas = 0, the template body)
        weights:   prior weights (`FitWeights`)
        lr:        Adam learning rate of the refinement
        cpu_threads: torch threads during a CPU fit (restored afterwards); the joint-only tensors are tiny, so
                   more threads only add synchronisation (on a loaded 2-vCPU machine 2 threads were 30x slower
                   than 1). None = leave torch's setting alone.
    Returns:
        `SMPLFit` with the parameters, the fitted joints, the per-joint error (mm) and the time taken (s)
    """
    before = torch.get_num_threads()
    if cpu_threads is not None and torch.device(device).type == "cpu":      # the model is moved to `device`
        torch.set_num_threads(cpu_threads)
    try:
        return _fit_smpl(joints, model_dir, model, gender, device, iters, fit_shape, num_betas, weights, lr, progress)
    finally:
        torch.set_num_threads(before)


def _fit_smpl(joints, model_dir, model, gender, device, iters, fit_shape, num_betas, weights, lr, progress):
    from tqdm import tqdm

    target_np = _check_joints(joints)
    if iters < 0:
        raise ValueError(f"iters: expected an integer >= 0, got {iters}")
    weights = weights or FitWeights()
    start = time.perf_counter()
    if model is None:
        if model_dir is None:
            raise ValueError("fit_smpl: pass model_dir (folder with smpl/SMPL_<GENDER>.pkl|.npz) or model=")
        model = load_smpl_model(model_dir, gender, device, num_betas)
    else:
        model = model.to(device)
        gender = getattr(model, "gender", gender)
    dev = model.shapedirs.device
    kin = _JointModel(model)                  # float64: the joint-only tensors are tiny, so precision is free
    f64 = dict(device=dev, dtype=torch.float64)
    target = torch.as_tensor(target_np, **f64)
    T = target.shape[0]
    nb = model.num_betas
    opt_idx = torch.tensor(FIT_ROTATION_JOINTS, device=dev)

    betas = torch.zeros(1, nb, **f64)
    bar = tqdm(total=iters, desc="SMPL fit", unit="it", disable=not progress,
               leave=False, file=sys.stderr)
    if fit_shape and iters > 0:
        # stage 1, shape: the betas whose rest skeleton has the clip's rigid distances (bone lengths, and the edges
        # of the two rigid triangles: hips-spine1 and neck-collars), averaged over frames. 24 joints, no frames:
        # a few ms for hundreds of steps.
        a_idx, b_idx = zip(*_RIGID_PAIRS)
        lengths = (target[:, list(a_idx)] - target[:, list(b_idx)]).norm(dim=-1).mean(0)
        betas.requires_grad_(True)
        opt = torch.optim.Adam([betas], lr=0.05)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=SHAPE_STEPS, eta_min=0.0005)
        for _ in range(SHAPE_STEPS):
            opt.zero_grad()
            rest_b = kin.rest(betas)[0]
            model_len = (rest_b[list(a_idx)] - rest_b[list(b_idx)]).norm(dim=-1)
            data = ((model_len - lengths) ** 2).mean() * 1e4
            (data + weights.betas * (betas ** 2).sum()).backward()
            opt.step()
            sched.step()
        betas = betas.detach()
        bar.set_postfix(stage="shape", rmse_mm=f"{float(data.detach()) ** 0.5 * 10:.1f}")
    # analytic initialisation of the pose, translation from the pelvis
    with torch.no_grad():
        rest = kin.rest(betas)[0]
        rots0 = analytic_init(target, rest)
        transl0 = target[:, 0] - rest[0]
    rot6d = matrix_to_cont6d(rots0[:, opt_idx]).clone().requires_grad_(True)      # (T, K, 6)
    transl = transl0.clone().requires_grad_(True)
    params = [rot6d, transl]
    if fit_shape:
        betas = betas.clone().requires_grad_(True)
        params.append(betas)
    eye = torch.eye(3, **f64).expand(T, NUM_SMPL_JOINTS, 3, 3)
    rest_dirs = rest[[_children(j)[0] for j in _KNEES + _ELBOWS]] - rest[list(_KNEES + _ELBOWS)]
    rest_dirs = rest_dirs / rest_dirs.norm(dim=-1, keepdim=True)
    bend_sign = torch.tensor([1.0, 1.0, -1.0, -1.0], **f64)   # knees: shin never forward (+z); elbows: never back
    bend_cols = [FIT_ROTATION_JOINTS.index(j) for j in _KNEES + _ELBOWS]

    def rotations(r6):
        rots = eye.clone()
        rots[:, opt_idx] = cont6d_to_matrix(r6)
        return rots

    def loss_fn():
        mats = cont6d_to_matrix(rot6d)                                           # (T, K, 3, 3)
        rots = eye.clone()
        rots[:, opt_idx] = mats
        pred = kin.posed(rots, betas, transl)[:, :NUM_FIT_JOINTS]
        data = ((pred - target) ** 2).sum(-1).mean() * 1e4                      # cm²
        loss = data
        if T > 1 and weights.smooth:
            loss = loss + weights.smooth * ((mats[1:] - mats[:-1]) ** 2).sum((-1, -2)).mean()
        if weights.pose:
            loss = loss + weights.pose * ((mats - eye[:, :1]) ** 2).sum((-1, -2)).mean()
        if weights.bend:
            bent = (mats[:, bend_cols] @ rest_dirs[..., None])[..., 2, 0]        # z of the bent bone direction
            loss = loss + weights.bend * torch.relu(bent * bend_sign).pow(2).mean()
        if fit_shape and weights.betas:
            loss = loss + weights.betas * (betas ** 2).sum()
        return loss, data

    with torch.no_grad():
        init_err = (kin.posed(rots0, betas, transl0)[:, :NUM_FIT_JOINTS] - target).norm(dim=-1)
    init_mean = float(init_err.mean()) * 1000.0

    if iters > 0:
        # stage 2, everything: pose, translation and betas together, with the priors
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=lr * 0.01)
        best = (float("inf"), None)
        for _ in range(iters):
            opt.zero_grad()
            loss, data = loss_fn()
            if float(loss.detach()) < best[0]:      # Adam's first steps can overshoot a good init: keep the best
                best = (float(loss.detach()), [p.detach().clone() for p in params])
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(stage="all", rmse_mm=f"{float(data.detach()) ** 0.5 * 10:.1f}")
        with torch.no_grad():
            if float(loss_fn()[0]) > best[0]:
                for p, b in zip(params, best[1]):
                    p.copy_(b)
    bar.close()

    with torch.no_grad():
        rots = rotations(rot6d).cpu().numpy()
        betas_np = betas.detach().reshape(-1).cpu().numpy().astype(np.float32)
        rest_pelvis = kin.rest(betas.detach())[0, 0].cpu().numpy().astype(np.float32)
    aa = matrix_to_axis_angle(rots).astype(np.float32)                           # (T, 24, 3)
    transl_np = transl.detach().cpu().numpy().astype(np.float32)
    fit = SMPLFit(global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(T, -1), transl=transl_np, betas=betas_np,
                  gender=gender, rest_pelvis=rest_pelvis, iters=iters, model_file=getattr(model, "model_file", ""))
    # the reported error is that of the saved (axis-angle) parameters through the full smplx forward
    fitted, _ = smpl_forward(model, fit.global_orient, fit.body_pose, fit.transl, fit.betas, vertices=False)
    fit.joints = fitted[:, :NUM_FIT_JOINTS]
    fit.error_per_joint_mm, fit.error_mean_mm, fit.error_max_mm = _errors_mm(fitted, target_np)
    fit.init_error_mean_mm = init_mean
    fit.seconds = time.perf_counter() - start
    return fit


# ----------------------------------------------------------------------------------------------------------------
# Files: AMASS-style .npz, .obj meshes, a PNG preview
# ----------------------------------------------------------------------------------------------------------------


def _to_frame(fit: SMPLFit, up: str) -> tuple[np.ndarray, np.ndarray]:
    """(global_orient (T, 3), transl (T, 3)) of `fit` expressed with `up` ("y": as fitted, "z": AMASS)."""
    if up == fit.up:
        return fit.global_orient, fit.transl
    m = HUMANML3D_TO_AMASS if (fit.up, up) == ("y", "z") else HUMANML3D_TO_AMASS.T
    # the root rotates about the rest pelvis p: x_world = R (x - p) + p + t. A world rotation M gives
    # M R (x - p) + M (p + t), so R' = M R and t' = M (p + t) - p.
    r = m @ axis_angle_to_matrix(fit.global_orient)
    p = fit.rest_pelvis.astype(np.float64)
    t = (fit.transl.astype(np.float64) + p) @ m.T - p
    return matrix_to_axis_angle(r).astype(np.float32), t.astype(np.float32)


def save_smpl_npz(fit: SMPLFit, path: str | Path, up: str = "z", pose_dims: int = 72) -> Path:
    """Write `fit` as an AMASS-style .npz (atomically).

    Keys: poses (T, 72) SMPL or (T, 156) SMPL-H layout (body joints 0-21 then zero hands), trans (T, 3), betas (B,),
    gender, mocap_framerate (and mocap_frame_rate, the SMPL-X-era spelling), up_axis, rest_pelvis (3,) and the fit
    errors (fit_error_mean_mm, fit_error_max_mm, fit_error_per_joint_mm (22,)). up = "z" (AMASS / Blender) or "y"
    (HumanML3D frame).
    """
    if up not in ("y", "z"):
        raise ValueError(f"up: expected 'y' (HumanML3D frame) or 'z' (AMASS / Blender), got {up!r}")
    if pose_dims not in (72, 156):
        raise ValueError(f"pose_dims: expected 72 (SMPL) or 156 (SMPL-H / AMASS), got {pose_dims}")
    go, trans = _to_frame(fit, up)
    poses = np.concatenate([go, fit.body_pose], axis=-1)
    if pose_dims == 156:
        poses = np.concatenate([poses[:, :3 * NUM_FIT_JOINTS],
                                np.zeros((len(poses), 156 - 3 * NUM_FIT_JOINTS), np.float32)], axis=-1)
    arrays = dict(poses=poses.astype(np.float32), trans=trans.astype(np.float32), betas=fit.betas.astype(np.float32),
                  gender=np.array(fit.gender), mocap_framerate=np.array(fit.fps, dtype=np.float64),
                  mocap_frame_rate=np.array(fit.fps, dtype=np.float64), up_axis=np.array(up),
                  rest_pelvis=fit.rest_pelvis.astype(np.float32),
                  fit_error_mean_mm=np.array(fit.error_mean_mm), fit_error_max_mm=np.array(fit.error_max_mm),
                  fit_error_per_joint_mm=(np.asarray(fit.error_per_joint_mm, np.float32)
                                          if fit.error_per_joint_mm is not None else np.full(22, np.nan, np.float32)))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_smpl_npz(path: str | Path, up: str = "y") -> SMPLFit:
    """Read a file written by `save_smpl_npz` back into an `SMPLFit`, expressed with `up` (default y, as fitted)."""
    with np.load(path, allow_pickle=False) as d:
        if "poses" not in d.files or "trans" not in d.files:
            raise ValueError(f"{path}: expected an AMASS-style .npz with 'poses' and 'trans', got keys {d.files}")
        poses = d["poses"].astype(np.float32)
        body = np.zeros((len(poses), 69), np.float32)
        n = min(poses.shape[1], 72) - 3
        body[:, :n] = poses[:, 3:3 + n]
        if poses.shape[1] == 156:
            body[:, 3 * (NUM_FIT_JOINTS - 1):] = 0.0       # SMPL-H hands are not SMPL's joints 22-23
        def get(key, default):
            return d[key] if key in d.files else default

        fit = SMPLFit(global_orient=poses[:, :3], body_pose=body, transl=d["trans"].astype(np.float32),
                      betas=d["betas"].astype(np.float32), gender=str(get("gender", "neutral")),
                      rest_pelvis=np.asarray(get("rest_pelvis", np.zeros(3)), np.float32),
                      fps=float(get("mocap_framerate", FRAME_RATE)), up=str(get("up_axis", "z")),
                      error_mean_mm=float(get("fit_error_mean_mm", np.nan)),
                      error_max_mm=float(get("fit_error_max_mm", np.nan)))
    go, tr = _to_frame(fit, up)
    fit.global_orient, fit.transl, fit.up = go, tr, up
    return fit


def write_obj(vertices: np.ndarray, faces: np.ndarray, path: str | Path) -> Path:
    """One mesh as a Wavefront .obj (1-based faces), atomically."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, dtype=np.int64)]
    path = Path(path)
    with atomic_open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def render_mesh_preview(vertices: np.ndarray, faces: np.ndarray, path: str | Path, frames: int = 4,
                        title: str = "") -> Path:
    """PNG of the mesh at `frames` evenly spaced frames (y-up vertices (T, V, 3)), flat-shaded, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    vertices = np.asarray(vertices)
    faces = np.asarray(faces, dtype=np.int64)
    idx = np.unique(np.linspace(0, len(vertices) - 1, max(1, frames)).round().astype(int))
    lo, hi = vertices[idx].min(1), vertices[idx].max(1)                  # (K, 3): each shown frame's box
    half = (hi - lo).max() / 2 + 1e-3                                      # one scale for all panels
    fig = plt.figure(figsize=(3 * len(idx), 3.6))
    light = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
    for k, t in enumerate(idx):
        mid = (hi[k] + lo[k]) / 2                                          # each panel centred on its body
        ax = fig.add_subplot(1, len(idx), k + 1, projection="3d")
        tri = vertices[t][faces][..., [0, 2, 1]]                    # y up -> plot z up (x, z, y)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(n @ light[[0, 2, 1]])
        coll = Poly3DCollection(tri, facecolors=np.stack([shade * 0.55, shade * 0.7, shade * 0.9], -1),
                                edgecolors="none")
        ax.add_collection3d(coll)
        ax.set_xlim(mid[0] - half, mid[0] + half)
        ax.set_ylim(mid[2] - half, mid[2] + half)
        ax.set_zlim(mid[1] - half, mid[1] + half)
        ax.set_box_aspect((1, 1, 1), zoom=1.5)
        ax.view_init(elev=10, azim=-60)
        ax.set_axis_off()
        ax.set_title(f"frame {t}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.88, wspace=0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

PROG = "python -m utils.smpl_fit"


def _fail(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit an SMPL body (pose, translation, shape) to a HumanML3D joint motion (T, 22, 3), y up, "
                    "metres, 20 fps, and write the parameters as an AMASS-style .npz (poses, trans, betas, gender, "
                    "mocap_framerate) that the Blender SMPL add-ons read; optionally per-frame .obj meshes and a "
                    "PNG preview. SMPL model files need a licence: " + SMPL_DOWNLOAD_URL + " (registration); "
                    "smplx expects DIR/smpl/SMPL_NEUTRAL.pkl (or .npz).")
    parser.add_argument("joints", metavar="JOINTS.npy", help="joint positions (T, 22, 3), HumanML3D order and frame")
    parser.add_argument("--smpl-model-dir", required=True, metavar="DIR",
                        help="folder holding smpl/SMPL_<GENDER>.pkl|.npz (or the model file itself)")
    parser.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"],
                        help="SMPL model gender (default neutral)")
    parser.add_argument("--out", metavar="OUT.npz",
                        help="output parameters (default: JOINTS_smpl.npz beside the input)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--iters", type=int, default=100,
                        help="refinement steps over all frames at once (default 100; 0 = analytic init on the "
                             "template body)")
    parser.add_argument("--no-shape", action="store_true",
                        help="keep betas at 0 (template body) instead of fitting them")
    parser.add_argument("--up", default="z", choices=["z", "y"],
                        help="up axis of the written parameters: z = AMASS / Blender (default), y = HumanML3D frame")
    parser.add_argument("--pose-dims", type=int, default=72, choices=[72, 156],
                        help="72 = SMPL poses, 156 = SMPL-H / AMASS layout with zero hands (default 72)")
    parser.add_argument("--fps", type=float, default=FRAME_RATE, help="frame rate written as mocap_framerate (20)")
    parser.add_argument("--obj-dir", metavar="DIR", help="also write one .obj mesh per frame there (y up)")
    parser.add_argument("--obj-every", type=int, default=1, metavar="N", help="with --obj-dir: every N-th frame")
    parser.add_argument("--preview", metavar="PNG", help="also render a mesh preview of 4 frames to this PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> SMPLFit:
    args = _build_parser().parse_args(argv)
    src = Path(args.joints)
    if not src.is_file():
        _fail(f"JOINTS.npy: file {src} not found (expected a .npy of joints (T, 22, 3))")
    try:
        joints = _check_joints(np.load(src, allow_pickle=False), name=str(src))
    except ValueError as err:
        _fail(str(err))
    if args.iters < 0:
        _fail(f"--iters: expected an integer >= 0, got {args.iters}")
    if args.obj_every < 1:
        _fail(f"--obj-every: expected an integer >= 1, got {args.obj_every}")
    if not np.isfinite(args.fps) or args.fps <= 0:
        _fail(f"--fps: expected a positive frame rate, got {args.fps}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine")
    except (RuntimeError, ValueError) as err:
        _fail(f"--device: expected cpu or an available cuda device, got {args.device!r} ({err})")
    try:
        model = load_smpl_model(args.smpl_model_dir, args.gender, device)
    except SMPLModelNotFound as err:
        _fail(str(err))
    except ImportError as err:
        _fail(str(err))
    except ValueError as err:
        _fail(f"--smpl-model-dir: {err}")
    fit = fit_smpl(joints, model=model, device=device, iters=args.iters, fit_shape=not args.no_shape,
                   progress=not args.quiet)
    fit.fps = args.fps
    out = Path(args.out) if args.out else src.with_name(src.stem + "_smpl.npz")
    save_smpl_npz(fit, out, up=args.up, pose_dims=args.pose_dims)
    print(f"{fit.summary()}; wrote {out} (up={args.up}, poses (T, {args.pose_dims}))")
    print("per-joint mean error (mm): " + ", ".join(
        f"{name} {err:.1f}" for name, err in zip(T2M_JOINT_NAMES, fit.error_per_joint_mm)))
    if args.obj_dir or args.preview:
        _, verts = smpl_forward(model, fit.global_orient, fit.body_pose, fit.transl, fit.betas)
        faces = np.asarray(model.faces, dtype=np.int64)
        if args.obj_dir:
            frames = range(0, len(verts), args.obj_every)
            for t in frames:
                write_obj(verts[t], faces, Path(args.obj_dir) / f"frame_{t:04d}.obj")
            print(f"wrote {len(frames)} .obj meshes to {args.obj_dir}")
        if args.preview:
            render_mesh_preview(verts, faces, args.preview, title=src.stem)
            print(f"wrote {args.preview}")
    return fit


if __name__ == "__main__":
    main()
