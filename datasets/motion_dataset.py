"""HumanML3D / KIT-ML on-disk layout: splits, texts, Mean/Std, text / window / eval datasets and collate.

This is the one way the project reads a motion dataset (`reference.md` §1). A folder in the HumanML3D layout holds
`new_joint_vecs/<id>.npy` (T, D) features, `texts/<id>.txt` captions, `Mean.npy` / `Std.npy` and split files
`<split>.txt` (one id per line; mirrored `M<id>` ids are ordinary ids).

    DataConfig                             the `data:` block of every stage config (ARCHITECTURE.md §6.1)
    DatasetSpec, get_spec(cfg|name)        per-dataset constants (D, J, fps, min/max length, pad, unit)
    load_stats(cfg) -> mean (D,), std (D,) Mean.npy / Std.npy with the feat_bias rule (reference §1.5)
    MotionCorpus.load(cfg, split)          the split read once into memory: motions, captions, entries
    build_dataset(cfg, split, mode)        MotionTextDataset, mode "text" | "window" | "eval"
    collate(batch) -> dict                 stacks tensors, keeps lists; "eval" batches sorted by sent_len desc

Loading (reference §1.3). Every motion of the split is read once into one float32 array (`MotionCorpus.data`,
(sum T, D)) with row offsets, and every text file once into parsed captions; items are views into that array, so
nothing opens a file per item per epoch. Entries are built exactly as the reference `Text2MotionDataset`:
- a motion whose length is outside [min, 200) gives no text entry (its sub-clips neither);
- a caption with start = end = 0 (NaN read as 0) is whole-clip; a motion has a main entry (key = its id, all its
  whole-clip captions) only if it has at least one;
- any other caption becomes its own entry `motion[int(start*20):int(end*20)]` (the constant 20 for both datasets)
  keyed `<letter A..W>_<id>` (letter redrawn on collision; drawn from `random.Random(SUBCLIP_KEY_SEED)` in split
  order, so loading is deterministic), kept only if its length is in [min, 200).
Mode "window" uses every loaded motion with at least `window_size` frames (no text, no 200 cap), as the reference
VQ `MotionDataset` does, and like it enumerates snippets: an epoch is every window of every such motion, not one
window per motion. Motion k gives n_k = max(T_k - window_size, 1) windows, starting at frames 0 .. n_k-1 (the
reference's T - window_size starts; a motion exactly window_size long gives its one window instead of the
reference's none); index i is the window of motion k with cumsum(n)[k] <= i < cumsum(n)[k+1], starting at
i - cumsum(n)[k] (`MotionTextDataset.window(i)`). So `train.epochs` counts passes over all snippets, as the
reference's `max_epoch` does (HumanML3D train: of the order of 1.5M windows, ~6k steps of 256, per
epoch; the trainer logs the exact count).

Cache. `MotionCorpus.load` keeps a single `<root>/.cache/<split>.<dataset>.min<min>.npz` (motions, raw texts, skip
records), keyed by a signature of the listed ids, of the split file's and every listed data file's size, mtime, inode
and ctime, and of a digest of each data file's first and last 4 KiB (a cheap content check: a file replaced with
the same size and mtime is noticed). It is used only
when the signature matches, rebuilt automatically when stale, and written atomically (temp file + `os.replace`);
an unwritable root only logs a warning.

Bad input: error or counted skip (reference behaviour where it has one; skips are counted, logged at WARNING once
per reason with what was expected and the file names, and summarised in one INFO line "N motions, M entries,
skipped ..." at the end of every load):
- missing root folder, split file, Mean.npy / Std.npy                       -> DatasetError (with the fix)
- a split listing an id whose `new_joint_vecs/<id>.npy` or `texts/<id>.txt` is missing -> DatasetError listing them
  (the reference silently skips; a partial copy of a dataset is a user error worth knowing about)
- a feature file of the wrong width or rank (e.g. 251 columns in a t2m folder) -> DatasetError (wrong dataset flag)
- a caption line with fewer than 4 '#'-separated fields, or a start/end that is not a number -> DatasetError (file +
  line); fields after the fourth are ignored (reference)
- Mean/Std of the wrong shape, non-finite, or Std <= 0                      -> DatasetError
- a motion with NaN/Inf                     -> skip "nan" (the reference statistics skip such files)
- a motion shorter than the minimum length  -> skip "too_short" (reference)
- a motion of length >= 200                 -> no text entries, counted "too_long" (reference); still used by "window"
- an empty text file (no caption lines)     -> no text entries, counted "empty_text"
- a sub-clip outside [min, 200)             -> counted "subclip_out_of_range" (reference)
- an id listed twice in a split file        -> counted "duplicate_id"
Blank lines in split and text files are ignored, and so is a UTF-8 byte-order mark at the start of either.

Item randomness (caption choice, crop length, crop start; "window" items are fixed, the sampler shuffles them)
comes from a generator derived from (seed, epoch, index) alone, never from global state: item i of epoch e is the
same whichever process, worker or model asks for it, and however much randomness anything else draws. The trainer
calls `set_epoch(epoch, seed=train.seed)` before each epoch; the evaluation driver `set_epoch(replication seed)`.
So a model that draws more random numbers cannot change which captions and crops the ground truth gets.

Normalisation. `build_dataset(..., stats=(mean, std))` normalises with the statistics of the consumer (the
tokenizer's, stored in its checkpoint); without `stats` the folder's Mean/Std with the feat_bias rule are used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.registry import DATASETS, DatasetFacts, dataset_facts
from utils.atomic import atomic_open

log = logging.getLogger(__name__)

_MOD = "datasets/motion_dataset.py"
MODES = ("text", "window", "eval")
SUBCLIP_KEY_SEED = 0                       # any fixed seed: makes sub-clip keys deterministic
SUBCLIP_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVW"  # reference §1.3: a random letter from A..W
CACHE_VERSION = 1
MINI_FIX = "run `python -m datasets.mini --out data/mini` first, or set data.root=<a HumanML3D-layout folder>"


class DatasetError(ValueError):
    """Bad or missing dataset input; the message names the file, what was expected and what was found."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A required dataset file or folder does not exist."""


