"""The standard text-to-motion metrics (Guo et al. 2022), exactly as the reference evaluation computes them.

Definitions follow `reference.md` §4 (T2M final_evaluations.py, MoMask utils/metrics.py): every function takes
embeddings produced by the evaluator (`models/evaluator.py`) as numpy arrays and returns plain floats / arrays.

    euclidean_distance_matrix(a (N, D), b (M, D)) -> (N, M)
    r_precision(text_emb (B, D), motion_emb (B, D), top_k=3) -> (top_k,)   hit rate of top-1..k within one batch
    mm_dist(text_emb (B, D), motion_emb (B, D)) -> float                   mean matched distance (Matching score)
    fid(gen (N, D), real (M, D)) -> float                                  Fréchet distance of two Gaussians, >= 0
    diversity(emb (N, D), times=300, rng=None) -> float
    multimodality(emb (N, R, D), times=10, rng=None) -> float              R generations per text
    mean_ci(values (R,) or (R, K)) -> (mean, conf)                         conf = 1.96 · std / sqrt(R), ddof 0

Everything is vectorised; no Python loop over pairs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import linalg

RngLike = np.random.Generator | int | None


def _as_rng(rng: RngLike) -> np.random.Generator:
    """An explicit generator, or one seeded from an int (None = fresh OS entropy, not reproducible)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"utils/metrics.py: argument '{name}' must be a 2-D array (N, D) of embeddings, "
                         f"got shape {tuple(x.shape)}")
    return x


