"""Residual vector quantization (paper §2.3 Eq. 13; MoMask RVQ, `reference.md` §5.1).

A residual quantizer has Q = L+1 levels. Level l quantizes the residual r_l left by the levels before it,

    y_l = Q_l(r_l),    r_{l+1} = r_l − sg(y_l),    r_0 = ŷ (the encoder output),

and the quantized latent is Σ_l y_l. Each level owns one codebook (not shared) of `nb_code` vectors of width
`code_dim`. Nearest codes use the squared L2 distance.

Codebook learning is not by gradient (`reference.md` §5.1, "EMA with reset"):
- **Initialisation from the first batch.** The first training batch sets each level's codebook from its residual
  vectors (tiled with noise 0.01/√d when the batch holds fewer vectors than codes).
- **EMA updates.** Every training step, per code, the sum and the count of the vectors assigned to it are averaged
  with decay `mu` (0.99); the code becomes sum / count. Both statistics are **buffers**, so they are saved in the
  state dict and resuming continues them (the reference forgets them, `reference.md` §9.13).
- **Dead-code reset.** A code whose EMA count falls below 1 is replaced by a vector of the current batch (a random
  draw without replacement; the reference takes the first vectors of a shuffled batch, which is equivalent).
- **Quantize dropout.** With probability `quantize_dropout` (0.2) per training batch, a number of active levels k+1
  is drawn uniformly in 1..Q and levels above k are skipped; their indices are −1.

Code selection in training: MoMask Gumbel-samples the code (temperature 0.5) from −distance during training.
We default to the **argmax** (nearest code) in training as well, a deliberate choice: it makes training
deterministic given the seed and makes the encoder output the same code in training and evaluation. Set
`sample="gumbel"` to reproduce MoMask. Evaluation always uses the nearest code.

Straight-through estimator (`straight_through`, a config key of the tokenizer: `model.straight_through`):
- "sum" (ours): one estimator on the sum, output `sg(Σ y_l) + (x − sg(x))`. Its gradient with respect to x is the
  identity.
- "per_level" (the official MoMask / ReMoMask code): each level's output is its own estimate `r_l + sg(y_l − r_l)`
  and the levels are summed; since every r_l = x − Σ_{m<l} sg(y_m) has the identity as its gradient, the
  reconstruction gradient reaching the encoder is **A times** the identity, A = the number of active levels. We
  compute it as `sg(Σ y_l) + A·(x − sg(x))`, which has that gradient.
In both modes the value is exactly Σ y_l (so a forward pass in eval mode equals `decode_indices(indices)` bit for
bit). The two modes are not a global gradient scale that Adam would absorb: the factor A multiplies only the
reconstruction gradient, not the commitment gradient (which reaches x directly through each r_l, unscaled), so it
changes the balance of the two terms; and under quantize dropout A changes from batch to batch (1..Q).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    """True inside an initialised torch.distributed process group (torchrun): codebook statistics are all-reduced
    so every rank keeps identical codebooks."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


STRAIGHT_THROUGH = ("sum", "per_level")      # see the module docstring


