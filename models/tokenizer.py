"""`MotionTokenizer`: the one way later stages use a trained RVQVAE2D (raw features ↔ token maps).

    tok = MotionTokenizer.from_checkpoint("runs/rvq/mini/checkpoints/best.pt", device)
    tokens = tok.encode(raw, lengths)            # raw (B, T, D) de-normalised features -> (B, T', C, Q)
    raw_hat = tok.decode(tokens)                 # (B, T', C, Q) -> (B, 4T', D) de-normalised features
    tok.normalize(raw) / tok.denormalize(x)      # with the statistics stored in the checkpoint

The tokenizer owns its normalisation: callers hand it raw features and get raw features back, so a batch is
normalised once for the model. The encoder runs in eval mode (no dropout, no quantize dropout, no EMA update), so
tokens are a deterministic function of the input. Token steps past a motion's length (`ceil(length / 4)` steps are
valid) are set to −1, the map's "no code" value, which `decode` turns into zero codes.

`fingerprint` is a content hash of the weights and the statistics: a token cache and every generator checkpoint
record it, and a generator trained on another tokenizer is refused (`utils.checkpoint.check_upstream`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.rvq import RVQConfig, RVQOutput, RVQVAE2D
from utils.checkpoint import CheckpointError, load_model, tensor_fingerprint
from utils.tensors import lengths_to_mask

_MOD = "models/tokenizer.py"


@dataclass
class MotionTokenizer:
    """A trained RVQVAE2D (eval mode) with the normalisation statistics it was trained with.

    Attributes:
        model: the RVQVAE2D, eval mode, on `device`
        mean, std: (D,) float32 tensors: raw = normalised · std + mean
        config: the stage config of the checkpoint (plain dict); path: where it was loaded from ("" in memory)
    """
    model: RVQVAE2D
    mean: Tensor
    std: Tensor
    config: dict
    path: str = ""

    def __post_init__(self) -> None:
        d = self.model.feature_dim
        self.mean = torch.as_tensor(np.asarray(self.mean, np.float32) if not torch.is_tensor(self.mean)
                                    else self.mean).float().cpu()
        self.std = torch.as_tensor(np.asarray(self.std, np.float32) if not torch.is_tensor(self.std)
                                   else self.std).float().cpu()
        if self.mean.shape != (d,) or self.std.shape != (d,):
            raise ValueError(f"{_MOD}: mean and std must have shape ({d},) for dataset {self.dataset!r}, got "
                             f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}")
        self.model.eval()
        self._fingerprint: str | None = None

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MotionTokenizer":
        """Rebuild the tokenizer from an `rvq` checkpoint alone (config, weights, EMA codebooks, statistics)."""
        model, ckpt = load_model(path, RVQVAE2D, RVQConfig, stage="rvq", device=device)
        extra = ckpt.get("extra") or {}
        if "mean" not in extra or "std" not in extra:
            raise CheckpointError(f"checkpoint {path} has no normalisation statistics (extra.mean / extra.std); "
                                  f"it was not written by train_rvq.py")
        return cls(model=model, mean=extra["mean"], std=extra["std"], config=ckpt["config"], path=str(path))

    # ---- geometry ---------------------------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return self.model.cfg.dataset

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_columns(self) -> int:
        """C: token-map columns (6 joint groups, +1 global column)."""
        return self.model.num_columns

    @property
    def codebook_sizes(self) -> list[int]:
        """(C,) codebook size of each column."""
        return list(self.model.codebook_sizes)

    @property
    def num_quantizers(self) -> int:
        """Q: RVQ levels (base + residual layers)."""
        return self.model.num_quantizers

    @property
    def downsample(self) -> int:
        """Frames per token step (4)."""
        return self.model.downsample

    def token_lengths(self, lengths: Tensor) -> Tensor:
        """Frames (B,) -> valid token steps (B,) = ceil(length / downsample)."""
        lengths = torch.as_tensor(lengths).reshape(-1).long()
        return (lengths + self.downsample - 1) // self.downsample

    @property
    def fingerprint(self) -> str:
        """Content hash (16 hex) of the weights (buffers included) and the normalisation statistics."""
        if self._fingerprint is None:
            state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            self._fingerprint = tensor_fingerprint({**state, "mean": self.mean, "std": self.std})
        return self._fingerprint

    # ---- normalisation ----------------------------------------------------------------------------------------
    def normalize(self, raw: Tensor) -> Tensor:
        """Raw features (..., D) -> the tokenizer's normalised input, on the input's device."""
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised features (..., D) -> raw features, on the input's device."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    # ---- tokens -------------------------------------------------------------------------------------------------
    def _prepare(self, raw: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Normalised input on the model's device, zeroed past each length; and the lengths (B,) on the CPU."""
        if not torch.is_tensor(raw) or raw.ndim != 3:
            raise ValueError(f"{_MOD}: argument 'raw' must be a tensor (B, T, D), got "
                             f"{tuple(raw.shape) if torch.is_tensor(raw) else type(raw).__name__}")
        b, t, _ = raw.shape
        lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else \
            torch.as_tensor(lengths).reshape(-1).long().cpu()
        if lengths.shape[0] != b or int(lengths.min()) < 1 or int(lengths.max()) > t:
            raise ValueError(f"{_MOD}: argument 'lengths' must hold {b} lengths in [1, {t}] frames, got "
                             f"{lengths.tolist()}")
        keep = lengths_to_mask(lengths, t, self.device)[..., None]
        return self.normalize(raw.to(self.device).float()) * keep, lengths

    @torch.no_grad()
    def encode(self, raw: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Raw features (B, T, D), valid frames (B,) (None = all) -> token map (B, T', C, Q), T' = T / 4.

        Deterministic (eval mode). Steps past `ceil(length / 4)` are −1."""
        x, lengths = self._prepare(raw, lengths)
        tokens = self.model.encode(x)
        valid = lengths_to_mask(self.token_lengths(lengths), tokens.shape[1], tokens.device)
        return tokens.masked_fill(~valid[:, :, None, None], -1)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Token map (B, T', C, Q) (−1 = no code) -> raw features (B, 4T', D) on the model's device."""
        return self.denormalize(self.model.decode(tokens.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, raw: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, RVQOutput, Tensor]:
        """Raw features (B, T, D) through the whole tokenizer (encode, quantize, decode) in one forward pass.

        Returns (the normalised, zero-padded input (B, T, D) on the model's device; the RVQOutput, whose `indices`
        are the tokens; the reconstruction as raw features (B, T, D) on the CPU)."""
        x, _ = self._prepare(raw, lengths)
        out = self.model(x)
        return x, out, self.denormalize(out.recon).cpu()
