"""The procedural mini dataset: HumanML3D layout, statistics, determinism, plausible motion, captions."""
from __future__ import annotations

import numpy as np
import pytest

from datasets import mini
from datasets.skeleton import T2M_PARENTS, T2M_TARGET_BONE_LENGTHS
from datasets.word_vectorizer import WordVectorizer

SPLITS = ("train", "val", "test", "train_val", "all")
SPACY_TAGS = {"DET", "NOUN", "VERB", "ADP", "PRON", "CCONJ", "ADJ", "ADV", "AUX", "NUM", "PART", "SCONJ", "PROPN",
              "INTJ"}
FAMILY_VERBS = {   # lemmas a caption of the family must contain (one of)
    "walk": {"walk", "stroll", "step", "move"}, "run": {"run", "jog", "sprint"}, "jump": {"jump", "leap", "hop"},
    "wave": {"wave"}, "kick": {"kick"}, "punch": {"punch", "jab", "box", "throw"}, "squat": {"squat", "crouch"},
    "sit": {"sit", "seat", "lower"}, "turn": {"turn", "rotate", "spin"}, "raise": {"raise", "lift"},
    "clap": {"clap", "applaud"}, "side_step": {"step", "shuffle"},
}


def _ids(root, split):
    return (root / f"{split}.txt").read_text().split()


def _family(motion_id: str) -> str:
    return mini.FAMILY_CYCLE[int(motion_id) % len(mini.FAMILY_CYCLE)]


def _lines(root, motion_id):
    return [ln for ln in (root / "texts" / f"{motion_id}.txt").read_text().splitlines() if ln]


def test_layout_files_and_shapes(mini_root):
    for name in ("Mean.npy", "Std.npy", "glove/our_vab_data.npy", "glove/our_vab_words.pkl", "glove/our_vab_idx.pkl"):
        assert (mini_root / name).is_file(), name
    all_ids = _ids(mini_root, "all")
    assert len(all_ids) == 48
    for i in all_ids:
        x = np.load(mini_root / "new_joint_vecs" / f"{i}.npy")
        j = np.load(mini_root / "new_joints" / f"{i}.npy")
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 263
        assert 40 <= x.shape[0] <= 196
        assert j.dtype == np.float32 and j.shape == (x.shape[0], 22, 3)
        assert np.isfinite(x).all()
        for line in _lines(mini_root, i):
            fields = line.split("#")
            assert len(fields) == 4, line
            float(fields[2]), float(fields[3])


def test_splits_partition_the_motions_80_5_15(mini_root):
    s = {name: _ids(mini_root, name) for name in SPLITS}
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (39, 2, 7)
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(s["all"])
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
    assert sorted(s["train_val"]) == sorted(s["train"] + s["val"])
    for name in SPLITS:
        for i in s[name]:
            assert (mini_root / "new_joint_vecs" / f"{i}.npy").is_file()
            assert (mini_root / "texts" / f"{i}.txt").is_file()


def test_mean_std_from_train_with_group_mean_rule(mini_root):
    mean, std = np.load(mini_root / "Mean.npy"), np.load(mini_root / "Std.npy")
    assert mean.shape == std.shape == (263,) and mean.dtype == std.dtype == np.float32
    data = np.concatenate([np.load(mini_root / "new_joint_vecs" / f"{i}.npy") for i in _ids(mini_root, "train")])
    np.testing.assert_allclose(mean, data.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    per_dim = data.astype(np.float64).std(0)
    for a, b in [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263)]:
        np.testing.assert_allclose(std[a:b], per_dim[a:b].mean(), rtol=1e-5)
    assert (std > 0).all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = mini.write_mini_dataset(tmp_path / "a", num_motions=5, seed=3).out
    b = mini.write_mini_dataset(tmp_path / "b", num_motions=5, seed=3).out
    c = mini.write_mini_dataset(tmp_path / "c", num_motions=5, seed=4).out
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 5 * 3 + 5 + 2 + 3 + 1           # ... + dataset_info.json (the "procedural" flag)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "new_joint_vecs/000000.npy").read_bytes() != (c / "new_joint_vecs/000000.npy").read_bytes()
    assert (a / "texts/000001.txt").read_text() != (c / "texts/000001.txt").read_text()


