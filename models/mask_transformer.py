"""MaskTransformer: the 2D retrieval-augmented masked transformer of the base token layer (paper §2.5, §2.7).

    MaskTransformerConfig          architecture, masking, condition dropout, generation defaults (in the checkpoint)
    token_map_config(rvq)          the token-map fields of the config read off a RVQVAE2D
    mask_2d(lengths, T', C, ...)   MoGenTS 2D masking: whole time steps, then tokens within the unmasked steps
    bert_corrupt(tokens, masked, codebook_sizes, ...)   80% [MASK] / 10% random code / 10% unchanged
    MaskTransformer(cfg)           forward (training loss), logits, guided_logits, generate

Token map. Inputs and outputs are layer-0 token maps (B, T', C) of `RVQVAE2D` with column-local codes
(0 ≤ code < codebook_sizes[c]); −1 (`PAD_TOKEN`) marks padding and `MASK_TOKEN` (−2) marks a [MASK] input.
The C columns are the 6 joint groups, which share one codebook, and, when num_columns = num_groups + 1, the global
column (ARCHITECTURE §3b). The embedding table holds the joint codes [0, K_j), then the global codes [K_j, K_j+K_g)
(their own range), then [MASK] and [PAD]. The output head predicts K_j + K_g logits and each column keeps only its
codebook's range: `logits(...)` returns (B, T', C, K_max), K_max = max(codebook_sizes), with −inf beyond column c's
own K_c, so no sampling can leave a column's codebook. The global column also has its own positional slot: the
2D sinusoidal code's column index 6.

Network. token embedding (width D) + 2D positional code → flatten to N = T'·C → `layers` pre-norm blocks with SSTA
(text t embedded by Linear(text_dim → D); R_t, R_m (B, k, 512) projected inside each SSTA) → LayerNorm → Linear.
Padded positions are never attended to. Ablations (paper Table 4, `ablation`):
- "none": SSTA over {t, R_t, R_m} (paper);
- "no_retrieval": STA over t only (R_t, R_m are ignored and may be None);
- "concat" ("w/o SSTA": feature concatenation): one condition token Linear([t; mean_k R_t; mean_k R_m]) with STA;
- "no_rag_cfg" ("w/o RAG-CFG"): SSTA, but guidance and condition dropout drop the text only, so the retrieval is
  in both CFG branches (plain text CFG);
- "whole_body_retrieval" ("w/o coarse/part-level retrieval"): a retrieval-side switch; this module runs as "none".
`axis_attention=True` appends the official code's MoGenTS joint-axis stack (self-attention over the C columns of
each time step) and time-axis stack (over T' per column, its output added), `layers` blocks each.

Training (`forward`, paper Eq. 15). Per sample γ = cos(πu/2), u ~ U(0, 1) (`models.sampling`). 2D masking: round(γ·L)
(≥ 1) of the L valid time steps are masked whole, then round(γ·C·L_rest) tokens of the L_rest unmasked steps.
Masked positions are corrupted BERT-style (80% [MASK] / 10% random code of the column's codebook / 10% kept), the
loss is the cross-entropy at the masked positions only (mean over them); padding is never masked and never in the
loss. With probability `cond_drop` (10%) a sample is trained unconditionally: t, R_t and R_m are dropped together
(`cond_drop_mode="joint"`, the paper's single condition set) or text and retrieval independently, 10% each
(`"independent"`, the official code). A dropped condition is masked out as an attention key.

Generation (`generate`, paper §2.7; MoMask's schedule, `reference.md` §6.1, over the flattened T'·C map).
`lengths` are in token steps T' (frames // 4: `models.sampling.frames_to_token_steps`). Start from all-[MASK];
at step i of S leave masked the n_i = max(1, round(cos(π/2 · i/(S−1))·L·C)) least-confident positions, predict
with guidance (`uncond + s·(cond − uncond)`, cond and uncond as one doubled batch), filter top-k by ratio per
column, apply the temperature, sample, and write the samples into the masked positions; a sampled token's
confidence is its softmax probability under the unfiltered guided logits, and tokens not masked at a step are
committed for good. After S steps every token inside the lengths holds a code, −1 outside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import TransformerBlock, positional_encoding_2d
from models.sampling import (apply_temperature, check_generation_args, check_token_map, cosine_schedule,
                             guided_passes, masked_counts, register_column_vocabulary, sample, top_k_filter,
                             topk_keep)

_MOD = "models/mask_transformer.py"
PAD_TOKEN = -1                      # models/rvq.py: index −1 = no code / padding
MASK_TOKEN = -2                     # an input position shown as [MASK]
ABLATIONS = ("none", "no_retrieval", "concat", "no_rag_cfg", "whole_body_retrieval")
COND_DROP_MODES = ("joint", "independent")
SAMPLERS = ("categorical", "gumbel")


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class MaskTransformerConfig:
    # token map (RVQVAE2D.num_columns / .num_groups / .codebook_sizes; `token_map_config(rvq)` fills them)
    num_columns: int = 7                 # ARCHITECTURE §3b: 6 joint groups + the global column
    num_groups: int = 6                  # reference.md §5.3: 24 padded joints / 4
    codebook_sizes: list[int] = field(default_factory=lambda: [256] * 7)   # paper §2.3: 256 joint, 256 global
    text_dim: int = 512                  # paper §2.4: CLIP ViT-B/32 text feature (mini configs: MiniLM 384)
    retrieval_dim: int = 512             # paper §2.1: retriever latent 512 (RetrievalResult r_t / r_m)
    # network
    layers: int = 6                      # paper §2.5 "M-trans: 6 layers" (official code: n_layers 8)
    heads: int = 8                       # paper §2.5
    width: int = 512                     # paper §2.5 latent dim 512
    ff_dim: int = 1024                   # reference.md §6.4 (official ff 1024)
    dropout: float = 0.2                 # reference.md §6.4 (official dropout 0.2)
    ssta_variant: str = "paper"          # "paper" (Eqs. 10-11) | "official" (released checkpoint, docs_deviations_mask.md)
    axis_attention: bool = False         # official --attnj --attnt (MoGenTS joint/time stacks); paper: none
    ablation: str = "none"               # paper Table 4: none | no_retrieval | concat | no_rag_cfg | whole_body_retrieval
    max_tokens: int = 49                 # reference.md §5.3: 196 frames / 4 (longest generated length T')
    # training
    cond_drop: float = 0.1               # paper §2.5: unconditional 10%
    cond_drop_mode: str = "joint"        # paper §2.7 one condition set; "independent" = official (reference.md §6.3)
    bert_mask_prob: float = 0.8          # paper §2.5 BERT remasking 80/10/10 (official: 79.2/10/10.8, reference §9.2)
    bert_random_prob: float = 0.1        # paper §2.5 (BERT): 10% random code
    # generation defaults
    steps: int = 10                      # reference.md §6.4: README evaluation time_steps 10 (code default 18)
    guidance_scale: float = 4.0          # reference.md §6.4 cond_scale 4 in `uncond + s·(cond − uncond)`;
                                         # paper Eq. 17 (1+s)·cond − s·uncond with s = 4 is this formula with s = 5
    topk_ratio: float = 0.9              # reference.md §6.4 topkr 0.9 (fraction filtered out)
    temperature: float = 1.0             # reference.md §6.4
    sampler: str = "categorical"         # reference.md §6.1 (gsample off for the mask transformer); or "gumbel"

    def validate(self) -> None:
        def bad(key: str, expected: str, got) -> ValueError:
            return ValueError(f"{_MOD}: model.{key} must be {expected}, got {got!r}")

        check_token_map(self.num_groups, self.num_columns, self.codebook_sizes, _MOD)
        for key in ("text_dim", "retrieval_dim", "layers", "heads", "ff_dim", "max_tokens"):
            if getattr(self, key) < 1:
                raise bad(key, "≥ 1", getattr(self, key))
        if self.width % self.heads or self.width % 4:
            raise bad("width", f"a multiple of heads ({self.heads}) and of 4 (2D positional code)", self.width)
        if self.ssta_variant not in ("paper", "official"):
            raise bad("ssta_variant", "'paper' or 'official'", self.ssta_variant)
        if self.ablation not in ABLATIONS:
            raise bad("ablation", f"one of {ABLATIONS}", self.ablation)
        if self.cond_drop_mode not in COND_DROP_MODES:
            raise bad("cond_drop_mode", f"one of {COND_DROP_MODES}", self.cond_drop_mode)
        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"one of {SAMPLERS}", self.sampler)
        for key in ("dropout", "cond_drop", "bert_mask_prob", "bert_random_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "in [0, 1]", getattr(self, key))
        if self.bert_mask_prob + self.bert_random_prob > 1.0:
            raise bad("bert_mask_prob", "≤ 1 − bert_random_prob", self.bert_mask_prob)
        check_generation_args(self.steps, self.guidance_scale, self.topk_ratio, self.temperature)

    @property
    def has_global_column(self) -> bool:
        return self.num_columns == self.num_groups + 1


def token_map_config(rvq) -> dict:
    """The token-map fields of MaskTransformerConfig from a RVQVAE2D: num_columns, num_groups, codebook_sizes."""
    return dict(num_columns=int(rvq.num_columns), num_groups=int(rvq.num_groups),
                codebook_sizes=[int(k) for k in rvq.codebook_sizes])


# ----------------------------------------------------------------------------------------------------------------
# 2D masking and BERT corruption (training)
# ----------------------------------------------------------------------------------------------------------------
def _rank(scores: Tensor) -> Tensor:
    """Rank of each entry along the last axis (0 = smallest)."""
    return scores.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)     # ties: earlier position first


def mask_2d(lengths: Tensor, time: int, columns: int, generator: torch.Generator | None = None,
            ratio: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """MoGenTS 2D masking: whole time steps first, then single tokens within the steps left unmasked.

    Per sample with ratio γ (default cos(πu/2), u ~ U(0, 1)) and L valid steps: n_t = max(1, round(γ·L)) random
    valid steps are masked whole; then n_s = round(γ·C·(L − n_t)) random tokens of the other valid steps.
    Args:
        lengths: (B,) valid time steps per sample, 1 ≤ L ≤ T'
        time, columns: T', C
        ratio:   None, a float, or (B,) ratios in [0, 1]
    Returns:
        temporal (B, T', C) bool (whole steps), spatial (B, T', C) bool; disjoint, never on padding
    """
    b, device = lengths.shape[0], lengths.device
    if ratio is None:
        gamma = cosine_schedule(torch.rand(b, generator=generator, device=device))
    else:
        gamma = torch.as_tensor(ratio, dtype=torch.float32, device=device).expand(b)
    valid = torch.arange(time, device=device)[None, :] < lengths[:, None]        # (B, T')
    n_t = torch.minimum(torch.round(gamma * lengths.float()).long().clamp(min=1), lengths)
    score_t = torch.rand(b, time, generator=generator, device=device).masked_fill(~valid, 2.0)
    step_masked = _rank(score_t) < n_t[:, None]                                  # (B, T')
    rest = (valid & ~step_masked)[:, :, None].expand(b, time, columns).reshape(b, time * columns)
    n_s = torch.round(gamma * columns * (lengths - n_t).float()).long()
    score_s = torch.rand(b, time * columns, generator=generator, device=device).masked_fill(~rest, 2.0)
    spatial = (_rank(score_s) < n_s[:, None]) & rest
    temporal = step_masked[:, :, None].expand(b, time, columns)
    return temporal, spatial.reshape(b, time, columns)


def bert_corrupt(tokens: Tensor, masked: Tensor, codebook_sizes: Tensor, mask_prob: float = 0.8,
                 random_prob: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """BERT corruption of the masked positions: [MASK] w.p. mask_prob, a random code of the position's column
    w.p. random_prob, unchanged otherwise. tokens (B, T', C), masked (B, T', C) bool, codebook_sizes (C,) long.
    Returns (B, T', C) with MASK_TOKEN where shown as [MASK]."""
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    rand_code = (torch.rand(tokens.shape, generator=generator, device=tokens.device)
                 * codebook_sizes.to(tokens.device).float()).long()
    rand_code = torch.minimum(rand_code, codebook_sizes.to(tokens.device) - 1)
    out = torch.where(masked & (u < mask_prob), torch.full_like(tokens, MASK_TOKEN), tokens)
    return torch.where(masked & (u >= mask_prob) & (u < mask_prob + random_prob), rand_code, out)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
class MaskTransformer(nn.Module):
    """2D retrieval-augmented masked transformer over the layer-0 token map (module docstring)."""

    def __init__(self, cfg: MaskTransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.width
        # real codes in the vocabulary; per-column gather index into the head and validity (C, K_max)
        self.num_codes = register_column_vocabulary(self, cfg.num_groups, cfg.codebook_sizes, cfg.has_global_column)
        self.mask_id, self.pad_id = self.num_codes, self.num_codes + 1

        self.token_emb = nn.Embedding(self.num_codes + 2, d)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.ablation = "none" if cfg.ablation == "whole_body_retrieval" else cfg.ablation
        if self.ablation == "concat":
            self.cond_emb = nn.Linear(cfg.text_dim + 2 * cfg.retrieval_dim, d)
        else:
            self.cond_emb = nn.Linear(cfg.text_dim, d)
        kind = "ssta" if self.uses_ssta else "sta"
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.heads, cfg.ff_dim, cfg.dropout, kind, cfg.retrieval_dim, cfg.ssta_variant)
            for _ in range(cfg.layers))
        if cfg.axis_attention:
            self.joint_blocks = nn.ModuleList(TransformerBlock(d, cfg.heads, cfg.ff_dim, cfg.dropout, "self")
                                              for _ in range(cfg.layers))
            self.time_blocks = nn.ModuleList(TransformerBlock(d, cfg.heads, cfg.ff_dim, cfg.dropout, "self")
                                             for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.num_codes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """reference.md §6.1: Linear / Embedding N(0, 0.02), biases 0, LayerNorm 1 / 0."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def uses_ssta(self) -> bool:
        return self.ablation in ("none", "no_rag_cfg")

    @property
    def uses_retrieval(self) -> bool:
        return self.ablation != "no_retrieval"

    # -- argument checks ------------------------------------------------------------------------------------
    def _check_conditions(self, t: Tensor, r_t: Tensor | None, r_m: Tensor | None,
                          batch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        cfg = self.cfg
        if not torch.is_tensor(t) or t.shape != (batch, cfg.text_dim):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{_MOD}: argument 't' must have shape (B={batch}, text_dim={cfg.text_dim}), got {got}")
        dtype = self.token_emb.weight.dtype                                    # conditions follow the weights
        t = t.to(dtype)                                                          # (a bf16 copy takes fp32 features)
        if not self.uses_retrieval:
            return t, None, None
        out = []
        for name, r in (("r_t", r_t), ("r_m", r_m)):
            if torch.is_tensor(r) and r.ndim == 2:
                r = r.unsqueeze(1)
            if not torch.is_tensor(r) or r.ndim != 3 or r.shape[0] != batch or r.shape[2] != cfg.retrieval_dim \
                    or r.shape[1] < 1:
                got = tuple(r.shape) if torch.is_tensor(r) else type(r).__name__
                raise ValueError(f"{_MOD}: argument '{name}' must have shape (B={batch}, k, "
                                 f"retrieval_dim={cfg.retrieval_dim}) (RetrievalResult.{name}), got {got}")
            out.append(r.to(dtype))
        if out[0].shape[1] != out[1].shape[1]:
            raise ValueError(f"{_MOD}: arguments 'r_t' and 'r_m' must hold the same k, got {out[0].shape[1]} "
                             f"and {out[1].shape[1]}")
        return t, out[0], out[1]

    def _check_tokens(self, tokens: Tensor) -> None:
        c = self.cfg.num_columns
        if not torch.is_tensor(tokens) or tokens.ndim != 3 or tokens.shape[2] != c or tokens.shape[1] < 1 \
                or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            got = (tuple(tokens.shape), tokens.dtype) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"{_MOD}: argument 'tokens' must be an integer tensor (B, T', C={c}), got {got}")

    @staticmethod
    def _check_lengths(lengths, batch: int, high: int, what: str, name: str = "lengths") -> Tensor:
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.shape != (batch,):
            raise ValueError(f"{_MOD}: argument '{name}' must be ({batch},) integer token steps, got shape "
                             f"{tuple(lengths.shape)} dtype {lengths.dtype}")
        if batch and (int(lengths.min()) < 1 or int(lengths.max()) > high):
            raise ValueError(f"{_MOD}: argument '{name}' must lie in 1..{high} ({what}), got "
                             f"{int(lengths.min())}..{int(lengths.max())}")
        return lengths.long()

    # -- conditions -----------------------------------------------------------------------------------------
    def _keep_flags(self, drop_condition, drop_retrieval, batch: int, device) -> tuple[Tensor, Tensor]:
        """(text_keep, retrieval_keep) (B,) from drop flags (bool or (B,) bool). drop_retrieval None follows the
        ablation: the condition set {t, R_t, R_m} drops together, except "no_rag_cfg" (text only)."""
        drop_t = torch.as_tensor(drop_condition, dtype=torch.bool, device=device).expand(batch)
        if drop_retrieval is None:
            drop_r = torch.zeros_like(drop_t) if self.ablation == "no_rag_cfg" else drop_t
        else:
            drop_r = torch.as_tensor(drop_retrieval, dtype=torch.bool, device=device).expand(batch)
        return ~drop_t, ~drop_r

    def _condition_token(self, t: Tensor, r_t: Tensor | None, r_m: Tensor | None, text_keep: Tensor,
                         retrieval_keep: Tensor) -> tuple[Tensor, Tensor]:
        """The text token (B, D) and its keep flag. "concat": Linear([t; mean R_t; mean R_m]), dropped parts zeroed,
        masked when all are dropped."""
        if self.ablation == "concat":
            rk = retrieval_keep[:, None].to(t.dtype)
            fused = torch.cat([t * text_keep[:, None].to(t.dtype), r_t.mean(1) * rk, r_m.mean(1) * rk], dim=-1)
            return self.cond_emb(fused), text_keep | retrieval_keep
        return self.cond_emb(t), text_keep

    # -- network --------------------------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, pad: Tensor) -> Tensor:
        """tokens (B, T', C) column-local codes / MASK_TOKEN / PAD_TOKEN, pad (B, T') → ids (B, T', C)."""
        ids = tokens + self.column_offsets
        ids = torch.where(tokens == MASK_TOKEN, torch.full_like(ids, self.mask_id), ids)
        ids = torch.where((tokens == PAD_TOKEN) | pad[:, :, None], torch.full_like(ids, self.pad_id), ids)
        special = (tokens == MASK_TOKEN) | (tokens == PAD_TOKEN) | pad[:, :, None]
        bad = ~special & ((tokens < 0) | (tokens >= self.codebook_sizes))
        if bool(bad.any()):
            raise ValueError(f"{_MOD}: argument 'tokens' must hold codes 0..K_c-1 of each column "
                             f"(codebook_sizes {self.codebook_sizes.tolist()}), {MASK_TOKEN} ([MASK]) or "
                             f"{PAD_TOKEN} (padding); found {int(tokens[bad][0])}")
        return ids

    def _network(self, ids: Tensor, pad: Tensor, cond: Tensor, cond_keep: Tensor, r_t: Tensor | None,
                 r_m: Tensor | None, retrieval_keep: Tensor) -> Tensor:
        """ids (B, T', C) vocabulary ids → per-column logits (B, T', C, K_max), −inf outside each codebook."""
        b, tp, c = ids.shape
        d = self.cfg.width
        x = self.token_emb(ids) + positional_encoding_2d(tp, c, d, device=ids.device).to(self.token_emb.weight.dtype)
        x = self.emb_drop(x).reshape(b, tp * c, d)
        flat_pad = pad[:, :, None].expand(b, tp, c).reshape(b, tp * c)
        for block in self.blocks:
            x = block(x, flat_pad, cond, r_t, r_m, cond_keep, retrieval_keep)
        if self.cfg.axis_attention:
            x = x.reshape(b * tp, c, d)                                     # joint axis: the C columns of a step
            for block in self.joint_blocks:
                x = block(x)
            x = x.reshape(b, tp, c, d).transpose(1, 2).reshape(b * c, tp, d)    # time axis: T' steps of a column
            time_pad = pad[:, None, :].expand(b, c, tp).reshape(b * c, tp)
            y = x
            for block in self.time_blocks:
                y = block(y, time_pad)
            x = (x + y).reshape(b, c, tp, d).transpose(1, 2).reshape(b, tp * c, d)
        out = self.head(self.norm(x)).reshape(b, tp, c, self.num_codes).float()
        index = self.column_vocab[None, None].expand(b, tp, c, self.k_max)
        logits = out.gather(-1, index)
        return logits.masked_fill(~self.column_valid, float("-inf"))

    def logits(self, tokens: Tensor, t: Tensor, r_t: Tensor | None = None, r_m: Tensor | None = None,
               pad_mask: Tensor | None = None, drop_condition: bool | Tensor = False,
               drop_retrieval: bool | Tensor | None = None) -> Tensor:
        """Per-column logits of every position.

        Args:
            tokens:   (B, T', C) column-local codes, MASK_TOKEN (−2) for [MASK], PAD_TOKEN (−1) for padding
            t:        (B, text_dim) text feature; r_t, r_m: (B, k, retrieval_dim) or (B, retrieval_dim)
            pad_mask: (B, T') True at padded time steps (None = none besides tokens == −1)
            drop_condition: bool or (B,) bool: drop t, R_t and R_m (the unconditional branch; "no_rag_cfg": t only)
            drop_retrieval: override for R_t, R_m (None = as drop_condition, see the ablation)
        Returns:
            (B, T', C, K_max) float32, −inf beyond each column's codebook
        """
        self._check_tokens(tokens)
        b, tp, _ = tokens.shape
        t, r_t, r_m = self._check_conditions(t, r_t, r_m, b)
        pad = torch.zeros(b, tp, dtype=torch.bool, device=tokens.device) if pad_mask is None else pad_mask.bool()
        if pad.shape != (b, tp):
            raise ValueError(f"{_MOD}: argument 'pad_mask' must have shape (B={b}, T'={tp}), got {tuple(pad.shape)}")
        pad = pad | (tokens == PAD_TOKEN).all(-1)
        if bool(pad.all(-1).any()):
            raise ValueError(f"{_MOD}: argument 'pad_mask' leaves a sample without any token (lengths must be ≥ 1)")
        text_keep, retrieval_keep = self._keep_flags(drop_condition, drop_retrieval, b, tokens.device)
        cond, cond_keep = self._condition_token(t, r_t, r_m, text_keep, retrieval_keep)
        return self._network(self._embed(tokens, pad), pad, cond, cond_keep, r_t, r_m, retrieval_keep)

    def guided_logits(self, tokens: Tensor, t: Tensor, r_t: Tensor | None = None, r_m: Tensor | None = None,
                      pad_mask: Tensor | None = None, guidance_scale: float | None = None,
                      pass_rows: int | None = None) -> Tensor:
        """RAG-CFG (paper Eqs. 17-18 in the code's convention): uncond + s·(cond − uncond), s = guidance_scale
        (default cfg.guidance_scale = 4; paper s_p = s − 1). cond and uncond run as one doubled batch; the
        unconditional half drops t, R_t and R_m ("no_rag_cfg": t only). s = 1 runs the conditional half only.
        `pass_rows`: run the network on at most this many rows of the doubled batch at a time (same result; None =
        all at once). Shapes as `logits`."""
        s = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        check_generation_args(1, s, 1.0, 1.0)
        self._check_tokens(tokens)

        def network(tokens_, t_, r_t_, r_m_, pad_, drop_):
            return self.logits(tokens_, t_, r_t_, r_m_, pad_, drop_condition=drop_)

        return guided_passes(network, [tokens, t, r_t, r_m, pad_mask], s, pass_rows)

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, t: Tensor, r_t: Tensor | None, r_m: Tensor | None, lengths_tokens: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Masked-token cross-entropy (paper Eq. 15) on one batch.

        Args:
            tokens:          (B, T', C) layer-0 codes (anything at padded steps)
            t, r_t, r_m:     conditions as in `logits`
            lengths_tokens:  (B,) valid token steps per sample, 1 ≤ L ≤ T'
            generator:       source of the masking / corruption / condition-drop randomness (None = torch default),
                             on the tokens' device (dropout uses torch's default generator)
        Returns:
            loss (scalar, mean CE over the masked positions), logs {"loss", "acc" (masked-token accuracy),
            "mask_frac" (masked share of the valid tokens), "cond_drop_frac"}
        """
        self._check_tokens(tokens)
        b, tp, c = tokens.shape
        lengths = self._check_lengths(lengths_tokens, b, tp, "the token map's T'", "lengths_tokens").to(tokens.device)
        valid = torch.arange(tp, device=tokens.device)[None, :] < lengths[:, None]     # (B, T')
        target = torch.where(valid[:, :, None], tokens, torch.full_like(tokens, PAD_TOKEN))
        bad = valid[:, :, None] & ((target < 0) | (target >= self.codebook_sizes))
        if bool(bad.any()):
            raise ValueError(f"{_MOD}: argument 'tokens' must hold codes 0..K_c-1 of each column inside the lengths "
                             f"(codebook_sizes {self.codebook_sizes.tolist()}); found {int(target[bad][0])}")
        temporal, spatial = mask_2d(lengths, tp, c, generator)
        masked = temporal | spatial
        inputs = bert_corrupt(target, masked, self.codebook_sizes, self.cfg.bert_mask_prob,
                              self.cfg.bert_random_prob, generator)
        device = tokens.device
        drop_t = torch.rand(b, generator=generator, device=device) < self.cfg.cond_drop
        if self.ablation == "no_rag_cfg":
            drop_r = torch.zeros_like(drop_t)
        elif self.cfg.cond_drop_mode == "independent":
            drop_r = torch.rand(b, generator=generator, device=device) < self.cfg.cond_drop
        else:
            drop_r = drop_t
        logits = self.logits(inputs, t, r_t, r_m, ~valid, drop_condition=drop_t, drop_retrieval=drop_r)
        sel_logits, sel_target = logits[masked], target[masked]                       # (M, K_max), (M,)
        loss = F.cross_entropy(sel_logits, sel_target)
        with torch.no_grad():
            acc = (sel_logits.argmax(-1) == sel_target).float().mean()
            frac = masked.sum() / (lengths.sum() * c)
        return loss, {"loss": float(loss.detach()), "acc": float(acc), "mask_frac": float(frac),
                      "cond_drop_frac": float(drop_t.float().mean())}

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, t: Tensor, r_t: Tensor | None, r_m: Tensor | None, lengths: Tensor, steps: int | None = None,
                 guidance_scale: float | None = None, topk_ratio: float | None = None,
                 temperature: float | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, pad_to: int | None = None, pass_rows: int | None = None) -> Tensor:
        """Fill an all-[MASK] token map in `steps` iterations (module docstring). Defaults come from the config
        (steps 10, guidance_scale 4, topk_ratio 0.9, temperature 1, categorical sampling).

        Args:
            t, r_t, r_m: conditions as in `logits`
            lengths:     (B,) lengths in token steps T' (frames // 4, `frames_to_token_steps`), 1..cfg.max_tokens
            generator:   the only source of randomness (None = torch default), on the model's device; same seed →
                         same tokens
            pad_to:      run the network on a map padded to at least this many steps (a static shape for
                         torch.compile / CUDA graphs: length buckets); padded steps are masked keys, so with per-item
                         generators the tokens are those of the unpadded call. None = max(lengths)
            pass_rows:   network rows per pass of the doubled guidance batch (`guided_logits`; same tokens)
        Call `eval()` first (dropout is active in training mode).
        Returns:
            (B, max(lengths), C) long: codes inside the lengths (column-local), −1 outside
        """
        cfg = self.cfg
        steps = cfg.steps if steps is None else steps
        s = cfg.guidance_scale if guidance_scale is None else guidance_scale
        topk_ratio = cfg.topk_ratio if topk_ratio is None else topk_ratio
        temperature = cfg.temperature if temperature is None else temperature
        sampler = cfg.sampler if sampler is None else sampler
        check_generation_args(steps, s, topk_ratio, temperature)
        if sampler not in SAMPLERS:
            raise ValueError(f"{_MOD}: argument 'sampler' must be one of {SAMPLERS}, got {sampler!r}")
        b = t.shape[0] if torch.is_tensor(t) else 0
        device = self.token_emb.weight.device
        lengths = self._check_lengths(lengths, b, cfg.max_tokens, "cfg.max_tokens").to(device)
        self._check_conditions(t, r_t, r_m, b)
        c, out_tp = cfg.num_columns, int(lengths.max())
        tp = max(out_tp, min(int(pad_to or 0), cfg.max_tokens))
        valid = (torch.arange(tp, device=device)[None, :] < lengths[:, None])             # (B, T')
        valid_flat = valid[:, :, None].expand(b, tp, c).reshape(b, tp * c)
        counts = masked_counts(lengths * c, steps)                                        # (S, B)
        keep_k = topk_keep(self.codebook_sizes, topk_ratio).to(device)                    # (C,)
        tokens = torch.where(valid_flat, MASK_TOKEN, PAD_TOKEN).long()                    # (B, N)
        scores = torch.zeros(b, tp * c, device=device).masked_fill(~valid_flat, float("inf"))
        for i in range(steps):
            is_mask = (_rank(scores) < counts[i][:, None]) & valid_flat
            tokens = torch.where(is_mask, MASK_TOKEN, tokens)
            guided = self.guided_logits(tokens.reshape(b, tp, c), t, r_t, r_m, ~valid, s, pass_rows)  # (B,T',C,K)
            filtered = top_k_filter(apply_temperature(guided, temperature), keep_k[None, None, :])
            drawn = sample(filtered, sampler, generator).reshape(b, tp * c)
            confidence = torch.softmax(guided, dim=-1).reshape(b, tp * c, -1)
            confidence = confidence.gather(-1, drawn[..., None]).squeeze(-1)
            tokens = torch.where(is_mask, drawn, tokens)
            scores = torch.where(is_mask, confidence, torch.full_like(confidence, float("inf")))
        return tokens.reshape(b, tp, c)[:, :out_tp]
