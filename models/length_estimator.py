"""LengthEstimator: a distribution over motion lengths from the text feature (MoMask, `reference.md` §5.2).

    LengthEstimatorConfig        text width, MLP widths, dataset (its length range), defaults (in the checkpoint)
    LengthEstimator(cfg)         forward (training loss), logits, probabilities, predict (frames)
    frames_to_bin / bin_to_frames   length in frames <-> class index (units of 4 frames)

Classes. Class k is a motion of k·unit_length frames (k token steps of the tokenizer, unit_length = 4). There are
`num_bins` = 50 classes (0..49; MoMask: 200 // 4). Only the bins of the dataset's length range can be predicted:
ceil(min_length / 4) .. pad_length / 4, i.e. 40..196 frames for HumanML3D (bins 10..49) and 24..196 for KIT-ML
(bins 6..49), from `datasets.registry.dataset_facts`; the logits of the other bins are −inf (MoMask leaves class 0
open, `reference.md` §9.15). Training targets are length // 4, clamped into that range.

Network (MoMask): Linear(text_dim → 512), LayerNorm, LeakyReLU(0.2), Dropout(0.2), Linear(→ 256), LayerNorm,
LeakyReLU, Dropout, Linear(→ 128), LayerNorm, LeakyReLU, Linear(→ num_bins).

Generation (`predict`), two documented modes:
- `mode="sample"` (MoMask's generation): one categorical draw from softmax(logits / temperature) with the explicit
  `generator`, so repeated prompts get varied lengths;
- `mode="argmax"`: the most likely bin (deterministic, no generator needed).
Both return lengths in frames, multiples of 4 within the dataset's range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.registry import DATASETS, dataset_facts

_MOD = "models/length_estimator.py"
MODES = ("sample", "argmax")


@dataclass
class LengthEstimatorConfig:
    dataset: str = "t2m"                 # datasets.registry: the length range (t2m 40..196, kit 24..196 frames)
    text_dim: int = 512                  # reference.md §5.2: the CLIP text feature (mini configs: MiniLM 384)
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])   # reference.md §5.2
    dropout: float = 0.2                 # reference.md §5.2
    negative_slope: float = 0.2          # reference.md §5.2: LeakyReLU(0.2)
    num_bins: int = 50                   # reference.md §5.2: 50 = 200 // 4 classes
    unit_length: int = 4                 # reference.md §5.2: class k = k·4 frames (datasets.registry unit_length)
    min_length: int = 0                  # frames; 0 = the dataset's min_length (40 t2m, 24 kit)
    max_length: int = 0                  # frames; 0 = the dataset's pad_length (196)

    def validate(self) -> None:
        def bad(key: str, expected: str, got) -> ValueError:
            return ValueError(f"{_MOD}: model.{key} must be {expected}, got {got!r}")

        if self.dataset not in DATASETS:
            raise bad("dataset", f"one of {DATASETS}", self.dataset)
        for key in ("text_dim", "num_bins", "unit_length"):
            if getattr(self, key) < 1:
                raise bad(key, "≥ 1", getattr(self, key))
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise bad("hidden", "a non-empty list of widths ≥ 1", list(self.hidden))
        if not 0.0 <= self.dropout <= 1.0:
            raise bad("dropout", "in [0, 1]", self.dropout)
        lo, hi = self.length_range
        if lo < self.unit_length:
            raise bad("min_length", f"≥ unit_length ({self.unit_length}) frames", self.min_length)
        if hi > (self.num_bins - 1) * self.unit_length:
            raise bad("max_length", f"≤ (num_bins − 1)·unit_length = {(self.num_bins - 1) * self.unit_length}",
                      hi)
        if lo > hi:
            raise bad("min_length", f"≤ max_length ({hi})", lo)

    @property
    def length_range(self) -> tuple[int, int]:
        """(shortest, longest) length in frames that can be predicted: multiples of unit_length."""
        facts = dataset_facts(self.dataset) if self.dataset in DATASETS else None
        lo = self.min_length or (facts.min_length if facts else self.unit_length)
        hi = self.max_length or (facts.pad_length if facts else self.unit_length)
        u = self.unit_length
        return int(math.ceil(lo / u)) * u, (hi // u) * u

    @property
    def bin_range(self) -> tuple[int, int]:
        """(first, last) predictable class index."""
        lo, hi = self.length_range
        return lo // self.unit_length, hi // self.unit_length


def frames_to_bin(frames: Tensor | int, unit_length: int = 4) -> Tensor:
    """Length in frames → class index k = frames // unit_length (the token steps). Long tensor."""
    frames = torch.as_tensor(frames)
    if frames.dtype.is_floating_point or frames.dtype == torch.bool:
        raise ValueError(f"{_MOD}: argument 'frames' must be integer frame counts, got dtype {frames.dtype}")
    return torch.div(frames, unit_length, rounding_mode="floor").long()


