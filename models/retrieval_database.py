"""The retrieval database the generator queries, and the inference-only text path that queries it.

    RetrievalResult                    r_t (B, k, 512), r_m (B, k, 512), indices (B, k), scores (B, k)
    RetrievalDatabase                  (text, motion) features of the training split; top-k by cosine similarity
    RetrievalQueryEncoder              a retriever checkpoint's text tower alone (no motion encoder, no momentum
                                       copies, no queues): `encode_text(texts) -> (B, 512)`, bit-equal to the full
                                       BMMRetriever's on CPU
    default_database_path(ckpt)        `<ckpt dir>/<stem>_database.pt`
    load_retrieval(ckpt, device)       (RetrievalQueryEncoder, RetrievalDatabase) of a retriever checkpoint, checked

Retrieval database (paper §2.0 stage 1; reference §6.3). One row per caption per training entry, as the
official build does. Each row holds the entry's motion feature (the full entry, up to `max_frames`), its caption's
text feature, the motion id, the entry length and the caption. Features are L2-normalised once, at build and load.
`query` is one matrix product and one top-k over the candidate pool, deduplicated by motion id. Candidates whose
motion id is in `exclude_ids` are skipped. The official code does not exclude anything. Our training callers pass
the batch's own motion ids by default (configurable there); we also exclude the mirrored id (`M<id>` ↔ `<id>`),
since that is the same motion mirrored (`exclude_mirrors`).

A database records the fingerprint of the retriever weights it was built with (`models.retriever.state_fingerprint`);
`load(..., fingerprint=)` refuses another retriever's database. The query encoder carries the fingerprint of the
full checkpoint it came from, so it passes the same check.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.retriever import RetrieverConfig, RetrieverError, build_text_tower, state_fingerprint
from models.text_encoders import check_texts
from utils.atomic import atomic_open
from utils.checkpoint import CheckpointError, load_checkpoint, load_model_state, tensor_fingerprint
from utils.config import from_dict

_MOD = "models/retrieval_database.py"
DATABASE_FORMAT_VERSION = 1


class RetrievalResult(NamedTuple):
    """Top-k retrieval for B queries. r_t, r_m (B, k, D) L2-normalised; indices (B, k) database rows;
    scores (B, k) cosine similarities of the query text to the retrieved motion features."""
    r_t: Tensor
    r_m: Tensor
    indices: Tensor
    scores: Tensor


def _canonical_id(mid: str) -> str:
    """The id of the unmirrored motion (HumanML3D / KIT mirrored files are 'M' + id)."""
    return mid[1:] if mid.startswith("M") and len(mid) > 1 else mid


@dataclass
class DatabaseMeta:
    dataset: str                       # "t2m" | "kit"
    feature_dim: int                   # D of the motions the database was encoded from
    latent_dim: int
    split: str
    data_root: str
    retriever_checkpoint: str          # path of the retriever checkpoint (as given at build time)
    retriever_fingerprint: str         # state_fingerprint of its weights
    extra: dict = field(default_factory=dict)


class RetrievalDatabase:
    """Encoded (text, motion) pairs of the training split; `query` ranks motions by cosine similarity.

    Rows: text_feats (N, D), motion_feats (N, D) (L2-normalised), motion_ids (N) file ids, keys (N) entry keys,
    lengths (N,) frames, captions (N). `meta` names the dataset and the retriever it was built with.
    `normalized=True` keeps features that are already L2-normalised as they are (a saved database: normalising
    twice changes the last bit on some CPUs, so a save / load round trip would not be exact); rows whose norm is
    not 1 (within 1e-4) are normalised all the same.
    """

    def __init__(self, text_feats: Tensor, motion_feats: Tensor, motion_ids: Sequence[str], captions: Sequence[str],
                 lengths: Sequence[int], meta: DatabaseMeta, keys: Sequence[str] | None = None,
                 normalized: bool = False):
        n = len(motion_ids)
        if text_feats.shape[0] != n or motion_feats.shape[0] != n or len(captions) != n or len(lengths) != n:
            raise RetrieverError(f"{_MOD}: RetrievalDatabase columns must all have N={n} rows, got text "
                                 f"{tuple(text_feats.shape)}, motion {tuple(motion_feats.shape)}, {len(captions)} "
                                 f"captions, {len(lengths)} lengths")
        if n == 0:
            raise RetrieverError(f"{_MOD}: RetrievalDatabase is empty (no rows); build it from a non-empty split")
        def norm(x: Tensor) -> Tensor:                     # normalised once, here (a file's rows are checked)
            x = x.detach().float()
            if normalized and torch.allclose(x.norm(dim=-1), torch.ones((), device=x.device), atol=1e-4):
                return x
            return F.normalize(x, dim=-1)

        self.text_feats = norm(text_feats)
        self.motion_feats = norm(motion_feats)
        self.motion_ids = list(motion_ids)
        self.keys = list(keys) if keys is not None else list(motion_ids)
        self.captions = list(captions)
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.meta = meta
        # motion id -> integer code (dedup); id / canonical id -> its rows (exclusion, incl. mirrors)
        self._id_code = {m: i for i, m in enumerate(dict.fromkeys(self.motion_ids))}
        self.row_code = torch.tensor([self._id_code[m] for m in self.motion_ids], dtype=torch.long)
        canon = [_canonical_id(m) for m in self.motion_ids]
        self._rows_id: dict[str, list[int]] = {}
        self._rows_canon: dict[str, list[int]] = {}
        for i, (m, c) in enumerate(zip(self.motion_ids, canon)):
            self._rows_id.setdefault(m, []).append(i)
            self._rows_canon.setdefault(c, []).append(i)
        self.num_motions = len(self._id_code)
        self.max_rows_per_motion = int(torch.bincount(self.row_code).max())

    def __len__(self) -> int:
        return len(self.motion_ids)

    def content_fingerprint(self) -> str:
        """Hash (16 hex) of the rows (features, motion ids, captions): identifies the database a stage trained on."""
        return tensor_fingerprint({"text": self.text_feats.cpu(), "motion": self.motion_feats.cpu(),
                                   "ids": "\n".join(self.motion_ids), "captions": "\n".join(self.captions)})

    def to(self, device: str | torch.device) -> "RetrievalDatabase":
        self.text_feats, self.motion_feats = self.text_feats.to(device), self.motion_feats.to(device)
        self.row_code = self.row_code.to(device)
        return self

    # ---- compatibility ------------------------------------------------------------------------------------------
    def check_compatible(self, dataset: str | None = None, fingerprint: str | None = None,
                         checkpoint: str | None = None, path: str = "<database>") -> None:
        """Refuse a database of another dataset or another retriever (naming both)."""
        m = self.meta
        if dataset is not None and dataset != m.dataset:
            raise RetrieverError(f"{_MOD}: {path}: this retrieval database was built from dataset {m.dataset!r} "
                                 f"({m.data_root}), but dataset {dataset!r} is in use; rebuild it with "
                                 f"`python train_retriever.py --build-db ...` for {dataset!r}")
        if fingerprint is not None and fingerprint != m.retriever_fingerprint:
            raise RetrieverError(f"{_MOD}: {path}: this retrieval database was built with retriever "
                                 f"{m.retriever_checkpoint} (weights {m.retriever_fingerprint}), but retriever "
                                 f"{checkpoint or '<in memory>'} (weights {fingerprint}) is in use; rebuild the "
                                 f"database with `python train_retriever.py --build-db <that checkpoint>`")

    # ---- query --------------------------------------------------------------------------------------------------
    def query(self, text_emb: Tensor, k: int = 1, exclude_ids: Sequence[str] | None = None,
              exclude_mirrors: bool = True) -> RetrievalResult:
        """Top-k distinct motions for each query text embedding.

        Args:
            text_emb:    (B, D) query text embeddings from the retriever's text tower (normalised here).
            k:           number of distinct motions per query.
            exclude_ids: None, or B motion ids (one per query; str or None) whose rows must not be returned: the
                         query's own motion during training. With `exclude_mirrors`, the mirrored id is excluded too.
        Returns:
            RetrievalResult(r_t (B, k, D), r_m (B, k, D), indices (B, k), scores (B, k)), scores descending.
        """
        if text_emb.ndim != 2 or text_emb.shape[-1] != self.motion_feats.shape[-1]:
            raise RetrieverError(f"{_MOD}: query expects text_emb (B, {self.motion_feats.shape[-1]}), got "
                                 f"{tuple(text_emb.shape)}")
        B = text_emb.shape[0]
        if B == 0:
            raise RetrieverError(f"{_MOD}: query got no text (B = 0); give at least one non-empty prompt")
        if exclude_ids is not None and len(exclude_ids) != B:
            raise RetrieverError(f"{_MOD}: exclude_ids must hold one id per query (B={B}), got {len(exclude_ids)}")
        available = self.num_motions - (1 if exclude_ids is not None else 0)
        if not 1 <= k <= available:
            raise RetrieverError(f"{_MOD}: k={k} must be in [1, {available}]: the database holds {self.num_motions} "
                                 f"distinct motions" + (" (one is excluded per query)" if exclude_ids else ""))
        device = self.motion_feats.device
        q = F.normalize(text_emb.detach().to(device=device, dtype=self.motion_feats.dtype), dim=-1)
        with torch.autocast(device.type, enabled=False):      # rank in the database's dtype: under bf16 autocast
            scores = q @ self.motion_feats.t()                 # the (N, D) matrix would be cast on every call   (B, N)
        if exclude_ids is not None:
            rows = self._rows_canon if exclude_mirrors else self._rows_id
            q_idx, r_idx = [], []
            for b, e in enumerate(exclude_ids):
                key = None if e is None else (_canonical_id(e) if exclude_mirrors else e)
                for r in rows.get(key, ()):
                    q_idx.append(b)
                    r_idx.append(r)
            if r_idx:   # only the excluded rows are touched: O(excluded), not O(B·N)
                scores = scores.index_put((torch.tensor(q_idx, device=device), torch.tensor(r_idx, device=device)),
                                          torch.tensor(float("-inf"), device=device, dtype=scores.dtype))
        # enough candidates to hold k distinct motions even if every better row repeats a motion
        pool = min(len(self), (k - 1) * self.max_rows_per_motion + 1)
        cand_scores, cand_idx = scores.topk(pool, dim=1)                                  # (B, pool), descending
        if pool == k and self.max_rows_per_motion == 1:
            idx, top = cand_idx, cand_scores
            if not torch.isfinite(top).all():
                raise RetrieverError(f"{_MOD}: fewer than k={k} distinct non-excluded motions in the database")
        else:
            idx, top = self._dedup(cand_idx, cand_scores, k)
        return RetrievalResult(self.text_feats[idx], self.motion_feats[idx], idx, top)

    def _dedup(self, cand_idx: Tensor, cand_scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Keep the first (best) candidate of each motion id, the k best of those. (B, pool) -> (B, k)."""
        codes = self.row_code[cand_idx]                                                   # (B, pool)
        pool = codes.shape[1]
        same = codes[:, :, None] == codes[:, None, :]                                    # (B, pool, pool)
        earlier = torch.ones(pool, pool, dtype=torch.bool, device=codes.device).tril(-1)
        first = ~(same & earlier).any(-1) & torch.isfinite(cand_scores)                  # first occurrence
        if (first.sum(1) < k).any():
            raise RetrieverError(f"{_MOD}: fewer than k={k} distinct non-excluded motions in the database")
        order = torch.argsort((~first).to(torch.int8), dim=1, stable=True)[:, :k]        # firsts, in score order
        return cand_idx.gather(1, order), cand_scores.gather(1, order)

    def retrieve(self, retriever, prompts: Sequence[str], k: int = 1,
                 exclude_ids: Sequence[str] | None = None) -> RetrievalResult:
        """Encode prompts with `retriever.encode_text` (a BMMRetriever or a RetrievalQueryEncoder) and query.
        Refuses empty prompts."""
        prompts = check_texts(prompts, f"{_MOD}: RetrievalDatabase.retrieve prompts")
        with torch.no_grad():
            emb = retriever.encode_text(prompts)
        return self.query(emb, k=k, exclude_ids=exclude_ids)

    # ---- build / save / load ------------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def build(cls, retriever, dataset, batch_size: int = 64, checkpoint: str = "",
              progress: bool = False) -> "RetrievalDatabase":
        """Encode every text entry of `dataset` (a MotionTextDataset, normalised with the retriever's stats): one
        row per caption of each entry; the motion feature is that of the entry's full motion (cropped to
        max_frames)."""
        corpus = dataset.corpus
        entries = list(corpus.entries)
        if not entries:
            raise RetrieverError(f"{_MOD}: dataset {corpus.root}/{corpus.split}.txt has no text entries to encode")
        if retriever.cfg.dataset != corpus.spec.name:
            raise RetrieverError(f"{_MOD}: the retriever was trained on dataset {retriever.cfg.dataset!r} but the "
                                 f"database split {corpus.root}/{corpus.split} is {corpus.spec.name!r}")
        was_training = retriever.training
        retriever.eval()
        feats = retriever.encode_entries(dataset, entries, batch_size, progress)
        motion_rows, motion_ids, keys, lengths, captions, text_rows = [], [], [], [], [], []
        for e, feat in zip(entries, feats):
            for c in e.captions:
                motion_rows.append(feat)
                motion_ids.append(corpus.ids[e.motion])
                keys.append(e.key)
                lengths.append(e.length)
                captions.append(c.caption)
        for s in range(0, len(captions), batch_size):
            text_rows.append(retriever.encode_text(captions[s:s + batch_size]).cpu())
        retriever.train(was_training)
        meta = DatabaseMeta(dataset=corpus.spec.name, feature_dim=corpus.spec.dim,
                            latent_dim=retriever.cfg.latent_dim, split=corpus.split, data_root=str(corpus.root),
                            retriever_checkpoint=str(checkpoint), retriever_fingerprint=retriever.weights_fingerprint())
        return cls(torch.cat(text_rows), torch.stack(motion_rows), motion_ids, captions, lengths, meta, keys)

    def save(self, path: str | os.PathLike) -> None:
        """One file, written atomically (temp file + os.replace); loadable with torch.load(weights_only=True)."""
        obj = {"format_version": DATABASE_FORMAT_VERSION, "kind": "retrieval_database", "meta": asdict(self.meta),
               "text_feats": self.text_feats.cpu(), "motion_feats": self.motion_feats.cpu(),
               "motion_ids": self.motion_ids, "keys": self.keys, "captions": self.captions,
               "lengths": self.lengths.cpu()}
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)

    @classmethod
    def load(cls, path: str | os.PathLike, dataset: str | None = None, fingerprint: str | None = None,
             checkpoint: str | None = None, map_location="cpu") -> "RetrievalDatabase":
        """Load a saved database; with `dataset` / `fingerprint` given, refuse one built for something else."""
        path = Path(path)
        if not path.is_file():
            raise RetrieverError(f"{_MOD}: retrieval database '{path}' does not exist; build it with "
                                 f"`python train_retriever.py --build-db <retriever checkpoint>`")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            raise RetrieverError(f"{_MOD}: {path}: not a readable retrieval database ({err})") from None
        if not isinstance(obj, dict) or obj.get("kind") != "retrieval_database":
            raise RetrieverError(f"{_MOD}: {path}: not a retrieval database (expected kind 'retrieval_database', "
                                 f"got {obj.get('kind') if isinstance(obj, dict) else type(obj).__name__})")
        if obj.get("format_version") != DATABASE_FORMAT_VERSION:
            raise RetrieverError(f"{_MOD}: {path}: database format version {obj.get('format_version')}, expected "
                                 f"{DATABASE_FORMAT_VERSION}; rebuild it with train_retriever.py --build-db")
        db = cls(obj["text_feats"], obj["motion_feats"], obj["motion_ids"], obj["captions"], obj["lengths"].tolist(),
                 DatabaseMeta(**obj["meta"]), obj["keys"], normalized=True)
        db.check_compatible(dataset, fingerprint, checkpoint, str(path))
        return db


