"""datasets/motion_dataset.py: split reading, entries, per-item sampling (reference §1.3), statistics (§1.5),
window / eval modes, collate, bad input, the cache, and the real clips / mini dataset through the same loader."""
from __future__ import annotations

import logging
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.motion_dataset import (DataConfig, DatasetError, MotionCorpus, build_dataset, collate,
                                     crop_length, get_spec, load_stats, parse_captions)

D = 263
CAP = "a person walks forward#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0"


# ---- helpers ---------------------------------------------------------------------------------------------------

def motion_array(value: float, length: int, dim: int = D) -> np.ndarray:
    """Every dim = value, except dim 0 = the frame index (so crops show where they start)."""
    x = np.full((length, dim), value, dtype=np.float32)
    x[:, 0] = np.arange(length)
    return x


def write_dataset(root: Path, motions: dict, texts: dict | None = None, splits: dict | None = None,
                  mean=None, std=None, dim: int = D) -> Path:
    """A HumanML3D-layout folder. motions: id -> (T, dim) array; texts: id -> file content (default one caption)."""
    (root / "new_joint_vecs").mkdir(parents=True, exist_ok=True)
    (root / "texts").mkdir(exist_ok=True)
    for mid, arr in motions.items():
        np.save(root / "new_joint_vecs" / f"{mid}.npy", arr)
        content = (texts or {}).get(mid, CAP + "\n")
        (root / "texts" / f"{mid}.txt").write_text(content)
    for name, ids in (splits or {"train": list(motions)}).items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    np.save(root / "Mean.npy", np.zeros(dim, np.float32) if mean is None else np.asarray(mean, np.float32))
    np.save(root / "Std.npy", np.ones(dim, np.float32) if std is None else np.asarray(std, np.float32))
    return root


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


@pytest.fixture
def simple_root(tmp_path):
    """Five motions, motion i has value i; lengths 40, 60, 103, 199, 250 (the last one too long for text)."""
    lengths = [40, 60, 103, 199, 250]
    motions = {f"{i:06d}": motion_array(i, n) for i, n in enumerate(lengths)}
    motions["M000001"] = motion_array(11, 64)  # a mirrored id: an ordinary id in the split file
    return write_dataset(tmp_path / "ds", motions)


# ---- specs and statistics ----------------------------------------------------------------------------------------

def test_specs_match_reference_constants():
    t2m, kit = get_spec("t2m"), get_spec("kit")
    assert (t2m.dim, t2m.joints, t2m.fps, t2m.min_length) == (263, 22, 20.0, 40)
    assert (kit.dim, kit.joints, kit.fps, kit.min_length) == (251, 21, 12.5, 24)
    for s in (t2m, kit):
        assert (s.max_length, s.pad_length, s.unit_length, s.subclip_fps) == (200, 196, 4, 20.0)
    assert get_spec(DataConfig(dataset="kit", min_motion_length=30)).min_length == 30


def test_specs_agree_with_representation():
    rep = pytest.importorskip("datasets.representation")
    if not hasattr(rep, "feature_dim"):
        pytest.skip("datasets.representation.feature_dim not written yet")
    for name in ("t2m", "kit"):
        assert get_spec(name).dim == rep.feature_dim(name)
        assert get_spec(name).joints == rep.num_joints(name)


def test_load_stats_feat_bias_divides_root_and_contact_dims(tmp_path):
    std = np.full(D, 2.0, np.float32)
    std[10] = 3.0
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)}, mean=np.arange(D), std=std)
    mean, s5 = load_stats(cfg_for(root, feat_bias=5.0))
    np.testing.assert_array_equal(mean, np.arange(D, dtype=np.float32))
    expected = std.copy()
    expected[0:4] = 0.4
    expected[D - 4:] = 0.4
    np.testing.assert_allclose(s5, expected, rtol=1e-6)
    _, s1 = load_stats(cfg_for(root, feat_bias=1.0))
    np.testing.assert_array_equal(s1, std)  # feat_bias=1: the raw Std (the retriever's statistics)


# ---- split reading and entries -----------------------------------------------------------------------------------

def test_split_reads_motions_in_order_with_their_values(simple_root):
    corpus = MotionCorpus.load(cfg_for(simple_root), "train", cache=False)
    assert corpus.ids == ["000000", "000001", "000002", "000003", "000004", "M000001"]
    assert corpus.lengths.tolist() == [40, 60, 103, 199, 250, 64]
    assert corpus.data.dtype == np.float32 and corpus.data.shape == (40 + 60 + 103 + 199 + 250 + 64, D)
    for i, value in enumerate([0, 1, 2, 3, 4, 11]):
        m = corpus.motion(i)
        assert (m[:, 1:] == value).all() and (m[:, 0] == np.arange(len(m))).all()
    # the 250-frame motion has no text entry (reference: drop if length >= 200); all others have one
    assert [e.key for e in corpus.entries] == ["000000", "000001", "000002", "000003", "M000001"]
    assert corpus.skipped == {"too_long": ["new_joint_vecs/000004.npy"]}
    assert corpus.entries[-1].captions[0].tokens == ("a/DET", "person/NOUN", "walk/VERB", "forward/ADV")


