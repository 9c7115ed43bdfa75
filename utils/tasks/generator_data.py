"""Training data of the generator stages (mask and residual transformers): tokens, text features and retrieved
neighbours of a split, each computed once and cached on disk.

    GeneratorUpstreamConfig                 the `upstream:` block: tokenizer / retriever checkpoints, text encoder,
                                            retrieval k and exclusion, cache folder
    FrozenUpstream.load(cfg, dataset, device, retrieval=True)
                                            the frozen parts (MotionTokenizer, text encoder, retrieval query encoder
                                            and database), built once per run (`TrainTask.setup`)
    GeneratorDataset(data_cfg, split)       items of a split; `prepare(frozen, cache_dir)` fills the caches
    collate_generator(batch)                the batch dict (`datasets.motion_dataset.collate`)
    check_lengths(lengths, spec)            frames inside the dataset's [min, max] range, multiple of 4

Tokens (reference.md §6.1: targets are the VQ tokens of the motion, no quantize dropout). Each text entry of
`MotionCorpus` is encoded ONCE with `MotionTokenizer.encode` on its full motion (entries are shorter than 200
frames, so the first `length // 4 · 4` ≤ 196 frames are all of it), giving (T'_e, C, Q) codes, T'_e = length // 4.
Entries are batched by equal length (no padding), so the cached tokens equal those of encoding each entry alone.
They are stored in `<cache_dir>/gen_tokens.<split>.<key>.pt` (int16, atomic write; key = hash of the tokenizer's
fingerprint, so each tokenizer keeps its own file) with the fingerprint and a hash of the entry list inside; a cache
whose fingerprint or entries differ is rebuilt. Items then crop at token
granularity: the reference crop length (`crop_length`: all units, one unit fewer with probability 1/3) and a
uniform start token, drawn from the item's generator (seed, epoch, index) like the caption. Deviation: the
reference encodes each random frame crop; a token crop of the full encoding differs from it only at the crop's
edges (the encoder's receptive field), and saves the tokenizer pass of every step.

Text features (paper §2.4: frozen CLIP; mini: frozen MiniLM). Every caption of the split goes once through the
frozen text encoder; the features are cached in `<cache_dir>/gen_text.<split>.<key>.pt`, key = hash of
`TextEncoderConfig.identity()` and of the encoder's weights (random-init or tiny encoders differ by seed).

Retrieval (paper §2.1, §6 item 8). Every (entry, caption) pair of the split is queried once against the database
(top-`retrieval_k`, `RetrievalDatabase.query`), with the exclusion `exclude`:
- "id_and_mirror" (ours, default): the query's own motion id and its mirror `M<id>` are never retrieved, so
  training cannot learn to copy the answer from the retrieval;
- "none": the official code (paper.md §7 "query sample not excluded"): the query's own motion may be retrieved.
The database row indices are cached in `<cache_dir>/gen_retrieval.<split>.<key>.pt`, keyed (in the name and inside)
by the retriever fingerprint, a hash of the database features, k and the exclusion; items read r_t, r_m from the database in memory.

Item dicts: tokens (T'_max, C, Q) long, −1 past the crop (T'_max = data.max_motion_length // 4 = 49),
length_tokens (int), length (frames = 4·length_tokens), t (D_text,), r_t (k, 512), r_m (k, 512) (zeros when the
data was prepared without retrieval), caption, id (entry key), motion_id, retrieved_id (k ids, "" without
retrieval), retrieved_caption (k captions). The mask stage uses `tokens[..., 0]`, the residual stage all Q levels.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datasets.motion_dataset import (DataConfig, DatasetSpec, ItemDraws, MotionCorpus, collate, crop_length, get_spec)
from models.text_encoders import TextEncoderConfig, build_text_encoder_from_config
from utils.atomic import atomic_open
from utils.checkpoint import tensor_fingerprint
from utils.config import ConfigError, bad_value, check_choice

log = logging.getLogger("remomask.generator_data")
_MOD = "utils/tasks/generator_data.py"
EXCLUSIONS = ("id_and_mirror", "none")
CACHE_VERSION = 1


class GeneratorDataError(ValueError):
    """The generator data cannot be built as configured; the message names the key or file."""


@dataclass
class GeneratorUpstreamConfig:
    """The frozen inputs of a generator stage."""
    tokenizer: str = "runs/rvq/mini/checkpoints/best.pt"        # train_rvq.py output (ARCHITECTURE §1 order)
    retriever: str = "runs/retriever/mini/checkpoints/best.pt"  # train_retriever.py output
    database: str = ""            # "" = <retriever dir>/<stem>_database.pt (models.retrieval_database)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)   # paper §2.4: frozen CLIP ViT-B/32
    retrieval_k: int = 1          # paper.md §6 item 8: 1×d shapes imply top-1; official top_k = 1 (§7)
    exclude: str = "id_and_mirror"   # ours; "none" = official code (paper.md §7: query not excluded)
    cache_dir: str = ""           # "" = <data.root>/.cache
    encode_batch_size: int = 64   # tokenizer / text-encoder batch when building the caches (no effect on values)

    def check_values(self, prefix: str = "upstream.") -> None:
        check_choice(prefix + "exclude", self.exclude, EXCLUSIONS)
        if self.retrieval_k < 1:
            raise bad_value(prefix + "retrieval_k", self.retrieval_k, "an integer >= 1")
        if self.encode_batch_size < 1:
            raise bad_value(prefix + "encode_batch_size", self.encode_batch_size, "an integer >= 1")
        if not self.tokenizer:
            raise ConfigError(f"{prefix}tokenizer is empty: expected the path of a train_rvq.py checkpoint",
                              key=prefix + "tokenizer")
        if self.text.name == "clip" and not (self.text.path or self.text.download or self.text.random_init
                                             or self.text.tiny):
            raise ConfigError(f"{prefix}text.path is empty for CLIP: expected checkpoints/clip/ViT-B-32.pt, or "
                              f"{prefix}text.download=true (online), or {prefix}text.random_init=true (tests)",
                              key=prefix + "text.path")


def cache_folder(cfg: GeneratorUpstreamConfig, data_cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(data_cfg.root) / ".cache"


def length_range(spec: DatasetSpec) -> tuple[int, int]:
    """[lo, hi] frames of the motions the dataset yields: its crops (reference.md §1.3) are multiples of
    unit_length, one unit short of the shortest motion with probability 1/3 (t2m: [36, 196], kit: [20, 196])."""
    u = spec.unit_length
    return max(u, (spec.min_length // u - 1) * u), spec.pad_length // u * u


def check_lengths(lengths, spec: DatasetSpec, name: str = "lengths") -> Tensor:
    """Frames (B,) inside the dataset's range (`length_range`) and multiples of unit_length, or a one-line
    GeneratorDataError naming the range. Returns them as a long tensor."""
    values = torch.as_tensor(lengths).reshape(-1)
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise GeneratorDataError(f"{name} must be integer frame counts, got dtype {values.dtype}")
    values = values.long()
    (lo, hi), unit = length_range(spec), spec.unit_length
    bad = [int(v) for v in values if not lo <= int(v) <= hi or int(v) % unit]
    if bad:
        raise GeneratorDataError(f"{name}={bad[0]}: expected frames in the {spec.name} range [{lo}, {hi}] and a "
                                 f"multiple of {unit} (got {[int(v) for v in values]})")
    return values


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_cache(path: Path, key: dict) -> dict | None:
    """The cache at `path` when it exists and its stored key equals `key`; None otherwise (missing, stale, broken)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:     # a truncated or foreign file is rebuilt, never trusted
        log.warning("%s: unreadable cache (%s); rebuilding it", path, err)
        return None
    if not isinstance(obj, dict) or obj.get("key") != key:
        return None
    return obj


