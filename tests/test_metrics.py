"""The standard T2M metrics against hand-computed values and closed forms (reference.md §4)."""
import numpy as np
import pytest

from utils import metrics


def test_distance_matrix_matches_pairwise_norms():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    expected = np.array([[np.linalg.norm(x - y) for y in b] for x in a])
    np.testing.assert_allclose(metrics.euclidean_distance_matrix(a, b), expected, rtol=1e-10)
    # identical rows: exactly zero, never NaN from negative round-off
    assert np.all(np.isfinite(metrics.euclidean_distance_matrix(a, a)))
    np.testing.assert_allclose(np.diag(metrics.euclidean_distance_matrix(a, a)), 0.0, atol=1e-6)


def test_r_precision_identity_is_perfect():
    emb = np.eye(32) * 10.0
    np.testing.assert_array_equal(metrics.r_precision(emb, emb, top_k=3), [1.0, 1.0, 1.0])


def test_r_precision_hand_made_ranks():
    # text i is closest to motion perm[i]; the true motion i is 2nd closest for texts 0,1 and 3rd for text 2
    text = np.array([[0.0], [10.0], [20.0], [30.0]])
    motion = np.array([[1.5], [12.0], [23.0], [30.0]])   # distances designed below
    # text 0 (0): motions at 1.5, 12, 23, 30 -> motion 0 first
    # text 1 (10): |10-1.5|=8.5, 2, 13, 20 -> motion 1 first
    # text 2 (20): 18.5, 8, 3, 10 -> motion 2 first
    # text 3 (30): 28.5, 18, 7, 0 -> motion 3 first
    np.testing.assert_array_equal(metrics.r_precision(text, motion, 3), [1, 1, 1])
    motion2 = np.array([[9.0], [0.0], [30.0], [21.0]])
    # text0: d = 9, 0, 30, 21 -> order 1,0,... : rank of 0 is 2nd
    # text1: d = 1, 10, 20, 11 -> 0,1 : rank 2nd
    # text2: d = 11, 20, 10, 1 -> 3,2 : rank 2nd
    # text3: d = 21, 30, 0, 9 -> 2,3 : rank 2nd
    np.testing.assert_allclose(metrics.r_precision(text, motion2, 3), [0.0, 1.0, 1.0])
    motion3 = np.array([[1.0], [10.5], [2.0], [29.0]])
    # text2 (20): d = 19, 9.5, 18, 9 -> 3,1,2 : rank 3rd; the others are 1st
    np.testing.assert_allclose(metrics.r_precision(text, motion3, 3), [0.75, 0.75, 1.0])


def test_r_precision_opposite_motions_drop_to_zero():
    # texts on a circle, each true motion diametrically opposite: the farthest of 8
    ang = 2 * np.pi * np.arange(8) / 8
    text = np.stack([np.cos(ang), np.sin(ang)], 1)
    np.testing.assert_array_equal(metrics.r_precision(text, -text, 3), [0, 0, 0])
    # a permutation of the batch changes nothing when applied to both sides
    perm = np.random.default_rng(0).permutation(8)
    np.testing.assert_array_equal(metrics.r_precision(text[perm], text[perm], 3), [1, 1, 1])


def test_mm_dist_is_mean_paired_distance():
    text = np.array([[0.0, 0.0], [1.0, 1.0]])
    motion = np.array([[3.0, 4.0], [1.0, 1.0]])
    assert metrics.mm_dist(text, motion) == pytest.approx((5.0 + 0.0) / 2)


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # diagonal: sum (s1 - s2)^2 over standard deviations + |mu1-mu2|^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-9)   # 1 + 0 + 4 + (1 + 1 + 4) = 11
    assert expected == pytest.approx(11.0)


def test_fid_on_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal([3.0, 0.0], [2.0, 1.0], size=(20000, 2))
    expected = 9.0 + (1.0 - 2.0) ** 2 + 0.0
    assert metrics.fid(b, a) == pytest.approx(expected, rel=0.03)


def test_fid_singular_covariance_uses_eps_retry_and_real_part():
    # rank-deficient covariances (fewer samples than dims) still give a finite real number
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    value = metrics.fid(a, b)
    assert np.isfinite(value) and isinstance(value, float)


def test_diversity_pairs_and_seed_reproducibility():
    # all rows at distance 0 or 1 from each other: points on two locations
    emb = np.concatenate([np.zeros((50, 3)), np.ones((50, 3))])
    d1 = metrics.diversity(emb, times=20, rng=5)
    d2 = metrics.diversity(emb, times=20, rng=np.random.default_rng(5))
    assert d1 == d2
    assert 0.0 <= d1 <= np.sqrt(3)
    # constant embeddings: zero diversity
    assert metrics.diversity(np.ones((10, 4)), times=10, rng=0) == 0.0


def test_diversity_equals_hand_computed_pairs():
    emb = np.random.default_rng(0).normal(size=(30, 4))
    rng = np.random.default_rng(9)
    i, j = rng.choice(30, 10, replace=False), rng.choice(30, 10, replace=False)
    expected = np.mean([np.linalg.norm(emb[a] - emb[b]) for a, b in zip(i, j)])
    assert metrics.diversity(emb, times=10, rng=9) == pytest.approx(expected)


def test_diversity_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="at least times=300"):
        metrics.diversity(np.zeros((100, 4)), times=300)