def test_subclip_entries_follow_start_end_seconds(tmp_path):
    texts = {
        "a": CAP + "\n" + "a person turns#a/DET person/NOUN turn/VERB#0.5#3.0\n"   # frames 10:60 -> kept
             + "a person waves#a/DET person/NOUN wave/VERB#0.0#1.0\n"             # 20 frames < 40 -> out
             + "a person runs#a/DET person/NOUN run/VERB#nan#nan\n",              # NaN read as 0: whole clip
        "b": "a person jumps#a/DET person/NOUN jump/VERB#1.0#4.5\n",              # only a sub-clip: no main entry
    }
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 100), "b": motion_array(1, 150)}, texts)
    corpus = MotionCorpus.load(cfg_for(root), "train", cache=False)
    by_caption = {c.caption: e for e in corpus.entries for c in e.captions}
    main = by_caption["a person walks forward"]
    assert main.key == "a" and (main.start, main.end) == (0, 100)
    assert [c.caption for c in main.captions] == ["a person walks forward", "a person runs"]
    turn = by_caption["a person turns"]
    assert re.fullmatch(r"[A-W]_a", turn.key) and (turn.start, turn.end, turn.length) == (10, 60, 50)
    np.testing.assert_array_equal(corpus.entry_motion(turn)[:, 0], np.arange(10, 60))
    jump = by_caption["a person jumps"]
    assert re.fullmatch(r"[A-W]_b", jump.key) and (jump.start, jump.end) == (20, 90)
    assert "b" not in [e.key for e in corpus.entries]
    assert len(corpus.entries) == 3
    assert corpus.skipped["subclip_out_of_range"] == ["texts/a.txt (0.0-1.0 s: 20 frames)"]
    again = MotionCorpus.load(cfg_for(root), "train", cache=False)
    assert [e.key for e in again.entries] == [e.key for e in corpus.entries]  # keys are seeded


def test_subclip_keys_redrawn_on_collision(tmp_path):
    lines = "".join(f"clip {k}#clip/NOUN#{k * 0.1:.1f}#{k * 0.1 + 2.5:.1f}\n" for k in range(30))
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 120)}, {"a": lines})
    corpus = MotionCorpus.load(cfg_for(root), "train", cache=False)
    keys = [e.key for e in corpus.entries]
    assert len(keys) == 30 and len(set(keys)) == 30  # 30 sub-clips, 23 letters: all kept, every key unique
    assert sum(bool(re.fullmatch(r"[A-W]_a", k)) for k in keys) == 23
    assert sum(bool(re.fullmatch(r"[A-W]1_a", k)) for k in keys) == 7  # (the reference loops forever here)


def test_kit_uses_its_own_minimum_and_the_subclip_constant_20(tmp_path):
    dim = 251
    texts = {"k": "a person waves#a/DET person/NOUN wave/VERB#0.0#1.5\n"}  # int(1.5*20)=30 frames >= 24
    root = write_dataset(tmp_path / "kit", {"k": motion_array(0, 30, dim), "s": motion_array(1, 20, dim)}, texts,
                         dim=dim)
    corpus = MotionCorpus.load(cfg_for(root, dataset="kit"), "train", cache=False)
    assert corpus.ids == ["k"] and corpus.skipped["too_short"] == ["new_joint_vecs/s.npy (20 frames)"]
    assert [(e.start, e.end) for e in corpus.entries] == [(0, 30)]


# ---- per-item sampling -----------------------------------------------------------------------------------------

def test_crop_length_rule_by_hand():
    assert crop_length(103, 4, 196, double=False) == 100
    assert crop_length(103, 4, 196, double=True) == 96
    assert crop_length(199, 4, 196, double=False) == 196
    assert crop_length(199, 4, 196, double=True) == 192
    assert crop_length(199, 4, 64, double=False) == 64     # capped at max_motion_length
    assert crop_length(4, 4, 196, double=True) == 4        # never shorter than one unit


