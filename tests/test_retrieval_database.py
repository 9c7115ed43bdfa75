"""Retrieval database: top-k against brute force, dedup by motion id, self-exclusion, save/load, refusals, build."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.retrieval_database import DatabaseMeta, RetrievalDatabase, default_database_path
from models.retriever import BMMRetriever, RetrieverConfig, RetrieverError
from tests.tiny_stages import tiny_retriever_overrides


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def meta(**kw) -> DatabaseMeta:
    base = dict(dataset="t2m", feature_dim=263, latent_dim=8, split="train", data_root="data/x",
                retriever_checkpoint="runs/retriever/a/checkpoints/best.pt", retriever_fingerprint="abc123")
    base.update(kw)
    return DatabaseMeta(**base)


def random_db(n_motions=12, rows_per=(1, 3), dim=8, seed=0) -> RetrievalDatabase:
    """Motions with 1-3 caption rows each; rows of one motion share its motion feature (as a real build)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    motion_rows, text_rows, ids, caps = [], [], [], []
    for m in range(n_motions):
        feat = torch.randn(dim, generator=g)
        for r in range(int(rng.integers(rows_per[0], rows_per[1] + 1))):
            motion_rows.append(feat)
            text_rows.append(torch.randn(dim, generator=g))
            ids.append(f"{m:06d}")
            caps.append(f"caption {r} of motion {m}")
    return RetrievalDatabase(torch.stack(text_rows), torch.stack(motion_rows), ids, caps, [40] * len(ids), meta())


def brute_force(db: RetrievalDatabase, q: torch.Tensor, k: int, exclude: list[str] | None = None):
    """Sort every row by cosine similarity, walk down and keep the first row of each new, non-excluded motion."""
    out = []
    qn = q / q.norm(dim=-1, keepdim=True)
    mn = db.motion_feats / db.motion_feats.norm(dim=-1, keepdim=True)
    for b in range(q.shape[0]):
        s = (mn @ qn[b]).tolist()
        order = sorted(range(len(s)), key=lambda i: -s[i])
        seen, picked = set(), []
        for i in order:
            mid = db.motion_ids[i]
            if mid in seen or (exclude and mid == exclude[b]):
                continue
            seen.add(mid)
            picked.append((db.motion_ids[i], s[i]))
            if len(picked) == k:
                break
        out.append(picked)
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_matches_brute_force_and_is_deduplicated(k):
    db = random_db()
    q = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    res = db.query(q, k=k)
    assert res.r_t.shape == (6, k, 8) and res.r_m.shape == (6, k, 8)
    assert res.indices.shape == (6, k) and res.scores.shape == (6, k)
    expected = brute_force(db, q, k)
    for b in range(6):
        got_ids = [db.motion_ids[i] for i in res.indices[b].tolist()]
        assert got_ids == [m for m, _ in expected[b]]
        assert len(set(got_ids)) == k                                   # one row per motion
        np.testing.assert_allclose(res.scores[b].numpy(), [s for _, s in expected[b]], atol=1e-5)
        torch.testing.assert_close(res.r_m[b], db.motion_feats[res.indices[b]])
        torch.testing.assert_close(res.r_t[b], db.text_feats[res.indices[b]])