def test_multimodality_hand_computed():
    emb = np.random.default_rng(0).normal(size=(4, 12, 3))
    rng = np.random.default_rng(4)
    i, j = rng.choice(12, 5, replace=False), rng.choice(12, 5, replace=False)
    expected = np.mean([[np.linalg.norm(emb[t, a] - emb[t, b]) for a, b in zip(i, j)] for t in range(4)])
    assert metrics.multimodality(emb, times=5, rng=4) == pytest.approx(expected)
    # identical repeats: zero multimodality
    assert metrics.multimodality(np.repeat(emb[:, :1], 12, axis=1), times=5, rng=0) == 0.0


def test_mean_ci_formula():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, conf = metrics.mean_ci(values)
    assert mean == 2.5
    assert conf == pytest.approx(1.96 * np.sqrt(1.25) / 2.0)     # population std sqrt(1.25), sqrt(n) = 2
    assert metrics.mean_ci([7.0]) == (7.0, 0.0)


def test_mean_ci_two_dimensional_is_per_column():
    # R = 4 replications (rows) of K = 3 metrics (columns)
    values = np.array([[1.0, 10.0, 5.0],
                       [2.0, 10.0, 5.0],
                       [3.0, 14.0, 5.0],
                       [4.0, 14.0, 5.0]])
    mean, conf = metrics.mean_ci(values)
    assert mean.shape == (3,) and conf.shape == (3,)
    np.testing.assert_allclose(mean, [2.5, 12.0, 5.0])
    # population std per column: sqrt(1.25), 2, 0; sqrt(R) = 2
    np.testing.assert_allclose(conf, [1.96 * np.sqrt(1.25) / 2.0, 1.96 * 2.0 / 2.0, 0.0])
    # a column equals the 1-D result on that column
    assert metrics.mean_ci(values[:, 0]) == (pytest.approx(mean[0]), pytest.approx(conf[0]))
    # one replication of K metrics: the values themselves, conf 0
    m1, c1 = metrics.mean_ci([[3.0, 4.0]])
    np.testing.assert_array_equal(m1, [3.0, 4.0])
    np.testing.assert_array_equal(c1, [0.0, 0.0])


def test_mean_ci_rejects_empty_and_3d():
    with pytest.raises(ValueError, match="got no values"):
        metrics.mean_ci([])
    with pytest.raises(ValueError, match=r"takes \(R,\) or \(R, K\) values, got shape \(2, 2, 2\)"):
        metrics.mean_ci(np.zeros((2, 2, 2)))


def test_fid_is_clamped_at_zero():
    # identical statistics: the exact answer is 0; round-off may land on either side, never below 0
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(64, 24)) @ rng.normal(size=(24, 24))
    for _ in range(3):
        value = metrics.fid(emb, emb.copy())
        assert value >= 0.0 and np.copysign(1.0, value) == 1.0      # not -0.0 either
        assert value == pytest.approx(0.0, abs=1e-6)
        emb = emb * 1.0001


def test_fid_clamps_negative_round_off(monkeypatch):
    # a square root whose trace slightly exceeds (tr S1 + tr S2) / 2 gives a tiny negative sum: clamped to 0.0
    s = np.eye(3)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: m * (1.0 + 1e-12))
    raw = 0.0 + 3.0 + 3.0 - 2.0 * 3.0 * (1.0 + 1e-12)
    assert raw < 0
    value = metrics.frechet_distance(np.zeros(3), s, np.zeros(3), s)
    assert value == 0.0 and np.copysign(1.0, value) == 1.0


def test_frechet_distance_keeps_nan_instead_of_clamping_it():
    s = np.eye(3)
    assert np.isnan(metrics.frechet_distance(np.array([np.nan, 0.0, 0.0]), s, np.zeros(3), s))


def test_frechet_large_imaginary_square_root_is_an_error():
    # an indefinite "covariance": sigma1 @ sigma2 = diag(-1, 1), whose square root is diag(i, 1) (imaginary part 1)
    s1, s2 = np.diag([-1.0, 1.0]), np.eye(2)
    with pytest.raises(ValueError, match=r"large imaginary component \(max \|imag\| on the diagonal 1 > 1e-3\)"):
        metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)


def test_fid_large_imaginary_square_root_from_sqrtm_is_an_error(monkeypatch):
    def complex_sqrtm(m):
        return np.asarray(m, dtype=np.complex128) + np.diag([0.0, 0.5j, 0.0])

    monkeypatch.setattr(metrics.linalg, "sqrtm", complex_sqrtm)
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=r"max \|imag\| on the diagonal 0\.5 > 1e-3.*ill-conditioned"):
        metrics.fid(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)))


def test_fid_small_imaginary_part_is_dropped(monkeypatch):
    # imaginary round-off below 1e-3 is ignored and the real part is used
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: np.asarray(m, np.complex128) + 1e-5j * np.eye(2))
    s1, s2 = np.diag([4.0, 1.0]), np.eye(2)
    # |mu diff|^2 = 1; tr S1 + tr S2 = 7; "sqrtm" returns S1 S2 itself (+ tiny imag): tr 5 -> 1 + 7 - 10 = -2 -> 0
    assert metrics.frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == 0.0
    s1 = np.diag([0.25, 1.0])     # tr(S1 S2) = 1.25 -> 1 + 3.25 - 2.5 = 1.75
    assert metrics.frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == pytest.approx(1.75)


def test_diversity_and_multimodality_need_at_least_one_pair():
    with pytest.raises(ValueError, match="diversity needs times >= 1 pairs, got 0"):
        metrics.diversity(np.zeros((10, 4)), times=0)
    with pytest.raises(ValueError, match="multimodality needs times >= 1 pairs, got 0"):
        metrics.multimodality(np.zeros((2, 5, 4)), times=0)
