"""TMR retrieval metrics on hand-made similarity matrices (reference.md §8)."""
import numpy as np
import pytest

from utils import retrieval_metrics as rm


def test_perfect_matrix_gives_r1_100_and_medr_1():
    m = rm.contrastive_metrics(np.eye(20))
    for d in ("t2m", "m2t"):
        assert m[f"{d}/R01"] == 100.0 and m[f"{d}/R10"] == 100.0 and m[f"{d}/MedR"] == 1.0
    assert set(m) == {f"{d}/{k}" for d in ("t2m", "m2t") for k in ("R01", "R02", "R03", "R05", "R10", "MedR")}


def test_reversed_matrix_puts_ground_truth_last():
    n = 10
    sims = -np.eye(n)                  # the true pair is the least similar of each row
    m = rm.contrastive_metrics(sims)
    # all others tie at 0 and beat -1: the gt rank is 9 (0-based) for every row
    assert m["t2m/R01"] == 0.0 and m["t2m/R05"] == 0.0 and m["t2m/R10"] == 100.0
    assert m["t2m/MedR"] == 10.0 and m["m2t/MedR"] == 10.0


def test_ties_use_average_rank():
    # row 0: the gt ties with 3 others at the top -> ranks 0..3, average 1.5
    sims = np.eye(4)
    sims[0] = 1.0
    m = rm.contrastive_metrics(sims, rounding=None)
    ranks = np.array([1.5, 0, 0, 0])
    assert m["t2m/R01"] == pytest.approx(75.0)
    assert m["t2m/R02"] == pytest.approx(100.0 * np.mean(ranks < 2))      # 1.5 < 2: a hit at R@2
    assert m["t2m/MedR"] == pytest.approx(np.median(ranks) + 1)
    # motion-to-text sees the transposed matrix: columns 1..3 have the value 1 in row 0 tying with their gt
    # motion j>0: texts 0 and j both at 1 -> rank 0.5; motion 0: only text 0 at 1 -> rank 0
    mt = np.array([0, 0.5, 0.5, 0.5])
    assert m["m2t/R01"] == pytest.approx(100.0)
    assert m["m2t/MedR"] == pytest.approx(np.median(mt) + 1)


def test_rounding_to_two_decimals():
    sims = np.eye(3)
    sims[0, 1] = 2.0                      # text 0 ranks its gt second
    m = rm.contrastive_metrics(sims)
    assert m["t2m/R01"] == 66.67


def test_threshold_counts_near_duplicate_caption_as_hit():
    # texts 0 and 1 are near-identical captions; text 0 retrieves motion 1 first
    sims = np.eye(3)
    sims[0, 1] = 2.0
    text_sims = np.eye(3)
    text_sims[0, 1] = text_sims[1, 0] = 0.97            # > 2*0.95-1 = 0.9
    plain = rm.contrastive_metrics(sims)
    thr = rm.contrastive_metrics(sims, text_sims=text_sims, threshold=0.95)
    assert plain["t2m/R01"] == 66.67
    assert thr["t2m/R01"] == 100.0
    # just below the threshold: not a hit
    text_sims[0, 1] = text_sims[1, 0] = 0.89
    assert rm.contrastive_metrics(sims, text_sims=text_sims, threshold=0.95)["t2m/R01"] == 66.67


def test_threshold_needs_both_arguments():
    with pytest.raises(ValueError, match="both text_sims and threshold"):
        rm.contrastive_metrics(np.eye(3), threshold=0.95)


def test_non_square_is_an_error():
    with pytest.raises(ValueError, match="square"):
        rm.contrastive_metrics(np.ones((3, 4)))


def test_protocol_normal_uses_cosine():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(16, 8))
    m = rm.protocol_normal(emb, 3.0 * emb)               # scale does not matter for cosine
    assert m["t2m/R01"] == 100.0


def test_guo_protocol_batches_and_drops_remainder():
    rng = np.random.default_rng(0)
    n = 70                                                 # 2 batches of 32, 6 dropped
    text = rng.normal(size=(n, 16))
    motion = text.copy()
    ids = [f"{i:06d}" for i in range(n)]
    # corrupt exactly the samples the protocol drops: metrics stay perfect
    order = list(range(n))
    np.random.RandomState(0).shuffle(order)
    dropped = order[64:]
    motion[dropped] = -motion[dropped]
    m = rm.protocol_guo(text, motion, ids)
    assert m["t2m/R01"] == 100.0 and m["m2t/MedR"] == 1.0
    # corrupt one kept sample instead: R@1 falls by 1/32 in one of 2 batches -> 100 - 100/64
    motion = text.copy()
    motion[order[0]] = -motion[order[0]]
    m = rm.protocol_guo(text, motion, ids)
    assert m["t2m/R01"] == round(100 - 100 / 64, 2)


def test_nsim_selection_is_deterministic_and_dissimilar():
    # 3 clusters of near-identical captions; picking 3 must take one of each
    emb = np.repeat(np.eye(3), 4, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(12, 3))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sel = rm.nsim_selection(emb @ emb.T, n=3)
    assert sorted(set(i // 4 for i in sel)) == [0, 1, 2]
    np.testing.assert_array_equal(sel, rm.nsim_selection(emb @ emb.T, n=3))


def test_nsim_with_list_uses_those_ids():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(10, 4))
    ids = [f"m{i}" for i in range(10)]
    m, used = rm.protocol_nsim(text, text, ids, nsim_ids=["m3", "m5", "m7"])
    assert used == ["m3", "m5", "m7"] and m["t2m/R01"] == 100.0
    with pytest.raises(ValueError, match="not in the evaluated split"):
        rm.protocol_nsim(text, text, ids, nsim_ids=["zz"])


def test_retrieval_protocols_with_fake_sentence_encoder():
    rng = np.random.default_rng(0)
    n = 40
    text = rng.normal(size=(n, 8))
    caps = [f"caption {i}" for i in range(n)]
    ids = [f"{i:03d}" for i in range(n)]

    def enc(c):
        return np.stack([np.eye(n)[int(s.split()[1])] for s in c])

    out = rm.retrieval_protocols(text, text, caps, ids, sentence_encoder=enc)
    assert set(out) == set(rm.PROTOCOLS)
    assert all(v["t2m/R01"] == 100.0 for v in out.values())
