"""`Bf16Copy`: a bfloat16 copy of a module that follows its fp32 source.

    copy = Bf16Copy(model)      # holds a reference to `model`; nothing is copied yet
    fast = copy.get()           # a deep copy with every floating-point parameter and buffer in bfloat16
    model.load_state_dict(sd)   # ... the source changes ...
    copy.get()                  # a fresh copy: the cached one no longer matches the source

Why a copy instead of autocast (BENCHMARKS.md "Generation (issue #16)"): under autocast every Linear casts its fp32
input to bf16 and the residual stream, layer norms and GELUs stay in fp32, so each layer moves its activations
through memory several times; a module held in bf16 keeps the whole pass in bf16 (measured with the pipeline's
other CPU changes: 1.07× at batch 1 and 1.20–1.58× at batch 32 over autocast). The source module is never
modified: the caller keeps its fp32 weights for training, checkpoints and exact fp32 inference.

The copy is rebuilt when any parameter or buffer of the source is replaced or modified in place (load_state_dict,
an optimizer step): its key is the identity, in-place version counter, dtype and device of every tensor. A write
that bypasses version counting (`param.data = ...`, `param.data.copy_(...)`) is not seen: build a new `Bf16Copy`
(or a new pipeline) after one.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn


def _state_key(module: nn.Module) -> tuple:
    """Identity and version of every parameter and buffer (changes on replacement or in-place writes)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((id(t), t._version, t.dtype, t.device) for t in tensors)


class Bf16Copy:
    """A cached bfloat16 copy of `source` in eval mode, rebuilt when the source's tensors change; `prepare(copy)`
    (optional) adjusts each new copy (the pipeline picks its attention kernel)."""

    def __init__(self, source: nn.Module, dtype: torch.dtype = torch.bfloat16,
                 prepare: Callable[[nn.Module], nn.Module] | None = None):
        self.source, self.dtype, self.prepare = source, dtype, prepare
        self._key: tuple | None = None
        self._copy: nn.Module | None = None

    @property
    def cached(self) -> nn.Module | None:
        """The copy built last (None before the first `get`), without checking it against the source."""
        return self._copy

    def get(self) -> nn.Module:
        key = _state_key(self.source)
        if self._copy is None or key != self._key:
            clone = copy.deepcopy(self.source).to(self.dtype).eval()
            self._copy, self._key = (self.prepare(clone) if self.prepare else clone), key
        return self._copy
