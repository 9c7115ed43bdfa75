"""WordVectorizer and caption_to_evaluator_input against hand-worked tokens (reference.md §1.4, §3.4)."""
import pickle

import numpy as np
import pytest

from datasets.word_vectorizer import (POS_ENUMERATOR, WordVectorizer, caption_to_evaluator_input,
                                      load_plain_pickle, write_glove_folder)

WORDS = ["sos", "eos", "unk", "a", "person", "walk", "left", "hand", "quickly", "chair", "big"]


@pytest.fixture()
def glove(tmp_path):
    vectors = np.arange(len(WORDS) * 300, dtype=np.float32).reshape(len(WORDS), 300)
    write_glove_folder(tmp_path / "glove", WORDS, vectors)
    return WordVectorizer(tmp_path / "glove"), vectors


def _pos(vec_tuple):
    return int(np.argmax(vec_tuple[1]))


def test_known_word_gets_its_row_and_own_pos(glove):
    vec, vectors = glove
    emb, pos = vec["person/NOUN"]
    np.testing.assert_array_equal(emb, vectors[4])
    assert pos.shape == (15,) and pos.sum() == 1 and pos[POS_ENUMERATOR["NOUN"]] == 1
    assert _pos(vec["a/DET"]) == 2
    assert _pos(vec["big/ADJ"]) == 7


def test_vip_category_overrides_the_tag(glove):
    vec, _ = glove
    assert _pos(vec["walk/VERB"]) == 12       # Act_VIP
    assert _pos(vec["left/ADJ"]) == 9         # Loc_VIP
    assert _pos(vec["hand/NOUN"]) == 10       # Body_VIP
    assert _pos(vec["chair/NOUN"]) == 11      # Obj_VIP
    assert _pos(vec["quickly/ADV"]) == 13     # Desc_VIP


def test_unknown_word_is_unk_and_other(glove):
    vec, vectors = glove
    emb, pos = vec["jump/VERB"]                # VIP word but not in this vocabulary
    np.testing.assert_array_equal(emb, vectors[2])
    assert _pos((emb, pos)) == 14


def test_tag_outside_enumerator_is_other(glove):
    vec, vectors = glove
    emb, pos = vec["person/PROPN"]
    np.testing.assert_array_equal(emb, vectors[4])
    assert _pos((emb, pos)) == 14


def test_caption_padding_and_sent_len(glove):
    vec, vectors = glove
    embs, pos, sent_len = caption_to_evaluator_input(["a/DET", "person/NOUN", "walk/VERB"], vec)
    assert embs.shape == (22, 300) and pos.shape == (22, 15) and sent_len == 5
    np.testing.assert_array_equal(embs[0], vectors[0])          # sos
    np.testing.assert_array_equal(embs[1:4], vectors[[3, 4, 5]])
    np.testing.assert_array_equal(embs[4], vectors[1])          # eos
    np.testing.assert_array_equal(embs[5:], np.repeat(vectors[2:3], 17, 0))   # unk padding
    assert list(pos.argmax(1)[:5]) == [14, 2, 1, 12, 14] and (pos.argmax(1)[5:] == 14).all()


def test_caption_cropped_to_20_plus_2(glove):
    vec, vectors = glove
    tokens = ["a/DET"] * 19 + ["person/NOUN"] * 6
    embs, pos, sent_len = caption_to_evaluator_input(tokens, vec)
    assert sent_len == 22 and embs.shape == (22, 300)
    np.testing.assert_array_equal(embs[0], vectors[0])
    np.testing.assert_array_equal(embs[20], vectors[4])          # token 20 kept, tokens 21.. dropped
    np.testing.assert_array_equal(embs[21], vectors[1])
    _, _, n19 = caption_to_evaluator_input(["a/DET"] * 19, vec)
    _, _, n20 = caption_to_evaluator_input(["a/DET"] * 20, vec)
    assert (n19, n20) == (21, 22)


def test_writer_files_round_trip(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 300)).astype(np.float32)
    write_glove_folder(tmp_path, WORDS, vectors)
    assert load_plain_pickle(tmp_path / "our_vab_words.pkl") == WORDS
    assert load_plain_pickle(tmp_path / "our_vab_idx.pkl") == {w: i for i, w in enumerate(WORDS)}
    np.testing.assert_array_equal(np.load(tmp_path / "our_vab_data.npy"), vectors)


def test_writer_requires_special_rows_first(tmp_path):
    with pytest.raises(ValueError, match="sos"):
        write_glove_folder(tmp_path, ["a", "sos", "eos", "unk"], np.zeros((4, 300)))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_objects(glove, tmp_path):
    vec, _ = glove
    words_p = vec.glove_dir / "our_vab_words.pkl"
    words_p.write_bytes(pickle.dumps([_Evil()]))
    with pytest.raises(ValueError, match="our_vab_words.pkl.*refusing"):
        WordVectorizer(vec.glove_dir)
    (tmp_path / "f.pkl").write_bytes(pickle.dumps([1.5]))
    with pytest.raises(ValueError, match="f.pkl.*float"):
        load_plain_pickle(tmp_path / "f.pkl")


def test_missing_file_names_folder_and_file(glove):
    vec, _ = glove
    (vec.glove_dir / "our_vab_idx.pkl").unlink()
    with pytest.raises(FileNotFoundError) as err:
        WordVectorizer(vec.glove_dir)
    msg = str(err.value)
    assert str(vec.glove_dir) in msg and "missing our_vab_idx.pkl" in msg and "dict word -> row" in msg