def test_item_lengths_are_the_two_crops_with_probabilities_2_3_and_1_3(simple_root):
    ds = build_dataset(cfg_for(simple_root), "train", "text", cache=False)
    idx = [e.key for e in ds.entries].index("000003")  # 199 frames -> 196 or 192
    lengths = []
    for epoch in range(900):                           # item draws come from (seed, epoch, index)
        ds.set_epoch(epoch)
        lengths.append(ds[idx]["length"])
    assert set(lengths) == {196, 192}
    assert abs(lengths.count(192) / 900 - 1 / 3) < 0.06
    idx = [e.key for e in ds.entries].index("000002")  # 103 frames -> 100 or 96
    seen = set()
    for epoch in range(200):
        ds.set_epoch(epoch, seed=1)
        seen.add(ds[idx]["length"])
    assert seen == {100, 96}


def test_fingerprint_changes_with_what_the_items_are_made_of(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(1, 60), "b": motion_array(2, 80)})
    base = build_dataset(cfg_for(root), "train", "text", cache=False)
    again = build_dataset(cfg_for(root), "train", "text", cache=False)
    assert base.fingerprint() == again.fingerprint() and len(base.fingerprint()) == 16
    other_stats = build_dataset(cfg_for(root), "train", "text", (np.zeros(D), np.full(D, 2.0)), cache=False)
    assert other_stats.fingerprint() != base.fingerprint()
    again.set_epoch(0, seed=5)                                 # the seed selects the items' draws
    assert again.fingerprint() != base.fingerprint()
    again.set_epoch(3, seed=0)                                 # the epoch does not (it is part of every lookup)
    assert again.fingerprint() == base.fingerprint()
    (root / "texts" / "b.txt").write_text("a person jumps#a/DET person/NOUN jump/VERB#0.0#0.0\n")
    assert build_dataset(cfg_for(root), "train", "text", cache=False).fingerprint() != base.fingerprint()
    motion = motion_array(2, 80)
    motion[10, 3] += 1e-3                                      # one value of one frame
    np.save(root / "new_joint_vecs" / "b.npy", motion)
    (root / "texts" / "b.txt").write_text(CAP + "\n")
    assert build_dataset(cfg_for(root), "train", "text", cache=False).fingerprint() != base.fingerprint()


def test_text_item_is_a_normalised_contiguous_crop_zero_padded(tmp_path):
    mean = np.full(D, 1.0, np.float32)
    std = np.full(D, 2.0, np.float32)
    root = write_dataset(tmp_path / "ds", {"a": motion_array(7, 103)}, mean=mean, std=std)
    cfg = cfg_for(root, feat_bias=1.0)
    ds = build_dataset(cfg, "train", "text", cache=False)
    starts = set()
    for epoch in range(60):
        ds.set_epoch(epoch)
        item = ds[0]
        m = item["length"]
        x = item["motion"]
        assert x.shape == (196, D) and x.dtype == torch.float32
        assert (x[m:] == 0).all()
        np.testing.assert_allclose(x[:m, 1:].numpy(), (7 - 1) / 2)          # hand-normalised value
        frames = x[:m, 0].numpy() * 2 + 1                                      # de-normalised frame index
        assert frames[0] + m <= 103 and (np.diff(frames) == 1).all()
        starts.add(int(frames[0]))
        assert item["caption"] == "a person walks forward" and item["id"] == "a" and item["motion_id"] == "a"
    assert len(starts) > 1
    np.testing.assert_allclose(ds.denormalize(x[:m]).numpy(), np.concatenate(
        [frames[:, None], np.full((m, D - 1), 7.0)], axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds.denormalize(x[:m].numpy()), ds.denormalize(x[:m]).numpy())


def test_caption_choice_is_uniform_over_the_entry_captions(tmp_path):
    texts = {"a": "".join(f"caption {k}#caption/NOUN#0.0#0.0\n" for k in range(3))}
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)}, texts)
    ds = build_dataset(cfg_for(root), "train", "text", cache=False)
    seen = []
    for epoch in range(300):
        ds.set_epoch(epoch, seed=2)
        seen.append(ds[0]["caption"])
    assert {c: seen.count(c) for c in set(seen)}.keys() == {"caption 0", "caption 1", "caption 2"}
    assert min(seen.count(c) for c in set(seen)) > 70


