"""GloVe + part-of-speech input of the standard T2M evaluator (reference.md §1.4, §3.4).

The evaluator's text encoder reads each caption token ``"word/POS"`` as a 300-d GloVe word vector
plus a 15-way part-of-speech one-hot. The vocabulary lives in a folder with three files:

- ``<prefix>_data.npy``   float ``(V, 300)`` word vectors, rows 0, 1, 2 are ``sos``, ``eos``, ``unk``
- ``<prefix>_words.pkl``  a list of the V words
- ``<prefix>_idx.pkl``    a dict word -> row

The pickles are read with a restricted unpickler that refuses anything but plain lists, dicts,
strings and ints, so a tampered vocabulary file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.atomic import atomic_write_bytes


class GloveError(ValueError):
    """A GloVe folder (our_vab_*) whose files are missing, unreadable or inconsistent; the message names the file."""


class GloveFileNotFoundError(GloveError, FileNotFoundError):
    """The GloVe folder or one of its three files does not exist."""

# reference.md §3.4: the 15 POS categories of the evaluator, in one-hot order.
POS_ENUMERATOR: dict[str, int] = {
    "VERB": 0, "NOUN": 1, "DET": 2, "ADP": 3, "NUM": 4, "AUX": 5, "PRON": 6, "ADJ": 7, "ADV": 8,
    "Loc_VIP": 9, "Body_VIP": 10, "Obj_VIP": 11, "Act_VIP": 12, "Desc_VIP": 13, "OTHER": 14,
}

# reference.md §3.4: VIP lists, checked in this order (the first list holding the word wins).
VIP_LISTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("Loc_VIP", frozenset("left right clockwise counterclockwise anticlockwise forward back backward up down "
                          "straight curve".split())),
    ("Body_VIP", frozenset("arm chin foot feet face hand mouth leg waist eye knee shoulder thigh".split())),
    ("Obj_VIP", frozenset("stair dumbbell chair window floor car ball handrail baseball basketball".split())),
    ("Act_VIP", frozenset("walk run swing pick bring kick put squat throw hop dance jump turn stumble stop sit "
                          "lift lower raise wash stand kneel stroll rub bend balance flap jog shuffle lean rotate "
                          "spin spread climb".split())),
    ("Desc_VIP", frozenset("slowly carefully fast careful slow quickly happy angry sad happily angrily "
                           "sadly".split())),
)

SPECIAL_WORDS = ("sos", "eos", "unk")   # reference.md §3.4: rows 0, 1, 2
WORD_DIM = 300                          # GloVe 300-d (reference.md §3.4)
NUM_POS = len(POS_ENUMERATOR)           # 15


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that allows only built-in containers and scalars (no class lookups at all)."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module, name):  # noqa: D401 - pickle hook
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load '{module}.{name}'; the vocabulary pickles may only hold plain "
            "lists, dicts, strings and ints")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self._source}: refusing a persistent id; expected plain data only")


def _check_plain(obj, source: str, depth: int = 0) -> None:
    if depth > 4:
        raise GloveError(f"{source}: nesting too deep; expected a flat list or dict")
    if isinstance(obj, bool) or not isinstance(obj, (list, dict, str, int)):
        raise GloveError(f"{source}: found a {type(obj).__name__}; only plain lists, dicts, strings and ints "
                         "are allowed")
    if isinstance(obj, list):
        for item in obj:
            _check_plain(item, source, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, source, depth + 1)
            _check_plain(value, source, depth + 1)


def load_plain_pickle(path: str | os.PathLike):
    """Read a pickle that may only hold plain lists/dicts/str/int; anything else raises naming the file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        obj = _PlainUnpickler(io.BytesIO(data), str(path)).load()
    except pickle.UnpicklingError as err:
        raise GloveError(str(err)) from None
    except Exception as err:  # truncated / not a pickle
        raise GloveError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
    _check_plain(obj, str(path))
    return obj


def _glove_paths(glove_dir: Path, prefix: str) -> tuple[Path, Path, Path]:
    return (glove_dir / f"{prefix}_data.npy", glove_dir / f"{prefix}_words.pkl", glove_dir / f"{prefix}_idx.pkl")