# --------------------------------------------------------------------------------------------------------------
# Configuration and per-dataset constants
# --------------------------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    root: str = "data/mini"          # a folder in the HumanML3D layout (reference §1.1)
    dataset: str = "t2m"             # "t2m" (HumanML3D, 263-d, 22 joints) | "kit" (KIT-ML, 251-d, 21 joints)
    feat_bias: float = 5.0           # Std of root (0:4) and contact (D-4:D) dims divided by this (reference §1.5); 1.0 = raw Std
    max_motion_length: int = 196     # items are zero-padded to this many rows (reference §1.3)
    min_motion_length: int = 0       # 0 = dataset default (40 t2m, 24 kit; reference §1.3)
    unit_length: int = 4             # crop lengths are multiples of this (reference §1.3)
    window_size: int = 64            # mode "window" (tokenizer training; reference §1.3 VQ dataset)
    max_text_len: int = 20           # evaluator caption length in words (reference §1.4)
    glove_dir: str = ""              # "" = <root>/glove; only mode "eval" needs it

    def check_values(self, prefix: str = "data.") -> None:
        """A known dataset and positive sizes; `ConfigError` naming the key (run by utils.config on loading)."""
        from utils.config import bad_value, check_choice

        check_choice(prefix + "dataset", self.dataset, tuple(SPECS))
        for key in ("max_motion_length", "unit_length", "window_size", "max_text_len"):
            if getattr(self, key) < 1:
                raise bad_value(prefix + key, getattr(self, key), "an integer >= 1")
        if self.min_motion_length < 0:
            raise bad_value(prefix + "min_motion_length", self.min_motion_length,
                            "an integer >= 0 (0 = dataset default)")
        if not self.feat_bias > 0:
            raise bad_value(prefix + "feat_bias", self.feat_bias, "a number > 0 (1 = the raw Std)")


@dataclass(frozen=True)
class DatasetSpec:
    """Constants of one dataset (`datasets.registry`) with a config's length overrides applied. Lengths in frames."""
    name: str
    dim: int                  # feature width D
    joints: int               # J
    fps: float
    min_length: int           # motions / sub-clips shorter than this are dropped
    max_length: int = 200     # dropped if length >= this (reference: "< 200")
    pad_length: int = 196     # max_motion_length: items are zero-padded to this
    unit_length: int = 4
    subclip_fps: float = 20.0  # the reference uses 20 for both datasets when cutting sub-clips

    @classmethod
    def from_facts(cls, facts: DatasetFacts) -> "DatasetSpec":
        return cls(facts.name, dim=facts.dim, joints=facts.joints, fps=facts.fps, min_length=facts.min_length,
                   max_length=facts.max_length, pad_length=facts.pad_length, unit_length=facts.unit_length,
                   subclip_fps=facts.subclip_fps)


SPECS: dict[str, DatasetSpec] = {ds: DatasetSpec.from_facts(dataset_facts(ds)) for ds in DATASETS}


def get_spec(cfg: DataConfig | str) -> DatasetSpec:
    """The DatasetSpec of `cfg.dataset` (or a dataset name), with the config's length overrides applied."""
    name = cfg if isinstance(cfg, str) else cfg.dataset
    if name not in SPECS:
        raise DatasetError(f"{_MOD}: argument 'dataset' must be one of {sorted(SPECS)}, got {name!r}")
    spec = SPECS[name]
    if isinstance(cfg, str):
        return spec
    if cfg.unit_length < 1:
        raise DatasetError(f"{_MOD}: data.unit_length must be >= 1, got {cfg.unit_length}")
    if cfg.max_motion_length < cfg.unit_length:
        raise DatasetError(f"{_MOD}: data.max_motion_length must be >= data.unit_length ({cfg.unit_length}), "
                           f"got {cfg.max_motion_length}")
    if cfg.min_motion_length < 0:
        raise DatasetError(f"{_MOD}: data.min_motion_length must be >= 0 (0 = dataset default), "
                           f"got {cfg.min_motion_length}")
    min_length = cfg.min_motion_length or spec.min_length
    return dataclasses.replace(spec, min_length=max(min_length, cfg.unit_length),
                               pad_length=cfg.max_motion_length, unit_length=cfg.unit_length)