def test_query_under_bf16_autocast_ranks_in_float32():
    """bf16 generation runs retrieval under autocast; the database still ranks in its own dtype (exact ranking, and
    the (N, D) matrix is not cast on every call)."""
    db = random_db(n_motions=40, dim=8)
    q = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    plain = db.query(q, k=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = db.query(q, k=3)
    assert auto.scores.dtype == torch.float32
    assert torch.equal(auto.indices, plain.indices) and torch.equal(auto.scores, plain.scores)


def test_features_are_normalised_once_at_build():
    db = random_db()
    torch.testing.assert_close(db.motion_feats.norm(dim=-1), torch.ones(len(db)))
    torch.testing.assert_close(db.text_feats.norm(dim=-1), torch.ones(len(db)))


def test_self_exclusion_removes_own_motion_and_its_mirror():
    db = random_db()
    target = db.motion_ids.index("000004")
    q = db.motion_feats[target:target + 1] * 3.0                        # the query points at motion 000004
    assert db.motion_ids[int(db.query(q).indices[0, 0])] == "000004"
    res = db.query(q, k=2, exclude_ids=["000004"])
    got = [db.motion_ids[i] for i in res.indices[0].tolist()]
    assert "000004" not in got
    assert got == [m for m, _ in brute_force(db, q, 2, ["000004"])[0]]
    # a mirrored copy "M000004" is the same motion: excluded with it by default
    mirrored = RetrievalDatabase(torch.cat([db.text_feats, db.text_feats[target:target + 1]]),
                                 torch.cat([db.motion_feats, db.motion_feats[target:target + 1]]),
                                 db.motion_ids + ["M000004"], db.captions + ["mirror"], [40] * (len(db) + 1), meta())
    got = [mirrored.motion_ids[i] for i in mirrored.query(q, k=3, exclude_ids=["000004"]).indices[0].tolist()]
    assert "000004" not in got and "M000004" not in got
    kept = [mirrored.motion_ids[i] for i in
            mirrored.query(q, k=1, exclude_ids=["000004"], exclude_mirrors=False).indices[0].tolist()]
    assert kept == ["M000004"]


def test_exclusion_is_per_query():
    db = random_db()
    a, b = db.motion_ids.index("000001"), db.motion_ids.index("000002")
    q = torch.stack([db.motion_feats[a], db.motion_feats[b]])
    res = db.query(q, k=1, exclude_ids=["000001", None])
    assert db.motion_ids[int(res.indices[0, 0])] != "000001"
    assert db.motion_ids[int(res.indices[1, 0])] == "000002"


def test_refuses_k_larger_than_database_and_empty_queries():
    db = random_db(n_motions=4)
    with pytest.raises(RetrieverError, match=r"k=5 must be in \[1, 4\].*4 distinct motions"):
        db.query(torch.randn(1, 8), k=5)
    with pytest.raises(RetrieverError, match=r"k=4 must be in \[1, 3\].*excluded"):
        db.query(torch.randn(1, 8), k=4, exclude_ids=["000000"])
    with pytest.raises(RetrieverError, match="no text"):
        db.query(torch.randn(0, 8))
    with pytest.raises(RetrieverError, match=r"text_emb \(B, 8\)"):
        db.query(torch.randn(2, 7))


def test_save_load_round_trip_is_atomic(tmp_path):
    db = random_db()
    path = tmp_path / "ckpts" / "best_database.pt"
    db.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best_database.pt"]   # no temp file left
    obj = torch.load(path, weights_only=True)                                         # plain tensors / lists
    assert obj["kind"] == "retrieval_database"
    back = RetrievalDatabase.load(path, dataset="t2m", fingerprint="abc123")
    assert back.motion_ids == db.motion_ids and back.captions == db.captions
    # bit-exact: the saved features are not normalised a second time (that moves the last bit on some CPUs)
    assert torch.equal(back.motion_feats, db.motion_feats) and torch.equal(back.text_feats, db.text_feats)
    assert back.content_fingerprint() == db.content_fingerprint()
    q = torch.randn(3, 8)
    assert torch.equal(back.query(q, k=2).indices, db.query(q, k=2).indices)
    assert torch.equal(back.query(q, k=2).scores, db.query(q, k=2).scores)
    raw = RetrievalDatabase(3 * db.text_feats, 3 * db.motion_feats, db.motion_ids, db.captions, db.lengths.tolist(),
                            db.meta, normalized=True)                      # a file that lies: normalised anyway
    torch.testing.assert_close(raw.motion_feats.norm(dim=-1), torch.ones(len(db)))
    assert default_database_path("runs/r/checkpoints/best.pt").as_posix() == "runs/r/checkpoints/best_database.pt"


def test_load_refuses_other_dataset_and_other_retriever(tmp_path):
    path = tmp_path / "db.pt"
    random_db().save(path)
    with pytest.raises(RetrieverError, match=r"built from dataset 't2m'.*dataset 'kit' is in use"):
        RetrievalDatabase.load(path, dataset="kit")
    with pytest.raises(RetrieverError, match=r"built with retriever runs/retriever/a/checkpoints/best.pt "
                                             r"\(weights abc123\).*retriever other.pt \(weights fff\)"):
        RetrievalDatabase.load(path, fingerprint="fff", checkpoint="other.pt")
    with pytest.raises(RetrieverError, match="does not exist.*--build-db"):
        RetrievalDatabase.load(tmp_path / "missing.pt")
    torch.save({"format_version": 1}, tmp_path / "other.pt")
    with pytest.raises(RetrieverError, match="not a retrieval database"):
        RetrievalDatabase.load(tmp_path / "other.pt")


# ------------------------------------------------------------------------------------------------ build from data

def tiny_retriever(seed=0) -> BMMRetriever:
    torch.manual_seed(seed)
    cfg = RetrieverConfig(latent_dim=16, part_width=8, layers=1, heads=2, ff_dim=16, dropout=0.0, head_dropout=0.0,
                          text_encoder="minilm", text_tiny=True, text_freeze_backbone=True, queue_size=8)
    return BMMRetriever(cfg).eval()


def test_build_from_mini_split_one_row_per_caption(mini_root):
    from datasets.motion_dataset import DataConfig, build_dataset

    ds = build_dataset(DataConfig(root=str(mini_root), feat_bias=1.0), "train", "text")
    retriever = tiny_retriever()
    db = RetrievalDatabase.build(retriever, ds, batch_size=16, checkpoint="x.pt")
    entries = ds.corpus.entries
    assert len(db) == sum(len(e.captions) for e in entries)
    assert db.meta.dataset == "t2m" and db.meta.feature_dim == 263 and db.meta.split == "train"
    assert db.meta.retriever_fingerprint == retriever.weights_fingerprint()
    # the first entry's rows: its full motion through the motion encoder, each caption through the text tower
    e = entries[0]
    rows = [i for i, k in enumerate(db.keys) if k == e.key]
    assert len(rows) == len(e.captions)
    motion = torch.from_numpy(ds.normalize(ds.corpus.entry_motion(e)).astype(np.float32))[None]
    with torch.no_grad():
        m = retriever.encode_motion(motion, torch.tensor([e.length]))
        t = retriever.encode_text([c.caption for c in e.captions])
    for j, r in enumerate(rows):
        torch.testing.assert_close(db.motion_feats[r], m[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(db.text_feats[r], t[j], atol=1e-5, rtol=1e-4)
    # a caption of the database retrieves (through the prompt API) with its own motion excluded
    res = db.retrieve(retriever, [db.captions[0]], k=1, exclude_ids=[db.motion_ids[0]])
    assert db.motion_ids[int(res.indices[0, 0])] != db.motion_ids[0]
    with pytest.raises(Exception, match="text 0 is empty"):
        db.retrieve(retriever, [""])


def test_fingerprint_changes_with_weights_not_with_queues():
    r = tiny_retriever()
    fp = r.weights_fingerprint()
    r.dequeue_and_enqueue(torch.ones(4, 16), torch.ones(4, 16))
    r.momentum_update()
    assert r.weights_fingerprint() == fp
    with torch.no_grad():
        r.motion_encoder.head[1].bias.add_(1e-3)
    assert r.weights_fingerprint() != fp


def test_train_retriever_script_builds_database_and_rebuilds_with_build_db(mini_root, tmp_path, capsys):
    import train_retriever

    tiny = tiny_retriever_overrides(mini_root)
    assert train_retriever.main(["--config", "configs/mini/retriever.yaml", "--runs-root", str(tmp_path),
                                 "--name", "s", *tiny]) == 0
    ckpt = tmp_path / "retriever" / "s" / "checkpoints" / "best.pt"
    db_path = default_database_path(ckpt)
    first = RetrievalDatabase.load(db_path, dataset="t2m")
    db_path.unlink()
    # the run dir exists: --build-db trains nothing, so it must not be refused for lack of --resume / --overwrite
    assert train_retriever.main(["--build-db", str(ckpt), "--config", "configs/mini/retriever.yaml", "--runs-root",
                                 str(tmp_path), "--name", "s", *tiny]) == 0
    again = RetrievalDatabase.load(db_path, dataset="t2m", fingerprint=first.meta.retriever_fingerprint)
    assert again.motion_ids == first.motion_ids
    torch.testing.assert_close(again.motion_feats, first.motion_feats)
    with pytest.raises(SystemExit):
        train_retriever.main(["--help"])
    assert "--build-db CKPT" in capsys.readouterr().out