def test_window_mode_enumerates_every_snippet_of_long_enough_motions(simple_root):
    ds = build_dataset(cfg_for(simple_root, window_size=64), "train", "window", cache=False)
    # motions with >= 64 frames: 103, 199, 250 (too long for text, used here as the reference VQ dataset does), 64
    assert [ds.corpus.ids[i] for i in ds.motion_indices] == ["000002", "000003", "000004", "M000001"]
    # an epoch is every snippet: (103-64) + (199-64) + (250-64) + 1 (the 64-frame motion counts as one window)
    assert len(ds) == 39 + 135 + 186 + 1 == 361
    item = ds[200]                                         # 000004 (index 174..359), start 200 - 174 = 26
    assert set(item) == {"motion", "length", "id"} and item["length"] == 64 and item["id"] == "000004"
    assert item["motion"].shape == (64, D) and item["motion"].dtype == torch.float32
    frames = ds.denormalize(item["motion"])[:, 0].numpy()  # Std 1 with feat_bias 5: dim 0 scaled by 5
    np.testing.assert_allclose(frames, np.arange(26, 90))
    np.testing.assert_allclose(item["motion"][:, 10].numpy(), 4.0)  # value 4, mean 0, std 1 (no bias on dim 10)
    torch.manual_seed(3)
    again = ds[200]["motion"]
    torch.manual_seed(4)
    assert torch.equal(ds[200]["motion"], again)           # an index is a fixed window: no item randomness
    assert (ds[360]["motion"][:, 0].numpy() == 5 * np.arange(64)).all() and ds[360]["id"] == "M000001"


def test_window_index_maps_to_motion_and_start_by_hand(tmp_path):
    """Tiny dataset: a 70, b 63 (< window: no windows), c 64 (= window: 1), d 100 frames; window 64.
    Windows per motion max(T - 64, 1): a 6, c 1, d 36 -> 43; a = items 0..5, c = item 6, d = items 7..42."""
    rng = np.random.default_rng(0)
    feats = {mid: rng.normal(size=(n, D)).astype(np.float32) for mid, n in (("a", 70), ("b", 63), ("c", 64),
                                                                             ("d", 100))}
    mean = rng.normal(size=D).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=D).astype(np.float32)
    root = write_dataset(tmp_path / "ds", feats, mean=mean, std=std)
    ds = build_dataset(cfg_for(root, window_size=64, feat_bias=1.0), "train", "window", cache=False)
    assert len(ds) == (70 - 64) + 1 + (100 - 64) == 43
    ids = ds.corpus.ids
    expected = {0: ("a", 0), 5: ("a", 5), 6: ("c", 0), 7: ("d", 0), 20: ("d", 13), 42: ("d", 35), -1: ("d", 35),
                -43: ("a", 0)}
    for index, (mid, start) in expected.items():
        k, s = ds.window(index)
        assert (ids[k], s) == (mid, start), index
        item = ds[index]
        assert item["id"] == mid and item["length"] == 64
        np.testing.assert_allclose(item["motion"].numpy(), (feats[mid][start:start + 64] - mean) / std,
                                   rtol=1e-5, atol=1e-5)
    # one epoch visits each (motion, start) exactly once; starts 0 .. T-65 (the reference's T - window starts)
    pairs = [(ids[k], s) for k, s in map(ds.window, range(len(ds)))]
    assert pairs == [("a", s) for s in range(6)] + [("c", 0)] + [("d", s) for s in range(36)]
    for bad in (43, -44):
        with pytest.raises(IndexError, match=f"window index {bad} out of range for 43 windows"):
            ds[bad]
    text = build_dataset(cfg_for(root), "train", "text", cache=False)
    with pytest.raises(DatasetError, match="window\\(\\) is for mode 'window'"):
        text.window(0)


def test_dataloader_batches_text_items(simple_root):
    ds = build_dataset(cfg_for(simple_root), "train", "text", cache=False)
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate)))
    assert batch["motion"].shape == (3, 196, D) and batch["motion"].dtype == torch.float32
    assert batch["length"].dtype == torch.long and (batch["length"] % 4 == 0).all()
    assert batch["id"] == ["000000", "000001", "000002"]
    assert isinstance(batch["tokens"], list) and batch["tokens"][0][0] == "a/DET"


def test_dataloader_workers_draw_what_the_main_process_draws(simple_root):
    """Item draws depend on (seed, epoch, index) only: two worker processes give exactly the batches one process
    gives, whatever the global RNG states (which forked workers would share or reseed)."""
    ds = build_dataset(cfg_for(simple_root), "train", "text", cache=False)
    ds.set_epoch(5, seed=4)
    order = list(range(len(ds))) * 4

    def draws(workers: int) -> list:
        torch.manual_seed(workers)
        loader = DataLoader(torch.utils.data.Subset(ds, order), batch_size=4, num_workers=workers,
                            collate_fn=collate)
        return [[(int(m), round(float(s))) for m, s in zip(b["length"], ds.denormalize(b["motion"][:, 0, :])[:, 0])]
                for b in loader]

    single, multi = draws(0), draws(2)
    assert single == multi
    lengths = {m for batch in single for m, _ in batch}
    assert len(lengths) > 1