def _root(cfg: DataConfig) -> Path:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetFileNotFoundError(
            f"{_MOD}: data root '{root}' does not exist or is not a folder (expected a HumanML3D-layout folder with "
            f"new_joint_vecs/, texts/, <split>.txt, Mean.npy, Std.npy); {MINI_FIX}")
    return root


# --------------------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------------------

def apply_feat_bias(std: np.ndarray, feat_bias: float) -> np.ndarray:
    """Std with dims 0:4 (root) and D-4:D (foot contacts) divided by feat_bias (reference §1.5). (D,) -> (D,)"""
    if not feat_bias > 0:
        raise DatasetError(f"{_MOD}: data.feat_bias must be > 0 (1.0 = raw Std), got {feat_bias}")
    out = np.array(std, dtype=np.float32, copy=True)
    out[0:4] /= feat_bias
    out[-4:] /= feat_bias
    return out


def load_stats(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """`<root>/Mean.npy`, `<root>/Std.npy` with the feat_bias rule. Returns mean (D,), std (D,) float32."""
    root = _root(cfg)
    spec = get_spec(cfg)
    arrays = []
    for name in ("Mean.npy", "Std.npy"):
        path = root / name
        if not path.is_file():
            raise DatasetFileNotFoundError(
                f"{_MOD}: {path} is missing (expected the dataset statistics, float32 ({spec.dim},)); {MINI_FIX}")
        arr = np.load(path, allow_pickle=False)
        if arr.shape != (spec.dim,):
            hint = ""
            other = [s.name for s in SPECS.values() if arr.shape == (s.dim,) and s.name != spec.name]
            if other:
                hint = f"; this looks like a {other[0]} folder: set data.dataset={other[0]}"
            raise DatasetError(f"{_MOD}: {path}: expected shape ({spec.dim},) for dataset {spec.name!r}, "
                               f"got {tuple(arr.shape)}{hint}")
        if not np.isfinite(arr).all():
            raise DatasetError(f"{_MOD}: {path}: expected finite values, found NaN/Inf")
        arrays.append(arr.astype(np.float32))
    mean, std = arrays
    if (std <= 0).any():
        bad = np.flatnonzero(std <= 0)[:5].tolist()
        raise DatasetError(f"{_MOD}: {root / 'Std.npy'}: expected every entry > 0, found <= 0 at dims {bad}")
    return mean, apply_feat_bias(std, cfg.feat_bias)


# --------------------------------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caption:
    """One line `caption#tok/POS ...#start#end` of a text file (reference §1.2). start/end in seconds."""
    caption: str
    tokens: tuple[str, ...]
    start: float
    end: float

    @property
    def whole_clip(self) -> bool:
        return self.start == 0.0 and self.end == 0.0


def _tag(value: str, path: str, lineno: int, line: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DatasetError(f"{_MOD}: {path} line {lineno}: expected a number of seconds as {what}, "
                           f"got {value!r} in {line!r}") from None
    if np.isinf(x):     # would overflow the frame index; NaN reads as 0 (whole clip), as in the reference
        raise DatasetError(f"{_MOD}: {path} line {lineno}: expected a finite number of seconds as {what}, "
                           f"got {value!r} in {line!r}")
    return 0.0 if np.isnan(x) else x


def parse_captions(text: str, path: str) -> list[Caption]:
    """Parse a text file's content; `path` is only used in error messages. Blank lines are ignored."""
    captions = []
    text = text.removeprefix("\ufeff")      # a UTF-8 byte-order mark is not part of the first caption
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split("#")
        if len(parts) < 4:
            raise DatasetError(f"{_MOD}: {path} line {lineno}: expected 'caption#tokens#start#end' (at least 4 "
                               f"fields separated by '#'), got {len(parts)} field{'s' if len(parts) != 1 else ''}: "
                               f"{line!r}")
        # The reference reads fields 0-3 (caption, tokens, start, end) and ignores any further '#' fields, so a
        # line with extra fields (e.g. a trailing '#') loads the same here instead of stopping the whole split.
        caption, tokens, start, end = parts[:4]
        captions.append(Caption(caption=caption, tokens=tuple(t for t in tokens.split(" ") if t),
                                start=_tag(start, path, lineno, line, "start"),
                                end=_tag(end, path, lineno, line, "end")))
    return captions


# --------------------------------------------------------------------------------------------------------------
# The corpus: one split in memory
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One text-dataset entry: frames [start, end) of corpus motion `motion`, with its captions."""
    key: str                 # the motion id, or "<A..W>_<id>" for a sub-clip
    motion: int              # index into MotionCorpus.ids
    start: int
    end: int
    captions: list[Caption]

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(eq=False)
class MotionCorpus:
    """One split of a HumanML3D-layout folder, read once into memory.

    Attributes:
        data:    (sum T, D) float32, all valid motions concatenated (raw features, not normalised)
        offsets: (N+1,) int64, motion i is data[offsets[i]:offsets[i+1]]
        ids:     N motion ids (split order), texts: N caption lists
        entries: text entries (main entries and sub-clips, reference §1.3)
        skipped: reason -> file names that were skipped or gave no entry
    """
    root: Path
    split: str
    spec: DatasetSpec
    ids: list[str]
    data: np.ndarray
    offsets: np.ndarray
    texts: list[list[Caption]]
    entries: list[Entry] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) frames per motion."""
        return np.diff(self.offsets)

    def motion(self, i: int) -> np.ndarray:
        """(T, D) view of motion i."""
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def entry_motion(self, entry: Entry) -> np.ndarray:
        """(T, D) view of an entry's frames."""
        base = self.offsets[entry.motion]
        return self.data[base + entry.start:base + entry.end]

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, cfg: DataConfig, split: str, cache: bool = True) -> "MotionCorpus":
        """Read `<root>/<split>.txt` and its motions and texts (from the cache when it is fresh)."""
        root = _root(cfg)
        spec = get_spec(cfg)
        ids, duplicates = _read_split(root, split)
        signature = _signature(root, split, ids, spec)
        cache_path = root / ".cache" / f"{split}.{spec.name}.min{spec.min_length}.npz"
        loaded = _read_cache(cache_path, signature) if cache else None
        if loaded is not None:
            kept, data, offsets, raw_texts, skipped = loaded
            from_cache = True
        else:
            kept, data, offsets, raw_texts, skipped = _read_files(root, ids, spec)
            if duplicates:
                skipped["duplicate_id"] = duplicates
            if cache:
                _write_cache(cache_path, signature, kept, data, offsets, raw_texts, skipped)
            from_cache = False
        texts = [parse_captions(t, str(root / "texts" / f"{i}.txt")) for i, t in zip(kept, raw_texts)]
        corpus = cls(root=root, split=split, spec=spec, ids=kept, data=data, offsets=offsets, texts=texts,
                     skipped={k: list(v) for k, v in skipped.items()}, from_cache=from_cache)
        corpus._build_entries()
        corpus._log_summary()
        return corpus

    def _build_entries(self) -> None:
        """Main and sub-clip entries from the captions (reference §1.3)."""
        spec = self.spec
        rng = random.Random(SUBCLIP_KEY_SEED)
        keys: set[str] = set()
        id_set = set(self.ids)
        entries: list[Entry] = []
        skip = self.skipped
        for i, (mid, caps) in enumerate(zip(self.ids, self.texts)):
            length = int(self.offsets[i + 1] - self.offsets[i])
            fname = f"texts/{mid}.txt"
            if not caps:
                skip.setdefault("empty_text", []).append(fname)
                continue
            if length >= spec.max_length:
                skip.setdefault("too_long", []).append(f"new_joint_vecs/{mid}.npy")
                continue
            whole = []
            for c in caps:
                if c.whole_clip:
                    whole.append(c)
                    continue
                start, end, _ = slice(int(c.start * spec.subclip_fps), int(c.end * spec.subclip_fps)).indices(length)
                sub_len = max(0, end - start)
                if not spec.min_length <= sub_len < spec.max_length:
                    skip.setdefault("subclip_out_of_range", []).append(f"{fname} ({c.start}-{c.end} s: {sub_len} frames)")
                    continue
                key = _subclip_key(rng, mid, lambda k: k in keys or k in id_set)
                keys.add(key)
                entries.append(Entry(key, i, start, end, [c]))
            if whole:
                keys.add(mid)
                entries.append(Entry(mid, i, 0, length, whole))
        self.entries = entries

    def skip_reasons(self) -> dict[str, str]:
        """reason -> what it means and what was expected, as the skip summary prints it."""
        spec = self.spec
        return {
            "nan": "motion with NaN/Inf values (expected finite values); not used in any mode",
            "too_short": f"motion shorter than the minimum of {spec.min_length} frames; not used in any mode",
            "too_long": f"motion of {spec.max_length} frames or more (expected fewer than {spec.max_length} for "
                        f"text entries); no text entry, still used for tokenizer windows",
            "empty_text": "text file without captions (expected at least one caption line); no text entry, motion "
                          "still used for tokenizer windows",
            "subclip_out_of_range": f"caption sub-clip outside the length range (expected {spec.min_length} <= "
                                    f"frames < {spec.max_length}); that caption gives no entry",
            "duplicate_id": "id listed again in the split file (expected each id once); the repeat is ignored",
        }

    def _log_summary(self) -> None:
        # Every skip drops data from at least one mode, so each reason is one WARNING line (visible at the default
        # level); the individual files are listed at DEBUG.
        reasons = self.skip_reasons()
        for reason, files in sorted(self.skipped.items()):
            more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
            what = reasons.get(reason, "")
            log.warning("%s/%s: skipped %d for %s%s: %s%s", self.root, self.split, len(files), reason,
                        f" ({what})" if what else "", ", ".join(files[:5]), more)
            for f in files:
                log.debug("%s/%s: skipped %s (%s)", self.root, self.split, f, reason)
        counts = ", ".join(f"{k}={len(v)}" for k, v in sorted(self.skipped.items())) or "none"
        n_sub = sum(1 for e in self.entries if e.key != self.ids[e.motion])
        log.info("%s/%s.txt: %d motions, %d entries (%d sub-clips)%s; skipped: %s", self.root, self.split,
                 len(self.ids), len(self.entries), n_sub, " [cache]" if self.from_cache else "", counts)


def _subclip_key(rng: random.Random, mid: str, taken: Callable[[str], bool]) -> str:
    """`<letter A..W>_<id>`, redrawn on collision (reference §1.3). The reference loops forever once all 23 letters
    of an id are taken; we then append a counter to the letter (`A1_<id>`, ...), which only happens for ids with
    more than 23 kept sub-clips."""
    free = [c for c in SUBCLIP_LETTERS if not taken(f"{c}_{mid}")]
    if free:
        while True:
            key = f"{rng.choice(SUBCLIP_LETTERS)}_{mid}"
            if not taken(key):
                return key
    n = 1
    while True:
        key = f"{rng.choice(SUBCLIP_LETTERS)}{n}_{mid}"
        if not taken(key):
            return key
        if all(taken(f"{c}{n}_{mid}") for c in SUBCLIP_LETTERS):
            n += 1


def _read_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    path = root / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in root.glob("*.txt"))
        raise DatasetFileNotFoundError(f"{_MOD}: split file {path} is missing (expected one id per line); "
                                       f"split files in {root}: {have or 'none'}")
    ids, seen, dups = [], set(), []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        mid = line.strip()
        if not mid:
            continue
        if mid in seen:
            dups.append(f"{split}.txt: {mid}")
            continue
        seen.add(mid)
        ids.append(mid)
    if not ids:
        raise DatasetError(f"{_MOD}: split file {path} lists no ids (expected one id per line)")
    return ids, dups