class WordVectorizer:
    """Lookup ``"word/POS" -> (word_emb (300,), pos_onehot (15,))`` exactly as the T2M evaluator does.

    Rules (reference.md §3.4): a word in the vocabulary gets its vector and, as POS, the first VIP
    category whose list holds the word, else its own tag (a tag outside ``POS_ENUMERATOR`` becomes
    ``OTHER``). A word outside the vocabulary gets the ``unk`` vector and ``OTHER``.
    """

    def __init__(self, glove_dir: str | os.PathLike, prefix: str = "our_vab"):
        glove_dir = Path(glove_dir)
        data_p, words_p, idx_p = _glove_paths(glove_dir, prefix)
        expected = (f"expected {data_p.name} (float (V, 300) GloVe vectors), {words_p.name} (list of V words) and "
                    f"{idx_p.name} (dict word -> row), as shipped in the evaluator's glove/ folder; "
                    "`python -m datasets.mini --out data/mini` writes one for the mini dataset")
        if not glove_dir.is_dir():
            raise GloveFileNotFoundError(f"GloVe folder {glove_dir} does not exist; {expected}")
        for p in (data_p, words_p, idx_p):
            if not p.is_file():
                raise GloveFileNotFoundError(f"GloVe folder {glove_dir}: missing {p.name}; {expected}")
        vectors = np.load(data_p, allow_pickle=False)
        words = load_plain_pickle(words_p)
        word2idx = load_plain_pickle(idx_p)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise GloveError(f"{words_p}: expected a list of strings, found {type(words).__name__}")
        if not isinstance(word2idx, dict) or not all(isinstance(k, str) and isinstance(v, int)
                                                     for k, v in word2idx.items()):
            raise GloveError(f"{idx_p}: expected a dict str -> int, found {type(word2idx).__name__}")
        if vectors.ndim != 2 or vectors.shape[0] < len(words):
            raise GloveError(f"{data_p}: expected shape ({len(words)}, D) to match {words_p.name}, "
                             f"found {vectors.shape}")
        bad = [w for w in words if w not in word2idx or not 0 <= word2idx[w] < vectors.shape[0]]
        if bad:
            raise GloveError(f"{idx_p}: {len(bad)} word(s) of {words_p.name} have no valid row, e.g. {bad[:3]}")
        if not {"sos", "eos", "unk"} <= set(words):
            raise GloveError(f"{words_p}: the vocabulary lacks sos / eos / unk (rows 0-2 must be sos, eos, unk)")
        self.glove_dir = glove_dir
        self.vectors = vectors
        self.words = words
        # the reference looks words up among `words` (their rows from the idx dict); extra idx keys are unknown
        self.word2idx = {w: word2idx[w] for w in words}
        self.dim = int(vectors.shape[1])

    def __len__(self) -> int:
        return len(self.word2idx)

    @staticmethod
    def pos_onehot(pos: str) -> np.ndarray:
        """(15,) one-hot of a POS category; a tag outside the enumerator maps to OTHER."""
        out = np.zeros(NUM_POS, dtype=np.float32)
        out[POS_ENUMERATOR.get(pos, POS_ENUMERATOR["OTHER"])] = 1.0
        return out

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(token, str) or "/" not in token:
            raise ValueError(f"WordVectorizer: expected a 'word/POS' token, got {token!r}")
        word, pos = token.rsplit("/", 1)
        row = self.word2idx.get(word)
        if row is None:
            return self.vectors[self.word2idx["unk"]], self.pos_onehot("OTHER")
        for category, members in VIP_LISTS:
            if word in members:
                pos = category
                break
        return self.vectors[row], self.pos_onehot(pos)


def caption_to_evaluator_input(tokens: Sequence[str], vectorizer: WordVectorizer,
                               max_text_len: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
    """Evaluator input of one caption (reference.md §1.4).

    Args:
        tokens: list of ``"word/POS"`` strings
        vectorizer: a ``WordVectorizer``
        max_text_len: tokens kept at most (20)
    Returns:
        word_embs (max_text_len+2, 300) float32, pos_ohot (max_text_len+2, 15) float32, sent_len (int):
        ``sos``, the (cropped) tokens, ``eos``, then ``unk`` padding; sent_len counts sos and eos.
    """
    tokens = list(tokens)
    if len(tokens) < max_text_len:
        seq = ["sos/OTHER"] + tokens + ["eos/OTHER"]
        sent_len = len(seq)
        seq += ["unk/OTHER"] * (max_text_len + 2 - sent_len)
    else:
        seq = ["sos/OTHER"] + tokens[:max_text_len] + ["eos/OTHER"]
        sent_len = len(seq)
    embs, pos = zip(*(vectorizer[t] for t in seq))
    return (np.stack(embs).astype(np.float32), np.stack(pos).astype(np.float32), sent_len)


def write_glove_folder(out_dir: str | os.PathLike, words: Sequence[str], vectors: np.ndarray,
                       prefix: str = "our_vab") -> Path:
    """Write a vocabulary in the evaluator's format (``<prefix>_data.npy``, ``_words.pkl``, ``_idx.pkl``).

    Args:
        words: V distinct words; the first three must be ``sos``, ``eos``, ``unk`` (reference.md §3.4)
        vectors: (V, D) word vectors (saved as float32)
    Returns:
        the folder path. Each file is written atomically (temp file + rename).
    """
    words = [str(w) for w in words]
    vectors = np.asarray(vectors, dtype=np.float32)
    if tuple(words[:3]) != SPECIAL_WORDS:
        raise ValueError(f"write_glove_folder: words must start with {list(SPECIAL_WORDS)}, got {words[:3]}")
    if len(set(words)) != len(words):
        dup = sorted({w for w in words if words.count(w) > 1})
        raise ValueError(f"write_glove_folder: duplicate words {dup[:5]}")
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"write_glove_folder: vectors must have shape ({len(words)}, D), got {vectors.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_p, words_p, idx_p = _glove_paths(out, prefix)
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    atomic_write_bytes(data_p, buf.getvalue())
    atomic_write_bytes(words_p, pickle.dumps(words, protocol=4))
    atomic_write_bytes(idx_p, pickle.dumps({w: i for i, w in enumerate(words)}, protocol=4))
    return out