@dataclass
class QuantizerStats:
    """Code usage of one forward pass, per level (tensors of shape (Q,)).

    perplexity: exp(entropy) of the batch's code histogram (1 = one code used; nb_code = uniform use)
    used:       fraction of the codebook hit at least once in this batch
    live:       fraction of codes whose EMA count is ≥ 1 (codes that survive the dead-code reset)
    active:     1.0 where the level was active in this pass (quantize dropout), else 0.0
    """

    perplexity: Tensor
    used: Tensor
    live: Tensor
    active: Tensor

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Scalars for logging: `<prefix>{perplexity,used,live}/l<level>` for every level."""
        out: dict[str, float] = {}
        for name in ("perplexity", "used", "live"):
            values = getattr(self, name)
            for level, v in enumerate(values.tolist()):
                out[f"{prefix}{name}/l{level}"] = float(v)
        return out


class Codebook(nn.Module):
    """One level: `nb_code` vectors of width `code_dim`, learned by EMA with dead-code reset.

    Buffers (all saved): `codebook (K, d)`, `code_sum (K, d)`, `code_count (K,)`, `initted ()`.
    """

    def __init__(self, nb_code: int, code_dim: int, mu: float = 0.99, sample: str = "argmax",
                 gumbel_temperature: float = 0.5, reset_threshold: float = 1.0):
        super().__init__()
        if nb_code < 1 or code_dim < 1:
            raise ValueError(f"models/quantizer.py: nb_code and code_dim must be ≥ 1, got {nb_code}, {code_dim}")
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"models/quantizer.py: argument 'mu' (EMA decay) must be in [0, 1), got {mu}")
        if sample not in ("argmax", "gumbel"):
            raise ValueError(f"models/quantizer.py: argument 'sample' must be 'argmax' or 'gumbel', got {sample!r}")
        self.nb_code, self.code_dim, self.mu = nb_code, code_dim, mu
        self.sample, self.gumbel_temperature, self.reset_threshold = sample, gumbel_temperature, reset_threshold
        # Before the first training batch the codebook is a small random one, so an untrained model still
        # encodes to varied indices (tests, shape checks); the first training batch overwrites it.
        self.register_buffer("codebook", torch.randn(nb_code, code_dim) / math.sqrt(code_dim))
        self.register_buffer("code_sum", self.codebook.clone())
        self.register_buffer("code_count", torch.ones(nb_code))
        self.register_buffer("initted", torch.tensor(False))

    # -- lookup ------------------------------------------------------------------------------------------
    def distances(self, x: Tensor) -> Tensor:
        """Squared L2 distances (N, d) × (K, d) -> (N, K)."""
        return (x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ self.codebook.t()
                + self.codebook.pow(2).sum(-1)[None, :])

    def select(self, x: Tensor) -> Tensor:
        """Code indices (N,) for vectors x (N, d): nearest code, or a Gumbel sample in training if configured."""
        dist = self.distances(x)
        if self.training and self.sample == "gumbel":
            u = torch.rand_like(dist).clamp(1e-10, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(u))
            return torch.argmax(-dist / self.gumbel_temperature + gumbel, dim=-1)
        return torch.argmin(dist, dim=-1)

    def lookup(self, idx: Tensor) -> Tensor:
        """Codes for indices of any shape (...,) -> (..., d); index −1 gives the zero vector."""
        valid = idx >= 0
        codes = F.embedding(idx.clamp_min(0), self.codebook)
        return codes * valid.unsqueeze(-1).to(codes.dtype)

    # -- learning ----------------------------------------------------------------------------------------
    @staticmethod
    def _draw_vectors(x: Tensor, k: int) -> Tensor:
        """k vectors of the batch x (N, d), drawn without replacement; tiled with noise 0.01/√d when N < k."""
        n, d = x.shape
        if n < k:
            reps = (k + n - 1) // n
            x = x.repeat(reps, 1)
            x = x + torch.randn_like(x) * (0.01 / math.sqrt(d))
        return x[torch.randperm(x.shape[0], device=x.device)[:k]]

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Codebook = K vectors of the batch x (N, d); EMA sum = codebook, count = 1."""
        codes = self._draw_vectors(x.detach().float(), self.nb_code)
        if _distributed():
            torch.distributed.broadcast(codes, src=0)
        self.codebook.copy_(codes)
        self.code_sum.copy_(codes)
        self.code_count.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: Tensor, idx: Tensor) -> None:
        """One EMA step with the batch x (N, d) assigned to codes idx (N,), then the dead-code reset.

            sum   ← mu·sum   + (1−mu)·Σ_{i: idx_i = k} x_i
            count ← mu·count + (1−mu)·#{i: idx_i = k}
            code  ← sum / count          if count ≥ reset_threshold
                    a batch vector       otherwise (dead code)
        """
        x = x.detach().float()
        onehot = F.one_hot(idx, self.nb_code).to(x.dtype)          # (N, K)
        batch_sum = onehot.t() @ x                                 # (K, d)
        batch_count = onehot.sum(0)                                # (K,)
        if _distributed():                                         # the EMA sees the global batch under DDP
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(batch_count)
        self.code_sum.mul_(self.mu).add_(batch_sum, alpha=1.0 - self.mu)
        self.code_count.mul_(self.mu).add_(batch_count, alpha=1.0 - self.mu)
        live = (self.code_count >= self.reset_threshold).unsqueeze(-1).to(x.dtype)
        updated = self.code_sum / self.code_count.clamp_min(1e-12).unsqueeze(-1)
        random_codes = self._draw_vectors(x, self.nb_code)
        if _distributed():                                         # every rank resets dead codes to rank 0's draw
            torch.distributed.broadcast(random_codes, src=0)
        self.codebook.copy_(live * updated + (1.0 - live) * random_codes)


