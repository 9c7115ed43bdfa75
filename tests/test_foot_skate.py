"""Foot skating ratio against hand-made cases, and the cleanup removing the slide of planted feet."""
from __future__ import annotations

import numpy as np
import pytest

from utils.foot_skate import clean_foot_skate, skating_ratio


def standing(T: int = 21) -> np.ndarray:
    """A T-frame pose: joints at height 1 m except the four foot joints on the floor (y = 0)."""
    j = np.zeros((T, 22, 3))
    j[:, :, 1] = 1.0
    j[:, [7, 8, 10, 11], 1] = 0.0
    j[:, :, 0] = np.arange(22)[None, :] * 0.01
    return j


def test_a_body_gliding_on_planted_feet_skates_every_frame_and_the_cleanup_fixes_it():
    glide = standing()
    glide[:, :, 0] += np.arange(21)[:, None] * 0.05              # 5 cm per frame, feet on the floor
    assert skating_ratio(glide) == pytest.approx(1.0)
    clean = clean_foot_skate(glide)
    assert skating_ratio(clean) == pytest.approx(0.0)
    np.testing.assert_allclose(clean[:, 7], glide[0, 7][None].repeat(21, 0), atol=1e-12)    # the foot stays put
    np.testing.assert_allclose(clean[5] - clean[5, 0], glide[5] - glide[5, 0], atol=1e-12)  # the pose is unchanged


def test_slow_sliding_and_lifted_feet_do_not_count():
    slow = standing()
    slow[:, :, 0] += np.arange(21)[:, None] * 0.02               # 2 cm per frame: below the 2.5 cm threshold
    assert skating_ratio(slow) == 0.0
    flying = standing()
    flying[:, :, 1] += 0.2 * (np.arange(21)[:, None] > 0)       # lifted 20 cm after frame 0 ...
    flying[:, :, 0] += np.arange(21)[:, None] * 0.1              # ... and moving fast: not in contact
    assert skating_ratio(flying) == 0.0
    # thresholds scale with the frame rate: 2 cm per frame at 10 fps is 4 cm per frame at 20 fps
    assert skating_ratio(slow, fps=10.0) == 0.0 and skating_ratio(slow, fps=40.0) == pytest.approx(1.0)


def test_walking_in_place_is_not_moved_and_bad_shapes_are_refused():
    still = standing()
    np.testing.assert_allclose(clean_foot_skate(still), still)
    with pytest.raises(ValueError, match=r"joints must have shape \(T, 22, 3\)"):
        skating_ratio(np.zeros((5, 21, 3)))
