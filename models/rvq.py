"""RVQVAE2D: the 2D residual VQ-VAE tokenizer (paper §2.3; MoGenTS 2D joint VQ, `reference.md` §5.3).

A normalised motion (B, T, D) is re-laid out per joint as (B, T, J, 12) (`datasets.representation` joint format; our
root slot carries root data, contacts and root velocity, ARCHITECTURE §3b), the joint axis is padded to 24, and a 2D
convolutional encoder over (time, joint) downsamples ×4 in time and ×4 in joints (24 → 6 groups):

    motion (B, T, D) → joint format (B, T, J, 12) → pad (B, 12, T, 24) → Encoder2d → (B, d, T', 6)
      → residual VQ per column (Q levels)  → token map (B, T', 6, Q)
      → Σ codes → linear_merge (per time step, Linear(6d → 6d)) → Decoder2d → (B, T, 24, 12) → crop → (B, T, D)

With `global_branch=True` (the paper's "global codebook"), a 1D branch encodes the whole D-vector over time
(Encoder1d, ×4 in time) and quantizes it with its own residual VQ; its per-time-step codes are the **7th column** of
the token map (ARCHITECTURE §3b). Its decoder output and the 2D output are fused as in the reference:
`x̂ = Linear(2D → D)(concat[x̂_1d, x̂_2d])`. We initialise that Linear to the average of the two heads (a documented
variant: the reference initialises it at random); the loss trains the two heads and the fusion (`RVQLoss`).

Token map: `encode(motion) -> indices (B, T', C, Q)`, C = 6 (+1), index −1 = level skipped. `decode(indices)`
inverts it, and in eval mode `decode(encode(x))` equals `forward(x).recon` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.registry import DATASETS, dataset_facts
from datasets.representation import joint_format_gather_index
from models.quantizer import ResidualVQ

JOINT_CHANNELS = 12      # reference.md §5.3: ric 3 + rot6d 6 + local velocity 3
PADDED_JOINTS = 24       # reference.md §5.3: 22 → 24 ([pad, 0..21, pad]); KIT 21 → 24 ([pad, 0..20, pad, pad])


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RVQConfig:
    dataset: str = "t2m"                 # "t2m" (263-d, 22 joints) | "kit" (251-d, 21 joints)
    width: int = 512                     # reference.md §5.3: conv width 512
    down_t: int = 2                      # reference.md §5.1: 2 stride-2 stages = ×4 in time (and ×4 in joints)
    depth: int = 3                       # reference.md §5.1: Resnet depth 3
    dilation_growth: int = 3             # reference.md §5.1: dilations 9, 3, 1
    dropout: float = 0.2                 # reference.md §5.1: Dropout(0.2) in each res-block
    nb_code: int = 256                   # paper §2.3: joint codebook 256 codes
    code_dim: int = 1024                 # paper §2.3: joint codebook dimension 1024
    num_quantizers: int = 6              # paper §2.3: 5 residual layers + base (README --num_quantizers 6)
    mu: float = 0.99                     # reference.md §5.1: EMA decay
    quantize_dropout: float = 0.2        # reference.md §5.1: quantize dropout probability
    sample: str = "argmax"               # ours (see models/quantizer.py); "gumbel" = MoMask training sampling
    gumbel_temperature: float = 0.5      # reference.md §5.1
    straight_through: str = "sum"        # ours: gradient identity; "per_level" = official (models/quantizer.py)
    global_branch: bool = True           # paper §2.3 "global VQ codebook"; ARCHITECTURE §3b (7th column)
    global_nb_code: int = 256            # paper §2.3: 256 (official code: 512, reference.md §9.6)
    global_code_dim: int = 1024          # paper §2.3: 1024 (official code: 512)
    global_width: int = 512              # reference.md §5.1: MoMask 1D encoder width 512


def dataset_dims(dataset: str) -> tuple[int, int]:
    """(D, J) of a dataset name (`datasets.registry`); ValueError naming the argument otherwise."""
    if dataset not in DATASETS:
        raise ValueError(f"models/rvq.py: argument 'dataset' must be one of {sorted(DATASETS)}, got {dataset!r}")
    facts = dataset_facts(dataset)
    return facts.dim, facts.joints


# ----------------------------------------------------------------------------------------------------------------
# Joint format (gather indices, so the re-layout is one differentiable index_select)
# ----------------------------------------------------------------------------------------------------------------
def joint_format_index(dataset: str) -> Tensor:
    """(J·12,) indices into [features (D), 0] mapping the D-vector to the joint format (ARCHITECTURE §6.1).

    Joint j ≥ 1: ch 0:3 ric, ch 3:9 rot6d, ch 9:12 local velocity. Root slot: ch 0:4 root data (dims 0:4),
    ch 4:8 foot contacts (dims D−4:D), ch 8 zero pad (index D, the appended zero), ch 9:12 root local velocity.
    The layout of `datasets.representation.joint_format_gather_index` (the one joint-layout helper).
    """
    dataset_dims(dataset)
    return torch.from_numpy(joint_format_gather_index(dataset)).long()


def features_index(dataset: str) -> Tensor:
    """(D,) indices into the flattened joint format (J·12) giving back the D-vector (inverse of the above)."""
    d, _ = dataset_dims(dataset)
    forward = joint_format_index(dataset)
    inverse = torch.full((d,), -1, dtype=torch.long)
    for pos, src in enumerate(forward.tolist()):
        if src < d:
            inverse[src] = pos
    assert bool((inverse >= 0).all()), "joint format does not cover every feature dim"
    return inverse


def joint_padding(num_joints: int) -> tuple[int, int]:
    """(before, after) zero joints that bring J to 24 (reference.md §5.3): 22 → (1, 1), 21 → (1, 2)."""
    before = 1
    return before, PADDED_JOINTS - num_joints - before


# ----------------------------------------------------------------------------------------------------------------
# Convolution blocks (reference.md §5.1 Resnet1D, made 1D or 2D)
# ----------------------------------------------------------------------------------------------------------------
def _conv(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


class ResBlock(nn.Module):
    """act → Conv(k3, dilation d, padding d) → act → Conv(k1) → Dropout → + skip (no norm), on (B, D, T[, J])."""

    def __init__(self, dims: int, width: int, dilation: int, dropout: float):
        super().__init__()
        conv = _conv(dims)
        self.conv1 = conv(width, width, 3, 1, dilation, dilation=dilation)
        self.conv2 = conv(width, width, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(x))
        h = self.dropout(self.conv2(F.relu(h)))
        return x + h


class ResStack(nn.Module):
    """`depth` res-blocks with dilations growth^(depth−1), …, growth, 1 (9, 3, 1), in encoder and decoder alike."""

    def __init__(self, dims: int, width: int, depth: int, growth: int, dropout: float):
        super().__init__()
        dilations = [growth ** i for i in range(depth)][::-1]
        self.blocks = nn.Sequential(*(ResBlock(dims, width, d, dropout) for d in dilations))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ConvEncoder(nn.Module):
    """Conv(in→W, k3)+ReLU; down × [Conv(W→W, k4, s2, p1), ResStack]; Conv(W→code_dim, k3).

    (B, in, T[, J]) → (B, code_dim, T/2^down[, J/2^down]); with dims=2 it strides both axes (Encoder2d).
    """

    def __init__(self, dims: int, in_channels: int, width: int, code_dim: int, down: int, depth: int,
                 growth: int, dropout: float):
        super().__init__()
        conv = _conv(dims)
        layers: list[nn.Module] = [conv(in_channels, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down):
            layers += [conv(width, width, 4, 2, 1), ResStack(dims, width, depth, growth, dropout)]
        layers.append(conv(width, code_dim, 3, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ConvDecoder(nn.Module):
    """Mirror: Conv(code_dim→W, k3)+ReLU; down × [ResStack, Upsample ×2 nearest, Conv(W→W, k3)];
    Conv(W→W, k3)+ReLU; Conv(W→out, k3).  (B, code_dim, T'[, J']) → (B, out, 4T'[, 4J'])."""

    def __init__(self, dims: int, out_channels: int, width: int, code_dim: int, down: int, depth: int,
                 growth: int, dropout: float):
        super().__init__()
        conv = _conv(dims)
        layers: list[nn.Module] = [conv(code_dim, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down):
            layers += [ResStack(dims, width, depth, growth, dropout), nn.Upsample(scale_factor=2, mode="nearest"),
                       conv(width, width, 3, 1, 1)]
        layers += [conv(width, width, 3, 1, 1), nn.ReLU(), conv(width, out_channels, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RVQOutput:
    """recon (B, T, D); losses: named scalar tensors (see `RVQVAE2D.forward`); stats: logging scalars;
    indices (B, T', C, Q): the token map the forward pass quantized with (−1 = level skipped by quantize dropout;
    in eval mode exactly `encode(motion)`, so callers need no second encoder pass)."""

    recon: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    heads: dict[str, Tensor] = field(default_factory=dict)   # per-branch outputs (B, T, D): "joint", "global"
    indices: Tensor | None = None


class RVQVAE2D(nn.Module):
    """The 2D residual VQ-VAE. Built from `RVQConfig`; see the module docstring for the data flow."""

    def __init__(self, cfg: RVQConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_dim, self.num_joints = dataset_dims(cfg.dataset)
        if cfg.down_t < 1:
            raise ValueError(f"models/rvq.py: RVQConfig.down_t must be ≥ 1, got {cfg.down_t}")
        if PADDED_JOINTS % (2 ** cfg.down_t):
            raise ValueError(f"models/rvq.py: RVQConfig.down_t={cfg.down_t} does not divide the {PADDED_JOINTS} "
                             f"padded joints evenly; use 1, 2 or 3")
        self.downsample = 2 ** cfg.down_t
        self.num_groups = PADDED_JOINTS // self.downsample
        self.pad_before, self.pad_after = joint_padding(self.num_joints)
        self.register_buffer("jf_index", joint_format_index(cfg.dataset), persistent=False)
        self.register_buffer("feat_index", features_index(cfg.dataset), persistent=False)

        blocks = dict(width=cfg.width, down=cfg.down_t, depth=cfg.depth, growth=cfg.dilation_growth,
                      dropout=cfg.dropout)
        self.encoder = ConvEncoder(2, JOINT_CHANNELS, code_dim=cfg.code_dim, **blocks)
        self.decoder = ConvDecoder(2, JOINT_CHANNELS, code_dim=cfg.code_dim, **blocks)
        self.quantizer = ResidualVQ(cfg.num_quantizers, cfg.nb_code, cfg.code_dim, cfg.mu, cfg.quantize_dropout,
                                    cfg.sample, cfg.gumbel_temperature, straight_through=cfg.straight_through)
        # reference.md §5.3: Linear(6C → 6C) per time step on the concatenated group codes, before the decoder.
        self.linear_merge = nn.Linear(self.num_groups * cfg.code_dim, self.num_groups * cfg.code_dim)

        if cfg.global_branch:
            gblocks = dict(blocks, width=cfg.global_width)
            self.global_encoder = ConvEncoder(1, self.feature_dim, code_dim=cfg.global_code_dim, **gblocks)
            self.global_decoder = ConvDecoder(1, self.feature_dim, code_dim=cfg.global_code_dim, **gblocks)
            self.global_quantizer = ResidualVQ(cfg.num_quantizers, cfg.global_nb_code, cfg.global_code_dim, cfg.mu,
                                               cfg.quantize_dropout, cfg.sample, cfg.gumbel_temperature,
                                               straight_through=cfg.straight_through)
            self.fusion = nn.Linear(2 * self.feature_dim, self.feature_dim)
            with torch.no_grad():   # start as the average of the two heads (our variant, see module doc)
                eye = torch.eye(self.feature_dim)
                self.fusion.weight.copy_(torch.cat([0.5 * eye, 0.5 * eye], dim=1))
                self.fusion.bias.zero_()

    # -- token-map geometry ---------------------------------------------------------------------------------
    @property
    def num_columns(self) -> int:
        """C: 6 joint groups (+1 global column)."""
        return self.num_groups + int(self.cfg.global_branch)

    @property
    def codebook_sizes(self) -> list[int]:
        """Codebook size per token-map column (C,)."""
        sizes = [self.cfg.nb_code] * self.num_groups
        if self.cfg.global_branch:
            sizes.append(self.cfg.global_nb_code)
        return sizes

    @property
    def num_quantizers(self) -> int:
        return self.cfg.num_quantizers

    # -- joint format ---------------------------------------------------------------------------------------
    def to_joint_format(self, motion: Tensor) -> Tensor:
        """(B, T, D) → (B, T, J, 12) (root slot: root data, contacts, pad, root velocity)."""
        padded = torch.cat([motion, motion.new_zeros(*motion.shape[:-1], 1)], dim=-1)
        jf = padded.index_select(-1, self.jf_index)
        return jf.reshape(*motion.shape[:-1], self.num_joints, JOINT_CHANNELS)

    def from_joint_format(self, jf: Tensor) -> Tensor:
        """(B, T, J, 12) → (B, T, D) (the pad channel is dropped)."""
        flat = jf.reshape(*jf.shape[:-2], self.num_joints * JOINT_CHANNELS)
        return flat.index_select(-1, self.feat_index)

    # -- input checks ---------------------------------------------------------------------------------------
    def _check_motion(self, motion: Tensor, name: str = "motion") -> None:
        if not torch.is_tensor(motion) or motion.ndim != 3:
            shape = tuple(motion.shape) if torch.is_tensor(motion) else type(motion).__name__
            raise ValueError(f"models/rvq.py: argument '{name}' must be a tensor (B, T, {self.feature_dim}), "
                             f"got {shape}")
        b, t, d = motion.shape
        if d != self.feature_dim:
            raise ValueError(f"models/rvq.py: argument '{name}' has width {d}, expected {self.feature_dim} "
                             f"(dataset {self.cfg.dataset!r}); did you pass a {'kit' if d == 251 else 't2m'} motion "
                             f"to a {self.cfg.dataset} model?")
        if t < self.downsample:
            raise ValueError(f"models/rvq.py: argument '{name}' is too short: {t} frames, need at least "
                             f"{self.downsample} (one token)")
        if t % self.downsample:
            raise ValueError(f"models/rvq.py: argument '{name}' has {t} frames, expected a multiple of "
                             f"{self.downsample} (the temporal downsampling); crop to {t - t % self.downsample}")
        if not torch.isfinite(motion).all():
            raise ValueError(f"models/rvq.py: argument '{name}' contains NaN or inf values")

    # -- encoder / decoder halves -----------------------------------------------------------------------------
    def _encode_latents(self, motion: Tensor) -> tuple[Tensor, Tensor | None]:
        """motion (B, T, D) → joint latents (B·G, T', d) and global latents (B, T', d_g) or None."""
        b, t, _ = motion.shape
        jf = self.to_joint_format(motion)                                   # (B, T, J, 12)
        x = F.pad(jf.permute(0, 3, 1, 2), (self.pad_before, self.pad_after))  # (B, 12, T, 24)
        z = self.encoder(x)                                                 # (B, d, T', G)
        g, tp = z.shape[-1], z.shape[-2]
        z = z.permute(0, 3, 2, 1).reshape(b * g, tp, -1)                    # (B·G, T', d)
        zg = None
        if self.cfg.global_branch:
            zg = self.global_encoder(motion.transpose(1, 2)).transpose(1, 2)  # (B, T', d_g)
        return z, zg

    def _decode_latents(self, zq: Tensor, zgq: Tensor | None, batch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Quantized joint latents (B·G, T', d) (+ global (B, T', d_g)) → motion (B, T, D) and per-head outputs."""
        g = self.num_groups
        tp = zq.shape[1]
        z = zq.reshape(batch, g, tp, -1).permute(0, 2, 1, 3).reshape(batch, tp, -1)   # (B, T', G·d)
        z = self.linear_merge(z).reshape(batch, tp, g, -1).permute(0, 3, 1, 2)        # (B, d, T', G)
        out = self.decoder(z)                                                          # (B, 12, T, 24)
        out = out[..., self.pad_before:PADDED_JOINTS - self.pad_after]                 # (B, 12, T, J)
        joint_head = self.from_joint_format(out.permute(0, 2, 3, 1))                   # (B, T, D)
        heads = {"joint": joint_head}
        if zgq is None:
            return joint_head, heads
        global_head = self.global_decoder(zgq.transpose(1, 2)).transpose(1, 2)        # (B, T, D)
        heads["global"] = global_head
        return self.fusion(torch.cat([global_head, joint_head], dim=-1)), heads

    # -- public API -----------------------------------------------------------------------------------------
    def forward(self, motion: Tensor) -> RVQOutput:
        """motion (B, T, D) normalised → RVQOutput.

        recon (B, T, D); losses: "commit" (joint RVQ commitment; averaged with the global one when present),
        "commit_joint", "commit_global" (when present); stats: usage scalars (`joint/perplexity/l0`, ...).
        The reconstruction losses are computed by `RVQLoss` from `recon` and `heads`.
        """
        self._check_motion(motion)
        b = motion.shape[0]
        z, zg = self._encode_latents(motion)
        zq, idx, commit_joint, jstats = self.quantizer(z)
        losses = {"commit_joint": commit_joint}
        stats = jstats.as_dict("joint/")
        zgq = gidx = None
        if zg is not None:
            zgq, gidx, commit_global, gstats = self.global_quantizer(zg)
            losses["commit_global"] = commit_global
            losses["commit"] = 0.5 * (commit_joint + commit_global)   # reference.md §5.3: (commit1d + commit2d)/2
            stats.update(gstats.as_dict("global/"))
        else:
            losses["commit"] = commit_joint
        recon, heads = self._decode_latents(zq, zgq, b)
        return RVQOutput(recon=recon, losses=losses, stats=stats, heads=heads,
                         indices=self._token_map(idx.detach(), None if gidx is None else gidx.detach(), b))

    def _token_map(self, idx: Tensor, gidx: Tensor | None, batch: int) -> Tensor:
        """Joint indices (B·G, T', Q) (+ global (B, T', Q)) → token map (B, T', C, Q)."""
        tp = idx.shape[1]
        idx = idx.reshape(batch, self.num_groups, tp, -1).permute(0, 2, 1, 3)      # (B, T', G, Q)
        if gidx is not None:
            idx = torch.cat([idx, gidx.unsqueeze(2)], dim=2)
        return idx

    @torch.no_grad()
    def encode(self, motion: Tensor) -> Tensor:
        """motion (B, T, D) → token map indices (B, T', C, Q), C = 6 (+1 global column). Nearest codes, all levels.

        The quantizers run in eval mode (no EMA update, no quantize dropout); the encoder keeps the module's mode, so
        call `model.eval()` first for deterministic tokens (its res-blocks have dropout), as the later stages do.
        """
        self._check_motion(motion)
        b = motion.shape[0]
        z, zg = self._encode_latents(motion)
        was_training = self.training
        self.quantizer.eval()
        _, idx, _, _ = self.quantizer(z, num_levels=self.num_quantizers)           # (B·G, T', Q)
        gidx = None
        if zg is not None:
            self.global_quantizer.eval()
            _, gidx, _, _ = self.global_quantizer(zg, num_levels=self.num_quantizers)  # (B, T', Q)
            self.global_quantizer.train(was_training)
        self.quantizer.train(was_training)
        return self._token_map(idx, gidx, b)

    def _check_indices(self, indices: Tensor) -> None:
        expected = f"(B, T', {self.num_columns}, {self.num_quantizers})"
        if not torch.is_tensor(indices) or indices.ndim != 4 or indices.shape[2] != self.num_columns \
                or indices.shape[3] != self.num_quantizers:
            shape = tuple(indices.shape) if torch.is_tensor(indices) else type(indices).__name__
            raise ValueError(f"models/rvq.py: argument 'indices' must have shape {expected}, got {shape}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"models/rvq.py: argument 'indices' must be an integer tensor, got {indices.dtype}")
        for col, size in enumerate(self.codebook_sizes):
            column = indices[:, :, col]
            if column.numel() and (int(column.min()) < -1 or int(column.max()) >= size):
                raise ValueError(f"models/rvq.py: argument 'indices' column {col} must lie in -1..{size - 1}, "
                                 f"found {int(column.min())}..{int(column.max())}")

    def decode(self, indices: Tensor) -> Tensor:
        """Token map indices (B, T', C, Q) (−1 = skipped level) → motion (B, 4T', D), normalised."""
        self._check_indices(indices)
        b, tp = indices.shape[:2]
        g = self.num_groups
        joint_idx = indices[:, :, :g].permute(0, 2, 1, 3).reshape(b * g, tp, -1)  # (B·G, T', Q)
        zq = self.quantizer.decode_indices(joint_idx)
        zgq = self.global_quantizer.decode_indices(indices[:, :, g]) if self.cfg.global_branch else None
        recon, _ = self._decode_latents(zq, zgq, b)
        return recon

    def codebook_state(self) -> dict[str, Tensor]:
        """Fraction of live codes per level (Q,) for each quantizer ("joint", "global"), from the EMA counts."""
        out = {}
        for name, q in self.quantizers().items():
            live = torch.stack([(l.code_count >= l.reset_threshold).float().mean() for l in q.layers])
            out[name] = live
        return out

    def quantizers(self) -> dict[str, ResidualVQ]:
        """{"joint": ResidualVQ, "global": ResidualVQ (if the branch exists)}."""
        out = {"joint": self.quantizer}
        if self.cfg.global_branch:
            out["global"] = self.global_quantizer
        return out


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RVQLossConfig:
    recon: str = "smooth_l1"     # reference.md §5.1 (code: SmoothL1); paper Eq. 14 writes L1 ("l1")
    ric_weight: float = 0.5      # reference.md §5.1: the 0.5 "loss_vel" weight applies to the ric positions
    commit_weight: float = 0.02  # reference.md §5.1: β = 0.02 (paper γ, value not given)
    head_weight: float = 1.0     # reference.md §5.3: loss1 (1D head) and loss2 (2D head) added with weight 1


class RVQLoss(nn.Module):
    """The tokenizer loss (reference.md §5.1/§5.3).

    term(x̂, x) = recon(x̂, x) + ric_weight · recon(x̂[ric], x[ric]),  ric = dims 4 : 4+3(J−1)
    without the global branch:  loss = term(x̂, x) + commit_weight · commit
    with it:  loss = term(x̂, x) + commit_weight · (commit_j + commit_g)/2
                    + head_weight · [term(x̂_2d, x) + commit_weight · commit_j + term(x̂_1d, x) + commit_weight · commit_g]
    (our joint format is invertible, so the 2D head is scored against the real x, root and contacts included).
    """

    def __init__(self, cfg: RVQLossConfig, dataset: str = "t2m"):
        super().__init__()
        if cfg.recon not in ("smooth_l1", "l1"):
            raise ValueError(f"models/rvq.py: RVQLossConfig.recon must be 'smooth_l1' or 'l1', got {cfg.recon!r}")
        self.cfg = cfg
        _, j = dataset_dims(dataset)
        self.ric = slice(4, 4 + 3 * (j - 1))

    def _recon(self, a: Tensor, b: Tensor) -> Tensor:
        return F.smooth_l1_loss(a, b) if self.cfg.recon == "smooth_l1" else F.l1_loss(a, b)

    def term(self, pred: Tensor, target: Tensor) -> Tensor:
        return self._recon(pred, target) + self.cfg.ric_weight * self._recon(pred[..., self.ric], target[..., self.ric])

    def forward(self, out: RVQOutput, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(total loss, logging scalars)."""
        c = self.cfg
        main = self.term(out.recon, target)
        total = main + c.commit_weight * out.losses["commit"]
        logs = {"loss/recon": float(self._recon(out.recon.detach(), target)),
                "loss/commit": float(out.losses["commit"].detach())}
        if "global" in out.heads:
            head_j = self.term(out.heads["joint"], target) + c.commit_weight * out.losses["commit_joint"]
            head_g = self.term(out.heads["global"], target) + c.commit_weight * out.losses["commit_global"]
            total = total + c.head_weight * (head_j + head_g)
            logs["loss/head_joint"] = float(head_j.detach())
            logs["loss/head_global"] = float(head_g.detach())
        logs["loss/total"] = float(total.detach())
        return total, logs