def test_existing_output_is_refused_without_overwrite(mini_root, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        mini.write_mini_dataset(tmp_path, num_motions=3)
    assert mini.main(["--out", str(tmp_path), "--num-motions", "3"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_recovered_bone_lengths_are_constant_and_standard(mini_root):
    parents = np.asarray(T2M_PARENTS)
    for i in _ids(mini_root, "all")[:12]:
        j = np.load(mini_root / "new_joints" / f"{i}.npy").astype(np.float64)
        lengths = np.linalg.norm(j[:, 1:] - j[:, parents[1:]], axis=-1)     # (T, 21)
        np.testing.assert_allclose(lengths, np.broadcast_to(T2M_TARGET_BONE_LENGTHS, lengths.shape), atol=1e-4)


@pytest.mark.parametrize("family", ["wave", "clap", "punch", "raise"])
def test_standing_families_keep_both_feet_in_contact_and_root_still(mini_root, family):
    ids = [i for i in _ids(mini_root, "all") if _family(i) == family]
    assert ids
    for i in ids:
        x = np.load(mini_root / "new_joint_vecs" / f"{i}.npy")
        assert (x[:, 259:263] == 1).all(), i                      # both feet (ankle and toe) in contact
        assert np.abs(x[:, 1:3]).max() < 1e-3, i                   # no root translation
        if family != "punch":   # punches twist the shoulders, which turns the standard root (reference §2.4 step 6)
            assert np.abs(x[:, 0]).max() < 1e-3, i
        j = np.load(mini_root / "new_joints" / f"{i}.npy")
        assert j[..., 1].min() == pytest.approx(0.0, abs=1e-5)     # feet on the floor
        feet = j[:, [7, 10, 8, 11]]
        assert np.abs(feet - feet[:1]).max() < 1e-3, i             # planted, no sliding


def test_walk_plants_stance_feet(mini_root):
    ids = [i for i in _ids(mini_root, "all") if _family(i) == "walk"]
    for i in ids:
        x = np.load(mini_root / "new_joint_vecs" / f"{i}.npy")
        j = np.load(mini_root / "new_joints" / f"{i}.npy").astype(np.float64)
        assert np.linalg.norm(j[-1, 0, [0, 2]] - j[0, 0, [0, 2]]) > 0.5, i         # it goes somewhere
        for ankle, contact in ((7, 259), (8, 261)):
            step = np.linalg.norm(np.diff(j[:, ankle], axis=0), axis=-1)          # (T-2,)
            planted = step < 2e-3
            assert planted.mean() > 0.4, (i, ankle)          # a large part of the clip the foot stays put
            assert (x[:-1, contact][planted] == 1).all()     # and those frames are marked as contact
            assert (x[:-1, contact] == 0).any()              # the swing phases are not


def test_captions_mention_the_family_verb():
    for index in range(45):
        m = mini.make_motion(7, index)
        parts = m.family.split("+")
        whole = [c for c, s, e in m.captions if s == e == 0.0]
        assert 2 <= len(whole) <= 3 and len(set(whole)) == len(whole)
        for caption in whole:
            lemmas = {t.split("/")[0] for t in mini.tokenize(caption)}
            for fam in parts:
                assert lemmas & FAMILY_VERBS[fam], (m.family, caption)


def test_sequences_have_subclip_captions_the_loader_can_cut(mini_root):
    seen = 0
    for i in _ids(mini_root, "all"):
        rows = np.load(mini_root / "new_joint_vecs" / f"{i}.npy").shape[0]
        for line in _lines(mini_root, i):
            start, end = (float(v) for v in line.split("#")[2:])
            if start == end == 0.0:
                continue
            seen += 1
            a, b = int(start * 20), int(end * 20)
            assert _family(i) == "sequence" and 0 <= a < b <= rows and b - a >= 40, line
    assert seen >= 5


def test_tokens_follow_humanml3d_format(mini_root):
    for i in _ids(mini_root, "all"):
        for line in _lines(mini_root, i):
            caption, tokens, _, _ = line.split("#")
            toks = tokens.split()
            assert len(toks) == len([w for w in caption.split() if any(ch.isalpha() for ch in w)])
            for t in toks:
                word, pos = t.split("/")
                assert pos in SPACY_TAGS and word.isalpha() and word == word.lower()
            assert "walks/VERB" not in toks and "hands/NOUN" not in toks      # NOUN / VERB are lemmatised
    assert mini.tokenize("A person turns left, then walks.") == [
        "a/DET", "person/NOUN", "turn/VERB", "left/ADJ", "then/ADV", "walk/VERB"]


def test_glove_covers_vocabulary_and_groups_synonyms(mini_root):
    vec = WordVectorizer(mini_root / "glove")
    unk = vec["unk/OTHER"][0]
    for i in _ids(mini_root, "all"):
        for line in _lines(mini_root, i):
            for t in line.split("#")[1].split():
                assert not np.array_equal(vec[t][0], unk), t
    assert int(np.argmax(vec["walk/VERB"][1])) == 12 and int(np.argmax(vec["left/ADJ"][1])) == 9

    def cos(a, b):
        va, vb = vec[a][0], vec[b][0]
        return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))
    assert cos("walk/VERB", "stroll/VERB") > 0.5 > abs(cos("walk/VERB", "clap/VERB"))
    assert cos("quickly/ADV", "fast/ADV") > 0.5 > abs(cos("quickly/ADV", "slowly/ADV"))


def test_mirror_caption_swaps_sides_and_turn_direction():
    assert mini.mirror_caption("a man turns left, then waves his right hand clockwise.") == \
        "a man turns right, then waves his left hand counterclockwise."


def test_mirrored_copies_are_mirrors_in_the_same_split(tmp_path):
    from datasets.representation import mirror_joints
    root = mini.write_mini_dataset(tmp_path / "m", num_motions=5, seed=1, mirror=True).out
    for split in SPLITS:
        ids = _ids(root, split)
        originals = [i for i in ids if not i.startswith("M")]
        assert originals and sorted(ids) == sorted(originals + [f"M{i}" for i in originals])
    for i in _ids(root, "all"):
        if i.startswith("M"):
            continue
        a = mirror_joints(np.load(root / "new_joints" / f"{i}.npy"))
        b = np.load(root / "new_joints" / f"M{i}.npy")
        # same pose up to the asymmetric target skeleton (left/right bones differ by < 1.1 cm) and root scale
        assert np.abs((a - a[:, :1]) - (b - b[:, :1])).max() < 0.03
        assert [mini.mirror_caption(ln.split("#")[0]) for ln in _lines(root, i)] == \
            [ln.split("#")[0] for ln in _lines(root, f"M{i}")]


@pytest.mark.parametrize("family", ["wave", "clap", "punch", "raise", "sit", "squat"])
def test_no_pose_snaps_in_in_place_actions(mini_root, family):
    # a held pose that snapped back to standing (or an elbow whipping round) shows as a huge joint acceleration
    for i in [i for i in _ids(mini_root, "all") if _family(i) == family]:
        j = np.load(mini_root / "new_joints" / f"{i}.npy").astype(np.float64)
        accel = np.linalg.norm(np.diff(j, 2, axis=0), axis=-1) * 20 ** 2       # m/s^2
        assert accel.max() < 120.0, (i, float(accel.max()))


def test_preview_draws_one_row_per_family(mini_root, tmp_path):
    from PIL import Image

    out = mini.write_preview(mini_root, tmp_path / "sheet.png", per_family=1)
    with Image.open(out) as img:
        width, height = img.size
    families = len(set(mini.FAMILY_CYCLE))
    assert families >= 12
    # utils.plot.plot_contact_sheet: 6 columns of 1.7 in and rows of 2.3 in at 80 dpi
    assert (width, height) == (round(6 * 1.7 * 80), round(families * 2.3 * 80))
