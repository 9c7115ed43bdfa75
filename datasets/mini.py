"""Procedural mini text-motion dataset written in the exact HumanML3D layout (offline default data).

    python -m datasets.mini --out data/mini [--num-motions 2000 --seed 0]

What it makes (ARCHITECTURE.md §3, reference.md §1):
- **Motions.** Each motion animates the 22-joint t2m skeleton with the default target bone lengths
  (reference.md §2.2): a root path, a pelvis heading, a trunk lean/twist, world-space ankle targets and
  shoulder-relative wrist targets are authored per frame; legs and arms are placed by two-bone IK (knees bend
  forward, elbows backward/outward), so every bone keeps its length. Walking-type motions plant each stance foot
  at a fixed point and move the root over it, so planted feet never slide. The joints then go through the real
  feature extraction `datasets.representation.joints_to_features` (never written as features directly), and
  `new_joints/` is `features_to_joints` of the features, as in HumanML3D.
- **Families.** 12 action families (walk, run, jump, wave, kick, punch, squat, sit down, turn, raise arms, clap,
  side-step) with left/right, direction, speed, amplitude, repetition and duration variations, plus two-action
  sequences ("walks forward and then jumps"). Lengths 40..196 feature rows at 20 fps.
- **Texts.** 2-3 whole-clip captions per motion from varied templates with synonyms, plus sub-clip captions
  (non-zero start#end) for each part of a sequence. Tokens follow the HumanML3D format (`word/POS`, NOUN and VERB
  lemmatised except `left`, spaCy coarse tags) from a small hand-written lexicon (`LEXICON`).
- **Splits** 80/5/15 by motion (`train.txt`, `val.txt`, `test.txt`, `train_val.txt`, `all.txt`). With `--mirror`
  every motion also gets its left/right mirror `M<id>` (mirrored joints, captions with left <-> right and
  clockwise <-> counterclockwise swapped) in the same split (reference.md §1.1); off by default.
  **Mean/Std** from the train split (mirrors included) with the group-mean Std rule (reference.md §1.5).
- **GloVe.** No GloVe vectors are available offline (no installed or registry package ships them), so `glove/`
  holds a fixed seeded table in the evaluator's format (`our_vab_*`, reference.md §3.4): each word's 300-d vector
  is a Gaussian vector (per-dim std 0.4, norm about 7 like GloVe) seeded by a hash of the word, and words of one
  synonym group (`SYNONYM_GROUPS`) share 80 % of a group vector so they lie near each other. The table depends
  only on the vocabulary, not on `--seed`.

Everything is deterministic for a seed (byte-identical files); motion i draws from `default_rng([seed, i])`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from datasets.registry import DATASET_INFO_FILE
from datasets.skeleton import T2M_PARENTS, T2M_TARGET_BONE_LENGTHS
from datasets.word_vectorizer import SPECIAL_WORDS, WORD_DIM, write_glove_folder

FPS = 20                      # reference.md §1.3 (HumanML3D)
MIN_LEN, MAX_LEN = 40, 196    # feature rows kept / padded (reference.md §1.3)

# ----------------------------------------------------------------------------------------------------------------
# Skeleton: t2m 22 joints (reference.md §2.2). Bone lengths are the default target skeleton's (joints 1..21).
# ----------------------------------------------------------------------------------------------------------------
PARENTS = np.asarray(T2M_PARENTS)
BONE_LENGTHS = np.concatenate([[0.0], T2M_TARGET_BONE_LENGTHS])   # index j: bone from parent to joint j

# Rest directions of the rigid bones in the body frame (x left, y up, z forward), read off a standing frame of
# real mocap (rounded). Legs and arms are placed by IK instead.
_REST_DIR = {
    1: (0.9, -0.4, 0.0), 2: (-0.9, -0.4, 0.0),                     # hips from pelvis
    3: (0.0, 1.0, -0.1), 6: (0.0, 1.0, -0.05), 9: (0.0, 1.0, 0.0),  # spine1..3
    12: (0.0, 1.0, -0.03), 15: (0.0, 1.0, 0.15),                    # neck, head
    13: (0.25, 0.97, 0.0), 14: (-0.25, 0.97, 0.0),                  # collars from spine3
    16: (0.95, -0.25, 0.0), 17: (-0.95, -0.25, 0.0),                # shoulders from collars
}
REST_OFFSETS = {j: np.asarray(d) / np.linalg.norm(d) * BONE_LENGTHS[j] for j, d in _REST_DIR.items()}

LEGS = ((1, 4, 7, 10), (2, 5, 8, 11))        # (hip, knee, ankle, foot) left, right
ARMS = ((16, 18, 20), (17, 19, 21))          # (shoulder, elbow, wrist) left, right
SIDE = (1.0, -1.0)                           # +x is the character's left

ANKLE_H = 0.08                               # ankle height of a flat foot (toe joint ends near 0.02)
FOOT_PITCH = 0.40                            # rad, foot bone points down-forward (real standing frame)
HIP_DROP = -REST_OFFSETS[1][1]               # hip joint below the pelvis
STANCE_HALF = 0.10                           # lateral ankle offset of a neutral stance
LEG_LEN = min(BONE_LENGTHS[4] + BONE_LENGTHS[7], BONE_LENGTHS[5] + BONE_LENGTHS[8])
STAND_H = ANKLE_H + HIP_DROP + 0.99 * np.sqrt(LEG_LEN ** 2 - (STANCE_HALF - REST_OFFSETS[1][0]) ** 2)
HANG = np.array([0.03, -0.50, 0.06])         # wrist relative to shoulder, arm hanging (x toward own side)


def _ry(a: np.ndarray) -> np.ndarray:
    """(T,) yaw -> (T, 3, 3) rotation about +y (positive turns +z toward +x, i.e. to the character's left)."""
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rx(a: np.ndarray) -> np.ndarray:
    """(T,) pitch -> (T, 3, 3) rotation about +x (positive tilts +y toward +z: leaning forward)."""
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _apply(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(T,3,3) @ (T,3) or (3,) -> (T,3)."""
    return np.einsum("tij,tj->ti", r, np.broadcast_to(v, r.shape[:-1]))


def _normalize(v: np.ndarray, fallback=(0.0, -1.0, 0.0)) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 1e-8, v / np.maximum(n, 1e-8), np.asarray(fallback))


def two_bone_ik(root: np.ndarray, target: np.ndarray, l1: float, l2: float, pole: np.ndarray):
    """Place a two-bone limb. root, target, pole: (T, 3) -> (mid (T, 3), end (T, 3)).

    The end reaches the target when it can (distance clamped to [|l1-l2|, l1+l2] otherwise); the middle joint
    bends toward `pole`. Both bones keep their lengths exactly.
    """
    d = target - root
    u = _normalize(d)
    dist = np.clip(np.linalg.norm(d, axis=-1), abs(l1 - l2) + 1e-4, (l1 + l2) * 0.9999)
    cos_a = np.clip((l1 ** 2 + dist ** 2 - l2 ** 2) / (2 * l1 * dist), -1.0, 1.0)
    b = pole - np.sum(pole * u, -1, keepdims=True) * u
    b = _normalize(b, fallback=(0.0, 0.0, 1.0))
    mid = root + l1 * (cos_a[:, None] * u + np.sqrt(1 - cos_a ** 2)[:, None] * b)
    end = root + dist[:, None] * u
    return mid, end


# ----------------------------------------------------------------------------------------------------------------
# Track: the per-frame controls of one motion, and posing it into joints.
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Track:
    """Per-frame controls of a motion (T frames).

    root (T, 3) pelvis position, heading (T,) pelvis yaw, lean (T,) trunk pitch forward, twist (T,) upper-body
    yaw relative to the pelvis, ankles (T, 2, 3) world ankle targets [left, right], foot_yaw (T, 2),
    foot_pitch (T, 2), wrists (T, 2, 3) wrist targets relative to each shoulder in the upper-body frame with x
    pointing to that arm's own side.
    """
    root: np.ndarray
    heading: np.ndarray
    lean: np.ndarray
    twist: np.ndarray
    ankles: np.ndarray
    foot_yaw: np.ndarray
    foot_pitch: np.ndarray
    wrists: np.ndarray

    def __len__(self) -> int:
        return len(self.heading)

    @staticmethod
    def concat(parts: list["Track"]) -> "Track":
        return Track(*[np.concatenate([getattr(p, f) for p in parts]) for f in Track.__dataclass_fields__])


@dataclass
class State:
    """Where the character stands between actions: pelvis x, z and heading (rad)."""
    x: float = 0.0
    z: float = 0.0
    heading: float = 0.0


def neutral_feet(xz: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Ankle positions (T, 2, 3) of a neutral stance under pelvis positions xz (T, 2) with yaw heading (T,)."""
    r = _ry(heading)
    out = np.empty((len(heading), 2, 3))
    for f in range(2):
        out[:, f] = _apply(r, np.array([SIDE[f] * STANCE_HALF, 0.0, 0.0]))
        out[:, f, 0] += xz[:, 0]
        out[:, f, 2] += xz[:, 1]
        out[:, f, 1] = ANKLE_H
    return out


def standing(n: int, st: State) -> Track:
    """n frames of a neutral stance at state st."""
    heading = np.full(n, st.heading)
    xz = np.tile([st.x, st.z], (n, 1))
    root = np.stack([xz[:, 0], np.full(n, STAND_H), xz[:, 1]], -1)
    return Track(root=root, heading=heading, lean=np.full(n, 0.04), twist=np.zeros(n),
                 ankles=neutral_feet(xz, heading), foot_yaw=np.tile(heading[:, None], (1, 2)),
                 foot_pitch=np.full((n, 2), FOOT_PITCH), wrists=np.tile(HANG, (n, 2, 1)))


def hold_last(tr: Track, n: int) -> Track:
    """The track followed by n copies of its last frame (an action may end seated or with arms raised)."""
    return Track(*[np.concatenate([getattr(tr, f), np.repeat(getattr(tr, f)[-1:], n, 0)])
                   for f in Track.__dataclass_fields__])


def _clamp_pelvis_height(tr: Track) -> None:
    """Lower the pelvis where a grounded ankle would be out of reach (keeps planted feet planted)."""
    r = _ry(tr.heading)
    max_y = np.full(len(tr), np.inf)
    for f, (hip, *_rest) in enumerate(LEGS):
        hip_xz = tr.root + _apply(r, REST_OFFSETS[hip])
        dxz = np.linalg.norm((tr.ankles[:, f] - hip_xz)[:, [0, 2]], axis=-1)
        reach = 0.985 * LEG_LEN
        grounded = tr.ankles[:, f, 1] < ANKLE_H + 0.03
        ok_y = tr.ankles[:, f, 1] + np.sqrt(np.maximum(reach ** 2 - dxz ** 2, 0.0)) + HIP_DROP
        max_y = np.where(grounded, np.minimum(max_y, ok_y), max_y)
    tr.root[:, 1] = np.minimum(tr.root[:, 1], max_y)


def pose(tr: Track) -> np.ndarray:
    """Track -> joint positions (T, 22, 3), y up, metres."""
    _clamp_pelvis_height(tr)
    t = len(tr)
    j = np.zeros((t, 22, 3))
    rh = _ry(tr.heading)
    ru = np.einsum("tij,tjk->tik", _ry(tr.heading + tr.twist), _rx(tr.lean))
    j[:, 0] = tr.root
    for k in (1, 2):
        j[:, k] = j[:, 0] + _apply(rh, REST_OFFSETS[k])
    for k in (3, 6, 9, 12, 15, 13, 14, 16, 17):
        j[:, k] = j[:, PARENTS[k]] + _apply(ru, REST_OFFSETS[k])
    for f, (hip, knee, ankle, toe) in enumerate(LEGS):
        pole = _apply(rh, np.array([SIDE[f] * 0.15, 0.0, 1.0]))
        j[:, knee], j[:, ankle] = two_bone_ik(j[:, hip], tr.ankles[:, f], BONE_LENGTHS[knee], BONE_LENGTHS[ankle],
                                              pole)
        fdir = _apply(_ry(tr.foot_yaw[:, f]),
                      np.stack([np.zeros(t), -np.sin(tr.foot_pitch[:, f]), np.cos(tr.foot_pitch[:, f])], -1))
        j[:, toe] = j[:, ankle] + BONE_LENGTHS[toe] * fdir
    for a, (sh, el, wr) in enumerate(ARMS):
        local = tr.wrists[:, a] * np.array([SIDE[a], 1.0, 1.0])
        target = j[:, sh] + _apply(ru, local)
        pole = _apply(ru, np.array([SIDE[a] * 0.3, -0.45, -0.85]))
        j[:, el], j[:, wr] = two_bone_ik(j[:, sh], target, BONE_LENGTHS[el], BONE_LENGTHS[wr], pole)
    return j


# ----------------------------------------------------------------------------------------------------------------
# Curve helpers
# ----------------------------------------------------------------------------------------------------------------
def smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def keyframes(n: int, keys: list[tuple[float, object]], arc: bool = False) -> np.ndarray:
    """Smooth (smoothstep) interpolation of values keyed at frame times; constant outside the keys.

    keys: [(frame, value)] with increasing frames; values are scalars or arrays of one shape. Returns (n, ...).
    arc: for (3,) vectors relative to a joint (wrist targets): interpolate the direction along a great circle
    and the length linearly, so a hand swings round the shoulder instead of cutting through it.
    """
    times = np.array([k[0] for k in keys], dtype=float)
    vals = np.stack([np.asarray(k[1], dtype=float) for k in keys])
    t = np.arange(n, dtype=float)
    idx = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    span = np.maximum(times[idx + 1] - times[idx], 1e-9)
    u = smoothstep((t - times[idx]) / span)
    u = u.reshape((-1,) + (1,) * (vals.ndim - 1))
    a, b = vals[idx], vals[idx + 1]
    if not arc:
        return a * (1 - u) + b * u
    ra, rb = np.linalg.norm(a, axis=-1, keepdims=True), np.linalg.norm(b, axis=-1, keepdims=True)
    da, db = a / np.maximum(ra, 1e-9), b / np.maximum(rb, 1e-9)
    omega = np.arccos(np.clip(np.sum(da * db, -1, keepdims=True), -1.0, 1.0))
    sin_o = np.sin(omega)
    small = sin_o < 1e-4
    wa = np.where(small, 1 - u, np.sin((1 - u) * omega) / np.where(small, 1.0, sin_o))
    wb = np.where(small, u, np.sin(u * omega) / np.where(small, 1.0, sin_o))
    return (wa * da + wb * db) * (ra * (1 - u) + rb * u)


# ----------------------------------------------------------------------------------------------------------------
# Locomotion: planted stance feet, the root moves over them
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Gait:
    """Gait parameters of one locomotion segment. The defaults are an ordinary walk, hand-tuned to look like
    one at 20 fps (11 frames per step is about 110 steps/min, 62 % stance); the families override them."""

    speed: float = 1.2          # m/s along the body's forward axis (negative = backward)
    lateral: float = 0.0        # m/s along the body's left axis
    yaw: float = 0.0            # total heading change over the segment (rad, + = left)
    period: int = 11            # frames per step (half a gait cycle)
    duty: float = 0.62          # stance fraction of a cycle (< 0.5 gives flight phases: running)
    bob: float = 0.015          # pelvis vertical bob (m)
    lift: float = 0.10          # swing ankle lift (m)
    lower: float = 0.0          # pelvis lowered by this (m) (bent-knee running)
    lean: float = 0.05          # trunk lean (rad)
    arm_swing: float = 0.8      # wrist swing per metre of foot separation
    arm_bend: float = 0.0       # 0 hanging arms .. 1 elbows at 90 degrees (running)


def locomote(st: State, n: int, g: Gait) -> tuple[Track, State]:
    """n frames of gait from a neutral stance to a neutral stance; velocity eases in and out."""
    t = np.arange(n, dtype=float)
    p = g.period
    ramp = 1.5 * p
    env = smoothstep((t - p) / ramp) * smoothstep((n - 1 - p - t) / ramp)
    heading = st.heading + g.yaw * np.cumsum(env) / max(env.sum(), 1e-9)
    vel_body = np.stack([np.full(n, g.lateral), np.zeros(n), np.full(n, g.speed)], -1) * env[:, None] / FPS
    vel = _apply(_ry(heading), vel_body)
    xz = np.array([st.x, st.z]) + np.concatenate([[[0.0, 0.0]], np.cumsum(vel[:-1][:, [0, 2]], 0)])
    tr = standing(n, st)
    tr.root[:, 0], tr.root[:, 2] = xz[:, 0], xz[:, 1]
    tr.heading = heading
    feet_neutral = neutral_feet(xz, heading)
    half = g.duty * p
    for f in range(2):
        centers = np.arange(f * p - 4 * p, n + 4 * p, 2 * p, dtype=float)
        ivals = []
        for c in centers:
            a, b = max(0, int(np.ceil(c - half))), min(n - 1, int(np.floor(c + half)))
            if a > b:
                continue
            ci = int(np.clip(round(c), 0, n - 1))
            ivals.append((a, b, feet_neutral[ci, f], heading[ci]))
        if ivals[0][0] > 0:
            ivals.insert(0, (0, 0, feet_neutral[0, f], heading[0]))
        if ivals[-1][1] < n - 1:
            ivals.append((n - 1, n - 1, feet_neutral[n - 1, f], heading[n - 1]))
        for k, (a, b, pos, yaw) in enumerate(ivals):
            tr.ankles[a:b + 1, f] = pos
            tr.foot_yaw[a:b + 1, f] = yaw
            if k + 1 < len(ivals):
                a2, _, pos2, yaw2 = ivals[k + 1]
                moved = np.linalg.norm(pos2 - pos) + 0.5 * abs(yaw2 - yaw)
                if a2 - b > 1 and moved < 0.01:       # nothing to step to: the foot simply stays planted
                    tr.ankles[b + 1:a2, f] = pos
                    tr.foot_yaw[b + 1:a2, f] = yaw
                elif a2 - b > 1:
                    s = np.arange(b + 1, a2)
                    u = (s - b) / (a2 - b)
                    w = smoothstep(u)[:, None]
                    tr.ankles[s, f] = pos * (1 - w) + pos2 * w
                    tr.ankles[s, f, 1] = ANKLE_H + g.lift * min(1.0, moved / 0.25 + 0.3) * np.sin(np.pi * u)
                    tr.foot_yaw[s, f] = yaw * (1 - w[:, 0]) + yaw2 * w[:, 0]
                    tr.foot_pitch[s, f] = FOOT_PITCH + 0.35 * np.sin(np.pi * u) * np.sign(g.speed + 1e-3)
    phase = 2 * np.pi * t / p
    cyc = np.cos(phase) if g.duty >= 0.5 else -np.cos(phase)
    tr.root[:, 1] = STAND_H - g.lower * env + g.bob * env * cyc
    tr.lean = 0.04 + (g.lean - 0.04) * env
    # arm swing: each wrist follows the opposite foot (in the body frame's forward axis)
    fwd = _apply(_ry(heading), np.array([0.0, 0.0, 1.0]))
    sep = np.sum((tr.ankles[:, 1] - tr.ankles[:, 0]) * fwd, -1)
    bend = g.arm_bend * env
    for a in range(2):
        sign = 1.0 if a == 0 else -1.0
        tr.wrists[:, a, 2] = HANG[2] + 0.22 * bend + g.arm_swing * sign * sep * 0.5
        tr.wrists[:, a, 1] = HANG[1] + 0.25 * bend
    end = State(float(xz[-1, 0]), float(xz[-1, 1]), float(heading[-1]))
    return tr, end


# ----------------------------------------------------------------------------------------------------------------
# Actions. Each returns (Track from and to a neutral stance, end State, Desc for the captions).
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Desc:
    """What an action did, for the captions: family name and alternative verb phrases (verb lemma, rest)."""
    family: str
    phrases: list[tuple[str, str]]
    info: dict = field(default_factory=dict)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


_SPEEDS = {"slow": ["slowly", "at a slow pace", "leisurely"], "normal": [""], "fast": ["quickly", "fast", "briskly"]}
_TIMES = {1: ["once"], 2: ["twice", "two times"], 3: ["three times", "thrice"], 4: ["four times"],
          5: ["five times"]}


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def act_walk(st: State, rng, budget: int):
    speed_name = _pick(rng, ["slow", "normal", "normal", "fast"])
    speed = {"slow": 0.8, "normal": 1.2, "fast": 1.6}[speed_name] * rng.uniform(0.9, 1.1)
    direction = _pick(rng, ["forward", "forward", "forward", "backward"])
    curve = _pick(rng, ["straight", "straight", "left", "right"]) if direction == "forward" else "straight"
    period = {"slow": 13, "normal": 11, "fast": 9}[speed_name]
    steps = int(rng.integers(4, 11))
    n = min(budget, (steps + 3) * period + 2)
    yaw = {"straight": 0.0, "left": np.pi / 2, "right": -np.pi / 2}[curve] * rng.uniform(0.7, 1.0)
    g = Gait(speed=speed if direction == "forward" else -0.7 * speed, yaw=yaw, period=period,
             arm_swing=0.8 if direction == "forward" else 0.4)
    tr, end = locomote(st, n, g)
    adv = _pick(rng, _SPEEDS[speed_name])
    dirw = "forward" if direction == "forward" else _pick(rng, ["backward", "backwards", "back"])
    curve_txt = "" if curve == "straight" else _pick(rng, [f"in a curve to the {curve}", f"while turning {curve}",
                                                           f"and veers to the {curve}"])
    phrases = [("walk", _join(dirw, adv, curve_txt)), ("walk", _join(adv, dirw, curve_txt)),
               (_pick(rng, ["stroll", "step", "move"]) if direction == "forward" else "step",
                _join(dirw, adv, curve_txt))]
    if direction == "forward" and curve == "straight":
        phrases.append(("walk", _join("straight", adv)))
        phrases.append(("take", _join(_pick(rng, ["a few", "several", "some"]), "steps forward", adv)))
    return tr, end, Desc("walk", phrases)


def act_run(st: State, rng, budget: int):
    speed_name = _pick(rng, ["slow", "normal", "fast"])
    speed = {"slow": 2.0, "normal": 2.6, "fast": 3.2}[speed_name] * rng.uniform(0.9, 1.1)
    curve = _pick(rng, ["straight", "straight", "left", "right"])
    period = {"slow": 8, "normal": 7, "fast": 6}[speed_name]
    steps = int(rng.integers(6, 15))
    n = min(budget, (steps + 5) * period + 2)
    yaw = {"straight": 0.0, "left": np.pi / 2, "right": -np.pi / 2}[curve] * rng.uniform(0.7, 1.0)
    g = Gait(speed=speed, yaw=yaw, period=period, duty=0.36, bob=0.035, lift=0.22, lower=0.05, lean=0.18,
             arm_swing=0.8, arm_bend=1.0)
    tr, end = locomote(st, n, g)
    adv = "" if speed_name == "normal" else _pick(rng, _SPEEDS[speed_name] if speed_name == "fast"
                                                  else ["slowly", "at a slow pace"])
    curve_txt = "" if curve == "straight" else _pick(rng, [f"in a curve to the {curve}", f"while turning {curve}"])
    verb = "jog" if speed_name == "slow" else "run"
    phrases = [(verb, _join("forward", adv, curve_txt)), ("run", _join(adv, "forward", curve_txt)),
               (_pick(rng, ["run", "jog", "sprint"]), _join("ahead", curve_txt))]
    return tr, end, Desc("run", phrases)


def act_jump(st: State, rng, budget: int):
    count = int(rng.integers(1, 4))
    height = rng.uniform(0.15, 0.40)
    dist = _pick(rng, [0.0, 0.0, rng.uniform(0.3, 0.8)])
    tr_parts, cur = [], st
    for _ in range(count):
        flight = max(6, int(round(2 * np.sqrt(2 * height / 9.81) * FPS)))
        crouch, push, land, rec = 9, 3, 6, 8
        n = crouch + push + flight + land + rec
        tr = standing(n, cur)
        t0 = crouch + push              # takeoff frame
        t1 = t0 + flight                # landing frame
        depth = 0.12 + 0.25 * height
        y = keyframes(n, [(0, STAND_H), (crouch, STAND_H - depth), (t0, STAND_H + 0.03)])
        u = np.clip((np.arange(n) - t0) / flight, 0, 1)
        y = np.where((np.arange(n) > t0) & (np.arange(n) < t1), STAND_H + 0.03 + 4 * height * u * (1 - u), y)
        after = keyframes(n, [(t1, STAND_H + 0.03), (t1 + land // 2 + 1, STAND_H - 0.7 * depth), (n - 1, STAND_H)])
        y = np.where(np.arange(n) >= t1, after, y)
        tr.root[:, 1] = y
        fwd = np.array([np.sin(cur.heading), np.cos(cur.heading)])
        move = u[:, None] * dist * fwd
        tr.root[:, 0] += move[:, 0]
        tr.root[:, 2] += move[:, 1]
        tr.ankles = neutral_feet(tr.root[:, [0, 2]], tr.heading)
        air = (np.arange(n) > t0) & (np.arange(n) < t1)
        tuck = 0.10 + 0.15 * height
        tr.ankles[:, :, 1] = ANKLE_H + np.where(air, (y - STAND_H - 0.03) + tuck * np.sin(np.pi * u), 0.0)[:, None]
        tr.foot_pitch[:, :] = FOOT_PITCH + np.where(air, 0.4 * np.sin(np.pi * u), 0.0)[:, None]
        tr.lean = keyframes(n, [(0, 0.04), (crouch, 0.45), (t0, 0.1), (t1, 0.1), (t1 + land, 0.35), (n - 1, 0.04)])
        arm_up = t0 + max(3, flight // 2)
        arm = keyframes(n, [(0, HANG), (crouch, [0.08, -0.40, -0.30]), (arm_up, [0.05, 0.05, 0.40]),
                            (t1, [0.05, -0.25, 0.35]), (n - 1, HANG)], arc=True)
        tr.wrists = np.stack([arm, arm], 1)
        tr_parts.append(tr)
        cur = State(float(tr.root[-1, 0]), float(tr.root[-1, 2]), cur.heading)
    pad = standing(int(rng.integers(4, 12)), cur)
    tr = Track.concat(tr_parts + [pad])
    times = _pick(rng, _TIMES[count]) if count > 1 else ""
    high = _pick(rng, ["high", "up high"]) if height > 0.32 else ("" if height > 0.2 else "a little")
    if dist > 0:
        phrases = [("jump", _join("forward", times)), ("leap", _join("forward", times)),
                   ("jump", _join("forward", "with both feet", times))]
    else:
        phrases = [("jump", _join("up", high, times)), ("jump", _join("in place", times)),
                   ("hop", _join("up and down", times) if count > 1 else "up"), ("jump", _join(high, times))]
    return tr, cur, Desc("jump", phrases, {"count": count})


def act_wave(st: State, rng, budget: int):
    hand = _pick(rng, ["left", "right", "right", "both"])
    waves = int(rng.integers(2, 6))
    per = int(rng.integers(8, 13))
    amp = rng.uniform(0.08, 0.18)
    up, down, hold = 10, 10, waves * per
    n = up + hold + down + int(rng.integers(2, 10))
    tr = standing(n, st)
    t = np.arange(n)
    raised = np.array([0.22, 0.38, 0.12])
    w = keyframes(n, [(0, HANG), (up, raised), (up + hold, raised), (up + hold + down, HANG)], arc=True)
    osc = np.where((t >= up) & (t < up + hold), amp * np.sin(2 * np.pi * (t - up) / per), 0.0)
    w[:, 0] += osc
    for a, name in enumerate(("left", "right")):
        if hand in (name, "both"):
            tr.wrists[:, a] = w
    what = {"left": "left hand", "right": "right hand", "both": "hands"}[hand]
    his = _pick(rng, ["his", "their", "the"])
    phrases = [("wave", _join(his, what)), ("wave", _join("with", his, what)),
               ("raise", _join(his, what, "and waves")), ("wave", "hello" if hand != "both" else "both hands")]
    if hand != "both":
        phrases.append(("wave", _join(hand, "hand", _pick(rng, ["in the air", "above the shoulder"]))))
    return tr, st, Desc("wave", phrases, {"side": hand})


def act_kick(st: State, rng, budget: int):
    leg = _pick(rng, ["left", "right"])
    count = int(rng.integers(1, 4))
    height = rng.uniform(0.25, 0.75)
    f = 0 if leg == "left" else 1
    per = int(rng.integers(18, 26))
    n = 8 + count * per + 8
    tr = standing(n, st)
    r = _ry(tr.heading)
    shift = keyframes(n, [(0, 0.0), (8, 1.0), (n - 9, 1.0), (n - 1, 0.0)])
    lat = _apply(r, np.array([-SIDE[f] * 0.06, 0.0, -0.03]))
    tr.root += shift[:, None] * lat
    base = tr.ankles[:, f].copy()
    off = np.zeros((n, 3))
    for k in range(count):
        s = 8 + k * per
        loc = keyframes(n, [(s, [0, 0, 0]), (s + 0.3 * per, [0, 0.15, -0.2]), (s + 0.55 * per, [0, height, 0.55]),
                            (s + 0.8 * per, [0, 0.12, 0.1]), (s + per, [0, 0, 0])])
        inside = (np.arange(n) >= s) & (np.arange(n) <= s + per)
        off[inside] = loc[inside]
    tr.ankles[:, f] = base + _apply(r, off)
    tr.foot_pitch[:, f] = FOOT_PITCH + 0.8 * np.clip(off[:, 1], 0, None) / max(height, 1e-3)
    tr.lean = 0.04 - 0.25 * np.clip(off[:, 1], 0, None)
    tr.wrists[:, :, 0] += 0.12 * shift[:, None]
    tr.wrists[:, 1 - f, 2] += 0.2 * np.clip(off[:, 2], 0, None)
    times = _pick(rng, _TIMES[count]) if count > 1 else ""
    high = "high" if height > 0.55 else ""
    phrases = [("kick", _join(high, "with", _pick(rng, ["his", "the", "their"]), leg, "leg", times)),
               ("kick", _join(_pick(rng, ["forward", "out"]), "with the", leg, "foot", times)),
               ("do", _join("a", high, leg, "kick", times)), ("kick", _join(leg, "leg forward", times))]
    return tr, st, Desc("kick", phrases, {"side": leg, "count": count})


def act_punch(st: State, rng, budget: int):
    hand = _pick(rng, ["left", "right", "both"])
    count = int(rng.integers(2, 6)) if hand == "both" else int(rng.integers(1, 5))
    per = int(rng.integers(9, 14))
    guard = np.array([-0.08, -0.12, 0.25])
    strike = np.array([-0.12, 0.02, 0.50])
    n = 10 + count * per + 10
    tr = standing(n, st)
    for a in range(2):
        tr.wrists[:, a] = keyframes(n, [(0, HANG), (9, guard), (n - 10, guard), (n - 1, HANG)])
    twist = np.zeros(n)
    for k in range(count):
        a = {"left": 0, "right": 1}.get(hand, k % 2)
        s = 10 + k * per
        seg = keyframes(n, [(s, guard), (s + 0.35 * per, strike), (s + 0.5 * per, strike), (s + per - 1, guard)])
        rows = np.arange(s, min(s + per, n))
        tr.wrists[rows, a] = seg[rows]
        tw = keyframes(n, [(s, 0.0), (s + 0.35 * per, 1.0), (s + 0.5 * per, 1.0), (s + per - 1, 0.0)])
        twist[rows] = -SIDE[a] * 0.3 * tw[rows]
    tr.twist = twist
    tr.lean[:] = 0.1
    times = _pick(rng, _TIMES[count]) if count > 1 else ""
    if hand == "both":
        phrases = [("punch", _join("with both fists", times)), ("throw", "punches with both hands"),
                   ("punch", _join("the air", _pick(rng, ["repeatedly", "alternating hands"]))),
                   ("box", "with both hands")]
    else:
        phrases = [("punch", _join("with", _pick(rng, ["his", "the", "their"]), hand, "hand", times)),
                   ("throw", _join("a", hand, "punch", times)),
                   ("punch", _join("forward with the", hand, "fist", times)),
                   ("jab", _join("with the", hand, "hand", times))]
    return tr, st, Desc("punch", phrases, {"side": hand, "count": count})


def act_squat(st: State, rng, budget: int):
    count = int(rng.integers(1, 4))
    depth = rng.uniform(0.2, 0.42)
    per = int(rng.integers(26, 40))
    arms_fwd = rng.random() < 0.6
    n = 4 + count * per + 4
    tr = standing(n, st)
    r = _ry(tr.heading)
    d = np.zeros(n)
    for k in range(count):
        s = 4 + k * per
        d += keyframes(n, [(s, 0.0), (s + 0.45 * per, 1.0), (s + 0.6 * per, 1.0), (s + per, 0.0)]) * \
            ((np.arange(n) >= s) & (np.arange(n) <= s + per))
    tr.root[:, 1] -= depth * d
    tr.root += _apply(r, np.array([0.0, 0.0, -0.3 * depth])) * d[:, None]
    tr.lean = 0.04 + 1.1 * depth * d
    if arms_fwd:
        w = HANG * (1 - d[:, None]) + np.array([-0.05, -0.05, 0.48]) * d[:, None]
        tr.wrists = np.stack([w, w], 1)
    times = _pick(rng, _TIMES[count]) if count > 1 else ""
    deep = "deep" if depth > 0.34 else ""
    phrases = [("squat", _join("down", times)), ("do", _join("a", deep, "squat") if count == 1 else
                                                 _join(str({2: "two", 3: "three"}[count]), deep, "squats")),
               ("crouch", _join("down and stands back up", times)), ("bend", _join("his knees and squats", times))]
    if arms_fwd:
        phrases.append(("squat", _join("with arms stretched forward", times)))
    return tr, st, Desc("squat", phrases, {"count": count})


def act_sit(st: State, rng, budget: int):
    stand_up = rng.random() < 0.4
    down = int(rng.integers(28, 42))
    hold = int(rng.integers(15, 40))
    n = down + hold + (down if stand_up else 0) + 4
    tr = standing(n, st)
    r = _ry(tr.heading)
    seat = rng.uniform(0.48, 0.58)
    keys = [(0, 0.0), (down, 1.0)] + ([(down + hold, 1.0), (2 * down + hold, 0.0)] if stand_up else [])
    d = keyframes(n, keys)
    lean_keys = [(0, 0.04), (0.6 * down, 0.6), (down, 0.15)]
    if stand_up:
        lean_keys += [(down + hold, 0.15), (down + hold + 0.4 * down, 0.6), (2 * down + hold, 0.04)]
    tr.lean = keyframes(n, lean_keys)
    tr.root[:, 1] = STAND_H + (seat - STAND_H) * d
    tr.root += _apply(r, np.array([0.0, 0.0, -0.30])) * d[:, None]
    w = HANG * (1 - d[:, None]) + np.array([-0.02, -0.42, 0.30]) * d[:, None]
    tr.wrists = np.stack([w, w], 1)
    obj = _pick(rng, ["", "on a chair", "on a chair", "on something"])
    if stand_up:
        phrases = [("sit", _join("down", obj, "and then stands up")), ("sit", _join("down and gets back up")),
                   ("take", "a seat and stands up again")]
    else:
        phrases = [("sit", _join("down", obj)), ("take", _join("a seat")), ("lower", "himself into a chair"),
                   ("sit", _join("down slowly", obj))]
    return tr, st, Desc("sit", phrases, {"stand_up": stand_up})


def act_turn(st: State, rng, budget: int):
    side = _pick(rng, ["left", "right"])
    amount = _pick(rng, [90, 90, 180, 180, 360])
    period = int(rng.integers(9, 13))
    steps = {90: 3, 180: 5, 360: 9}[amount]
    n = min(budget, (steps + 3) * period + 2)
    yaw = np.deg2rad(amount) * (1 if side == "left" else -1)
    tr, end = locomote(st, n, Gait(speed=0.0, yaw=yaw, period=period, lift=0.07, arm_swing=0.2, bob=0.008))
    clock = "counterclockwise" if side == "left" else "clockwise"
    if amount == 180:
        phrases = [("turn", _join("around to the", side)), ("turn", _join("around", clock)),
                   ("turn", _join("to face the opposite direction"))]
    elif amount == 360:
        phrases = [("turn", _join("in a full circle to the", side)), ("spin", _join("around", clock)),
                   ("turn", "all the way around")]
    else:
        phrases = [("turn", _join("to the", side)), ("turn", _join(side)), ("rotate", _join(clock)),
                   ("turn", _join("ninety degrees to the", side))]
    return tr, end, Desc("turn", phrases, {"side": side, "amount": amount})


def act_raise(st: State, rng, budget: int):
    which = _pick(rng, ["left", "right", "both", "both"])
    how = _pick(rng, ["up", "forward", "sideways"])
    lower = rng.random() < 0.7
    up, hold = int(rng.integers(10, 20)), int(rng.integers(10, 35))
    n = up + hold + (up if lower else 0) + int(rng.integers(4, 10))
    tr = standing(n, st)
    target = {"up": np.array([0.06, 0.50, 0.06]), "forward": np.array([-0.02, 0.02, 0.50]),
              "sideways": np.array([0.50, 0.03, 0.02])}[how]
    keys = [(0, HANG), (up, target), (up + hold, target)] + ([(2 * up + hold, HANG)] if lower else [])
    w = keyframes(n, keys, arc=True)
    for a, name in enumerate(("left", "right")):
        if which in (name, "both"):
            tr.wrists[:, a] = w
    what = {"left": "left arm", "right": "right arm", "both": "both arms"}[which]
    where = {"up": _pick(rng, ["up", "above the head", "over the head"]),
             "forward": _pick(rng, ["forward", "in front of the body"]),
             "sideways": _pick(rng, ["out to the side" if which != "both" else "out to the sides", "sideways"])}[how]
    after = _pick(rng, ["and lowers it" if which != "both" else "and lowers them", "and puts it down"
                        if which != "both" else "then puts them down"]) if lower else ""
    phrases = [("raise", _join(what, where, after)), ("lift", _join(what, where, after)),
               ("raise", _join(_pick(rng, ["his", "their"]), what.replace("both ", ""), where, after))]
    return tr, st, Desc("raise", phrases, {"side": which, "how": how})


def act_clap(st: State, rng, budget: int):
    count = int(rng.integers(2, 7))
    per = int(rng.integers(7, 11))
    n = 10 + count * per + 10
    tr = standing(n, st)
    t = np.arange(n)
    closed = np.array([-0.15, -0.16, 0.30])
    opened = np.array([0.05, -0.14, 0.27])
    base = keyframes(n, [(0, HANG), (10, opened), (n - 10, opened), (n - 1, HANG)])
    c = np.where((t >= 10) & (t < n - 10), 0.5 - 0.5 * np.cos(2 * np.pi * (t - 10) / per), 0.0)
    w = base + c[:, None] * (closed - opened)
    tr.wrists = np.stack([w, w], 1)
    times = _pick(rng, _TIMES.get(count, ["several times"])) if count <= 5 else "several times"
    phrases = [("clap", _join(_pick(rng, ["his", "their"]), "hands", times)), ("clap", _join(times)),
               ("clap", _join("hands in front of the chest", times)), ("applaud", "")]
    return tr, st, Desc("clap", phrases, {"count": count})


def act_sidestep(st: State, rng, budget: int):
    side = _pick(rng, ["left", "right"])
    steps = int(rng.integers(3, 8))
    period = int(rng.integers(11, 16))
    n = min(budget, (steps + 3) * period + 2)
    g = Gait(speed=0.0, lateral=(0.45 if side == "left" else -0.45) * rng.uniform(0.8, 1.2), period=period,
             lift=0.06, arm_swing=0.1, bob=0.008)
    tr, end = locomote(st, n, g)
    phrases = [("side", _join("steps to the", side)), ("step", _join("sideways to the", side)),
               ("shuffle", _join("to the", side)), ("move", _join(side, "with side steps"))]
    return tr, end, Desc("side_step", phrases, {"side": side})


FAMILIES: dict[str, Callable] = {
    "walk": act_walk, "run": act_run, "jump": act_jump, "wave": act_wave, "kick": act_kick, "punch": act_punch,
    "squat": act_squat, "sit": act_sit, "turn": act_turn, "raise": act_raise, "clap": act_clap,
    "side_step": act_sidestep,
}
# actions that may open or close a two-action sequence
SEQ_FIRST = ("walk", "run", "turn", "side_step", "jump", "squat", "wave", "clap", "kick")
SEQ_SECOND = ("jump", "wave", "kick", "punch", "squat", "sit", "turn", "raise", "clap", "walk")


# ----------------------------------------------------------------------------------------------------------------
# Captions: templates, verb forms and the POS lexicon (HumanML3D token format, reference.md §1.2)
# ----------------------------------------------------------------------------------------------------------------
VERB_FORMS: dict[str, tuple[str, str]] = {   # lemma -> (3rd person singular, -ing)
    "walk": ("walks", "walking"), "stroll": ("strolls", "strolling"), "step": ("steps", "stepping"),
    "move": ("moves", "moving"), "take": ("takes", "taking"), "run": ("runs", "running"),
    "jog": ("jogs", "jogging"), "sprint": ("sprints", "sprinting"), "jump": ("jumps", "jumping"),
    "leap": ("leaps", "leaping"), "hop": ("hops", "hopping"), "wave": ("waves", "waving"),
    "raise": ("raises", "raising"), "lift": ("lifts", "lifting"), "kick": ("kicks", "kicking"),
    "do": ("does", "doing"), "punch": ("punches", "punching"), "throw": ("throws", "throwing"),
    "jab": ("jabs", "jabbing"), "box": ("boxes", "boxing"), "squat": ("squats", "squatting"),
    "crouch": ("crouches", "crouching"), "bend": ("bends", "bending"), "sit": ("sits", "sitting"),
    "lower": ("lowers", "lowering"), "turn": ("turns", "turning"), "spin": ("spins", "spinning"),
    "rotate": ("rotates", "rotating"), "clap": ("claps", "clapping"), "applaud": ("applauds", "applauding"),
    "side": ("side", "side"), "shuffle": ("shuffles", "shuffling"),
}
_VERB_3SG = {v[0] for v in VERB_FORMS.values()}

SUBJECTS = ("a person", "a person", "the person", "a man", "a woman", "someone", "a human", "the man", "a figure")
_FEMALE = {"a woman"}

_LEX_SPEC = {
    # surface words -> (token word, POS); NOUN / VERB tokens are lemmas, `left` is never lemmatised.
    "DET": "a an the both some all",
    "NOUN": "person man woman human figure hand:hands arm:arms leg:legs foot:feet fist:fists knee:knees head "
            "side:sides chair circle curve place air pace seat step:steps squat:squats kick punch:punches "
            "time:times direction body chest degree:degrees shoulder way hello",
    "ADP": "to with in on into of above over around after out at",
    "ADV": "forward backward backwards back slowly quickly fast briskly leisurely straight ahead then again once "
           "twice thrice sideways repeatedly first up down clockwise counterclockwise",
    "ADJ": "left right slow high deep full opposite several few front little",
    "NUM": "two three four five ninety",
    "CCONJ": "and",
    "PRON": "his her their himself herself someone something it them that",
    "SCONJ": "while",
    "AUX": "is",
    "VERB": "get:gets stand:stands alternate:alternating veer:veers put:puts stretch:stretched face",
}


def _build_lexicon() -> dict[str, tuple[str, str]]:
    lex: dict[str, tuple[str, str]] = {}
    for pos, spec in _LEX_SPEC.items():
        for item in spec.split():
            lemma, *surfaces = item.split(":")
            for w in [lemma] + surfaces:
                lex[w] = (lemma, pos)
    lex["hello"] = ("hello", "INTJ")
    for lemma, (s3, ing) in VERB_FORMS.items():
        if lemma == "side":
            continue
        for w in (lemma, s3, ing):
            lex.setdefault(w, (lemma, "VERB"))
    for w in ("squat", "kick", "punch"):   # the bare forms only occur as nouns ("a high kick")
        lex[w] = (w, "NOUN")
    for w in ("squats", "steps"):          # mostly verbs ("squats down", "steps sideways")
        lex[w] = (w[:-1], "VERB")
    lex["left"] = ("left", "ADJ")
    return lex


LEXICON = _build_lexicon()

# synonym groups: words of a group get nearby GloVe vectors
SYNONYM_GROUPS = (
    ("walk", "stroll", "step", "move", "pace"), ("run", "jog", "sprint"), ("jump", "leap", "hop"),
    ("person", "man", "woman", "human", "figure", "someone"), ("slowly", "slow", "leisurely"),
    ("quickly", "fast", "briskly"), ("raise", "lift", "up"), ("squat", "crouch", "bend", "knee"),
    ("sit", "seat", "chair"), ("punch", "jab", "box", "fist", "throw"), ("turn", "rotate", "spin", "around"),
    ("clap", "applaud"), ("side", "sideways", "shuffle"), ("hand", "arm"), ("leg", "foot"),
    ("his", "her", "their", "himself", "herself"), ("back", "backward", "backwards"), ("forward", "ahead"),
    ("once", "twice", "thrice", "time", "repeatedly"), ("two", "three", "four", "five", "ninety"),
)


def tokenize(caption: str) -> list[str]:
    """Caption -> HumanML3D tokens ``word/POS`` (punctuation and non-alphabetic words dropped)."""
    out = []
    for raw in caption.replace("-", "").lower().split():
        w = "".join(ch for ch in raw if ch.isalpha())
        if not w:
            continue
        if w not in LEXICON:
            raise KeyError(f"datasets/mini.py: caption word {w!r} (in {caption!r}) is not in LEXICON; add it")
        lemma, pos = LEXICON[w]
        out.append(f"{lemma}/{pos}")
    return out


def _clause(verb: str, rest: str, form: str) -> str:
    if verb == "side":   # "side steps" is a two-word verb
        return _join("side steps" if form == "3sg" else "is side stepping", rest.split(" ", 1)[1])
    s3, ing = VERB_FORMS[verb]
    return _join(s3 if form == "3sg" else f"is {ing}", rest)


def _progressive_ok(rest: str) -> bool:
    return not any(w in _VERB_3SG or w in ("stands", "gets", "veers", "puts") for w in rest.split())


def _fix_gender(text: str, subject: str) -> str:
    if subject in _FEMALE:
        text = f" {text} ".replace(" his ", " her ").replace(" himself ", " herself ").strip()
    return text


def make_captions(rng, descs: list[Desc], count: int) -> list[str]:
    """`count` distinct whole-clip captions of one action or an action sequence."""
    captions: list[str] = []
    for _ in range(30):
        subject = _pick(rng, SUBJECTS)
        clauses = []
        form = "3sg"
        picks = [d.phrases[int(rng.integers(len(d.phrases)))] for d in descs]
        if len(descs) == 1 and _progressive_ok(picks[0][1]) and rng.random() < 0.3:
            form = "prog"
        for verb, rest in picks:
            clauses.append(_clause(verb, rest, form))
        if len(clauses) == 1:
            text = f"{subject} {clauses[0]}"
        else:
            link = _pick(rng, [" and then ", ", then ", " and then ", " and after that "])
            first = _pick(rng, ["", "first "])
            text = f"{subject} {first}{clauses[0]}{link}{clauses[1]}"
        text = _fix_gender(text, subject)
        if rng.random() < 0.5:
            text += "."
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            break
    return captions


# ----------------------------------------------------------------------------------------------------------------
# One motion
# ----------------------------------------------------------------------------------------------------------------
# every 5th motion is a two-action sequence: family cycle of 12 single families + 3 sequence slots
FAMILY_CYCLE = tuple(FAMILIES) + ("sequence",) * 3


@dataclass
class MiniMotion:
    """One generated clip: joints (T, 22, 3), caption lines (caption, start_s, end_s), its family."""
    joints: np.ndarray
    captions: list[tuple[str, float, float]]
    family: str


def _seconds(frame: int) -> float:
    """Seconds for a frame boundary that the loader's int(s * 20) maps back to exactly that frame."""
    s = round(frame / FPS, 2)
    return s if int(s * FPS) == frame else round((frame + 0.5) / FPS, 3)


def make_motion(seed: int, index: int) -> MiniMotion:
    """Motion `index` of the dataset for `seed` (independent of all other motions)."""
    rng = np.random.default_rng([seed, index])
    family = FAMILY_CYCLE[index % len(FAMILY_CYCLE)]
    st = State(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(-np.pi, np.pi)))
    for _attempt in range(50):
        pre = int(rng.integers(0, 10))
        if family == "sequence":
            first = _pick(rng, SEQ_FIRST)
            second = _pick(rng, [f for f in SEQ_SECOND if f != first])
            tr_a, mid, d_a = FAMILIES[first](st, rng, 100)
            gap = int(rng.integers(0, 6))
            tr_b, _, d_b = FAMILIES[second](mid, rng, MAX_LEN + 1 - pre - len(tr_a) - gap)
            parts = [standing(pre, st), tr_a, standing(gap, mid), tr_b]
            descs, bounds = [d_a, d_b], [pre + len(tr_a), pre + len(tr_a) + gap]
        else:
            tr_a, mid, d_a = FAMILIES[family](st, rng, MAX_LEN + 1 - pre)
            parts, descs, bounds = [standing(pre, st), tr_a], [d_a], []
        n = sum(len(p) for p in parts)
        post = int(rng.integers(0, 10)) + max(0, MIN_LEN + 1 - n - 9)
        n += post
        if MIN_LEN + 1 <= n <= MAX_LEN + 1:
            break
    else:
        raise RuntimeError(f"datasets/mini.py: could not fit motion {index} ({family}) into {MIN_LEN}..{MAX_LEN} "
                           "frames")
    joints = pose(hold_last(Track.concat(parts), post))
    lines = [(c, 0.0, 0.0) for c in make_captions(rng, descs, int(rng.integers(2, 4)))]
    if family == "sequence":
        rows = len(joints) - 1          # feature rows; sub-clips index the feature array
        for d, (a, b) in zip(descs, [(0, bounds[0]), (bounds[1], rows)]):
            if b - a >= MIN_LEN:
                caption = make_captions(rng, [d], 1)[0]
                lines.append((caption, _seconds(a), _seconds(b)))
        family = f"{descs[0].family}+{descs[1].family}"
    return MiniMotion(joints=joints.astype(np.float32), captions=lines, family=family)


_MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def _mirror_word(word: str) -> str:
    """left <-> right, clockwise <-> counterclockwise, keeping a capital first letter ("Left" -> "Right")."""
    swapped = _MIRROR_WORDS.get(word.lower())
    if swapped is None:
        return word
    return swapped.capitalize() if word[:1].isupper() else swapped


def mirror_tokens(tokens: str) -> str:
    """The POS-token field of a text line (`word/POS ...`) for the mirrored motion: each token's word mirrored."""
    out = []
    for tok in tokens.split(" "):
        word, sep, pos = tok.partition("/")
        out.append(_mirror_word(word) + sep + pos)
    return " ".join(out)


def mirror_caption(caption: str) -> str:
    """The caption of the left/right mirrored motion: left <-> right, clockwise <-> counterclockwise.

    Given a whole text line `caption#tokens#start#end`, the POS tokens are mirrored too (and start/end kept), so the
    line stays consistent with its caption."""
    if "#" in caption:
        fields = caption.split("#")
        fields[0] = mirror_caption(fields[0])
        if len(fields) > 1:
            fields[1] = mirror_tokens(fields[1])
        return "#".join(fields)
    out = []
    for raw in caption.split(" "):
        core = raw.rstrip(".,")
        out.append(_mirror_word(core) + raw[len(core):])
    return " ".join(out)


def format_text_line(caption: str, start: float, end: float) -> str:
    """`caption#tok/POS ...#start#end` (reference.md §1.2)."""
    return f"{caption}#{' '.join(tokenize(caption))}#{start}#{end}"


# ----------------------------------------------------------------------------------------------------------------
# GloVe table, statistics, splits, writer
# ----------------------------------------------------------------------------------------------------------------
def glove_table() -> tuple[list[str], np.ndarray]:
    """Vocabulary (sos, eos, unk, then every lexicon token word, sorted) and its (V, 300) float32 vectors."""
    words = list(SPECIAL_WORDS) + sorted({lemma for lemma, _ in LEXICON.values()} - set(SPECIAL_WORDS))

    def seeded(name: str) -> np.ndarray:
        h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        return np.random.default_rng(h).normal(0.0, 0.4, WORD_DIM)

    group_of = {w: g for g in SYNONYM_GROUPS for w in g}
    vecs = []
    for w in words:
        v = seeded("word:" + w)
        if w in group_of:
            v = 0.8 * seeded("group:" + " ".join(group_of[w])) + 0.6 * v
        vecs.append(v)
    return words, np.stack(vecs).astype(np.float32)


FEATURE_GROUPS_T2M = ((0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263))  # reference.md §1.5


def mean_std(features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean (263,) and Std (263,) over all rows, Std replaced by its mean within each of the 7 groups (§1.5)."""
    data = np.concatenate(features, 0).astype(np.float64)
    mean, std = data.mean(0), data.std(0)
    for a, b in FEATURE_GROUPS_T2M:
        std[a:b] = std[a:b].mean()
    std = np.where(std > 1e-8, std, 1.0)   # a constant group (impossible with real data) must not divide by 0
    return mean.astype(np.float32), std.astype(np.float32)


def split_ids(ids: list[str], seed: int) -> dict[str, list[str]]:
    """80 / 5 / 15 % train / val / test by motion (each split sorted), plus train_val and all."""
    order = np.random.default_rng([seed, 10 ** 9]).permutation(len(ids))
    n_val = max(1, round(0.05 * len(ids)))
    n_test = max(1, round(0.15 * len(ids)))
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test:n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val:])
    return {"train": train, "val": val, "test": test, "train_val": sorted(train + val), "all": sorted(ids)}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


@dataclass
class MiniSummary:
    out: Path
    num_motions: int
    families: dict[str, int]
    splits: dict[str, int]
    vocabulary: int
    captions: int
    seconds: float


def _build_one(job: tuple[int, int, bool]) -> list[tuple[str, np.ndarray, np.ndarray, list[str], str]]:
    """Motion `index` for `seed` -> [(id, features (T-1, 263), recovered joints (T-1, 22, 3), text lines, family)],
    followed by its mirrored copy `M<id>` when asked (reference.md §1.1)."""
    from datasets.representation import default_target_offsets, features_to_joints, joints_to_features, mirror_joints

    seed, index, mirror = job
    m = make_motion(seed, index)
    versions = [(f"{index:06d}", m.joints, m.captions)]
    if mirror:
        versions.append((f"M{index:06d}", mirror_joints(m.joints),
                         [(mirror_caption(c), a, b) for c, a, b in m.captions]))
    out = []
    for motion_id, joints, captions in versions:
        x = joints_to_features(joints, default_target_offsets("t2m")).astype(np.float32)
        recovered = np.asarray(features_to_joints(x), dtype=np.float32)
        out.append((motion_id, x, recovered, [format_text_line(*c) for c in captions], m.family))
    return out


def write_mini_dataset(out: str | os.PathLike, num_motions: int = 2000, seed: int = 0, overwrite: bool = False,
                       progress: bool = False, workers: int = 1, mirror: bool = False) -> MiniSummary:
    """Write the mini dataset to `out` in the HumanML3D layout (reference.md §1.1).

    The folder is built next to `out` under a temporary name and renamed into place at the end, so `out` is
    either complete or untouched. An existing non-empty `out` is refused unless `overwrite`. `workers` > 1
    builds motions in that many processes; the files are identical for any number of workers. `mirror` adds the
    left/right mirror `M<id>` of every motion (mirrored captions), in the same split as its original.
    """
    t_start = time.perf_counter()
    if num_motions < 3:
        raise ValueError(f"datasets/mini.py: --num-motions must be at least 3 (one per split), got {num_motions}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"datasets/mini.py: --out {out} is a file, expected a folder (or a path that does "
                              "not exist yet)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"datasets/mini.py: {out} exists and is not empty; pass --overwrite to replace it "
                              "or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for sub in ("new_joint_vecs", "new_joints", "texts"):
            (tmp / sub).mkdir()
        feats: dict[str, np.ndarray] = {}
        families: Counter = Counter()
        n_captions = 0
        jobs = [(seed, i, mirror) for i in range(num_motions)]
        if workers > 1:
            import multiprocessing as mp
            pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers)
            results = pool.imap(_build_one, jobs, chunksize=8)   # ordered, so the output does not depend on workers
        else:
            pool, results = None, map(_build_one, jobs)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=num_motions, desc="mini motions", unit="motion")
        try:
            for versions in results:
                for motion_id, x, joints, lines, family in versions:
                    feats[motion_id] = x
                    _save_npy(tmp / "new_joint_vecs" / f"{motion_id}.npy", x)
                    _save_npy(tmp / "new_joints" / f"{motion_id}.npy", joints)
                    (tmp / "texts" / f"{motion_id}.txt").write_text("\n".join(lines) + "\n")
                    families["sequence" if "+" in family else family] += 1
                    n_captions += len(lines)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        splits = split_ids([f"{i:06d}" for i in range(num_motions)], seed)
        if mirror:
            splits = {k: sorted(v + [f"M{i}" for i in v]) for k, v in splits.items()}
        for name, members in splits.items():
            (tmp / f"{name}.txt").write_text("\n".join(members) + "\n")
        mean, std = mean_std([feats[i] for i in splits["train"]])
        _save_npy(tmp / "Mean.npy", mean)
        _save_npy(tmp / "Std.npy", std)
        words, vectors = glove_table()
        write_glove_folder(tmp / "glove", words, vectors)
        info = {"name": "mini", "procedural": True, "seed": seed, "num_motions": num_motions,
                "note": "procedural mini dataset (datasets/mini.py): numbers are smoke tests, never comparable to "
                        "paper tables"}
        (tmp / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MiniSummary(out=out, num_motions=len(feats), families=dict(sorted(families.items())),
                       splits={k: len(v) for k, v in splits.items()}, vocabulary=len(words), captions=n_captions,
                       seconds=time.perf_counter() - t_start)


def write_preview(root: str | os.PathLike, path: str | os.PathLike, per_family: int = 1) -> Path:
    """Contact sheet PNG of the first `per_family` motions of every family of a written mini dataset."""
    from utils.plot import plot_contact_sheet

    root = Path(root)
    ids = sorted(p.stem for p in (root / "new_joint_vecs").glob("[0-9]*.npy"))
    chosen: dict[str, list[str]] = {}
    for motion_id in ids:
        family = FAMILY_CYCLE[int(motion_id) % len(FAMILY_CYCLE)]
        if len(chosen.setdefault(family, [])) < per_family:
            chosen[family].append(motion_id)
    picked = [i for fam in FAMILY_CYCLE if fam in chosen for i in dict.fromkeys(chosen[fam])]
    picked = list(dict.fromkeys(picked))
    joints = [np.load(root / "new_joints" / f"{i}.npy") for i in picked]
    titles = [f"{i}: " + (root / "texts" / f"{i}.txt").read_text().split("#", 1)[0] for i in picked]
    return plot_contact_sheet(joints, path, titles=titles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.mini",
        description="Write the procedural mini text-motion dataset in the HumanML3D layout (new_joint_vecs/, "
                    "new_joints/, texts/, split files, Mean.npy/Std.npy, glove/). Deterministic for a seed.")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/mini")
    parser.add_argument("--num-motions", type=int, default=2000, help="number of motions (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    parser.add_argument("--mirror", action="store_true",
                        help="also write the left/right mirror M<id> of every motion (HumanML3D style)")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="also render a contact sheet of one motion per family to this PNG")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes building motions (default 1; the output is identical for any value)")
    args = parser.parse_args(argv)
    from utils.config import writable_problem

    problem = writable_problem(args.out, "--out folder")      # before minutes of generation
    if problem is None and args.preview and Path(args.preview).suffix.lower() not in (".png", ".jpg", ".jpeg",
                                                                                     ".pdf", ".svg"):
        problem = f"--preview {args.preview}: expected an image file name (.png, .jpg, .jpeg, .pdf or .svg)"
    if problem is None and args.preview:
        problem = writable_problem(Path(args.preview).parent, "--preview folder")
    if problem:
        print(f"python -m datasets.mini: error: {problem}", file=sys.stderr)
        return 2
    try:
        s = write_mini_dataset(args.out, args.num_motions, args.seed, args.overwrite, progress=True,
                               workers=args.workers, mirror=args.mirror)
    except (FileExistsError, ValueError) as err:
        print(f"python -m datasets.mini: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"python -m datasets.mini: error: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {s.num_motions} motions, {s.captions} captions to {s.out} in {s.seconds:.1f} s")
    print("families: " + ", ".join(f"{k} {v}" for k, v in s.families.items()))
    print("splits: " + ", ".join(f"{k} {v}" for k, v in s.splits.items()) + f"; vocabulary {s.vocabulary} words")
    if args.preview:
        print(f"preview: {write_preview(s.out, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