# ---- eval mode ---------------------------------------------------------------------------------------------------

class FakeVectorizer:
    """vec["word/POS"] -> (word_emb (300,), pos_onehot (15,)); the embedding's value is the word's length."""

    def __getitem__(self, token):
        word = token.split("/")[0]
        onehot = np.zeros(15, np.float32)
        onehot[14] = 1
        return np.full(300, float(len(word)), np.float32), onehot


def fake_caption_to_evaluator_input(tokens, vectorizer, max_text_len=20):
    """reference §1.4, for when datasets.word_vectorizer is not written yet."""
    tokens = list(tokens)
    if len(tokens) < max_text_len:
        tokens = ["sos/OTHER"] + tokens + ["eos/OTHER"]
        sent_len = len(tokens)
        tokens += ["unk/OTHER"] * (max_text_len + 2 - sent_len)
    else:
        tokens = ["sos/OTHER"] + tokens[:max_text_len] + ["eos/OTHER"]
        sent_len = len(tokens)
    pairs = [vectorizer[t] for t in tokens]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), sent_len


@pytest.fixture
def word_vectorizer_module(monkeypatch):
    try:
        import datasets.word_vectorizer as wv
        if hasattr(wv, "caption_to_evaluator_input"):
            return wv
    except ImportError:
        pass
    fake = types.ModuleType("datasets.word_vectorizer")
    fake.caption_to_evaluator_input = fake_caption_to_evaluator_input
    monkeypatch.setitem(sys.modules, "datasets.word_vectorizer", fake)
    return fake


def test_eval_items_and_collate_sorted_by_sent_len(tmp_path, word_vectorizer_module):
    words = ["walk", "run", "jump", "turn", "sit"]
    motions, texts = {}, {}
    for i, n in enumerate([120, 45, 80, 60, 150]):
        motions[f"e{i}"] = motion_array(i, n)
        caption = " ".join(words[:i + 1])
        texts[f"e{i}"] = f"{caption}#{' '.join(w + '/VERB' for w in words[:i + 1])}#0.0#0.0\n"
    root = write_dataset(tmp_path / "ds", motions, texts)
    ds = build_dataset(cfg_for(root), "train", "eval", vectorizer=FakeVectorizer(), cache=False)
    assert [e.length for e in ds.entries] == [45, 60, 80, 120, 150]   # sorted by length (reference eval dataset)
    item = ds[0]                                                        # "e1": 2 tokens
    assert item["id"] == "e1" and item["sent_len"] == 4
    assert item["word_embs"].shape == (22, 300) and item["pos_ohot"].shape == (22, 15)
    assert item["word_embs"].dtype == torch.float32
    batch = collate([ds[i] for i in range(5)])
    assert batch["sent_len"].tolist() == [7, 6, 5, 4, 3]
    assert batch["id"] == ["e4", "e3", "e2", "e1", "e0"]                # every key reordered together
    assert batch["word_embs"].shape == (5, 22, 300) and batch["pos_ohot"].shape == (5, 22, 15)
    assert batch["length"].tolist()[0] in (148, 144)                    # "e4" (150 frames) came first


def test_eval_mode_without_glove_names_the_folder(simple_root):
    with pytest.raises(DatasetError, match=r"glove.*our_vab_data\.npy.*data\.glove_dir"):
        build_dataset(cfg_for(simple_root), "train", "eval", cache=False)


def test_collate_rejects_mixed_items_and_empty_batches():
    with pytest.raises(DatasetError, match="empty batch"):
        collate([])
    with pytest.raises(DatasetError, match="item 1 has keys"):
        collate([{"motion": torch.zeros(2), "length": 2}, {"motion": torch.zeros(2)}])


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_missing_root_says_how_to_make_the_mini_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*python -m datasets.mini --out data/mini"):
        MotionCorpus.load(cfg_for(tmp_path / "nowhere"), "train")
    with pytest.raises(DatasetError, match="nowhere"):
        load_stats(cfg_for(tmp_path / "nowhere"))


def test_caption_line_without_four_fields_names_file_and_line(tmp_path):
    bad = CAP + "\n\na person walks#a/DET person/NOUN\n"
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)}, {"a": bad})
    with pytest.raises(DatasetError) as e:
        MotionCorpus.load(cfg_for(root), "train", cache=False)
    msg = str(e.value)
    assert "texts/a.txt line 3" in msg and "at least 4 fields" in msg and "got 2 fields" in msg
    assert "'a person walks#a/DET person/NOUN'" in msg


