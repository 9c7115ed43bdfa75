"""The Part-Level BMM retriever (paper §2.1, §2.2) and the retrieval database the generator queries.

    RetrieverConfig                    architecture + BMM hyper-parameters (saved in the checkpoint)
    part_feature_indices(dataset)      the six body-part index sets into the D-vector (reference §6.3)
    PartMotionEncoder(cfg)             motion (B, T, D), lengths (B,) -> (B, 512), L2-normalised
    bmm_loss(q, k, queue, ...)         one direction of Eqs. 4 / 6
    BMMRetriever(cfg)                  online + momentum encoders of both modalities, two FIFO queues
    build_text_tower(cfg)              the text tower alone (shared with the inference-only query encoder)
The retrieval database, its query encoder and `RetrievalResult` live in `models/retrieval_database.py`.

Part split (reference §6.3, Part_TMR adapted from ParCo). Joint j >= 1 contributes its 12-vector
[ric(3), rot6d(6), local velocity(3)], taken from the dims `4+3(j-1):+3`, `4+3(J-1)+6(j-1):+6` and `4+9(J-1)+3j:+3`.
Root = root data (0:4) + the root's local velocity (3) = 7 dims. R_Leg also gets the right-foot contacts (D-2:D),
L_Leg the left-foot contacts (D-4:D-2). t2m part widths: 7/50/50/60/60/60 (joint 9 is in Backbone, R_Arm and L_Arm).
KIT widths: 7/62/62/48/48/48 (joint 3 is in three parts).
Each part has its own transformer: Linear(part dims -> 512), a learnable summary token, sinusoidal positions,
4 layers, 4 heads, a key-padding mask. The six summary outputs are concatenated (6·512) and projected to 512
(dropout 0.5, paper.md §7; the official KIT-ML setting is 0.0), then L2-normalised. The projection head (of the
motion encoder and of the text tower) is `projection_head`: "linear" (Dropout then Linear, ours) or "official"
(Linear → GELU → Linear → Dropout → residual → LayerNorm, the official Part_TMR head; `models/projection_head.py`).
`part_level=False` is the whole-body variant ("global retrieval" ablation, paper §2.2, Table 4): one transformer
over all D dims. Two knobs exist only for small CPU runs:
`part_width` (the part transformers' width; paper 512) and `frame_pool` (average n frames per token; paper 1).
With the paper config and DistilBERT the model has 237.9M parameters, online plus momentum (paper Table 3: 238M).

BMM (paper Eqs. 1-7, Alg. 1). f_m, f_t are online; f̂_m, f̂_t are momentum copies updated by EMA with m = 0.99.
Two queues of 65,536 momentum keys each (text keys Q_t: the negatives of motion→text; motion keys Q_m: the
negatives of text→motion). Choices, each a config flag:
- `in_batch_negatives` (default True, the official code). The logits of query i are [q_i·k_j for the B in-batch
  momentum keys ; q_i·queue] / τ, with the positive k_i among them: B + K logits. With False we follow the paper's
  Eq. 5: the positive q_i·k_i and the queue only, 1 + K logits.
- `loss_reduction` "mean" (default, official code): each direction is the batch mean of the cross-entropy, and
  L = (L_M2T + L_T2M) / 2. "sum" (the paper): each direction sums over the batch, and L = L_M2T + L_T2M (Eq. 7).
  They differ by the constant factor 2B, which Adam's update is nearly invariant to.
- `use_text_queue`, `use_motion_queue` (Table 5). Without a queue a direction uses the in-batch keys only.
  Without a queue and without in-batch negatives a direction has no negatives, which the config refuses.
- The queues start empty, and only filled entries act as negatives. (MoCo starts from random unit vectors instead.)
- Order of operations. Keys are computed in `forward` with the current momentum weights. The EMA update and the
  enqueue of this step's keys happen after the optimizer step (`after_optimizer_step`, paper Alg. 1). The official
  code instead updates the momentum encoders at the start of each step, before computing the keys. Over a run the
  two orders differ only at the first step.
- `similarity` "normalized" (ours): the loss compares L2-normalised embeddings, logits = cos / τ. "official" (the
  official code): the loss compares the **un-normalised** head outputs (with the official head: the outputs of its
  final LayerNorm, of norm ≈ √512), logits = q·k / τ with τ = 0.07; the queues hold those un-normalised keys.
  Evaluation, `encode_text` / `encode_motion` and the retrieval database always use L2-normalised embeddings.
- Text backbone. When it is frozen (`text_freeze_backbone`, the MiniLM mini configs), its EMA copy would equal
  itself. So the online and momentum text encoders share the backbone (and its caption cache), and only the
  projection head has a momentum copy. A trained backbone (DistilBERT, paper) gets its own momentum copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.registry import DATASETS, PART_NAMES, dataset_facts
from datasets.representation import feature_dim, joint_feature_indices
from models.projection_head import PROJECTION_HEADS, build_projection_head
from models.text_encoders import (TOWER_MAX_TOKENS, TextEncoderConfig, TextTower, build_text_encoder_from_config,
                                  momentum_copy)
from utils.checkpoint import tensor_fingerprint
from utils.tensors import lengths_to_mask

_MOD = "models/retriever.py"
DATABASE_FORMAT_VERSION = 1
SIMILARITIES = ("normalized", "official")   # model.similarity (module docstring)


class RetrieverError(ValueError):
    """Bad retriever argument, config or database; the message names it and says what was expected."""


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class RetrieverConfig:
    dataset: str = "t2m"             # "t2m" | "kit": feature width and part split (reference §6.3)
    latent_dim: int = 512            # paper §2.1 (latent dim 512): the retrieved R_t / R_m width
    part_width: int = 512            # paper §2.1: width of each part transformer (mini configs: smaller)
    part_level: bool = True          # six parts (paper §2.1); False = whole-body "global retrieval" (paper §2.2)
    layers: int = 4                  # paper §2.1 (ReMoGPT's 4-layer transformer)
    heads: int = 4                   # reference §6.3 (Part_TMR: 4 heads)
    ff_dim: int = 1024               # TMR / Part_TMR transformer ff size (gives the paper's 238M total with DistilBERT)
    dropout: float = 0.1             # TMR transformer dropout
    head_dropout: float = 0.5        # paper.md §7 (dropout 0.5 in the projection heads)
    max_frames: int = 224            # reference §6.3 (Part_TMR max_motion_length); longer motions are cropped
    frame_pool: int = 1              # 1 = every frame a token (paper); n > 1 averages n frames per token (CPU mini)
    text_encoder: str = "distilbert"  # paper §2.1; "minilm" = offline pretrained alternative (ARCHITECTURE.md §3)
    text_path: str = ""              # local HF folder ("" = package folder for minilm; required for distilbert)
    text_download: bool = False      # allow a hub download of distilbert-base-uncased (online only)
    text_tiny: bool = False          # small random backbone (tests)
    text_random_init: bool = False   # real backbone size, random weights (benchmarks, offline)
    text_freeze_backbone: bool = False  # reference §6.4 trains the text tower (lr factor 1); mini freezes MiniLM
    text_pooling: str = "mean"       # "mean" (ours) | "cls": the official code's first token (models/text_encoders.py)
    projection_head: str = "linear"  # "linear": Dropout + Linear (ours) | "official": Part_TMR (projection_head.py)
    similarity: str = "normalized"   # loss on L2-normalised embeddings (ours) | "official": un-normalised head outputs
    momentum: float = 0.99           # paper §2.1 m = 0.99 (reference §6.4; master branch 0.999)
    temperature: float = 0.07        # paper §2.1 τ
    queue_size: int = 65536          # paper §2.1 (both queues)
    use_text_queue: bool = True      # Table 5
    use_motion_queue: bool = True    # Table 5
    in_batch_negatives: bool = True  # official code: [in-batch keys ; queue]; False = paper Eq. 5 (queue only)
    loss_reduction: str = "mean"     # "mean": official ((m2t+t2m)/2 of batch means); "sum": paper Eqs. 4, 6, 7

    def text_encoder_config(self) -> TextEncoderConfig:
        """The shared description of this retriever's text tower (recorded in its checkpoints)."""
        return TextEncoderConfig(name=self.text_encoder, path=self.text_path, max_length=TOWER_MAX_TOKENS,
                                 pooling=self.text_pooling, out_dim=self.latent_dim, download=self.text_download,
                                 tiny=self.text_tiny, random_init=self.text_random_init,
                                 freeze_backbone=self.text_freeze_backbone)

    def validate(self) -> None:
        if self.dataset not in PART_JOINTS:
            raise RetrieverError(f"{_MOD}: model.dataset must be one of {sorted(PART_JOINTS)}, got {self.dataset!r}")
        if self.projection_head not in PROJECTION_HEADS:
            raise RetrieverError(f"{_MOD}: model.projection_head must be one of {PROJECTION_HEADS}, got "
                                 f"{self.projection_head!r}")
        if self.similarity not in SIMILARITIES:
            raise RetrieverError(f"{_MOD}: model.similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.text_pooling not in ("mean", "cls"):
            raise RetrieverError(f"{_MOD}: model.text_pooling must be 'mean' or 'cls', got {self.text_pooling!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise RetrieverError(f"{_MOD}: model.head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.loss_reduction not in ("mean", "sum"):
            raise RetrieverError(f"{_MOD}: model.loss_reduction must be 'mean' or 'sum', got {self.loss_reduction!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise RetrieverError(f"{_MOD}: model.momentum must be in [0, 1], got {self.momentum}")
        if self.temperature <= 0:
            raise RetrieverError(f"{_MOD}: model.temperature must be > 0, got {self.temperature}")
        if self.frame_pool < 1:
            raise RetrieverError(f"{_MOD}: model.frame_pool must be >= 1 (1 = every frame), got {self.frame_pool}")
        if self.queue_size < 1:
            raise RetrieverError(f"{_MOD}: model.queue_size must be >= 1, got {self.queue_size}")
        if self.part_width % self.heads:
            raise RetrieverError(f"{_MOD}: model.part_width ({self.part_width}) must be divisible by model.heads "
                                 f"({self.heads})")
        if not self.in_batch_negatives and not (self.use_text_queue and self.use_motion_queue):
            raise RetrieverError(f"{_MOD}: with model.in_batch_negatives=false every direction needs its queue "
                                 f"(use_text_queue={self.use_text_queue}, use_motion_queue={self.use_motion_queue}); "
                                 f"otherwise a direction has no negatives at all")


# ------------------------------------------------------------------------------------------------------------------
# Part split (reference §6.3)
# ------------------------------------------------------------------------------------------------------------------

PART_JOINTS: dict[str, dict[str, tuple[int, ...]]] = {ds: dataset_facts(ds).body_parts for ds in DATASETS}


def part_feature_indices(dataset: str = "t2m") -> dict[str, list[int]]:
    """Index sets of the six parts into the D-vector, in PART_NAMES order (reference §6.3).

    Joint j >= 1 of a part contributes its 12 dims (`datasets.representation.joint_feature_indices`); the root part
    is the root data and the root's local velocity; the legs also get their foot contacts."""
    if dataset not in PART_JOINTS:
        raise RetrieverError(f"{_MOD}: argument 'dataset' must be one of {sorted(PART_JOINTS)}, got {dataset!r}")
    D = feature_dim(dataset)
    root = joint_feature_indices(0, dataset)
    out = {"root": root[0:4] + root[9:12]}
    contacts = {"r_leg": [D - 2, D - 1], "l_leg": [D - 4, D - 3]}    # [fid_l(2), fid_r(2)] = dims D-4:D
    for part, joints in PART_JOINTS[dataset].items():
        idx = [i for j in joints for i in joint_feature_indices(j, dataset)]
        out[part] = idx + contacts.get(part, [])
    return {name: out[name] for name in PART_NAMES}


# ------------------------------------------------------------------------------------------------------------------
# Motion encoder
# ------------------------------------------------------------------------------------------------------------------

def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim) sin on even channels, cos on odd (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class SequenceSummarizer(nn.Module):
    """Linear(in_dim -> D), a learnable summary token, positions, a transformer; returns the summary token.

    Args:  x (B, T, in_dim), pad (B, T) True on padded frames.   Returns (B, D), D = cfg.part_width.
    """

    def __init__(self, in_dim: int, cfg: RetrieverConfig):
        super().__init__()
        d = cfg.part_width
        self.embed = nn.Linear(in_dim, d)
        self.summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.frame_pool = cfg.frame_pool
        self.register_buffer("pos", sinusoidal_table(cfg.max_frames + 1, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff_dim, cfg.dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.embed(x)
        if self.frame_pool > 1:
            h, pad = pool_frames(h, pad, self.frame_pool)
        B, T, _ = h.shape
        h = torch.cat([self.summary.expand(B, 1, -1), h], dim=1) + self.pos[: T + 1]
        mask = torch.cat([pad.new_zeros(B, 1), pad], dim=1)
        return self.encoder(self.drop(h), src_key_padding_mask=mask)[:, 0]


def pool_frames(h: Tensor, pad: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Average every n consecutive valid frames: h (B, T, D), pad (B, T) -> (B, ceil(T/n), D), (B, ceil(T/n)).

    A pooled token is padding when all of its frames are padding."""
    B, T, D = h.shape
    extra = (-T) % n
    if extra:
        h = F.pad(h, (0, 0, 0, extra))
        pad = F.pad(pad, (0, extra), value=True)
    valid = (~pad).to(h.dtype).view(B, -1, n, 1)
    count = valid.sum(2)
    pooled = (h.view(B, -1, n, D) * valid).sum(2) / count.clamp_min(1.0)
    return pooled, count.squeeze(-1) == 0


class PartMotionEncoder(nn.Module):
    """Part-level motion encoder f_pl (paper §2.1): six part transformers -> concat -> projection -> L2 norm.

    forward(motion (B, T, D) normalised with the raw Std (reference §1.5), lengths (B,), normalize=True)
    -> (B, latent_dim); `normalize=False` returns the head output itself (the loss of `similarity=official`).
    With `cfg.part_level=False` one "body" transformer sees all D dims (whole-body / global variant).
    """

    def __init__(self, cfg: RetrieverConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.dim = feature_dim(cfg.dataset)
        if cfg.part_level:
            splits = part_feature_indices(cfg.dataset)
        else:
            splits = {"body": list(range(self.dim))}
        self.part_names = tuple(splits)
        for name, idx in splits.items():
            self.register_buffer(f"idx_{name}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.parts = nn.ModuleDict({name: SequenceSummarizer(len(idx), cfg) for name, idx in splits.items()})
        self.head = build_projection_head(cfg.projection_head, len(splits) * cfg.part_width, cfg.latent_dim,
                                          cfg.head_dropout)

    def forward(self, motion: Tensor, lengths: Tensor, normalize: bool = True) -> Tensor:
        if motion.ndim != 3 or motion.shape[-1] != self.dim:
            raise RetrieverError(f"{_MOD}: PartMotionEncoder expects motion (B, T, {self.dim}) for dataset "
                                 f"{self.cfg.dataset!r}, got {tuple(motion.shape)}")
        lengths = torch.as_tensor(lengths, device=motion.device).long()
        if lengths.shape != (motion.shape[0],) or (lengths < 1).any():
            raise RetrieverError(f"{_MOD}: PartMotionEncoder expects lengths (B,) >= 1 for B={motion.shape[0]}, got "
                                 f"{lengths.tolist()}")
        T = min(motion.shape[1], self.cfg.max_frames)       # Part_TMR crops to max_motion_length
        motion, lengths = motion[:, :T], lengths.clamp(max=T)
        pad = ~lengths_to_mask(lengths, T, motion.device)                                    # (B, T)
        feats = [self.parts[n](motion.index_select(-1, getattr(self, f"idx_{n}")), pad) for n in self.part_names]
        out = self.head(torch.cat(feats, dim=-1))
        return F.normalize(out, dim=-1) if normalize else out


# ------------------------------------------------------------------------------------------------------------------
# BMM loss and the retriever
# ------------------------------------------------------------------------------------------------------------------

def bmm_loss(q: Tensor, k: Tensor, queue: Tensor | None, temperature: float, in_batch_negatives: bool = True,
             reduction: str = "mean") -> Tensor:
    """One direction of the BMM loss (paper Eq. 4 or 6).

    Args:
        q:     (B, D) online queries (L2-normalised; un-normalised head outputs with similarity "official"),
               e.g. q^m_i = f_m(m_i) for motion→text
        k:     (B, D) momentum keys of the paired modality; k_i is the positive of q_i
        queue: (K, D) filled queue entries of the paired modality (negatives), or None
    Returns:
        scalar: Σ_i or mean_i of −log softmax(logits_i)[positive]. The logits are [q_i·k_j]_j (in-batch) ++
        [q_i·queue]; without in-batch negatives they are [q_i·k_i] ++ [q_i·queue].
    """
    with torch.autocast(device_type=q.device.type, enabled=False):   # logits / 0.07 need float32 under bf16
        q, k = q.float(), k.float()
        if in_batch_negatives:
            logits = q @ k.t()
            target = torch.arange(q.shape[0], device=q.device)
        else:
            logits = (q * k).sum(-1, keepdim=True)
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if queue is not None and queue.shape[0] > 0:
            logits = torch.cat([logits, q @ queue.float().t()], dim=1)
        return F.cross_entropy(logits / temperature, target, reduction=reduction)


def _gather_keys(x: Tensor) -> Tensor:
    """Concatenate the keys of all processes under torch.distributed (identity in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class BMMRetriever(nn.Module):
    """Part-Level BMM retriever (paper §2.1): online and momentum text/motion encoders and two key queues.

    encode_text(texts) -> (B, 512), encode_motion(motion (B, T, D), lengths (B,)) -> (B, 512), both L2-normalised
    (online encoders). forward(batch with "motion", "length", "caption") -> (loss, logs). After the optimizer step
    call `after_optimizer_step()` (= momentum_update + enqueue of the keys of the forward passes since).
    """

    def __init__(self, cfg: RetrieverConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # online encoders
        self.motion_encoder = PartMotionEncoder(cfg)
        tower = build_text_tower(cfg)
        self.text_tower = tower
        # momentum encoders (Alg. 1 line 1: copies of the online ones)
        self.momentum_motion_encoder = momentum_copy(self.motion_encoder)
        self.momentum_text_head = momentum_copy(tower.head)
        self.momentum_text_backbone = None if tower.freeze_backbone else momentum_copy(tower.backbone)
        # queues (FIFO ring buffers; both advance together, one pointer)
        d = cfg.latent_dim
        self.register_buffer("text_queue", torch.zeros(cfg.queue_size if cfg.use_text_queue else 0, d))
        self.register_buffer("motion_queue", torch.zeros(cfg.queue_size if cfg.use_motion_queue else 0, d))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor]] = []

    # ---- structure ---------------------------------------------------------------------------------------------
    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.motion_encoder, self.momentum_motion_encoder), (self.text_tower.head, self.momentum_text_head)]
        if self.momentum_text_backbone is not None:
            pairs.append((self.text_tower.backbone, self.momentum_text_backbone))
        return pairs

    def train(self, mode: bool = True) -> "BMMRetriever":
        super().train(mode)
        # momentum encoders produce keys without dropout noise in either mode (MoCo keeps them in train mode; with
        # dropout 0.5 in the heads, deterministic keys are the better targets). Documented choice.
        for _, twin in self._momentum_pairs():
            twin.eval()
        return self

    def param_groups(self, motion_factor: float = 10.0, text_factor: float = 1.0,
                     head_factor: float = 10.0) -> list[dict]:
        """Optimizer groups with lr factors (× train.lr), reference §6.4: motion encoders ×10, text backbone ×1,
        projection heads ×10. Only trainable parameters; the momentum copies are never optimised."""
        head = list(self.motion_encoder.head.parameters()) + list(self.text_tower.head.parameters())
        motion = list(self.motion_encoder.parts.parameters())
        text = [p for p in self.text_tower.backbone.parameters() if p.requires_grad]
        groups = [{"params": motion, "lr_factor": motion_factor, "name": "motion"},
                  {"params": text, "lr_factor": text_factor, "name": "text"},
                  {"params": head, "lr_factor": head_factor, "name": "head"}]
        return [g for g in groups if g["params"]]

    def check_batch_size(self, batch_size: int) -> None:
        """MoCo's rule: the queue size must be a multiple of the (global) batch size, so batches never straddle."""
        if self.cfg.queue_size % batch_size:
            raise RetrieverError(f"{_MOD}: model.queue_size ({self.cfg.queue_size}) must be a multiple of the batch "
                                 f"size ({batch_size}); choose e.g. queue_size="
                                 f"{max(1, self.cfg.queue_size // batch_size) * batch_size} or a batch size that "
                                 f"divides {self.cfg.queue_size}")

    # ---- encoders -----------------------------------------------------------------------------------------------
    def encode_motion(self, motion: Tensor, lengths: Tensor, normalize: bool = True) -> Tensor:
        """motion (B, T, D), lengths (B,) -> (B, latent_dim) L2-normalised (online encoder; raw head output with
        normalize=False)."""
        return self.motion_encoder(motion, lengths, normalize=normalize)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> Tensor:
        """B captions -> (B, latent_dim) L2-normalised (online encoder; raw head output with normalize=False)."""
        out = self.text_tower(texts)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.no_grad()
    def encode_entries(self, dataset, entries: Sequence, batch_size: int = 64, progress: bool = False) -> Tensor:
        """(N, latent_dim) CPU features of the full motions of N corpus entries (deterministic: no random crop).

        Each entry's motion is cropped to `cfg.max_frames`, normalised with `dataset.normalize` (a MotionTextDataset
        built with the retriever's statistics) and zero-padded within its batch. The caller chooses train/eval mode.
        """
        corpus = dataset.corpus
        device = next(self.parameters()).device
        starts = range(0, len(entries), batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc="encode motions", unit="batch")
        out = []
        for s in starts:
            chunk = entries[s:s + batch_size]
            lens = [min(e.length, self.cfg.max_frames) for e in chunk]
            x = np.zeros((len(chunk), max(lens), corpus.spec.dim), dtype=np.float32)
            for i, e in enumerate(chunk):
                x[i, :lens[i]] = dataset.normalize(corpus.entry_motion(e)[:lens[i]])
            out.append(self.encode_motion(torch.from_numpy(x).to(device), torch.tensor(lens, device=device)).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.cfg.latent_dim)

    @torch.no_grad()
    def momentum_keys(self, texts: Sequence[str], motion: Tensor, lengths: Tensor,
                      normalize: bool = True) -> tuple[Tensor, Tensor]:
        """k^t (B, latent_dim), k^m (B, latent_dim) from the momentum encoders (Eq. 3), L2-normalised (raw head
        outputs with normalize=False)."""
        if self.momentum_text_backbone is None:
            feats = self.text_tower.features(texts)                 # shared frozen backbone (cached)
        else:
            tower = self.text_tower
            saved = tower.backbone
            tower.backbone = self.momentum_text_backbone
            try:
                feats = tower.features(texts)
            finally:
                tower.backbone = saved
        k_t = self.momentum_text_head(feats)
        k_m = self.momentum_motion_encoder(motion, lengths, normalize=normalize)
        return (F.normalize(k_t, dim=-1) if normalize else k_t), k_m

    # ---- queues and EMA -----------------------------------------------------------------------------------------
    def queue_entries(self, which: str) -> Tensor:
        """(n, D) the filled entries of the "text" or "motion" queue (slot order; all negatives are equivalent)."""
        q = self.text_queue if which == "text" else self.motion_queue
        return q[: int(self.queue_count)]

    def queue_fifo(self, which: str) -> Tensor:
        """(n, D) the filled entries oldest first (for inspection / tests)."""
        q = self.queue_entries(which)
        if int(self.queue_count) < self.cfg.queue_size:
            return q
        return torch.roll(q, -int(self.queue_ptr), dims=0)

    @torch.no_grad()
    def dequeue_and_enqueue(self, k_t: Tensor, k_m: Tensor) -> None:
        """Write the batch's momentum keys over the oldest entries (FIFO ring buffer, pointer wraps)."""
        k_t, k_m = _gather_keys(k_t.detach()), _gather_keys(k_m.detach())
        K = self.cfg.queue_size
        n = k_t.shape[0]
        if n > K:
            k_t, k_m, n = k_t[-K:], k_m[-K:], K
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=k_t.device)) % K
        if self.cfg.use_text_queue:
            self.text_queue[slots] = k_t.to(self.text_queue.dtype)
        if self.cfg.use_motion_queue:
            self.motion_queue[slots] = k_m.to(self.motion_queue.dtype)
        self.queue_ptr.fill_((ptr + n) % K)
        self.queue_count.fill_(min(int(self.queue_count) + n, K))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ̂ ← m·θ̂ + (1 − m)·θ for both modalities (paper Eqs. 1, 2)."""
        m = self.cfg.momentum
        for online, twin in self._momentum_pairs():
            src = [p.detach() for p in online.parameters()]
            dst = list(twin.parameters())
            torch._foreach_mul_(dst, m)
            torch._foreach_add_(dst, src, alpha=1.0 - m)

    def after_optimizer_step(self) -> None:
        """EMA update, then enqueue the keys of the forward passes since the last call (Alg. 1, last two lines)."""
        self.momentum_update()
        for k_t, k_m in self._pending:
            self.dequeue_and_enqueue(k_t, k_m)
        self._pending.clear()

    # ---- training forward ---------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """L_BMM of one batch: "motion" (B, T, D), "length" (B,), "caption" (B strings). Returns (loss, logs).

        In training mode the momentum keys are kept for the next `after_optimizer_step`.
        """
        motion, lengths, texts = batch["motion"], batch["length"], batch["caption"]
        cfg = self.cfg
        norm = cfg.similarity == "normalized"      # "official": the loss sees the un-normalised head outputs
        q_m = self.encode_motion(motion, lengths, normalize=norm)
        q_t = self.encode_text(texts, normalize=norm)
        k_t, k_m = self.momentum_keys(texts, motion, lengths, normalize=norm)
        red = cfg.loss_reduction
        loss_m2t = bmm_loss(q_m, k_t, self.queue_entries("text") if cfg.use_text_queue else None,
                            cfg.temperature, cfg.in_batch_negatives, red)
        loss_t2m = bmm_loss(q_t, k_m, self.queue_entries("motion") if cfg.use_motion_queue else None,
                            cfg.temperature, cfg.in_batch_negatives, red)
        loss = loss_m2t + loss_t2m if red == "sum" else 0.5 * (loss_m2t + loss_t2m)
        if self.training:
            self._pending.append((k_t, k_m))
        with torch.no_grad():
            sims = F.normalize(q_t, dim=-1) @ F.normalize(q_m, dim=-1).t()
            target = torch.arange(sims.shape[0], device=sims.device)
            acc = (sims.argmax(1) == target).float().mean()
        logs = {"loss": float(loss.detach()), "loss_m2t": float(loss_m2t.detach()),
                "loss_t2m": float(loss_t2m.detach()), "batch_t2m_acc": float(acc),
                "queue_fill": float(self.queue_count) / cfg.queue_size}
        return loss, logs

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def weights_fingerprint(self) -> str:
        """sha256 (16 hex) of the online encoders' weights: identifies the retriever a database was built with."""
        return state_fingerprint(self.state_dict())

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device = "cpu") -> "BMMRetriever":
        """Rebuild from a `retriever` checkpoint alone (its config["model"]), eval mode."""
        from utils.checkpoint import load_model
        return load_model(path, cls, RetrieverConfig, stage="retriever", device=device)[0]


def is_inference_key(key: str) -> bool:
    """True for the state-dict keys a trained retriever needs at inference (not the momentum copies or queues)."""
    return not (key.startswith("momentum_") or key in ("text_queue", "motion_queue", "queue_ptr", "queue_count"))


def state_fingerprint(state: dict[str, Tensor]) -> str:
    """Hash of the inference weights (momentum copies and queues excluded) of a retriever state dict."""
    return tensor_fingerprint({k: v for k, v in state.items() if is_inference_key(k)})


def build_text_tower(cfg: RetrieverConfig) -> TextTower:
    """The retriever's text tower (backbone, pooling, projection head) as `cfg` describes it, untrained weights.

    Shared by BMMRetriever and the inference-only `models.retrieval_database.RetrievalQueryEncoder`."""
    if cfg.text_encoder not in ("distilbert", "minilm"):
        raise RetrieverError(f"{_MOD}: model.text_encoder must be a retriever tower ('distilbert' or 'minilm'), "
                             f"got {cfg.text_encoder!r}")
    tower = build_text_encoder_from_config(cfg.text_encoder_config(), head_dropout=cfg.head_dropout,
                                           head=cfg.projection_head)
    if not isinstance(tower, TextTower):
        raise RetrieverError(f"{_MOD}: model.text_encoder must be a retriever tower ('distilbert' or 'minilm'), "
                             f"got {cfg.text_encoder!r}")
    return tower
