"""ResidualTransformer: the 2D residual transformer of token layers 1..Q−1 (paper §2.6, Eq. 16; MoMask residual
transformer, `reference.md` §6.2).

    ResidualTransformerConfig      architecture, layer schedule, condition dropout, generation defaults (checkpoint)
    token_map_config(rvq)          the token-map fields read off a RVQVAE2D / MotionTokenizer (adds num_quantizers)
    select_layers(active, u, ...)  the layer l ∈ [1, A−1] each training sample predicts (A = its active levels)
    ResidualTransformer(cfg)       input_embedding, logits, guided_logits, forward (training loss), generate

Token map. Inputs are full token maps (B, T', C, Q) of `RVQVAE2D` with column-local codes (0 ≤ code <
codebook_sizes[c]) and −1 for "no code" (padding, or a level skipped by the tokenizer's quantize dropout, which
`RVQVAE2D.decode` reads as a zero code). As in the masked transformer (ARCHITECTURE §3b) each layer's vocabulary
holds the joint codes [0, K_j) then the global column's codes [K_j, K_j + K_g): the global column's layers use its
own codebook, and `logits` returns (B, T', C, K_max) with −inf beyond column c's own K_c.

Network (MoMask §6.2 with STA instead of its prepended condition token).
- Input of layer l: the **sum of the code embeddings of layers 0..l−1**, x = Σ_{j<l} E_j[y_j] (E_j (V, e) learned,
  one table per source layer; a −1 code contributes zero), then Linear(e → D), plus the 2D positional code
  (`models.attention.positional_encoding_2d`) and a **learned layer-index embedding** of l (added to every token;
  MoMask prepends Linear(one_hot(l)) as a token; adding it keeps it in the unconditional CFG branch as well).
- `layers` pre-norm blocks with STA (K = V = [z; t], text t embedded by Linear(text_dim → D); no retrieval: paper
  §2.5, retrieval is injected only into the base layer) → LayerNorm → MoMask's output head Linear(D → D), GELU,
  LayerNorm, Linear(D → e).
- Logits of layer l: the dot product of that output with the projection table P_l (V, e). With `share_weight`
  (the official README, `reference.md` §6.2) P_l = E_l for l = 1..Q−2: predicting layer l and embedding layer l
  use one table; E_0 and P_{Q−1} have their own. Without it every E_j and P_l is separate.

Training (`forward`, paper Eq. 16). Per sample, A = the number of leading levels present (not −1) at its valid
positions: the full Q for tokens of `MotionTokenizer.encode`, fewer where the tokenizer's quantize dropout skipped
levels. A layer l ∈ [1, A−1] is drawn (`select_layers`; "cosine": l = round((1 − cos(πu/2))·(A−2)) + 1, MoMask's
schedule favouring low layers; "uniform": each layer equally likely), the input sums layers < l, and the loss is the
cross-entropy of layer l's codes at every valid position (mean over them). Samples with A = 1 have nothing to predict
and are left out of the loss. With probability `cond_drop` (0.01, the ReMoMask README) a sample is trained without
its text (the text key is masked out).

Generation (`generate`, paper §2.7; `reference.md` §6.2). Given the base layer (from the masked transformer), one
pass per layer l = 1..Q−1 in order: guided logits `uncond + s·(cond − uncond)` (s = 5, MoMask's res_cond_scale),
top-k filter by ratio (0.9 filtered out), temperature, Gumbel sampling; the codes are written inside the lengths only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import TransformerBlock, positional_encoding_2d
from models.sampling import (apply_temperature, check_guidance_scale, check_token_map, check_temperature, check_topk_ratio,
                             guided_passes, register_column_vocabulary, sample, top_k_filter, topk_keep)

_MOD = "models/residual_transformer.py"
PAD_TOKEN = -1                      # models/rvq.py: index −1 = no code (padding or a skipped level)
LAYER_SCHEDULES = ("cosine", "uniform")
SAMPLERS = ("categorical", "gumbel")


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ResidualTransformerConfig:
    # token map (RVQVAE2D.num_columns / .num_groups / .codebook_sizes / .num_quantizers: `token_map_config(rvq)`)
    num_columns: int = 7                 # ARCHITECTURE §3b: 6 joint groups + the global column
    num_groups: int = 6                  # reference.md §5.3: 24 padded joints / 4
    codebook_sizes: list[int] = field(default_factory=lambda: [256] * 7)   # paper §2.3: 256 joint, 256 global
    num_quantizers: int = 6              # paper §2.6: 5 residual layers + the base layer
    text_dim: int = 512                  # paper §2.4: CLIP ViT-B/32 text feature (mini configs: MiniLM 384)
    # network
    layers: int = 6                      # paper §2.6 "R-trans: 6 layers" (official code: n_layers 8)
    heads: int = 6                       # paper §2.6
    width: int = 384                     # paper §2.6 latent dim 384
    ff_dim: int = 1024                   # reference.md §6.2 (MoMask ff_size 1024)
    dropout: float = 0.2                 # reference.md §6.2 (MoMask dropout 0.2)
    embed_dim: int = 512                 # reference.md §6.2: token tables (K+1, code_dim), MoMask code_dim 512
    share_weight: bool = True            # reference.md §6.2: official README --share_weight (tied E_l = P_l)
    max_tokens: int = 49                 # reference.md §5.3: 196 frames / 4 (longest generated length T')
    # training
    layer_schedule: str = "cosine"       # reference.md §6.2 (MoMask q_schedule); "uniform": paper §2.6 "sample l"
    cond_drop: float = 0.01              # reference.md §6.2: ReMoMask README --cond_drop_prob 0.01
    # generation defaults
    guidance_scale: float = 5.0          # reference.md §6.2: res_cond_scale 5 in `uncond + s·(cond − uncond)`
    topk_ratio: float = 0.9              # reference.md §6.2: top-k 0.9 (fraction filtered out)
    temperature: float = 1.0             # reference.md §6.2: τ = 1
    sampler: str = "gumbel"              # reference.md §6.2: Gumbel sampling; or "categorical"

    def validate(self) -> None:
        def bad(key: str, expected: str, got) -> ValueError:
            return ValueError(f"{_MOD}: model.{key} must be {expected}, got {got!r}")

        check_token_map(self.num_groups, self.num_columns, self.codebook_sizes, _MOD)
        if self.num_quantizers < 2:
            raise bad("num_quantizers", "≥ 2 (a base layer and at least one residual layer)", self.num_quantizers)
        for key in ("text_dim", "layers", "heads", "ff_dim", "embed_dim", "max_tokens"):
            if getattr(self, key) < 1:
                raise bad(key, "≥ 1", getattr(self, key))
        if self.width % self.heads or self.width % 4:
            raise bad("width", f"a multiple of heads ({self.heads}) and of 4 (2D positional code)", self.width)
        if self.layer_schedule not in LAYER_SCHEDULES:
            raise bad("layer_schedule", f"one of {LAYER_SCHEDULES}", self.layer_schedule)
        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"one of {SAMPLERS}", self.sampler)
        for key in ("dropout", "cond_drop"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "in [0, 1]", getattr(self, key))
        for key, check in (("guidance_scale", check_guidance_scale), ("topk_ratio", check_topk_ratio),
                           ("temperature", check_temperature)):
            try:
                check(getattr(self, key))
            except ValueError as err:
                raise bad(key, str(err).split(" must be ", 1)[-1].rsplit(", got ", 1)[0], getattr(self, key)) from None

    @property
    def has_global_column(self) -> bool:
        return self.num_columns == self.num_groups + 1


def token_map_config(rvq) -> dict:
    """The token-map fields of ResidualTransformerConfig from a RVQVAE2D (or MotionTokenizer): num_columns,
    num_groups, codebook_sizes, num_quantizers."""
    model = getattr(rvq, "model", rvq)
    return dict(num_columns=int(model.num_columns), num_groups=int(model.num_groups),
                codebook_sizes=[int(k) for k in model.codebook_sizes], num_quantizers=int(model.num_quantizers))


# ----------------------------------------------------------------------------------------------------------------
# Layer selection (training)
# ----------------------------------------------------------------------------------------------------------------
def active_levels(tokens: Tensor, valid: Tensor) -> Tensor:
    """Leading levels present per sample: A = the largest a with every valid position holding a code (≠ −1) in
    levels 0..a−1. tokens (B, T', C, Q), valid (B, T') bool → (B,) long in 0..Q."""
    present = ((tokens != PAD_TOKEN) | ~valid[:, :, None, None]).all(dim=2).all(dim=1)     # (B, Q)
    return present.long().cumprod(dim=1).sum(dim=1)


def select_layers(active: Tensor, u: Tensor, schedule: str = "cosine") -> Tensor:
    """The residual layer each sample predicts, in [1, A−1] (A = its active levels, ≥ 2).

    "cosine" (MoMask `q_schedule`, reference.md §6.2): l = round((1 − cos(πu/2))·(A − 2)) + 1, low layers favoured;
    "uniform": l = 1 + floor(u·(A − 1)), each of the A − 1 layers with probability 1/(A − 1).
    Args: active (B,) long ≥ 2; u (B,) in [0, 1). Returns (B,) long.
    """
    active = active.long()
    if schedule == "cosine":
        level = torch.round((1.0 - torch.cos(math.pi * 0.5 * u)) * (active - 2).float()).long() + 1
    elif schedule == "uniform":
        level = 1 + torch.floor(u * (active - 1).float()).long()
    else:
        raise ValueError(f"{_MOD}: argument 'schedule' must be one of {LAYER_SCHEDULES}, got {schedule!r}")
    return torch.minimum(level.clamp(min=1), (active - 1).clamp(min=1))


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
class ResidualTransformer(nn.Module):
    """2D residual transformer over the token layers 1..Q−1 (module docstring)."""

    def __init__(self, cfg: ResidualTransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, q, e = cfg.width, cfg.num_quantizers, cfg.embed_dim
        # V: one layer's vocabulary; per-column gather index and validity (C, K_max)
        self.num_codes = register_column_vocabulary(self, cfg.num_groups, cfg.codebook_sizes, cfg.has_global_column)

        # E_j for the source layers j = 0..Q−2; P_l for l = 1..Q−1 (shared: P_l = E_l for l ≤ Q−2)
        self.token_embed = nn.Parameter(torch.empty(q - 1, self.num_codes, e))
        self.output_proj = nn.Parameter(torch.empty(1 if cfg.share_weight else q - 1, self.num_codes, e))
        self.input_proj = nn.Linear(e, d)
        self.layer_emb = nn.Embedding(q, d)
        self.cond_emb = nn.Linear(cfg.text_dim, d)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d, cfg.heads, cfg.ff_dim, cfg.dropout, "sta")
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12), nn.Linear(d, e))
        self.apply(self._init_weights)
        nn.init.normal_(self.token_embed, std=0.02)
        nn.init.normal_(self.output_proj, std=0.02)

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

    # -- tables ---------------------------------------------------------------------------------------------
    def embedding_table(self, layer: int) -> Tensor:
        """E_layer (V, e): the embedding of source layer `layer` (0..Q−2)."""
        return self.token_embed[layer]

    def projection_tables(self) -> Tensor:
        """(Q−1, V, e): P_l for l = 1..Q−1 (row l−1). Shared: [E_1, ..., E_{Q−2}, P_{Q−1}]."""
        if self.cfg.share_weight:
            return torch.cat([self.token_embed[1:], self.output_proj], dim=0)
        return self.output_proj

    def projection_table(self, layer: int) -> Tensor:
        """P_layer (V, e) for a predicted layer 1..Q−1: a view of the parameter that holds it (shared: E_layer for
        layer ≤ Q−2)."""
        q = self.cfg.num_quantizers
        if self.cfg.share_weight:
            return self.token_embed[layer] if layer < q - 1 else self.output_proj[0]
        return self.output_proj[layer - 1]

    # -- argument checks ------------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, name: str = "tokens") -> None:
        c, q = self.cfg.num_columns, self.cfg.num_quantizers
        if not torch.is_tensor(tokens) or tokens.ndim != 4 or tokens.shape[2] != c or tokens.shape[3] != q \
                or tokens.shape[1] < 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            got = (tuple(tokens.shape), tokens.dtype) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"{_MOD}: argument '{name}' must be an integer tensor (B, T', C={c}, Q={q}), got {got}")
        bad = (tokens != PAD_TOKEN) & ((tokens < 0) | (tokens >= self.codebook_sizes[None, None, :, None]))
        if bool(bad.any()):
            raise ValueError(f"{_MOD}: argument '{name}' must hold codes 0..K_c-1 of each column (codebook_sizes "
                             f"{self.codebook_sizes.tolist()}) or {PAD_TOKEN}; found {int(tokens[bad][0])}")

    def _check_text(self, t: Tensor, batch: int) -> None:
        if not torch.is_tensor(t) or t.shape != (batch, self.cfg.text_dim):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{_MOD}: argument 't' must have shape (B={batch}, text_dim={self.cfg.text_dim}), "
                             f"got {got}")

    def _layer_tensor(self, layer, batch: int, device) -> Tensor:
        q = self.cfg.num_quantizers
        layer_t = torch.as_tensor(layer, device=device)
        if layer_t.dtype.is_floating_point or layer_t.dtype == torch.bool or layer_t.ndim > 1 \
                or (layer_t.ndim == 1 and layer_t.shape[0] != batch):
            raise ValueError(f"{_MOD}: argument 'layer' must be an int or a ({batch},) integer tensor, got "
                             f"{layer!r}")
        layer_t = layer_t.long().expand(batch)
        if batch and (int(layer_t.min()) < 1 or int(layer_t.max()) > q - 1):
            raise ValueError(f"{_MOD}: argument 'layer' must lie in 1..{q - 1} (the residual layers), got "
                             f"{int(layer_t.min())}..{int(layer_t.max())}")
        return layer_t

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

    # -- network --------------------------------------------------------------------------------------------
    def input_embedding(self, tokens: Tensor, layer: Tensor | int) -> Tensor:
        """Σ_{j < l} E_j[y_j]: the summed code embeddings of the layers below `layer` (a −1 code adds zero).

        tokens (B, T', C, Q), layer int or (B,) in 1..Q−1 → (B, T', C, e). Layers ≥ l are never read."""
        self._check_tokens(tokens)
        b = tokens.shape[0]
        layer = self._layer_tensor(layer, b, tokens.device)
        src = tokens[..., :-1]                                                        # (B, T', C, Q−1) layers 0..Q−2
        ids = (src.clamp(min=0) + self.column_offsets[None, None, :, None])           # vocabulary ids
        levels = torch.arange(src.shape[-1], device=tokens.device)
        use = (src != PAD_TOKEN) & (levels[None, None, None, :] < layer[:, None, None, None])
        x = torch.zeros(*tokens.shape[:3], self.cfg.embed_dim, dtype=self.token_embed.dtype, device=tokens.device)
        for j in range(src.shape[-1]):
            if not bool(use[..., j].any()):
                continue
            x = x + F.embedding(ids[..., j], self.token_embed[j]) * use[..., j, None].to(x.dtype)
        return x

    def logits(self, tokens: Tensor, layer: Tensor | int, t: Tensor, pad_mask: Tensor | None = None,
               drop_condition: bool | Tensor = False) -> Tensor:
        """Per-column logits of layer `layer` at every position, from the layers below it and the text.

        Args:
            tokens:   (B, T', C, Q) codes, −1 = no code (levels ≥ layer are ignored)
            layer:    int or (B,) long in 1..Q−1: the layer predicted
            t:        (B, text_dim) text feature
            pad_mask: (B, T') True at padded time steps (None: steps whose base layer is −1 in every column)
            drop_condition: bool or (B,) bool: drop the text (the unconditional branch)
        Returns:
            (B, T', C, K_max) float32, −inf beyond each column's codebook
        """
        self._check_tokens(tokens)
        b, tp, c, _ = tokens.shape
        self._check_text(t, b)
        layer = self._layer_tensor(layer, b, tokens.device)
        pad = (tokens[..., 0] == PAD_TOKEN).all(-1) if pad_mask is None else pad_mask.bool()
        if pad.shape != (b, tp):
            raise ValueError(f"{_MOD}: argument 'pad_mask' must have shape (B={b}, T'={tp}), got {tuple(pad.shape)}")
        if bool(pad.all(-1).any()):
            raise ValueError(f"{_MOD}: argument 'pad_mask' leaves a sample without any token (lengths must be ≥ 1)")
        keep = ~torch.as_tensor(drop_condition, dtype=torch.bool, device=tokens.device).expand(b)
        d = self.cfg.width
        x = self.input_proj(self.input_embedding(tokens, layer))                      # (B, T', C, D)
        x = x + positional_encoding_2d(tp, c, d, device=tokens.device).to(x.dtype)
        x = x + self.layer_emb(layer)[:, None, None, :]
        x = self.emb_drop(x).reshape(b, tp * c, d)
        flat_pad = pad[:, :, None].expand(b, tp, c).reshape(b, tp * c)
        cond = self.cond_emb(t.to(x.dtype))                                           # a bf16 copy takes fp32 t
        for block in self.blocks:
            x = block(x, flat_pad, cond, text_keep=keep)
        out = self.head(self.norm(x)).reshape(b, tp, c, self.cfg.embed_dim)
        proj = self.projection_tables()[layer - 1]                                    # (B, V, e)
        full = torch.einsum("btce,bve->btcv", out, proj).float()                      # (B, T', C, V)
        index = self.column_vocab[None, None].expand(b, tp, c, self.k_max)
        return full.gather(-1, index).masked_fill(~self.column_valid, float("-inf"))

    def guided_logits(self, tokens: Tensor, layer: Tensor | int, t: Tensor, pad_mask: Tensor | None = None,
                      guidance_scale: float | None = None, pass_rows: int | None = None) -> Tensor:
        """Classifier-free guidance uncond + s·(cond − uncond) (s default cfg.guidance_scale = 5); the unconditional
        half drops the text. One doubled batch; s = 1 runs the conditional half only. `pass_rows`: at most this
        many rows per network pass (same result; None = all at once). Shapes as `logits`."""
        s = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(s)
        layer = self._layer_tensor(layer, tokens.shape[0], tokens.device)

        def network(tokens_, layer_, t_, pad_, drop_):
            return self.logits(tokens_, layer_, t_, pad_, drop_condition=drop_)

        return guided_passes(network, [tokens, layer, t, pad_mask], s, pass_rows)

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, t: Tensor, lengths_tokens: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of one residual layer per sample (paper Eq. 16) on one batch.

        Args:
            tokens:         (B, T', C, Q) codes (anything at padded steps; −1 = skipped level)
            t:              (B, text_dim) text feature
            lengths_tokens: (B,) valid token steps per sample, 1 ≤ L ≤ T'
            generator:      source of the layer draws and the condition dropout (None = torch default), on the
                            tokens' device (dropout uses torch's default generator)
        Returns:
            loss (scalar, mean CE over the valid positions of the samples with a residual layer), logs {"loss",
            "acc", "layer" (mean predicted layer), "cond_drop_frac", "trained_frac" (samples with A ≥ 2)}
        """
        if not torch.is_tensor(tokens) or tokens.ndim != 4:
            self._check_tokens(tokens)
        b, tp = tokens.shape[:2]
        device = tokens.device
        lengths = self._check_lengths(lengths_tokens, b, tp, "the token map's T'", "lengths_tokens").to(device)
        valid = torch.arange(tp, device=device)[None, :] < lengths[:, None]            # (B, T')
        tokens = torch.where(valid[:, :, None, None], tokens, torch.full_like(tokens, PAD_TOKEN))
        self._check_tokens(tokens)
        active = active_levels(tokens, valid)                                          # (B,)
        if bool((active < 1).any()):
            raise ValueError(f"{_MOD}: argument 'tokens' must hold a base-layer code (level 0) at every valid "
                             f"position inside lengths_tokens")
        trained = active >= 2
        u = torch.rand(b, generator=generator, device=device)
        layer = select_layers(active.clamp(min=2), u, self.cfg.layer_schedule)
        drop = torch.rand(b, generator=generator, device=device) < self.cfg.cond_drop
        logits = self.logits(tokens, layer, t, ~valid, drop_condition=drop)           # (B, T', C, K)
        target = tokens.gather(-1, layer[:, None, None, None].expand(b, tp, tokens.shape[2], 1)).squeeze(-1)
        sel = (valid & trained[:, None])[:, :, None] & (target != PAD_TOKEN)           # (B, T', C)
        if not bool(sel.any()):
            loss = logits.masked_fill(~torch.isfinite(logits), 0.0).sum() * 0.0
            return loss, {"loss": 0.0, "acc": math.nan, "layer": math.nan, "cond_drop_frac": float(drop.float().mean()),
                          "trained_frac": 0.0}
        sel_logits, sel_target = logits[sel], target[sel]
        loss = F.cross_entropy(sel_logits, sel_target)
        with torch.no_grad():
            acc = (sel_logits.argmax(-1) == sel_target).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc),
                      "layer": float(layer[trained].float().mean()), "cond_drop_frac": float(drop.float().mean()),
                      "trained_frac": float(trained.float().mean())}

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, base_tokens: Tensor, t: Tensor, lengths: Tensor, guidance_scale: float | None = None,
                 temperature: float | None = None, generator: torch.Generator | None = None,
                 topk_ratio: float | None = None, sampler: str | None = None, pad_to: int | None = None,
                 pass_rows: int | None = None) -> Tensor:
        """Predict layers 1..Q−1 in order on top of a base layer (defaults from the config: guidance_scale 5,
        temperature 1, topk_ratio 0.9, Gumbel sampling).

        Args:
            base_tokens: (B, T', C) layer-0 codes (`MaskTransformer.generate`), or (B, T', C, Q) whose layer 0 is
                         used; anything outside the lengths is ignored
            t:           (B, text_dim) text feature
            lengths:     (B,) valid token steps, 1..min(T', cfg.max_tokens)
            generator:   the only source of randomness (None = torch default), on the model's device
            pad_to:      run the network on a map padded (−1) to at least this many steps (a static shape for
                         torch.compile / CUDA graphs); with per-item generators the tokens equal the unpadded call's
            pass_rows:   network rows per pass of the doubled guidance batch (`guided_logits`; same tokens)
        Call `eval()` first (dropout is active in training mode).
        Returns:
            (B, T', C, Q) long: layer 0 = the base codes and layers 1..Q−1 the predicted codes inside the lengths,
            −1 everywhere outside them
        """
        cfg = self.cfg
        s = cfg.guidance_scale if guidance_scale is None else guidance_scale
        temperature = cfg.temperature if temperature is None else temperature
        topk_ratio = cfg.topk_ratio if topk_ratio is None else topk_ratio
        sampler = cfg.sampler if sampler is None else sampler
        check_guidance_scale(s)
        check_temperature(temperature)
        check_topk_ratio(topk_ratio)
        if sampler not in SAMPLERS:
            raise ValueError(f"{_MOD}: argument 'sampler' must be one of {SAMPLERS}, got {sampler!r}")
        c, q = cfg.num_columns, cfg.num_quantizers
        if torch.is_tensor(base_tokens) and base_tokens.ndim == 4:
            base_tokens = base_tokens[..., 0]
        if not torch.is_tensor(base_tokens) or base_tokens.ndim != 3 or base_tokens.shape[2] != c \
                or base_tokens.shape[1] < 1 or base_tokens.dtype.is_floating_point or base_tokens.dtype == torch.bool:
            got = (tuple(base_tokens.shape), base_tokens.dtype) if torch.is_tensor(base_tokens) \
                else type(base_tokens).__name__
            raise ValueError(f"{_MOD}: argument 'base_tokens' must be an integer tensor (B, T', C={c}), got {got}")
        b, tp = base_tokens.shape[:2]
        device = self.token_embed.device
        self._check_text(t, b)
        lengths = self._check_lengths(lengths, b, min(tp, cfg.max_tokens),
                                      f"the base map's T' = {tp} and cfg.max_tokens = {cfg.max_tokens}").to(device)
        base_tokens = base_tokens.to(device).long()
        valid = torch.arange(tp, device=device)[None, :] < lengths[:, None]            # (B, T')
        inside = valid[:, :, None].expand(b, tp, c)
        bad = inside & ((base_tokens < 0) | (base_tokens >= self.codebook_sizes))
        if bool(bad.any()):
            raise ValueError(f"{_MOD}: argument 'base_tokens' must hold codes 0..K_c-1 of each column inside the "
                             f"lengths (codebook_sizes {self.codebook_sizes.tolist()}); found {int(base_tokens[bad][0])}")
        out_tp = tp
        if pad_to is not None and min(int(pad_to), cfg.max_tokens) > tp:
            tp = min(int(pad_to), cfg.max_tokens)
            extra = tp - out_tp
            base_tokens = F.pad(base_tokens, (0, 0, 0, extra), value=PAD_TOKEN)
            valid = torch.cat([valid, valid.new_zeros(b, extra)], dim=1)
            inside = valid[:, :, None].expand(b, tp, c)
        tokens = torch.full((b, tp, c, q), PAD_TOKEN, dtype=torch.long, device=device)
        tokens[..., 0] = torch.where(inside, base_tokens, torch.full_like(base_tokens, PAD_TOKEN))
        keep_k = topk_keep(self.codebook_sizes, topk_ratio).to(device)                # (C,)
        t = t.to(device)
        for level in range(1, q):
            guided = self.guided_logits(tokens, level, t, ~valid, s, pass_rows)       # (B, T', C, K_max)
            filtered = top_k_filter(apply_temperature(guided, temperature), keep_k[None, None, :])
            drawn = sample(filtered, sampler, generator)                              # (B, T', C)
            tokens[..., level] = torch.where(inside, drawn, torch.full_like(drawn, PAD_TOKEN))
        return tokens[:, :out_tp]
