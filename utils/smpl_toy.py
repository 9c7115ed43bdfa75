"""A synthetic SMPL-format model file ("toy SMPL"), for tests and benchmarks where the licensed SMPL files are absent.

It has SMPL's 24-joint kinematic tree and arrays of SMPL's layout, so `smplx.SMPL` loads it like the real thing:

    v_template (V, 3), f (F, 3), J_regressor (24, V), kintree_table (2, 24), weights (V, 24),
    shapedirs (V, 3, 10), posedirs (V, 3, 207)

Body: the rest joints are an SMPL-like T-pose written by hand (y up, facing +z, left = +x, arms along x, pelvis at
(0, -0.22, 0.03) as in SMPL's template; 1.5 m tall, rounded positions, not SMPL's regressed joints). Vertices 0..23
sit on the joints and `J_regressor` picks them (identity), so the rest joints are exact. Every bone (parent ->
child) is a square tube (two rings of 4 vertices at 20 % and 80 % of the bone, 3 cm radius) skinned rigidly to the
parent joint, which is the joint that rotates it. Shape: beta 0 scales the body about the pelvis by 10 % per unit;
betas 1..9 move each joint by a seeded random 1 cm-scale offset (vertices follow their bone's joints). posedirs are
small seeded noise (they do not move joints). V = 24 + 23·8 = 208, F = 23·12 = 276.

    write_toy_smpl_model("toy_models")              # -> toy_models/smpl/SMPL_NEUTRAL.npz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.atomic import atomic_open

__all__ = ["toy_smpl_arrays", "write_toy_smpl_model", "TOY_PARENTS"]

TOY_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]   # SMPL's tree
_RADIUS = 0.03


# rest joints (m), an SMPL-like T-pose: y up, facing +z, left = +x, arms along x, hips and spine slanted as in SMPL
_REST_JOINTS = np.array([
    [0.000, -0.223, 0.028], [0.068, -0.313, 0.021], [-0.069, -0.313, 0.024], [-0.003, -0.103, 0.000],
    [0.103, -0.689, 0.016], [-0.107, -0.696, 0.012], [0.005, 0.030, 0.027], [0.088, -1.087, -0.024],
    [-0.090, -1.090, -0.025], [0.002, 0.083, 0.030], [0.118, -1.146, 0.094], [-0.118, -1.145, 0.098],
    [-0.003, 0.297, -0.011], [0.077, 0.200, 0.002], [-0.078, 0.198, -0.005], [0.005, 0.360, 0.040],
    [0.170, 0.233, -0.016], [-0.170, 0.231, -0.018], [0.426, 0.216, -0.040], [-0.426, 0.216, -0.043],
    [0.682, 0.222, -0.045], [-0.686, 0.222, -0.047], [0.770, 0.210, -0.060], [-0.770, 0.210, -0.060]])


def _rest_joints() -> np.ndarray:
    return _REST_JOINTS.copy()


def toy_smpl_arrays(seed: int = 0, num_betas: int = 10) -> dict[str, np.ndarray]:
    """The arrays of the toy SMPL model (see the module docstring); `seed` draws shapedirs 1.. and posedirs."""
    rng = np.random.default_rng(seed)
    joints = _rest_joints()
    verts = [joints]
    weights = [np.eye(24)]
    joint_mix = [np.eye(24)]            # each vertex as a mix of joints, for the shape displacements
    faces = []
    for c in range(1, 24):
        p = TOY_PARENTS[c]
        axis = joints[c] - joints[p]
        axis /= np.linalg.norm(axis)
        helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(axis, helper)
        u /= np.linalg.norm(u)
        w = np.cross(axis, u)
        base = 24 + 8 * (c - 1)
        for k, frac in enumerate((0.2, 0.8)):
            centre = joints[p] + frac * (joints[c] - joints[p])
            for a in range(4):
                ang = np.pi / 2 * a
                verts.append((centre + _RADIUS * (np.cos(ang) * u + np.sin(ang) * w))[None])
                wt = np.zeros((1, 24))
                wt[0, p] = 1.0
                weights.append(wt)
                mix = np.zeros((1, 24))
                mix[0, p], mix[0, c] = 1 - frac, frac
                joint_mix.append(mix)
        for a in range(4):             # tube sides: ring 0 (base..base+3) to ring 1 (base+4..base+7)
            b = (a + 1) % 4
            faces += [[base + a, base + b, base + 4 + b], [base + a, base + 4 + b, base + 4 + a]]
        faces += [[base, base + 2, base + 1], [base, base + 3, base + 2],            # caps
                  [base + 4, base + 5, base + 6], [base + 4, base + 6, base + 7]]
    v = np.concatenate(verts)
    weights = np.concatenate(weights)
    joint_mix = np.concatenate(joint_mix)
    V = len(v)
    joint_dirs = np.zeros((24, 3, num_betas))
    joint_dirs[:, :, 0] = 0.1 * (joints - joints[0])                            # beta 0: 10 % scale per unit
    joint_dirs[:, :, 1:] = 0.01 * rng.standard_normal((24, 3, num_betas - 1))
    joint_dirs[0, :, 1:] = 0.0                                                   # betas 1.. keep the pelvis
    shapedirs = np.einsum("vj,jdb->vdb", joint_mix, joint_dirs)
    posedirs = 1e-3 * rng.standard_normal((V, 3, 207))
    j_regressor = np.zeros((24, V))
    j_regressor[:, :24] = np.eye(24)
    kintree = np.array([[4294967295] + TOY_PARENTS[1:], list(range(24))], dtype=np.int64)
    return dict(v_template=v.astype(np.float64), f=np.array(faces, dtype=np.uint32), J_regressor=j_regressor,
                kintree_table=kintree, weights=weights, shapedirs=shapedirs, posedirs=posedirs)


def write_toy_smpl_model(model_dir: str | Path, gender: str = "neutral", seed: int = 0) -> Path:
    """Write the toy model as `model_dir/smpl/SMPL_<GENDER>.npz` (smplx's layout) and return its path."""
    path = Path(model_dir) / "smpl" / f"SMPL_{gender.upper()}.npz"
    with atomic_open(path, "wb") as f:
        np.savez(f, **toy_smpl_arrays(seed))
    return path