def _save_cache(path: Path, key: dict, **tensors) -> None:
    try:
        with atomic_open(path, "wb") as f:
            torch.save({"key": key, **tensors}, f)
    except OSError as err:
        log.warning("%s: could not write the cache (%s); it will be recomputed next time", path, err)


# ----------------------------------------------------------------------------------------------------------------
# The frozen parts
# ----------------------------------------------------------------------------------------------------------------
class FrozenUpstream:
    """Tokenizer, text encoder and (optionally) retrieval, frozen and in eval mode, on one device.

    Attributes: tokenizer (MotionTokenizer), text_encoder (module; `.out_dim`), query_encoder / database (None
    without retrieval), cfg, text_key (the text cache key), device."""

    def __init__(self, cfg: GeneratorUpstreamConfig, tokenizer, text_encoder, query_encoder=None, database=None,
                 device: torch.device | str = "cpu"):
        self.cfg, self.tokenizer, self.text_encoder = cfg, tokenizer, text_encoder
        self.query_encoder, self.database = query_encoder, database
        self.device = torch.device(device)
        for module in (text_encoder, query_encoder):
            if module is not None:
                module.eval()
                for p in module.parameters():
                    p.requires_grad_(False)
        for p in tokenizer.model.parameters():
            p.requires_grad_(False)
        weights = tensor_fingerprint({k: v for k, v in text_encoder.state_dict().items()})
        self.text_key = _hash({"identity": cfg.text.identity(), "weights": weights})

    @property
    def retrieval(self) -> bool:
        return self.database is not None

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.out_dim)

    @classmethod
    def load(cls, cfg: GeneratorUpstreamConfig, dataset: str, device: torch.device | str = "cpu",
             retrieval: bool = True) -> "FrozenUpstream":
        """Load the tokenizer checkpoint, build the text encoder and (with `retrieval`) the retriever's query
        encoder and database, each checked against `dataset` ("t2m" | "kit")."""
        from models.retrieval_database import load_retrieval
        from models.tokenizer import MotionTokenizer

        if not Path(cfg.tokenizer).is_file():
            raise GeneratorDataError(f"upstream.tokenizer={cfg.tokenizer!r} does not exist; train one with "
                                     f"`python train_rvq.py` or point upstream.tokenizer at its checkpoint")
        tokenizer = MotionTokenizer.from_checkpoint(cfg.tokenizer, device)
        if tokenizer.dataset != dataset:
            raise GeneratorDataError(f"upstream.tokenizer {cfg.tokenizer} was trained on dataset "
                                     f"{tokenizer.dataset!r}, but data.dataset={dataset!r}")
        text_encoder = build_text_encoder_from_config(cfg.text).to(device)
        query_encoder = database = None
        if retrieval:
            if not cfg.retriever or not Path(cfg.retriever).is_file():
                raise GeneratorDataError(f"upstream.retriever={cfg.retriever!r} does not exist; train one with "
                                         f"`python train_retriever.py` (it also builds the database)")
            query_encoder, database = load_retrieval(cfg.retriever, "cpu", dataset=dataset,
                                                     db_path=cfg.database or None)
            query_encoder.to(device)
        return cls(cfg, tokenizer, text_encoder, query_encoder, database, device)

    # -- features used at train and eval time --------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        """(B, D_text) frozen text features on the device."""
        return self.text_encoder(list(captions)).float().to(self.device)

    @torch.no_grad()
    def retrieve(self, captions: Sequence[str], motion_ids: Sequence[str] | None = None):
        """RetrievalResult for B captions with the configured k and exclusion (motion_ids: the queries' own ids)."""
        if not self.retrieval:
            raise GeneratorDataError(f"{_MOD}: retrieval was not loaded (upstream.retriever)")
        exclude = list(motion_ids) if self.cfg.exclude == "id_and_mirror" and motion_ids is not None else None
        emb = self.query_encoder.encode_text(list(captions))
        res = self.database.query(emb.cpu(), k=self.cfg.retrieval_k, exclude_ids=exclude, exclude_mirrors=True)
        return res

    def database_key(self) -> str:
        db = self.database
        return tensor_fingerprint({"text": db.text_feats.cpu(), "motion": db.motion_feats.cpu()}) + \
            _hash(db.motion_ids)