def _signature(root: Path, split: str, ids: Sequence[str], spec: DatasetSpec) -> str:
    """Hash of the split file's and every listed data file's size and mtime; raises on missing files."""
    h = hashlib.sha1()
    h.update(f"{CACHE_VERSION}|{spec.name}|{spec.dim}|{spec.min_length}|".encode())
    st = os.stat(root / f"{split}.txt")
    h.update(f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}|".encode())
    h.update("\n".join(ids).encode())
    missing = []
    for mid in ids:
        for sub, ext in (("new_joint_vecs", ".npy"), ("texts", ".txt")):
            p = root / sub / f"{mid}{ext}"
            try:
                st = os.stat(p)
            except FileNotFoundError:
                missing.append(f"{sub}/{mid}{ext}")
                continue
            h.update(f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}|".encode())
            h.update(_content_sample(p, st.st_size))
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetFileNotFoundError(
            f"{_MOD}: {root / (split + '.txt')} lists {len(missing)} id(s) whose files are missing under {root}: "
            f"{', '.join(missing[:5])}{more} (expected new_joint_vecs/<id>.npy and texts/<id>.txt for every id)")
    return h.hexdigest()


_SAMPLE = 4096


def _content_sample(path: Path, size: int) -> bytes:
    """A cheap content check for the cache signature: a digest of the first and last 4 KiB (the whole of a small
    file, e.g. every caption file), so a file replaced with the same size and mtime is still noticed."""
    with open(path, "rb") as f:
        head = f.read(_SAMPLE)
        if size > 2 * _SAMPLE:
            f.seek(size - _SAMPLE)
        tail = f.read(_SAMPLE) if size > _SAMPLE else b""
    return hashlib.sha1(head + tail).digest()