def euclidean_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances, computed as the reference does: sqrt(-2 a·b + |a|² + |b|²).

    Args:
        a: (N, D), b: (M, D)
    Returns:
        (N, M); negative round-off under the square root is clipped to 0 (the reference would give NaN only in the
        degenerate case of identical rows, where 0 is the exact answer).
    """
    a = _check_2d("a", a)
    b = _check_2d("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"utils/metrics.py: euclidean_distance_matrix needs equal widths, got a {a.shape} and "
                         f"b {b.shape}")
    d1 = -2.0 * a @ b.T
    d2 = np.sum(a * a, axis=1, keepdims=True)
    d3 = np.sum(b * b, axis=1)[None, :]
    return np.sqrt(np.maximum(d1 + d2 + d3, 0.0))


def r_precision(text_emb: np.ndarray, motion_emb: np.ndarray, top_k: int = 3) -> np.ndarray:
    """Top-1..k retrieval hit rates of one batch (reference §4 "R-precision").

    Text i's true motion is motion i (the diagonal). The rows of the text-to-motion distance matrix are argsorted
    ascending (numpy's default sort, as in the reference), and hit_k[i] says whether i is among the
    first k. Return the mean over the batch; the reference sums hits over batches and divides by the sample count,
    which equals the mean of these per-batch rates when all batches have the same size.

    Args:
        text_emb: (B, D); motion_emb: (B, D)
    Returns:
        (top_k,) float array: fraction of rows whose match is within the first 1, 2, ..., top_k.
    """
    text_emb = _check_2d("text_emb", text_emb)
    motion_emb = _check_2d("motion_emb", motion_emb)
    if text_emb.shape != motion_emb.shape:
        raise ValueError(f"utils/metrics.py: r_precision needs paired embeddings of the same shape, got text "
                         f"{text_emb.shape} and motion {motion_emb.shape}")
    b = text_emb.shape[0]
    if top_k < 1 or top_k > b:
        raise ValueError(f"utils/metrics.py: r_precision top_k must be in [1, batch size {b}], got {top_k}")
    dist = euclidean_distance_matrix(text_emb, motion_emb)
    order = np.argsort(dist, axis=1)[:, :top_k]                       # (B, k) motion indices, nearest first
    correct = order == np.arange(b)[:, None]                          # (B, k) True where the match sits
    hits = np.cumsum(correct, axis=1) > 0                             # within first 1..k
    return hits.mean(axis=0)


def mm_dist(text_emb: np.ndarray, motion_emb: np.ndarray) -> float:
    """Matching score / MM-Dist: the mean distance between paired text and motion embeddings (trace of dist / N)."""
    text_emb = _check_2d("text_emb", text_emb)
    motion_emb = _check_2d("motion_emb", motion_emb)
    if text_emb.shape != motion_emb.shape:
        raise ValueError(f"utils/metrics.py: mm_dist needs paired embeddings of the same shape, got text "
                         f"{text_emb.shape} and motion {motion_emb.shape}")
    return float(np.linalg.norm(text_emb - motion_emb, axis=1).mean())


def gaussian_statistics(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) (np.cov, rowvar=False, N-1) of embeddings (N, D)."""
    emb = _check_2d("emb", emb)
    if emb.shape[0] < 2:
        raise ValueError(f"utils/metrics.py: FID needs at least 2 embeddings for a covariance, got {emb.shape[0]}")
    return emb.mean(axis=0), np.cov(emb, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """|mu1-mu2|² + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)) with the reference's numerical rules.

    - `scipy.linalg.sqrtm` is called without the deprecated `disp` argument (same result).
    - If the square root is not finite, retry with `eps·I` added to both covariances.
    - If the result is complex: raise when any diagonal imaginary part exceeds 1e-3
      (`np.allclose(diag.imag, 0, atol=1e-3)` fails); otherwise keep the real part. Small imaginary parts are
      round-off of a nearly singular product.
    - The distance is clamped at 0: identical statistics give a round-off residue of either sign (e.g. -3e-12,
      printed as "-0.000"), and a Fréchet distance is never negative. The reference does not clamp; only values
      that would print as 0 at any sensible precision are affected.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"utils/metrics.py: frechet_distance got mismatched statistics: mu {mu1.shape} vs "
                         f"{mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"utils/metrics.py: FID matrix square root has a large imaginary component "
                             f"(max |imag| on the diagonal {np.max(np.abs(np.diagonal(covmean).imag)):.3g} > 1e-3); "
                             f"the covariances are ill-conditioned (too few samples for the embedding width?)")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return 0.0 if value <= 0.0 else value         # also turns -0.0 into 0.0; NaN stays NaN


def fid(gen: np.ndarray, real: np.ndarray) -> float:
    """Fréchet Inception-style distance between generated (N, D) and real (M, D) motion embeddings."""
    mu1, s1 = gaussian_statistics(_check_2d("gen", gen))
    mu2, s2 = gaussian_statistics(_check_2d("real", real))
    return frechet_distance(mu1, s1, mu2, s2)


def diversity(emb: np.ndarray, times: int = 300, rng: RngLike = None) -> float:
    """Mean distance between `times` random pairs of embeddings (reference §4 "Diversity").

    Two independent index sets of size `times` are drawn without replacement from N; the result is the mean
    Euclidean distance of the paired rows. The reference uses times = 300 when N > 300, else 100; the caller
    (`utils/evaluation.py`) applies that rule. N < times is an error.

    Args:
        emb: (N, D); rng: a np.random.Generator or an int seed (None: not reproducible).
    """
    emb = _check_2d("emb", emb)
    n = emb.shape[0]
    if times < 1:
        raise ValueError(f"utils/metrics.py: diversity needs times >= 1 pairs, got {times} (the mean of no "
                         f"distances is NaN)")
    if n < times:
        raise ValueError(f"utils/metrics.py: diversity needs at least times={times} embeddings, got {n}; evaluate "
                         f"more samples or lower the Diversity pair count (eval.diversity_times)")
    rng = _as_rng(rng)
    first = rng.choice(n, times, replace=False)
    second = rng.choice(n, times, replace=False)
    return float(np.linalg.norm(emb[first] - emb[second], axis=1).mean())


def multimodality(emb: np.ndarray, times: int = 10, rng: RngLike = None) -> float:
    """Mean distance between repeated generations of the same text (reference §4 "MultiModality").

    Two independent index sets of size `times` are drawn (without replacement) from the R repeats, shared by all
    texts; the distances of the paired repeats are averaged over texts × times.

    Args:
        emb: (N, R, D) embeddings of R generations for each of N texts.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 3:
        raise ValueError(f"utils/metrics.py: multimodality expects (N texts, R repeats, D), got shape {emb.shape}")
    r = emb.shape[1]
    if times < 1:
        raise ValueError(f"utils/metrics.py: multimodality needs times >= 1 pairs, got {times} (the mean of no "
                         f"distances is NaN)")
    if r < times:
        raise ValueError(f"utils/metrics.py: multimodality needs at least times={times} repeats per text, got {r}")
    rng = _as_rng(rng)
    first = rng.choice(r, times, replace=False)
    second = rng.choice(r, times, replace=False)
    return float(np.linalg.norm(emb[:, first] - emb[:, second], axis=2).mean())


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Mean and 95% confidence half-width over replications (axis 0): 1.96 · std / sqrt(R), std with ddof 0 (numpy
    default, as the reference's `np.std`).

    Args:
        values: (R,) one metric over R replications, or (R, K) K metrics (columns) over R replications.
    Returns:
        (mean, conf): floats for (R,) input; (K,) arrays, one entry per column, for (R, K) input.
        One replication gives conf 0 (the report marks such runs as not comparable).
    """
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if v.ndim > 2:
        raise ValueError(f"utils/metrics.py: mean_ci takes (R,) or (R, K) values, got shape {v.shape}")
    if v.shape[0] == 0 or v.size == 0:
        raise ValueError(f"utils/metrics.py: mean_ci got no values (shape {v.shape})")
    mean = v.mean(axis=0)
    conf = 1.96 * v.std(axis=0) / np.sqrt(v.shape[0])
    if v.ndim == 1:
        return float(mean), float(conf)
    return mean, conf
