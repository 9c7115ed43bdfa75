"""Projection heads of the retriever's two towers (the motion encoder's and the text tower's last layer).

    PROJECTION_HEADS = ("linear", "official")
    build_projection_head(kind, in_dim, out_dim, dropout) -> nn.Module      (B, in_dim) -> (B, out_dim)
    OfficialProjectionHead(in_dim, out_dim, dropout)

- "linear": Dropout(p) then Linear(in_dim -> out_dim). An `nn.Sequential`, so its parameters are `1.weight`,
  `1.bias` (the state-dict names of the checkpoints written before the option existed).
- "official": the head of the official Part_TMR code (issue #12 review of the official code; not in the paper):

      p = Linear_proj(x);  h = Linear_fc(GELU(p));  h = Dropout(h);  y = LayerNorm(h + p)

  Parameters `proj.weight (out, in)`, `proj.bias (out)`, `fc.weight (out, out)`, `fc.bias (out)`,
  `norm.weight (out)`, `norm.bias (out)`. GELU is the exact (erf) form, LayerNorm eps 1e-5 (PyTorch defaults).
  Its output is a LayerNorm output: of norm about √out_dim, which is what `model.similarity=official` feeds the
  loss un-normalised.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

PROJECTION_HEADS = ("linear", "official")


class OfficialProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout -> residual (+ the first Linear's output) -> LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.proj(x)
        return self.norm(self.drop(self.fc(F.gelu(p))) + p)


def build_projection_head(kind: str, in_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Module:
    """The projection head `kind` ("linear" | "official", see the module docstring)."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if kind == "official":
        return OfficialProjectionHead(in_dim, out_dim, dropout)
    raise ValueError(f"models/projection_head.py: projection head must be one of {PROJECTION_HEADS}, got {kind!r}")