def _read_files(root: Path, ids: Sequence[str], spec: DatasetSpec):
    """Read every motion and text file of the split once. Returns (ids, data, offsets, raw texts, skipped)."""
    paths = [root / "new_joint_vecs" / f"{mid}.npy" for mid in ids]
    # Pre-allocate from the file sizes (an upper bound on the float32 rows), so the load needs no second copy.
    cap = sum(os.stat(p).st_size for p in paths) // (4 * spec.dim) + 1
    buf = np.empty((cap, spec.dim), dtype=np.float32)
    kept, texts, offsets = [], [], [0]
    skipped: dict[str, list[str]] = {}
    pos = 0
    try:
        from tqdm import tqdm
        it = tqdm(list(zip(ids, paths)), desc=f"loading {root.name}", unit="motion", leave=False,
                  disable=len(ids) < 2000)
    except ImportError:  # pragma: no cover
        it = zip(ids, paths)
    for mid, path in it:
        fname = f"new_joint_vecs/{mid}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{_MOD}: {path}: expected a float32 .npy array (T, {spec.dim}), could not read "
                               f"it: {e}") from None
        if arr.ndim != 2 or arr.shape[1] != spec.dim:
            other = [s.name for s in SPECS.values() if arr.ndim == 2 and arr.shape[1] == s.dim]
            hint = f"; this looks like {other[0]} data: set data.dataset={other[0]}" if other else ""
            raise DatasetError(f"{_MOD}: {path}: expected features of shape (T, {spec.dim}) for dataset "
                               f"{spec.name!r}, got {tuple(arr.shape)}{hint}")
        if not np.isfinite(arr).all():
            skipped.setdefault("nan", []).append(fname)
            continue
        if len(arr) < spec.min_length:
            skipped.setdefault("too_short", []).append(f"{fname} ({len(arr)} frames)")
            continue
        if pos + len(arr) > len(buf):  # only if a file was stored with a narrower dtype than float32
            buf = np.concatenate([buf, np.empty((pos + len(arr) - len(buf), spec.dim), np.float32)])
        buf[pos:pos + len(arr)] = arr
        pos += len(arr)
        offsets.append(pos)
        kept.append(mid)
        tpath = root / "texts" / f"{mid}.txt"
        try:
            texts.append(tpath.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DatasetError(f"{_MOD}: {tpath}: expected UTF-8 text, could not decode it: {e}") from None
    data = buf[:pos] if pos > 0.9 * len(buf) else buf[:pos].copy()
    return kept, data, np.asarray(offsets, dtype=np.int64), texts, skipped


# ---- cache ---------------------------------------------------------------------------------------------------

def _read_cache(path: Path, signature: str):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != signature:
                log.info("%s is stale (data files changed); rebuilding", path)
                return None
            ids = z["ids"].tolist()
            data = z["data"]
            offsets = z["offsets"]
            blob = z["text_blob"].tobytes()
            t_off = z["text_offsets"]
            texts = [blob[t_off[i]:t_off[i + 1]].decode("utf-8") for i in range(len(ids))]
            skipped = json.loads(str(z["skipped"]))
    except Exception as e:  # a truncated or foreign file: rebuild rather than fail
        log.warning("%s could not be read (%s); rebuilding", path, e)
        return None
    return ids, data, offsets, texts, skipped


def _write_cache(path: Path, signature: str, ids, data, offsets, texts, skipped) -> None:
    encoded = [t.encode("utf-8") for t in texts]
    t_off = np.zeros(len(encoded) + 1, dtype=np.int64)
    t_off[1:] = np.cumsum([len(b) for b in encoded])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, signature=np.array(signature), ids=np.array(ids, dtype=str), data=data, offsets=offsets,
                     text_blob=blob, text_offsets=t_off, skipped=np.array(json.dumps(skipped)))
    except OSError as e:
        log.warning("could not write the dataset cache %s (%s); loading will read every file again next time",
                    path, e)


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------