# ----------------------------------------------------------------------------------------------------------------
# Cache builders
# ----------------------------------------------------------------------------------------------------------------
def _entry_hash(corpus: MotionCorpus) -> str:
    return _hash([(e.key, corpus.ids[e.motion], e.start, e.end) for e in corpus.entries])


@torch.no_grad()
def build_token_cache(corpus: MotionCorpus, tokenizer, path: Path, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Tokens of every entry's full motion, from the cache at `path` when its tokenizer fingerprint and entries
    match, else computed and written there. Returns (tokens (N, T'_max, C, Q) int16, −1 padded; lengths (N,))
    with T'_max = max token length and lengths = entry frames // 4."""
    key = {"version": CACHE_VERSION, "kind": "tokens", "fingerprint": tokenizer.fingerprint,
           "entries": _entry_hash(corpus), "split": corpus.split, "dataset": corpus.spec.name}
    cached = _load_cache(path, key)
    if cached is not None:
        return cached["tokens"], cached["lengths"]
    down = tokenizer.downsample
    entries = corpus.entries
    frames = np.array([min(e.length, corpus.spec.pad_length) // down * down for e in entries], dtype=np.int64)
    if (frames < down).any():
        bad = entries[int(np.flatnonzero(frames < down)[0])]
        raise GeneratorDataError(f"{_MOD}: entry {bad.key} of {corpus.root}/{corpus.split}.txt has {bad.length} "
                                 f"frames, fewer than one token ({down})")
    lengths = torch.from_numpy(frames // down)
    tmax = int(lengths.max())
    out = torch.full((len(entries), tmax, tokenizer.num_columns, tokenizer.num_quantizers), -1, dtype=torch.int16)
    # batches of equal length only: no padding, so each entry's tokens are exactly those of encoding it alone
    batches = [group[s:s + batch_size] for value in np.unique(frames)
               for group in [np.flatnonzero(frames == value)] for s in range(0, len(group), batch_size)]
    for idx in batches:
        t = int(frames[idx].max())
        raw = torch.zeros(len(idx), t, corpus.spec.dim)
        for row, i in enumerate(idx):
            raw[row, :frames[i]] = torch.from_numpy(corpus.entry_motion(entries[i])[:frames[i]])
        tokens = tokenizer.encode(raw, torch.from_numpy(frames[idx])).cpu()       # (b, t/4, C, Q)
        out[torch.from_numpy(idx), :tokens.shape[1]] = tokens.to(torch.int16)
    log.info("encoded %d entries of %s/%s with tokenizer %s into %s", len(entries), corpus.root, corpus.split,
             tokenizer.fingerprint, path)
    _save_cache(path, key, tokens=out, lengths=lengths)
    return out, lengths


def _captions(corpus: MotionCorpus) -> tuple[list[str], list[str], list[int]]:
    """Flattened (entry, caption) pairs: captions, the entries' motion ids, and offsets (N+1) of each entry."""
    captions, ids, offsets = [], [], [0]
    for e in corpus.entries:
        for c in e.captions:
            captions.append(c.caption)
            ids.append(corpus.ids[e.motion])
        offsets.append(len(captions))
    return captions, ids, offsets


@torch.no_grad()
def build_text_cache(captions: list[str], frozen: FrozenUpstream, path: Path, batch_size: int = 64) -> Tensor:
    """(P, D_text) features of `captions` (cached at `path` under the encoder's key)."""
    key = {"version": CACHE_VERSION, "kind": "text", "encoder": frozen.text_key, "captions": _hash(captions)}
    cached = _load_cache(path, key)
    if cached is not None:
        return cached["features"]
    unique = list(dict.fromkeys(captions))
    feats = torch.cat([frozen.encode_texts(unique[s:s + batch_size]).cpu()
                       for s in range(0, len(unique), batch_size)])
    row = {c: i for i, c in enumerate(unique)}
    features = feats[torch.tensor([row[c] for c in captions], dtype=torch.long)].contiguous()
    _save_cache(path, key, features=features)
    return features


@torch.no_grad()
def build_retrieval_cache(captions: list[str], motion_ids: list[str], frozen: FrozenUpstream, path: Path,
                          batch_size: int = 64) -> Tensor:
    """(P, k) database rows retrieved for each caption with the configured exclusion (cached at `path`)."""
    cfg = frozen.cfg
    key = {"version": CACHE_VERSION, "kind": "retrieval", "retriever": frozen.query_encoder.weights_fingerprint(),
           "database": frozen.database_key(), "k": cfg.retrieval_k, "exclude": cfg.exclude,
           "queries": _hash([captions, motion_ids])}
    cached = _load_cache(path, key)
    if cached is not None:
        return cached["indices"]
    rows = [frozen.retrieve(captions[s:s + batch_size], motion_ids[s:s + batch_size]).indices.cpu()
            for s in range(0, len(captions), batch_size)]
    indices = torch.cat(rows).long()
    _save_cache(path, key, indices=indices)
    return indices


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------
class GeneratorDataset(ItemDraws, Dataset):
    """Items of one split for the generator stages (module docstring). The corpus is read at construction (its
    length is known at once, which the Trainer's sampler needs); `prepare(frozen)` fills the caches before the
    first item is read (`TrainTask.setup`)."""

    def __init__(self, data_cfg: DataConfig, split: str, corpus: MotionCorpus | None = None, seed: int = 0):
        self.cfg, self.split = data_cfg, split
        self.corpus = corpus if corpus is not None else MotionCorpus.load(data_cfg, split)
        self.spec = self.corpus.spec
        if not self.corpus.entries:
            raise GeneratorDataError(f"{_MOD}: {self.corpus.root}/{split}.txt has no text entries")
        self.entries = list(self.corpus.entries)
        self.captions, self.motion_ids, offsets = _captions(self.corpus)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.seed, self.epoch = int(seed), 0
        self.tmax = self.spec.pad_length // self.spec.unit_length
        self.frozen: FrozenUpstream | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def prepare(self, frozen: FrozenUpstream, cache_dir: str | Path) -> "GeneratorDataset":
        """Compute or load the token, text and retrieval caches of this split (`cache_dir`)."""
        cache = Path(cache_dir)
        bs = frozen.cfg.encode_batch_size
        # file names carry the upstream's key, so runs on other upstream weights (ablations) keep their own caches
        tok_key = _hash(frozen.tokenizer.fingerprint)
        self.tokens, self.lengths_tokens = build_token_cache(self.corpus, frozen.tokenizer,
                                                             cache / f"gen_tokens.{self.split}.{tok_key}.pt", bs)
        if self.tokens.shape[1] > self.tmax:
            raise GeneratorDataError(f"{_MOD}: token cache has {self.tokens.shape[1]} steps, more than "
                                     f"data.max_motion_length // 4 = {self.tmax}")
        self.text_feats = build_text_cache(self.captions, frozen,
                                           cache / f"gen_text.{self.split}.{frozen.text_key}.pt", bs)
        self.retrieved = None
        if frozen.retrieval:
            ret_key = _hash([frozen.query_encoder.weights_fingerprint(), frozen.database_key(),
                             frozen.cfg.retrieval_k, frozen.cfg.exclude])
            self.retrieved = build_retrieval_cache(self.captions, self.motion_ids, frozen,
                                                   cache / f"gen_retrieval.{self.split}.{ret_key}.pt", bs)
        self.frozen = frozen
        self.k = frozen.cfg.retrieval_k
        self.retrieval_dim = frozen.database.motion_feats.shape[-1] if frozen.retrieval else 512
        return self

    def crop(self, index: int, rng: np.random.Generator) -> tuple[int, int]:
        """(start token, token length) of item `index`: the reference crop at token granularity."""
        n = int(self.lengths_tokens[index])
        double = self.spec.unit_length < 10 and bool(rng.random() < 1.0 / 3.0)
        units = crop_length(n, 1, self.tmax, double)
        start = int(rng.integers(n - units + 1))
        return start, units

    def __getitem__(self, index: int) -> dict:
        if self.frozen is None:
            raise GeneratorDataError(f"{_MOD}: GeneratorDataset({self.split!r}) is not prepared; call "
                                     f"prepare(frozen, cache_dir) first (the task's setup does)")
        entry = self.entries[index]
        rng = self.item_rng(index)
        j = int(rng.integers(len(entry.captions)))
        pair = int(self.offsets[index]) + j
        start, units = self.crop(index, rng)
        tokens = torch.full((self.tmax,) + tuple(self.tokens.shape[2:]), -1, dtype=torch.long)
        tokens[:units] = self.tokens[index, start:start + units].long()
        item = {"tokens": tokens, "length_tokens": units, "length": units * self.spec.unit_length,
                "t": self.text_feats[pair], "caption": self.captions[pair], "id": entry.key,
                "motion_id": self.motion_ids[pair]}
        if self.retrieved is not None:
            rows = self.retrieved[pair]
            db = self.frozen.database
            item["r_t"], item["r_m"] = db.text_feats[rows].cpu(), db.motion_feats[rows].cpu()
            item["retrieved_id"] = [db.motion_ids[int(r)] for r in rows]
            item["retrieved_caption"] = [db.captions[int(r)] for r in rows]
        else:
            item["r_t"] = torch.zeros(self.k, self.retrieval_dim)
            item["r_m"] = torch.zeros(self.k, self.retrieval_dim)
            item["retrieved_id"] = [""] * self.k
            item["retrieved_caption"] = [""] * self.k
        return item


def collate_generator(batch: list[dict]) -> dict:
    """Stack GeneratorDataset items (tensors stacked, ints long (B,), strings and lists kept as lists)."""
    return collate(batch)


def trim_batch(batch: dict) -> dict:
    """The batch with `tokens` cut to its longest crop (B, max length_tokens, C, Q): less padding to attend to."""
    tmax = int(batch["length_tokens"].max())
    return {**batch, "tokens": batch["tokens"][:, :tmax]}


def prepare_splits(frozen: FrozenUpstream, data_cfg: DataConfig, datasets: Sequence[GeneratorDataset | None]) -> None:
    """`prepare` every given dataset with the cache folder of `frozen.cfg`."""
    folder = cache_folder(frozen.cfg, data_cfg)
    for ds in datasets:
        if ds is not None:
            ds.prepare(frozen, folder)


__all__ = ["GeneratorUpstreamConfig", "GeneratorDataError", "FrozenUpstream", "GeneratorDataset",
           "collate_generator", "trim_batch", "check_lengths", "build_token_cache", "build_text_cache",
           "build_retrieval_cache", "cache_folder", "prepare_splits", "EXCLUSIONS", "get_spec"]
