"""Small tensor helpers shared by models, data and evaluation (ground layer: imports only torch)."""
from __future__ import annotations

import torch
from torch import Tensor


def lengths_to_mask(lengths, max_len: int, device: torch.device | str | None = None) -> Tensor:
    """(B,) valid lengths -> (B, max_len) bool mask, True on the first `lengths[b]` positions (the valid frames).

    `lengths` may be a tensor, a list or a numpy array; the mask is on `device` (default: that of `lengths`, CPU for
    non-tensors). The padding mask is `~lengths_to_mask(...)`.
    """
    lengths = torch.as_tensor(lengths).reshape(-1)
    device = lengths.device if device is None else torch.device(device)
    return torch.arange(max_len, device=device)[None, :] < lengths.to(device)[:, None]
