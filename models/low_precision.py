"""`Bf16Copy`: a bfloat16 copy of a module that follows its fp32 source; `bf16_slow_reason`: whether a device
runs bfloat16 matmuls natively (on one that does not, bf16 is slower than fp32 and the pipeline warns).

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
import platform
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


# ---- does this device run bfloat16 matmuls natively? ---------------------------------------------------------------
# x86: AMX tiles or the AVX-512 BF16 dot products; Arm: the BF16 extension ("bf16" in /proc/cpuinfo's Features).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str] | None:
    """The fields of the first CPU in `path` ({"model name": ..., "flags": ...}), None where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break                      # the first CPU's block has ended
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return None
    return fields


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The instruction-set flags of the first CPU ("flags" on x86, "Features" on Arm), None where `path` cannot be
    read or names none (not Linux; RISC-V, POWER)."""
    info = cpuinfo(path) or {}
    line = info.get("flags", info.get("Features"))
    return set(line.split()) if line else None


def bf16_slow_reason(device: str | torch.device, flags: set[str] | None = None) -> str | None:
    """None where `device` runs bfloat16 matmuls natively (or where that cannot be told), else one sentence saying
    why it does not.

    On a CPU without AMX / AVX-512 BF16 / Arm BF16 (AVX2-only x86, e.g. AMD Zen 2) PyTorch's bf16 matmuls are
    emulated: measured on a 2-vCPU AMD EPYC (Zen 2) at 12.5 GFLOP/s for a Linear and 0.3 GFLOP/s for a 2048²
    matmul, against 93–95 GFLOP/s in fp32 (BENCHMARKS.md). A GPU runs bf16 natively from compute capability 8.0
    (Ampere; ROCm GPUs too). `flags` overrides the CPU flags read from /proc/cpuinfo (tests)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available() or torch.version.hip:
            return None
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return None
        return f"{torch.cuda.get_device_name(device)} has no native bf16 (compute capability {major}.{minor} < 8.0)"
    if device.type != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if flags is None:                                       # no flags to read: ask oneDNN, if it is there
        if not torch.backends.mkldnn.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return "oneDNN reports no bf16 support on this CPU, so bf16 matmuls run several times slower than fp32"
    if flags & set(BF16_CPU_FLAGS):
        return None
    unit = torch.backends.cpu.get_cpu_capability()
    unit = platform.machine() if unit == "DEFAULT" else unit
    return (f"this CPU ({unit}) has no bf16 matrix instructions (none of {', '.join(BF16_CPU_FLAGS)} among its "
            f"flags), so bf16 matmuls are emulated and run several times slower than fp32")