def crop_length(length: int, unit_length: int, max_length: int, double: bool) -> int:
    """The reference crop length (§1.3): (len//u)*u, or (len//u - 1)*u when `double`; capped at max_length.

    `double` is drawn with probability 1/3 when unit_length < 10. A crop is never shorter than one unit.
    """
    units = length // unit_length - (1 if double else 0)
    units = min(units, max_length // unit_length)
    if units < 1:
        units = min(length // unit_length, max_length // unit_length)
    return units * unit_length


class ItemDraws:
    """Per-item randomness from (seed, epoch, index) only (module docstring): `set_epoch`, `item_rng`."""
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        """Select the random draws of the items: item i uses a generator seeded with (seed, epoch, i)."""
        if seed is not None:
            self.seed = int(seed)
        self.epoch = int(epoch)

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator of item `index` in the current (seed, epoch): its caption choice and crop."""
        return np.random.default_rng([abs(self.seed), abs(self.epoch), int(index)])


class MotionTextDataset(ItemDraws, Dataset):
    """Items of one split, normalised with `mean`/`std` (float32 torch tensors). See module docstring for modes.

    Item dicts:
        "text":   motion (max_motion_length, D) zero-padded, length (int, multiple of unit_length), caption (str),
                  tokens (list of "word/POS"), id (entry key, str), motion_id (file id, str)
        "window": motion (window_size, D), length (= window_size), id; item i is the fixed window `window(i)`
        "eval":   as "text" plus word_embs (22, 300), pos_ohot (22, 15) float32 tensors and sent_len (int)
    """

    def __init__(self, corpus: MotionCorpus, mean: np.ndarray, std: np.ndarray, cfg: DataConfig, mode: str,
                 vectorizer: Any = None, seed: int = 0):
        if mode not in MODES:
            raise DatasetError(f"{_MOD}: argument 'mode' must be one of {MODES}, got {mode!r}")
        if mode == "eval" and vectorizer is None:
            raise DatasetError(f"{_MOD}: mode 'eval' needs a word vectorizer (datasets.word_vectorizer)")
        self.corpus, self.cfg, self.mode, self.vectorizer = corpus, cfg, mode, vectorizer
        self.spec = corpus.spec
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self._mean_t = torch.from_numpy(self.mean)
        self._std_t = torch.from_numpy(self.std)
        self.seed, self.epoch = int(seed), 0
        if mode == "window":
            if cfg.window_size < 1:
                raise DatasetError(f"{_MOD}: data.window_size must be >= 1, got {cfg.window_size}")
            lengths = corpus.lengths
            self.motion_indices = np.flatnonzero(lengths >= cfg.window_size)
            self.short_for_window = [corpus.ids[i] for i in np.flatnonzero(lengths < cfg.window_size)]
            if self.short_for_window:       # loaded motions (>= the minimum length) that give no tokenizer window
                log.warning("%s/%s: %d of %d motions are shorter than data.window_size=%d frames and give no "
                            "tokenizer window: %s%s", corpus.root, corpus.split, len(self.short_for_window),
                            len(lengths), cfg.window_size, ", ".join(self.short_for_window[:5]),
                            f" (+{len(self.short_for_window) - 5} more)" if len(self.short_for_window) > 5 else "")
            self.entries: list[Entry] = []
            if len(self.motion_indices) == 0:
                raise DatasetError(f"{_MOD}: {corpus.root}/{corpus.split}.txt: no motion has at least "
                                   f"data.window_size={cfg.window_size} frames (longest: "
                                   f"{int(lengths.max()) if len(corpus) else 0})")
            # Snippet enumeration (module docstring): the reference gives a motion T - window_size windows, so one
            # exactly window_size long would give none; we count it as 1 (its single window) rather than drop a
            # motion that fits.
            counts = np.maximum(lengths[self.motion_indices] - cfg.window_size, 1).astype(np.int64)
            self.window_offsets = np.zeros(len(counts) + 1, dtype=np.int64)   # (M+1,) first index of each motion
            np.cumsum(counts, out=self.window_offsets[1:])
        else:
            self.entries = list(corpus.entries)
            if mode == "eval":  # reference Text2MotionDatasetEval: entries sorted by length
                self.entries.sort(key=lambda e: e.length)
            if not self.entries:
                raise DatasetError(f"{_MOD}: {corpus.root}/{corpus.split}.txt: no text entries after filtering "
                                   f"(skipped: { {k: len(v) for k, v in corpus.skipped.items()} })")

    def __len__(self) -> int:
        return int(self.window_offsets[-1]) if self.mode == "window" else len(self.entries)

    def window(self, index: int) -> tuple[int, int]:
        """Mode "window": (corpus motion index, start frame) of item `index` (negative counts from the end)."""
        if self.mode != "window":
            raise DatasetError(f"{_MOD}: window() is for mode 'window', this dataset is mode {self.mode!r}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{_MOD}: window index {index} out of range for {n} windows")
        k = int(np.searchsorted(self.window_offsets, i, side="right")) - 1
        return int(self.motion_indices[k]), i - int(self.window_offsets[k])

    def fingerprint(self) -> str:
        """Hash (16 hex) of everything an item is made of: the motions, entries and captions, the statistics, the
        mode, the crop settings, the seed and the word vectors. Equal fingerprints give equal items for every
        (epoch, index); it keys caches of values computed from the items (utils.evaluation.GTEmbeddingCache)."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            for arr in (self.corpus.data, self.corpus.offsets, self.mean, self.std):
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(memoryview(a).cast("B"))
            h.update(repr((self.mode, self.spec.name, self.spec.pad_length, self.spec.unit_length,
                           self.cfg.window_size, self.cfg.max_text_len)).encode())
            if self.mode != "window":
                for e in self.entries:
                    h.update(repr((e.key, e.motion, e.start, e.end,
                                   [(c.caption, tuple(c.tokens)) for c in e.captions])).encode())
            if self.vectorizer is not None:
                vectors = np.ascontiguousarray(self.vectorizer.vectors)
                h.update(memoryview(vectors).cast("B"))
                h.update(repr(sorted(getattr(self.vectorizer, "word2idx", {}).items())).encode())
            self._fingerprint = h.hexdigest()
        return hashlib.sha256(f"{self._fingerprint}|seed={self.seed}".encode()).hexdigest()[:16]

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def denormalize(self, x):
        """x * std + mean for numpy arrays or torch tensors (..., D), any device."""
        if isinstance(x, torch.Tensor):
            return x * self._std_t.to(x.device, x.dtype) + self._mean_t.to(x.device, x.dtype)
        return np.asarray(x) * self.std + self.mean

    def __getitem__(self, index: int) -> dict:
        if self.mode == "window":
            i, start = self.window(index)
            w = self.cfg.window_size
            crop = self.normalize(self.corpus.motion(i)[start:start + w])
            return {"motion": torch.from_numpy(crop.astype(np.float32)), "length": w, "id": self.corpus.ids[i]}

        entry = self.entries[index]
        rng = self.item_rng(index)
        cap = entry.captions[int(rng.integers(len(entry.captions)))]
        motion = self.corpus.entry_motion(entry)
        u = self.spec.unit_length
        double = u < 10 and bool(rng.random() < 1.0 / 3.0)
        m = crop_length(len(motion), u, self.spec.pad_length, double)
        start = int(rng.integers(len(motion) - m + 1))
        out = np.zeros((self.spec.pad_length, self.spec.dim), dtype=np.float32)
        out[:m] = self.normalize(motion[start:start + m])
        item = {"motion": torch.from_numpy(out), "length": m, "caption": cap.caption, "tokens": list(cap.tokens),
                "id": entry.key, "motion_id": self.corpus.ids[entry.motion]}
        if self.mode == "eval":
            from datasets.word_vectorizer import caption_to_evaluator_input
            word_embs, pos_ohot, sent_len = caption_to_evaluator_input(list(cap.tokens), self.vectorizer,
                                                                       max_text_len=self.cfg.max_text_len)
            item["word_embs"] = torch.as_tensor(np.asarray(word_embs), dtype=torch.float32)
            item["pos_ohot"] = torch.as_tensor(np.asarray(pos_ohot), dtype=torch.float32)
            item["sent_len"] = int(sent_len)
        return item


def build_dataset(cfg: DataConfig, split: str, mode: str, stats: tuple[Any, Any] | None = None, *,
                  corpus: MotionCorpus | None = None, vectorizer: Any = None, cache: bool = True,
                  seed: int = 0) -> MotionTextDataset:
    """The dataset of one split in one mode ("text" | "window" | "eval").

    Normalises with `stats` = (mean (D,), std (D,)), the statistics the consumer was trained with (a tokenizer's),
    or by default with `load_stats(cfg)` (so `feat_bias=1` gives the raw Std, as the retriever uses). A corpus
    already loaded for the same cfg/split and a word vectorizer can be passed in to share them between datasets.
    `seed` is the sampling seed of the items' caption/crop draws (`MotionTextDataset.set_epoch`).
    """
    if mode not in MODES:
        raise DatasetError(f"{_MOD}: argument 'mode' must be one of {MODES}, got {mode!r}")
    if stats is None:
        mean, std = load_stats(cfg)
    else:
        mean, std = (np.asarray(torch.as_tensor(x).cpu(), dtype=np.float32) if torch.is_tensor(x)
                     else np.asarray(x, dtype=np.float32) for x in stats)
        d = get_spec(cfg).dim
        if mean.shape != (d,) or std.shape != (d,) or not (std > 0).all():
            raise DatasetError(f"{_MOD}: argument 'stats' must be (mean, std) of shape ({d},) with std > 0 for "
                               f"dataset {cfg.dataset!r}, got {mean.shape} and {std.shape}")
    if corpus is None:
        corpus = MotionCorpus.load(cfg, split, cache=cache)
    if mode == "eval" and vectorizer is None:
        from datasets.word_vectorizer import WordVectorizer
        glove = Path(cfg.glove_dir) if cfg.glove_dir else Path(cfg.root) / "glove"
        if not glove.is_dir():
            raise DatasetFileNotFoundError(
                f"{_MOD}: mode 'eval' needs the evaluator's GloVe folder {glove} (our_vab_data.npy, "
                f"our_vab_words.pkl, our_vab_idx.pkl); set data.glove_dir=<folder> or {MINI_FIX}")
        vectorizer = WordVectorizer(str(glove), "our_vab")
    return MotionTextDataset(corpus, mean, std, cfg, mode, vectorizer=vectorizer, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------------------------------

def collate(batch: list[dict]) -> dict:
    """Stack a list of item dicts: tensors -> stacked (B, ...), ints -> long (B,), strings/lists -> lists.

    Batches with `sent_len` ("eval") are first sorted by sent_len descending (stable), which the evaluator's packed
    GRU needs; every key is reordered the same way.
    """
    if not batch:
        raise DatasetError(f"{_MOD}: collate got an empty batch")
    keys = list(batch[0])
    for i, item in enumerate(batch):
        if list(item) != keys:
            raise DatasetError(f"{_MOD}: collate: item {i} has keys {sorted(item)}, expected {sorted(keys)} "
                               f"(mixed dataset modes in one batch?)")
    if "sent_len" in batch[0]:
        batch = sorted(batch, key=lambda it: -int(it["sent_len"]))
    out: dict = {}
    for k in keys:
        vals = [it[k] for it in batch]
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(v0, np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        elif isinstance(v0, (bool, int, np.integer)):
            out[k] = torch.tensor([int(v) for v in vals], dtype=torch.long)
        elif isinstance(v0, (float, np.floating)):
            out[k] = torch.tensor([float(v) for v in vals], dtype=torch.float32)
        else:
            out[k] = vals
    return out