class ResidualVQ(nn.Module):
    """Q residual levels, each with its own `Codebook`.

    Args:
        num_quantizers: Q = L+1 (paper: 5 residual layers + base = 6)
        nb_code, code_dim: codebook size K and width d of every level
        mu: EMA decay; quantize_dropout: probability of the per-batch level dropout
        sample: "argmax" (default, see module doc) or "gumbel"; gumbel_temperature: MoMask 0.5
        straight_through: "sum" (default: gradient identity) or "per_level" (official: A × identity, A active levels)
    """

    def __init__(self, num_quantizers: int, nb_code: int, code_dim: int, mu: float = 0.99,
                 quantize_dropout: float = 0.2, sample: str = "argmax", gumbel_temperature: float = 0.5,
                 reset_threshold: float = 1.0, straight_through: str = "sum"):
        super().__init__()
        if straight_through not in STRAIGHT_THROUGH:
            raise ValueError(f"models/quantizer.py: argument 'straight_through' must be one of {STRAIGHT_THROUGH}, "
                             f"got {straight_through!r}")
        self.straight_through = straight_through
        if num_quantizers < 1:
            raise ValueError(f"models/quantizer.py: argument 'num_quantizers' must be ≥ 1, got {num_quantizers}")
        if not 0.0 <= quantize_dropout <= 1.0:
            raise ValueError(f"models/quantizer.py: argument 'quantize_dropout' must be in [0, 1], "
                             f"got {quantize_dropout}")
        self.num_quantizers, self.nb_code, self.code_dim = num_quantizers, nb_code, code_dim
        self.quantize_dropout = quantize_dropout
        self.layers = nn.ModuleList(
            Codebook(nb_code, code_dim, mu, sample, gumbel_temperature, reset_threshold)
            for _ in range(num_quantizers))

    def _check(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.code_dim:
            raise ValueError(f"models/quantizer.py: ResidualVQ input 'x' must have shape (N, T, {self.code_dim}), "
                             f"got {tuple(x.shape)}")

    def num_active_levels(self, device: torch.device | str = "cpu") -> int:
        """Levels to use for this batch: Q, or (training, with probability p) a uniform draw in 1..Q.

        Under DDP rank 0's draw is broadcast, so every rank runs the same levels (and the same EMA collectives).
        """
        if not (self.training and self.quantize_dropout > 0):
            return self.num_quantizers
        drop = bool(torch.rand(()) < self.quantize_dropout)
        levels = int(torch.randint(1, self.num_quantizers + 1, ())) if drop else self.num_quantizers
        if _distributed():
            shared = torch.tensor([levels], dtype=torch.long, device=device)
            torch.distributed.broadcast(shared, src=0)
            levels = int(shared.item())
        return levels

    def forward(self, x: Tensor, num_levels: int | None = None):
        """Quantize x (N, T, d).

        Args:
            num_levels: force the number of active levels (None = all, or the quantize-dropout draw in training)
        Returns:
            quantized (N, T, d): value Σ_l y_l, straight-through gradient to x (identity, or A × identity with
                straight_through="per_level", A = active levels)
            indices (N, T, Q): code index per level, −1 for levels skipped by quantize dropout
            commit_loss (): mean over active levels of MSE(r_l, sg(y_l))
            stats: QuantizerStats
        """
        self._check(x)
        with torch.autocast(x.device.type, enabled=False):     # distances and codes in float32 under bf16/fp16
            return self._forward(x.float(), num_levels)

    def _forward(self, x: Tensor, num_levels: int | None):
        n, t, d = x.shape
        active = self.num_active_levels(x.device) if num_levels is None else int(num_levels)
        if not 1 <= active <= self.num_quantizers:
            raise ValueError(f"models/quantizer.py: argument 'num_levels' must be in 1..{self.num_quantizers}, "
                             f"got {num_levels}")
        flat = x.reshape(n * t, d)
        residual = flat.detach()
        quantized = torch.zeros_like(flat)
        indices = torch.full((n * t, self.num_quantizers), -1, dtype=torch.long, device=x.device)
        commit = x.new_zeros(())
        perplexity = torch.zeros(self.num_quantizers, device=x.device)
        used = torch.zeros(self.num_quantizers, device=x.device)
        active_mask = torch.zeros(self.num_quantizers)
        for level, book in enumerate(self.layers):
            if level >= active:
                break
            if self.training and not bool(book.initted):
                book.init_from(residual)
            idx = book.select(residual)
            y = book.lookup(idx)                                    # the code chosen, before this step's update
            if self.training:
                book.ema_update(residual, idx)
            # Commitment of the encoder: the residual (a function of x, gradient through the base term x)
            # towards the chosen code. r_l = x − Σ_{m<l} sg(y_m), so its gradient w.r.t. x is the identity.
            r_with_grad = flat - (flat.detach() - residual)
            commit = commit + F.mse_loss(r_with_grad, y.detach())
            quantized = quantized + y.detach()
            residual = residual - y.detach()
            indices[:, level] = idx
            counts = torch.bincount(idx, minlength=book.nb_code).float()
            probs = counts / counts.sum()
            perplexity[level] = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            used[level] = (counts > 0).float().mean()
            active_mask[level] = 1.0
        commit = commit / active
        live = torch.stack([(b.code_count >= b.reset_threshold).float().mean() for b in self.layers])
        perplexity, used, live = torch.stack([perplexity, used, live]).cpu()   # one device sync for the stats
        # value Σ y_l exactly; d out / d x = identity ("sum") or active × identity ("per_level": the sum of the
        # levels' own estimates r_l + sg(y_l − r_l), each r_l with gradient identity)
        scale = float(active) if self.straight_through == "per_level" else 1.0
        out = quantized + scale * (flat - flat.detach())
        stats = QuantizerStats(perplexity=perplexity, used=used, live=live, active=active_mask)
        return out.reshape(n, t, d), indices.reshape(n, t, self.num_quantizers), commit, stats

    def _check_indices(self, indices: Tensor) -> None:
        if indices.ndim != 3 or indices.shape[-1] != self.num_quantizers:
            raise ValueError(f"models/quantizer.py: argument 'indices' must have shape (N, T, {self.num_quantizers}), "
                             f"got {tuple(indices.shape)}")
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"models/quantizer.py: argument 'indices' must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= self.nb_code):
            raise ValueError(f"models/quantizer.py: argument 'indices' must lie in -1..{self.nb_code - 1} "
                             f"(−1 = skipped level), found {int(indices.min())}..{int(indices.max())}")

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """indices (N, T, Q) -> codes (Q, N, T, d); index −1 gives zeros."""
        self._check_indices(indices)
        indices = indices.long()
        return torch.stack([book.lookup(indices[..., level]) for level, book in enumerate(self.layers)])

    def decode_indices(self, indices: Tensor) -> Tensor:
        """indices (N, T, Q) -> quantized latent Σ_l y_l (N, T, d), summed in level order as in `forward`."""
        codes = self.codes_from_indices(indices)
        n, t = indices.shape[:2]
        out = torch.zeros(n * t, self.code_dim, dtype=codes.dtype, device=codes.device)
        for level in range(self.num_quantizers):
            out = out + codes[level].reshape(n * t, self.code_dim)
        return out.reshape(n, t, self.code_dim)