def bin_to_frames(bins: Tensor | int, unit_length: int = 4) -> Tensor:
    """Class index k → length in frames k·unit_length. Long tensor."""
    return torch.as_tensor(bins).long() * unit_length


class LengthEstimator(nn.Module):
    """MLP from the text feature to logits over length classes (module docstring)."""

    def __init__(self, cfg: LengthEstimatorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.text_dim
        for i, h in enumerate(cfg.hidden):
            layers += [nn.Linear(width, int(h)), nn.LayerNorm(int(h)), nn.LeakyReLU(cfg.negative_slope)]
            if i < len(cfg.hidden) - 1:
                layers.append(nn.Dropout(cfg.dropout))
            width = int(h)
        layers.append(nn.Linear(width, cfg.num_bins))
        self.net = nn.Sequential(*layers)
        lo, hi = cfg.bin_range
        k = torch.arange(cfg.num_bins)
        self.register_buffer("allowed", (k >= lo) & (k <= hi), persistent=False)         # (num_bins,)

    def _check_text(self, t: Tensor) -> None:
        if not torch.is_tensor(t) or t.ndim != 2 or t.shape[1] != self.cfg.text_dim:
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{_MOD}: argument 't' must have shape (B, text_dim={self.cfg.text_dim}), got {got}")

    def logits(self, t: Tensor) -> Tensor:
        """t (B, text_dim) → (B, num_bins) float32, −inf outside the dataset's length range."""
        self._check_text(t)
        return self.net(t).float().masked_fill(~self.allowed, float("-inf"))

    def probabilities(self, t: Tensor, temperature: float = 1.0) -> Tensor:
        """(B, num_bins): softmax(logits / temperature); zero outside the length range."""
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"{_MOD}: argument 'temperature' must be a finite number > 0, got {temperature!r}")
        return torch.softmax(self.logits(t) / temperature, dim=-1)

    def targets(self, lengths: Tensor) -> Tensor:
        """Lengths in frames (B,) → class indices (B,) clamped into the predictable range."""
        lo, hi = self.cfg.bin_range
        return frames_to_bin(lengths, self.cfg.unit_length).clamp(lo, hi)

    def forward(self, t: Tensor, lengths: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the length class. t (B, text_dim), lengths (B,) in frames.

        Returns loss (mean over the batch) and logs {"loss", "acc" (exact class), "within1" (|k̂ − k| ≤ 1)}."""
        lengths = torch.as_tensor(lengths, device=t.device).reshape(-1)
        if lengths.shape[0] != t.shape[0] or lengths.dtype.is_floating_point:
            raise ValueError(f"{_MOD}: argument 'lengths' must be ({t.shape[0]},) integer frame counts, got shape "
                             f"{tuple(lengths.shape)} dtype {lengths.dtype}")
        logits = self.logits(t)
        target = self.targets(lengths)
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            pred = logits.argmax(-1)
            acc = (pred == target).float().mean()
            within = ((pred - target).abs() <= 1).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc), "within1": float(within)}

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu") -> tuple["LengthEstimator", dict]:
        """Rebuild from a `train_residual.py --length-estimator` checkpoint alone (its config.length_model), eval
        mode on `device`. Returns (model, checkpoint). The one way to load a trained length estimator."""
        from utils.checkpoint import CheckpointError, load_checkpoint, load_model_state
        from utils.config import from_dict

        ckpt = load_checkpoint(path, stage="length_estimator", map_location="cpu")
        section = (ckpt.get("config") or {}).get("length_model")
        if not isinstance(section, dict):
            raise CheckpointError(f"checkpoint {path} has no config.length_model section to rebuild the "
                                  f"LengthEstimator from; was it written by `train_residual.py --length-estimator`?")
        model = cls(from_dict(LengthEstimatorConfig, section, source=f"{path}: config.length_model"))
        load_model_state(model, ckpt["model"], path)
        return model.to(device).eval(), ckpt

    @torch.no_grad()
    def predict(self, t: Tensor, mode: str = "sample", generator: torch.Generator | None = None,
                temperature: float = 1.0) -> Tensor:
        """Motion lengths in frames (B,) long for text features t (B, text_dim).

        mode "sample": one categorical draw per prompt from softmax(logits / temperature) with `generator` (None =
        torch's default generator); "argmax": the most likely class. Always a multiple of unit_length inside the
        dataset's range (`cfg.length_range`). Call `eval()` first (dropout)."""
        if mode not in MODES:
            raise ValueError(f"{_MOD}: argument 'mode' must be one of {MODES}, got {mode!r}")
        if mode == "argmax":
            bins = self.logits(t).argmax(-1)
        else:
            probs = self.probabilities(t, temperature)
            bins = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return bin_to_frames(bins, self.cfg.unit_length)