def test_caption_line_with_extra_fields_uses_the_first_four():
    """The reference reads fields 0-3 of a line and ignores the rest."""
    caps = parse_captions("a man walks#a/DET man/NOUN walk/VERB#1.5#4.0#extra#\nhops#hop/VERB#0.0#0.0#\n", "x.txt")
    assert [(c.caption, c.tokens, c.start, c.end) for c in caps] == [
        ("a man walks", ("a/DET", "man/NOUN", "walk/VERB"), 1.5, 4.0), ("hops", ("hop/VERB",), 0.0, 0.0)]
    with pytest.raises(DatasetError, match=r"x\.txt line 2: expected 'caption#tokens#start#end' \(at least 4 fields "
                                           r"separated by '#'\), got 3 fields: 'hops#hop/VERB#0\.0'"):
        parse_captions("hops#hop/VERB#0.0#0.0\nhops#hop/VERB#0.0\n", "x.txt")


def test_caption_with_non_numeric_start_is_an_error():
    with pytest.raises(DatasetError, match=r"x\.txt line 1: expected a number of seconds as start, got 'soon'"):
        parse_captions("walk#walk/VERB#soon#0.0\n", "x.txt")


def test_empty_text_file_is_a_counted_skip(tmp_path, caplog):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50), "b": motion_array(1, 50)}, {"b": ""})
    with caplog.at_level(logging.INFO, logger="datasets.motion_dataset"):
        corpus = MotionCorpus.load(cfg_for(root), "train", cache=False)
    assert [e.key for e in corpus.entries] == ["a"] and corpus.skipped == {"empty_text": ["texts/b.txt"]}
    assert "b" in corpus.ids  # the motion itself still serves mode "window"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 1 for empty_text (text file without captions (expected at least one caption line); no text "
               "entry, motion still used for tokenizer windows): texts/b.txt" in m for m in warnings), warnings


def test_nan_and_short_motions_are_counted_skips_in_the_summary_line(tmp_path, caplog):
    nan = motion_array(1, 50)
    nan[3, 5] = np.nan
    inf = motion_array(2, 50)
    inf[0, 0] = np.inf
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50), "n": nan, "i": inf,
                                            "s": motion_array(3, 39)})
    with caplog.at_level(logging.INFO, logger="datasets.motion_dataset"):
        corpus = MotionCorpus.load(cfg_for(root), "train", cache=False)
    assert corpus.ids == ["a"]
    assert corpus.skipped == {"nan": ["new_joint_vecs/n.npy", "new_joint_vecs/i.npy"],
                              "too_short": ["new_joint_vecs/s.npy (39 frames)"]}
    summary = [r.getMessage() for r in caplog.records if "motions," in r.getMessage()]
    assert len(summary) == 1
    assert "1 motions, 1 entries (0 sub-clips)" in summary[0] and "nan=2, too_short=1" in summary[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "skipped 2 for nan (motion with NaN/Inf values (expected finite values); not used in any mode): " \
           "new_joint_vecs/n.npy, new_joint_vecs/i.npy" in warnings[0]
    assert "skipped 1 for too_short (motion shorter than the minimum of 40 frames; not used in any mode): " \
           "new_joint_vecs/s.npy (39 frames)" in warnings[1]


def test_every_skip_reason_is_a_warning_saying_what_was_expected(tmp_path, caplog):
    dim = 251
    texts = {"long": CAP + "\n", "sub": "waves#wave/VERB#0.0#1.0\n"}  # kit: 20 frames < 24
    root = write_dataset(tmp_path / "kit", {"short": motion_array(0, 23, dim), "long": motion_array(1, 200, dim),
                                            "sub": motion_array(2, 50, dim), "ok": motion_array(3, 50, dim)},
                         texts, splits={"train": ["short", "long", "sub", "ok", "ok"]}, dim=dim)
    with caplog.at_level(logging.WARNING, logger="datasets.motion_dataset"):   # the default level shows them
        corpus = MotionCorpus.load(cfg_for(root, dataset="kit"), "train", cache=False)
    assert sorted(corpus.skipped) == ["duplicate_id", "subclip_out_of_range", "too_long", "too_short"]
    warnings = {r.getMessage().split(" for ")[1].split(" ")[0]: r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING}
    assert sorted(warnings) == sorted(corpus.skipped)
    assert "motion shorter than the minimum of 24 frames" in warnings["too_short"]
    assert "(expected fewer than 200 for text entries); no text entry, still used for tokenizer windows): " \
           "new_joint_vecs/long.npy" in warnings["too_long"]
    assert "(expected 24 <= frames < 200); that caption gives no entry): texts/sub.txt (0.0-1.0 s: 20 frames)" \
           in warnings["subclip_out_of_range"]
    assert "(expected each id once); the repeat is ignored): train.txt: ok" in warnings["duplicate_id"]
    assert set(corpus.skip_reasons()) == {"nan", "too_short", "too_long", "empty_text", "subclip_out_of_range",
                                          "duplicate_id"}


def test_wrong_feature_width_suggests_the_other_dataset(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50, 251)})
    with pytest.raises(DatasetError) as e:
        MotionCorpus.load(cfg_for(root), "train", cache=False)
    msg = str(e.value)
    assert "new_joint_vecs/a.npy" in msg and "expected features of shape (T, 263)" in msg
    assert "got (50, 251)" in msg and "data.dataset=kit" in msg


