"""Masking schedule, logit filtering, sampling and guidance shared by the mask and residual transformers.

    cosine_schedule(u)                         γ(u) = cos(πu/2): the fraction of tokens masked at "time" u ∈ [0, 1]
    masked_counts(num_tokens, steps)           (S, B) tokens left masked at each of the S generation steps
    frames_to_token_steps(frames, downsample)  motion length in frames -> token-map length T' (frames // 4)
    top_k_filter(logits, k)                    keep the k largest logits per row, −inf elsewhere
    topk_keep(vocab_size, topk_ratio)          k = max(1, ceil((1 − topk_ratio)·K)) (MoMask's `topkr`)
    apply_temperature(logits, temperature)     logits / τ
    sample_categorical(logits, generator)      one draw per row from softmax(logits)
    sample_gumbel(logits, generator)           argmax(logits + Gumbel noise): the same distribution, one pass
    guidance_combine(cond, uncond, scale)      uncond + s·(cond − uncond)
    map_row_chunks(fn, tensors, rows)          fn over slices of ≤ rows batch rows, concatenated (network passes)
    guided_passes(network, inputs, s, rows)    cond and uncond as one doubled batch (in row slices), combined
    check_generation_args(...)                 one-line ValueErrors for steps / guidance_scale / topk_ratio / τ

Schedule (MaskGIT, MoMask; `reference.md` §6.1). Training draws u ~ U(0, 1) per sample and masks a fraction
γ(u) = cos(πu/2) of its tokens (on average 2/π ≈ 0.64). Generation with S steps uses u_i = i / (S − 1)
(`linspace(0, 1, S)`) and leaves n_i = max(1, round(γ(u_i)·N)) of a sample's N tokens masked before step i, so the
first step predicts every token and the last one re-predicts a single token. Example, N = 49 and S = 10:
n = [49, 48, 46, 42, 38, 31, 24, 17, 9, 1] (torch rounds half to even, as the reference does).

Top-k ratio (`reference.md` §6.1, `topkr` 0.9): the ratio is the fraction of the vocabulary **filtered out**; the
k = ceil((1 − ratio)·K) largest logits survive (26 of K = 256 for 0.9). We keep at least one logit, so ratio 1 is
greedy. Logits tied with the k-th largest survive too.

Guidance (`reference.md` §9.1): `logits = uncond + s·(cond − uncond)`, the convention of the MoMask / MoGenTS /
ReMoMask code, whose evaluation uses s = 4. The paper's Eq. 17, `(1 + s_p)·cond − s_p·uncond` with s_p = 4, is this
formula with s = s_p + 1 = 5. s = 1 gives the conditional logits, s = 0 the unconditional ones.

Randomness comes only from the `generator` argument (None = torch's default generator).
"""
from __future__ import annotations

import math

from typing import Sequence

import torch
from torch import Tensor

_MOD = "models/sampling.py"


# ----------------------------------------------------------------------------------------------------------------
# Schedule and lengths
# ----------------------------------------------------------------------------------------------------------------
def cosine_schedule(u: Tensor | float) -> Tensor:
    """γ(u) = cos(π u / 2): masking ratio at schedule time u ∈ [0, 1] (1 → 0). Same shape as u."""
    u = torch.as_tensor(u, dtype=torch.float32) if not torch.is_tensor(u) else u
    return torch.cos(math.pi * 0.5 * u)


def masked_counts(num_tokens: Tensor, steps: int) -> Tensor:
    """Tokens left masked before each generation step: n_i = max(1, round(γ(i/(S−1))·N)).

    Args:
        num_tokens: (B,) integer N per sample (token positions to fill, ≥ 1)
        steps:      S ≥ 1 (S = 1: one step, u = 0, every token predicted once)
    Returns:
        (S, B) long, non-increasing along S, first row = N, last row = 1 (for S ≥ 2)
    """
    check_steps(steps)
    u = torch.linspace(0.0, 1.0, steps, device=num_tokens.device)                  # (S,)
    n = torch.round(cosine_schedule(u)[:, None] * num_tokens[None, :].float()).long()
    return n.clamp(min=1)