def default_database_path(checkpoint: str | os.PathLike) -> Path:
    """Where the database of a retriever checkpoint lives: `<ckpt dir>/<ckpt stem>_database.pt`."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}_database.pt")


class RetrievalQueryEncoder(nn.Module):
    """The online text path of a trained BMMRetriever: text tower (backbone + pooling + projection head).

    `encode_text(texts) -> (B, latent_dim)` L2-normalised, equal to `BMMRetriever.encode_text` of the same weights.
    Load it with `from_checkpoint(path, device)`: the checkpoint is memory-mapped and only the `text_tower.*`
    tensors are copied in, so the motion encoder, the momentum copies and the two queues (about 256 MiB at paper
    size) are never materialised. `weights_fingerprint()` is the full retriever's (databases check it).
    """

    def __init__(self, cfg: RetrieverConfig, fingerprint: str = ""):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.text_tower = build_text_tower(cfg)
        self._fingerprint = fingerprint
        self.path = ""

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """B captions -> (B, latent_dim) L2-normalised."""
        return F.normalize(self.text_tower(texts), dim=-1)

    def weights_fingerprint(self) -> str:
        """Fingerprint of the full retriever this text path was taken from (`models.retriever.state_fingerprint`)."""
        return self._fingerprint

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "RetrievalQueryEncoder":
        """The text path of a `retriever` checkpoint, in eval mode on `device`."""
        ckpt = load_checkpoint(path, stage="retriever", mmap=True)
        config = ckpt.get("config") or {}
        if not isinstance(config.get("model"), dict):
            raise CheckpointError(f"checkpoint {path} has no config.model section to rebuild the retriever's text "
                                  f"tower from; was it written by train_retriever.py?")
        cfg = from_dict(RetrieverConfig, config["model"], source=f"{path}: config.model")
        state = ckpt["model"]
        # train_retriever.py stores the fingerprint beside the weights; older files are hashed (all weights read)
        fingerprint = (ckpt.get("extra") or {}).get("fingerprint") or state_fingerprint(state)
        encoder = cls(cfg, fingerprint=fingerprint)
        prefix = "text_tower."
        load_model_state(encoder.text_tower, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                         path)
        encoder.path = str(path)
        del ckpt, state
        return encoder.to(device).eval()


def load_retrieval(ckpt_path: str | os.PathLike, device: str | torch.device = "cpu", dataset: str | None = None,
                   db_path: str | os.PathLike | None = None) -> tuple[RetrievalQueryEncoder, RetrievalDatabase]:
    """What generation needs from a trained retriever: its text path and its database, checked to belong together.

    The database is `db_path` or `default_database_path(ckpt_path)`; it is refused when it was built from another
    dataset than `dataset` (None = any) or with other retriever weights. Both are on `device`."""
    encoder = RetrievalQueryEncoder.from_checkpoint(ckpt_path, device)
    path = Path(db_path) if db_path else default_database_path(ckpt_path)
    db = RetrievalDatabase.load(path, dataset=dataset, fingerprint=encoder.weights_fingerprint(),
                                checkpoint=str(ckpt_path))
    return encoder, db.to(device)