def test_split_listing_missing_ids_is_an_error_listing_them(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)}, splits={"val": ["a", "ghost"]})
    with pytest.raises(FileNotFoundError) as e:
        MotionCorpus.load(cfg_for(root), "val")
    msg = str(e.value)
    assert "val.txt lists 2 id(s)" in msg
    assert "new_joint_vecs/ghost.npy" in msg and "texts/ghost.txt" in msg


def test_missing_split_file_lists_the_available_splits(simple_root):
    with pytest.raises(FileNotFoundError, match=r"test\.txt is missing.*\['train'\]"):
        MotionCorpus.load(cfg_for(simple_root), "test")


def test_duplicate_ids_are_counted(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)}, splits={"train": ["a", "a"]})
    corpus = MotionCorpus.load(cfg_for(root), "train", cache=False)
    assert corpus.ids == ["a"] and corpus.skipped == {"duplicate_id": ["train.txt: a"]}


@pytest.mark.parametrize("which,arr,expect", [
    ("Mean.npy", np.zeros(251, np.float32), r"Mean\.npy: expected shape \(263,\).*got \(251,\).*data\.dataset=kit"),
    ("Std.npy", np.ones((2, 263), np.float32), r"Std\.npy: expected shape \(263,\).*got \(2, 263\)"),
    ("Std.npy", np.zeros(263, np.float32), r"Std\.npy: expected every entry > 0, found <= 0 at dims \[0, 1"),
    ("Mean.npy", np.full(263, np.nan, np.float32), r"Mean\.npy: expected finite values"),
])
def test_bad_statistics_are_errors_naming_the_file(tmp_path, which, arr, expect):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)})
    np.save(root / which, arr)
    with pytest.raises(DatasetError, match=expect):
        load_stats(cfg_for(root))


def test_bad_config_values_are_errors(simple_root):
    with pytest.raises(DatasetError, match="feat_bias must be > 0"):
        load_stats(cfg_for(simple_root, feat_bias=0.0))
    with pytest.raises(DatasetError, match=r"'dataset' must be one of \['kit', 't2m'\], got 'humanml'"):
        get_spec(DataConfig(dataset="humanml"))
    with pytest.raises(DatasetError, match="'mode' must be one of"):
        build_dataset(cfg_for(simple_root), "train", "train")
    with pytest.raises(DatasetError, match="window_size=300 frames"):
        build_dataset(cfg_for(simple_root, window_size=300), "train", "window", cache=False)


# ---- cache -----------------------------------------------------------------------------------------------------

def test_cache_is_reused_then_rebuilt_when_a_file_changes(simple_root):
    cfg = cfg_for(simple_root)
    cold = MotionCorpus.load(cfg, "train")
    cache_files = list((simple_root / ".cache").glob("*.npz"))
    assert not cold.from_cache and len(cache_files) == 1
    warm = MotionCorpus.load(cfg, "train")
    assert warm.from_cache
    np.testing.assert_array_equal(warm.data, cold.data)
    assert warm.ids == cold.ids and warm.texts == cold.texts and warm.skipped == cold.skipped
    assert [(e.key, e.start, e.end) for e in warm.entries] == [(e.key, e.start, e.end) for e in cold.entries]

    text = simple_root / "texts" / "000001.txt"
    text.write_text("a person hops#a/DET person/NOUN hop/VERB#0.0#0.0\n")
    st = os.stat(text)
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = MotionCorpus.load(cfg, "train")
    assert not fresh.from_cache and fresh.texts[1][0].caption == "a person hops"
    assert MotionCorpus.load(cfg, "train").from_cache

    np.save(simple_root / "new_joint_vecs" / "000000.npy", motion_array(5, 44))
    fresh = MotionCorpus.load(cfg, "train")
    assert not fresh.from_cache and fresh.lengths[0] == 44 and (fresh.motion(0)[:, 1] == 5).all()


