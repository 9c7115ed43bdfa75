"""SSTA and STA attention (paper §2.4, Eqs. 8-11), the transformer block built on them, and the 2D positional code.

    positional_encoding_2d(time, columns, dim)   (T', C, D) sinusoids over (time, column), added to token features
    SSTA(width, heads, retrieval_dim, variant)   Q = z; K = [z; t; P_k([R_m; R_t])]; V = [z; t; P_v(R_m)]
    STA(width, heads)                            Q = z; K = V = [z; t]            (residual transformer)
    SelfAttention(width, heads)                  Q = K = V = z                    (axis attention layers)
    TransformerBlock(width, heads, ff_dim, ...)  x + Attn(LN(x), conditions); x + FFN(LN(x))  (pre-norm)

Every attention is multi-head softmax attention through `torch.nn.functional.scaled_dot_product_attention` (fused
kernels on GPU) with a boolean key mask: padded motion tokens are never attended to, and a dropped condition token
(classifier-free guidance's unconditional branch, condition dropout in training) is masked out as a key as well,
so its value has exactly zero weight and the output does not depend on it.

SSTA details (paper Eqs. 10-11; ReMoDiffuse SMA for the projections). The condition tokens are
- text:      LN(t), t (B, D) the text feature already embedded to the model width;
- retrieval: one token per retrieved item (B, k): key Linear(LN([R_m ; R_t])) (2·512 → D), value Linear(LN(R_m)).
The sequences [z; t; retrieval] go through the usual W_q / W_k / W_v projections, so Q comes from z only.
`variant="official"` is the released ReMoMask checkpoint's composition (as described in the issue): the key tokens
are an MLP of [t; R_m; R_t] per retrieved item and the values are [z; Linear(LN(R_m))], no separate text token; the
condition slot is masked only when text and retrieval are both dropped, a dropped part is zeroed in the MLP input.
Both variants use softmax attention (the official code uses ReMoDiffuse's linear "efficient" attention;
see docs_deviations_mask.md).

The 2D positional encoding (paper §2.4 step 1; MoGenTS layout, `reference.md` §6.3): channels 0:D/2 encode the
column index, channels D/2:D the time index; within each half, channel 2i is sin(p·ω_i) and 2i+1 is cos(p·ω_i),
ω_i = exp(−2i·ln(10000)/(D/2)). It is added to the token features before flattening (the paper's Eq. 8 writes P
inside the softmax, where its shape cannot fit; paper.md §6.2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MOD = "models/attention.py"
SSTA_VARIANTS = ("paper", "official")
KERNELS = ("sdpa", "matmul")
MATMUL_CHUNK_BYTES = 4 << 20            # "matmul" kernel: score block per chunk of batch items (fits in cache)


# ----------------------------------------------------------------------------------------------------------------
# 2D positional encoding
# ----------------------------------------------------------------------------------------------------------------
def _sinusoid(positions: Tensor, dim: int) -> Tensor:
    """positions (P,) → (P, dim): channel 2i sin(p·ω_i), 2i+1 cos(p·ω_i), ω_i = 10000^(−2i/dim)."""
    i = torch.arange(dim // 2, dtype=torch.float64, device=positions.device)
    omega = torch.exp(-2.0 * i * math.log(10000.0) / dim)                        # (dim/2,)
    angle = positions.double()[:, None] * omega[None, :]                          # (P, dim/2)
    out = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(len(positions), dim)
    return out.float()


def positional_encoding_2d(time: int, columns: int, dim: int, device=None) -> Tensor:
    """(T', C, D) 2D sinusoidal code: [:, c, :D/2] encodes column c, [t, :, D/2:] encodes time step t. D % 4 == 0."""
    if dim % 4:
        raise ValueError(f"{_MOD}: argument 'dim' must be a multiple of 4 (two sin/cos halves), got {dim}")
    half = dim // 2
    col = _sinusoid(torch.arange(columns, device=device), half)                  # (C, D/2)
    tim = _sinusoid(torch.arange(time, device=device), half)                     # (T', D/2)
    return torch.cat([col[None].expand(time, -1, -1), tim[:, None].expand(-1, columns, -1)], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------
def matmul_attention(q: Tensor, k: Tensor, v: Tensor, key_keep: Tensor | None,
                     chunk_bytes: int = MATMUL_CHUNK_BYTES) -> Tensor:
    """softmax(q kᵀ / √d + mask) v as two batched matmuls and a softmax, over chunks of batch items.

    q (B, H, N, d), k / v (B, H, M, d), key_keep (B, M) True = may be attended (None = all). Returns (B, H, N, d).
    On a 2-core avx512_bf16 CPU without AMX this runs bf16 attention at 1.7–1.9× the rate of SDPA's flash kernel
    (whose 64-wide inner products do not feed the bf16 dot-product units; BENCHMARKS.md); the scores are rounded to the
    input dtype before the softmax (SDPA keeps them in fp32), so bf16 outputs move a little more. Inference only
    (no dropout)."""
    b, h, n, d = q.shape
    m = k.shape[2]
    bias = torch.zeros(b, 1, 1, m, dtype=q.dtype, device=q.device)
    if key_keep is not None:
        bias = bias.masked_fill(~key_keep[:, None, None, :], float("-inf"))
    chunk = max(1, chunk_bytes // max(1, h * n * m * q.element_size()))
    out = torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)
    for s in range(0, b, chunk):
        e = min(b, s + chunk)
        rows = (e - s) * h
        scores = torch.baddbmm(bias[s:e].expand(e - s, h, 1, m).reshape(rows, 1, m), q[s:e].reshape(rows, n, d),
                               k[s:e].reshape(rows, m, d).transpose(1, 2), alpha=d ** -0.5)      # (rows, N, M)
        out[s:e] = torch.bmm(torch.softmax(scores, dim=-1), v[s:e].reshape(rows, m, d)).view(e - s, h, n, d)
    return out


def use_attention_kernel(module: nn.Module, kernel: str) -> nn.Module:
    """Set the attention kernel ("sdpa" | "matmul") of every attention layer inside `module`; returns it."""
    if kernel not in KERNELS:
        raise ValueError(f"{_MOD}: argument 'kernel' must be one of {KERNELS}, got {kernel!r}")
    for layer in module.modules():
        if isinstance(layer, _KeyMaskedAttention):
            layer.kernel = kernel
    return module


class _KeyMaskedAttention(nn.Module):
    """Multi-head softmax attention of queries z over a key/value sequence, with a boolean key mask.

    `kernel` (attribute, default "sdpa"): "matmul" runs `matmul_attention` outside training (the pipeline's bf16
    copies on a CPU; `use_attention_kernel`)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"{_MOD}: argument 'width' ({width}) must be divisible by 'heads' ({heads})")
        self.width, self.heads, self.dropout = width, heads, dropout
        self.kernel = "sdpa"
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def attend(self, z: Tensor, keys: Tensor, values: Tensor, key_keep: Tensor | None) -> Tensor:
        """z (B, N, D); keys, values (B, M, D) (before W_k / W_v); key_keep (B, M) True = may be attended."""
        b, n, d = z.shape
        h = self.heads

        def split(x: Tensor) -> Tensor:                                          # (B, L, D) → (B, H, L, D/H)
            return x.reshape(b, x.shape[1], h, d // h).transpose(1, 2)

        q, k, v = split(self.q(z)), split(self.k(keys)), split(self.v(values))
        if self.kernel == "matmul" and not self.training:
            y = matmul_attention(q, k, v, key_keep)
        else:
            mask = None if key_keep is None else key_keep[:, None, None, :]      # (B, 1, 1, M) broadcast
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def _keep(flag: Tensor | None, batch: int, device) -> Tensor:
    """(B,) bool 'condition kept' from an optional (B,) flag (None = kept)."""
    if flag is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return flag.to(device=device, dtype=torch.bool).reshape(batch)


def _z_keep(pad: Tensor | None, z: Tensor) -> Tensor:
    if pad is None:
        return torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    return ~pad.to(torch.bool)


class SelfAttention(_KeyMaskedAttention):
    """Q = K = V = z (plain self-attention; the axis-attention layers).

    Args: z (B, N, D), pad (B, N) True = padding (never attended to). Returns (B, N, D).
    """

    def forward(self, z: Tensor, pad: Tensor | None = None) -> Tensor:
        return self.attend(z, z, z, None if pad is None else _z_keep(pad, z))


class STA(_KeyMaskedAttention):
    """Spatio-Temporal Attention (paper §2.4): Q = z; K = V = [z; LN(t)].

    Args:
        z:         (B, N, D) flattened T'×C token features
        t:         (B, D) text feature at the model width
        pad:       (B, N) True where z is padding (never attended to)
        text_keep: (B,) False where the text is dropped (its key is masked out); None = kept
    Returns:
        (B, N, D)
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__(width, heads, dropout)
        self.text_norm = nn.LayerNorm(width)

    def forward(self, z: Tensor, t: Tensor, pad: Tensor | None = None, text_keep: Tensor | None = None) -> Tensor:
        b = z.shape[0]
        ctx = torch.cat([z, self.text_norm(t).unsqueeze(1)], dim=1)             # (B, N+1, D)
        keep = torch.cat([_z_keep(pad, z), _keep(text_keep, b, z.device)[:, None]], dim=1)
        return self.attend(z, ctx, ctx, keep)


class SSTA(_KeyMaskedAttention):
    """Semantic Spatio-Temporal Attention (paper Eqs. 8-11).

    Queries come from the flattened token map z; keys and values add the text feature t and the retrieved
    features (keys see [R_m; R_t], values see R_m only).

    Args:
        z:   (B, N, D) flattened T'×C token features, N = T'·C
        t:   (B, D) text feature at the model width
        r_t: (B, k, D_r) retrieved text features;  r_m: (B, k, D_r) retrieved motion features (D_r = retrieval_dim)
        pad: (B, N) True where z is padding (never attended to)
        text_keep, retrieval_keep: (B,) False where that condition is dropped (masked out as keys); None = kept
    Returns:
        (B, N, D)
    """

    def __init__(self, width: int, heads: int, retrieval_dim: int = 512, dropout: float = 0.0,
                 variant: str = "paper"):
        super().__init__(width, heads, dropout)
        if variant not in SSTA_VARIANTS:
            raise ValueError(f"{_MOD}: argument 'variant' must be one of {SSTA_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.retrieval_dim = retrieval_dim
        self.value_norm = nn.LayerNorm(retrieval_dim)
        self.value_proj = nn.Linear(retrieval_dim, width)                        # P_v(LN(R_m))
        if variant == "paper":
            self.text_norm = nn.LayerNorm(width)
            self.key_norm = nn.LayerNorm(2 * retrieval_dim)
            self.key_proj = nn.Linear(2 * retrieval_dim, width)                  # P_k(LN([R_m; R_t]))
        else:
            self.key_mlp = nn.Sequential(nn.Linear(width + 2 * retrieval_dim, width), nn.GELU(),
                                         nn.Linear(width, width))                # MLP([t; R_m; R_t])

    def forward(self, z: Tensor, t: Tensor, r_t: Tensor, r_m: Tensor, pad: Tensor | None = None,
                text_keep: Tensor | None = None, retrieval_keep: Tensor | None = None) -> Tensor:
        b, _, d = z.shape
        k = r_m.shape[1]
        t_keep = _keep(text_keep, b, z.device)
        r_keep = _keep(retrieval_keep, b, z.device)
        if self.variant == "paper":
            r_key = self.key_proj(self.key_norm(torch.cat([r_m, r_t], dim=-1)))  # (B, k, D)
            r_val = self.value_proj(self.value_norm(r_m))                         # (B, k, D)
            text = self.text_norm(t).unsqueeze(1)                                 # (B, 1, D)
            keys = torch.cat([z, text, r_key], dim=1)                             # (B, N+1+k, D)
            values = torch.cat([z, text, r_val], dim=1)
            keep = torch.cat([_z_keep(pad, z), t_keep[:, None], r_keep[:, None].expand(b, k)], dim=1)
            return self.attend(z, keys, values, keep)
        # official: one slot per retrieved item, key MLP([t; R_m; R_t]), value P_v(LN(R_m)); dropped parts zeroed
        tz = t * t_keep[:, None].to(t.dtype)
        rz = r_keep[:, None, None].to(r_m.dtype)
        slot_in = torch.cat([tz.unsqueeze(1).expand(b, k, d), r_m * rz, r_t * rz], dim=-1)
        keys = torch.cat([z, self.key_mlp(slot_in)], dim=1)                      # (B, N+k, D)
        values = torch.cat([z, self.value_proj(self.value_norm(r_m)) * rz], dim=1)
        slot_keep = (t_keep | r_keep)[:, None].expand(b, k)
        keep = torch.cat([_z_keep(pad, z), slot_keep], dim=1)
        return self.attend(z, keys, values, keep)


# ----------------------------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------------------------
ATTENTION_KINDS = ("ssta", "sta", "self")


class TransformerBlock(nn.Module):
    """Pre-norm block: x ← x + Attn(LN(x), conditions); x ← x + FFN(LN(x)), FFN = Linear-GELU-Linear.

    `attention`: "ssta" (needs t, r_t, r_m), "sta" (needs t), "self" (no conditions).
    forward(x (B, N, D), pad (B, N), t (B, D), r_t / r_m (B, k, D_r), text_keep / retrieval_keep (B,)) → (B, N, D)
    """

    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float = 0.0, attention: str = "ssta",
                 retrieval_dim: int = 512, ssta_variant: str = "paper"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"{_MOD}: argument 'attention' must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.kind = attention
        self.norm1 = nn.LayerNorm(width)
        if attention == "ssta":
            self.attn = SSTA(width, heads, retrieval_dim, dropout, ssta_variant)
        elif attention == "sta":
            self.attn = STA(width, heads, dropout)
        else:
            self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor | None = None, t: Tensor | None = None, r_t: Tensor | None = None,
                r_m: Tensor | None = None, text_keep: Tensor | None = None,
                retrieval_keep: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        if self.kind == "ssta":
            a = self.attn(h, t, r_t, r_m, pad, text_keep, retrieval_keep)
        elif self.kind == "sta":
            a = self.attn(h, t, pad, text_keep)
        else:
            a = self.attn(h, pad)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x)))