def frames_to_token_steps(frames: Tensor | int, downsample: int = 4) -> Tensor:
    """Motion length in frames → token-map length T' = frames // downsample (RVQVAE2D.downsample = 4).

    Refuses lengths under one token (frames < downsample). Returns a long tensor of the input's shape.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype.is_floating_point or frames.dtype == torch.bool:
        raise ValueError(f"{_MOD}: argument 'frames' must be integer frame counts, got dtype {frames.dtype}")
    if downsample < 1:
        raise ValueError(f"{_MOD}: argument 'downsample' must be ≥ 1, got {downsample}")
    if frames.numel() and int(frames.min()) < downsample:
        raise ValueError(f"{_MOD}: argument 'frames' must be ≥ {downsample} (one token), got {int(frames.min())}")
    return torch.div(frames, downsample, rounding_mode="floor").long()


# ----------------------------------------------------------------------------------------------------------------
# Argument checks (one line each, naming the argument)
# ----------------------------------------------------------------------------------------------------------------
def check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{_MOD}: argument 'steps' must be an integer ≥ 1, got {steps!r}")


def check_guidance_scale(guidance_scale: float) -> None:
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{_MOD}: argument 'guidance_scale' must be a finite number ≥ 0 "
                         f"(1 = conditional only, 0 = unconditional), got {guidance_scale!r}")


def check_topk_ratio(topk_ratio: float) -> None:
    if not isinstance(topk_ratio, (int, float)) or not 0.0 < topk_ratio <= 1.0:
        raise ValueError(f"{_MOD}: argument 'topk_ratio' must be in (0, 1] (fraction of the vocabulary filtered "
                         f"out), got {topk_ratio!r}")


def check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{_MOD}: argument 'temperature' must be a finite number > 0, got {temperature!r}")


def check_generation_args(steps: int, guidance_scale: float, topk_ratio: float, temperature: float) -> None:
    """All four generation knobs at once (before any model work)."""
    check_steps(steps)
    check_guidance_scale(guidance_scale)
    check_topk_ratio(topk_ratio)
    check_temperature(temperature)


# ----------------------------------------------------------------------------------------------------------------
# Filtering and sampling
# ----------------------------------------------------------------------------------------------------------------
def topk_keep(vocab_size: int | Tensor, topk_ratio: float) -> Tensor:
    """k = max(1, ceil((1 − topk_ratio)·K)) logits kept of a vocabulary of K (K int or tensor of sizes)."""
    check_topk_ratio(topk_ratio)
    size = torch.as_tensor(vocab_size)
    # round away float noise first: (1 - 0.9) * 10 is 1.0000000000000002, which must stay 1
    k = torch.ceil(torch.round((1.0 - topk_ratio) * size.double() * 1e6) / 1e6).long()
    return k.clamp(min=1)


def top_k_filter(logits: Tensor, k: int | Tensor) -> Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th), set the rest to −inf.

    Args:
        logits: (..., K)
        k:      int, or a long tensor broadcastable to logits.shape[:-1] (a k per row), 1 ≤ k ≤ K
    Returns:
        (..., K) same dtype
    """
    size = logits.shape[-1]
    k = torch.as_tensor(k, device=logits.device).long()
    if k.numel() and (int(k.min()) < 1 or int(k.max()) > size):
        raise ValueError(f"{_MOD}: argument 'k' must be in 1..{size} (the vocabulary size), "
                         f"got {int(k.min())}..{int(k.max())}")
    ordered = logits.sort(dim=-1, descending=True).values                       # (..., K)
    index = (k - 1).expand(logits.shape[:-1]).unsqueeze(-1)                      # (..., 1)
    threshold = ordered.gather(-1, index)                                        # (..., 1) k-th largest
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / τ (τ > 0; τ → 0 approaches greedy decoding, τ > 1 flattens)."""
    check_temperature(temperature)
    return logits / temperature


def sample_categorical(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row from softmax(logits). logits (..., K) → long (...). −inf entries are never drawn."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    probs = torch.softmax(flat, dim=-1)
    draw = torch.multinomial(probs, 1, generator=generator)                      # (N, 1)
    return draw.reshape(logits.shape[:-1])


def sample_gumbel(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """argmax(logits + G), G ~ Gumbel(0, 1) i.i.d.: a draw from softmax(logits). (..., K) → long (...)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    u = u.clamp(min=1e-20, max=1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    return (logits.float() + gumbel).argmax(dim=-1)


PER_ITEM_NOISE_STEPS = 64      # per-item noise covers this many token steps (≥ the 49 of 196 frames)


def sample_per_item(logits: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Gumbel-max draws (a draw from softmax(logits), like "categorical") with one generator per batch item.

    logits (B, T', ...) → long (B, T', ...). Item b's noise is drawn from `generators[b]` with a fixed shape
    (max(T', 64), ...) and cut to T', so an item gets the same draws whatever else is in its batch and however
    long the batch is padded: batched generation equals one-by-one generation for the same per-item seeds."""
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{_MOD}: one generator per batch item expected ({logits.shape[0]}), got {len(generators)}")
    steps = max(logits.shape[1], PER_ITEM_NOISE_STEPS)
    noise = torch.stack([torch.rand((steps, *logits.shape[2:]), generator=g, device=logits.device,
                                    dtype=torch.float32)[:logits.shape[1]] for g in generators])
    gumbel = -torch.log(-torch.log(noise.clamp(min=1e-20, max=1.0 - 1e-7)))
    return (logits.float() + gumbel).argmax(dim=-1)


def sample(logits: Tensor, sampler: str = "categorical",
           generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Dispatch on `sampler`: "categorical" (multinomial) or "gumbel" (Gumbel-max). A list of generators (one per
    batch item, logits (B, T', ...)) draws per item (`sample_per_item`) with either sampler."""
    if sampler not in ("categorical", "gumbel"):
        raise ValueError(f"{_MOD}: argument 'sampler' must be 'categorical' or 'gumbel', got {sampler!r}")
    if isinstance(generator, (list, tuple)):
        return sample_per_item(logits, generator)
    if sampler == "categorical":
        return sample_categorical(logits, generator)
    if sampler == "gumbel":
        return sample_gumbel(logits, generator)
    raise ValueError(f"{_MOD}: argument 'sampler' must be 'categorical' or 'gumbel', got {sampler!r}")


# ----------------------------------------------------------------------------------------------------------------
# Guidance
# ----------------------------------------------------------------------------------------------------------------
def guidance_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond) (the code's convention; paper Eq. 17 uses s − 1).

    −inf entries (outside a column's codebook) stay −inf in both branches and in the result.
    """
    check_guidance_scale(scale)
    if scale == 1:
        return cond
    if scale == 0:
        return uncond
    finite = torch.isfinite(cond) & torch.isfinite(uncond)
    out = uncond + scale * (cond - uncond)
    return torch.where(finite, out, torch.full_like(out, float("-inf")))


def map_row_chunks(fn, tensors: Sequence[Tensor | None], rows: int | None) -> Tensor:
    """fn(*tensors) computed on slices of at most `rows` rows (dim 0; None entries pass through) and concatenated
    along dim 0; rows None (or ≥ the batch) = one call. Rows are independent in the transformers' passes, so the
    result is the one-call result; smaller slices keep a pass's activations in the CPU caches (BENCHMARKS.md)."""
    n = next(t.shape[0] for t in tensors if t is not None)
    if rows is None or rows >= n:
        return fn(*tensors)
    if rows < 1:
        raise ValueError(f"{_MOD}: argument 'pass_rows' must be ≥ 1 or None, got {rows!r}")
    return torch.cat([fn(*(None if x is None else x[s:s + rows] for x in tensors)) for s in range(0, n, rows)])


def guided_passes(network, inputs: Sequence[Tensor | None], scale: float, rows: int | None = None) -> Tensor:
    """Classifier-free guidance over `network(*inputs, drop)` (drop: (B,) bool, True = unconditional): cond and
    uncond run as one doubled batch, in slices of at most `rows` rows (`map_row_chunks`), combined by
    `guidance_combine`; scale 1 runs the conditional half only. inputs: (B, ...) tensors or None."""
    check_guidance_scale(scale)
    first = next(x for x in inputs if x is not None)
    b, device = first.shape[0], first.device
    if scale == 1:
        return map_row_chunks(network, [*inputs, torch.zeros(b, dtype=torch.bool, device=device)], rows)
    doubled = [None if x is None else torch.cat([x, x], dim=0) for x in inputs]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
    both = map_row_chunks(network, [*doubled, drop], rows)
    return guidance_combine(both[:b], both[b:], scale)


def register_column_vocabulary(module: torch.nn.Module, num_groups: int, codebook_sizes,
                               has_global_column: bool) -> int:
    """The token map's one vocabulary, shared by both transformers: the joint columns' codes 0..K_j−1, then the
    global column's K_j..K_j+K_g−1. Sets `module.k_max` and registers (non-persistent) `codebook_sizes (C,)`,
    `column_offsets (C,)`, `column_vocab (C, K_max)` (each column's gather index into the vocabulary, clamped) and
    `column_valid (C, K_max)` (False beyond the column's codebook). Returns the number of codes V = K_j (+ K_g)."""
    sizes = [int(k) for k in codebook_sizes]
    joint_k = sizes[0]
    offsets = [0] * num_groups + ([joint_k] if has_global_column else [])
    module.k_max = max(sizes)
    k = torch.arange(module.k_max)
    module.register_buffer("codebook_sizes", torch.tensor(sizes), persistent=False)
    module.register_buffer("column_offsets", torch.tensor(offsets), persistent=False)
    module.register_buffer("column_vocab", torch.stack([offsets[j] + k.clamp(max=sizes[j] - 1)
                                                        for j in range(len(sizes))]), persistent=False)
    module.register_buffer("column_valid", k[None, :] < torch.tensor(sizes)[:, None], persistent=False)
    return joint_k + (sizes[-1] if has_global_column else 0)


def check_token_map(num_groups: int, num_columns: int, codebook_sizes, where: str) -> None:
    """The token-map fields both transformers' configs share (RVQVAE2D geometry): ValueError naming the key."""
    def bad(key: str, expected: str, got) -> ValueError:
        return ValueError(f"{where}: model.{key} must be {expected}, got {got!r}")

    if num_groups < 1:
        raise bad("num_groups", "≥ 1", num_groups)
    if num_columns not in (num_groups, num_groups + 1):
        raise bad("num_columns", f"num_groups ({num_groups}) or num_groups + 1 (global column)", num_columns)
    sizes = list(codebook_sizes)
    if len(sizes) != num_columns or any(int(k) < 1 for k in sizes):
        raise bad("codebook_sizes", f"a list of {num_columns} sizes ≥ 1 (one per column)", sizes)
    if len(set(sizes[:num_groups])) != 1:
        raise bad("codebook_sizes", "one size for all joint-group columns (they share a codebook)", sizes)