def test_corrupt_cache_is_rebuilt_and_no_temp_files_remain(simple_root):
    cfg = cfg_for(simple_root)
    MotionCorpus.load(cfg, "train")
    (cache_file,) = (simple_root / ".cache").glob("*.npz")
    cache_file.write_bytes(b"not a zip")
    corpus = MotionCorpus.load(cfg, "train")
    assert not corpus.from_cache and len(corpus) == 6
    assert MotionCorpus.load(cfg, "train").from_cache
    assert [p.name for p in (simple_root / ".cache").iterdir()] == [cache_file.name]


def test_cache_is_keyed_by_minimum_length(simple_root):
    MotionCorpus.load(cfg_for(simple_root), "train")
    corpus = MotionCorpus.load(cfg_for(simple_root, min_motion_length=100), "train")
    assert not corpus.from_cache and corpus.ids == ["000002", "000003", "000004"]


# ---- real data through the same loader ---------------------------------------------------------------------------

REAL = Path("/work/shared/data/real_motion")


def test_real_mocap_clips_load_as_humanml3d_features(tmp_path):
    rep = pytest.importorskip("datasets.representation")
    if not hasattr(rep, "joints_to_features") or not REAL.is_dir():
        pytest.skip("datasets.representation.joints_to_features or the real clips are not available")
    names = REAL.joinpath("all.txt").read_text().split()[:3]
    root = tmp_path / "real"
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    first = np.load(REAL / "joints" / f"{names[0]}.npy")
    offsets = rep.target_offsets(first[0], dataset="t2m")
    feats = []
    for n in names:
        f = rep.joints_to_features(np.load(REAL / "joints" / f"{n}.npy"), offsets, dataset="t2m").astype(np.float32)
        feats.append(f)
        np.save(root / "new_joint_vecs" / f"{n}.npy", f)
        (root / "texts" / f"{n}.txt").write_text((REAL / "texts" / f"{n}.txt").read_text())
    (root / "train.txt").write_text("\n".join(names) + "\n")
    allf = np.concatenate(feats)
    np.save(root / "Mean.npy", allf.mean(0))
    np.save(root / "Std.npy", allf.std(0) + 1e-3)
    ds = build_dataset(cfg_for(root), "train", "text", cache=False)
    assert ds.corpus.ids == names and len(ds.entries) == 3
    assert all(len(e.captions) == 3 for e in ds.entries)
    torch.manual_seed(0)
    item = ds[0]
    m = item["length"]
    assert m % 4 == 0 and m in {(len(feats[0]) // 4) * 4, (len(feats[0]) // 4 - 1) * 4}
    assert torch.isfinite(item["motion"]).all() and (item["motion"][m:] == 0).all()
    back = ds.denormalize(item["motion"][:m]).numpy()
    start = int(np.argmin([np.abs(feats[0][s:s + m] - back).max() for s in range(len(feats[0]) - m + 1)]))
    np.testing.assert_allclose(back, feats[0][start:start + m], atol=1e-4)


def test_mini_dataset_loads_in_every_mode(request, word_vectorizer_module):
    try:
        root = request.getfixturevalue("mini_root")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py fixture mini_root (datasets/mini.py) not written yet")
    cfg = DataConfig(root=str(root))
    corpus = MotionCorpus.load(cfg, "train", cache=False)  # the shared fixture is read-only: no .cache/ in it
    text = build_dataset(cfg, "train", "text", corpus=corpus)
    batch = collate([text[i] for i in range(min(4, len(text)))])
    assert batch["motion"].shape[1:] == (196, 263) and (batch["length"] % 4 == 0).all()
    window = build_dataset(cfg, "train", "window", corpus=corpus)
    assert window[0]["motion"].shape == (64, 263)
    if (Path(root) / "glove").is_dir():
        ev = build_dataset(cfg, "train", "eval", corpus=corpus)
        b = collate([ev[i] for i in range(min(4, len(ev)))])
        assert (b["sent_len"][:-1] >= b["sent_len"][1:]).all()


def test_unreadable_feature_or_text_file_names_the_file(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": motion_array(0, 50)})
    (root / "new_joint_vecs" / "a.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"new_joint_vecs/a\.npy: expected a float32 \.npy array"):
        MotionCorpus.load(cfg_for(root), "train", cache=False)
    np.save(root / "new_joint_vecs" / "a.npy", motion_array(0, 50))
    (root / "texts" / "a.txt").write_bytes(b"\xff\xfe walk#walk/VERB#0.0#0.0\n")
    with pytest.raises(DatasetError, match=r"texts/a\.txt: expected UTF-8 text"):
        MotionCorpus.load(cfg_for(root), "train", cache=False)
