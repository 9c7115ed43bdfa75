"""Checkpoint files: atomic writes, safe loads, and clear refusals (ARCHITECTURE.md §3, §6.2).

A checkpoint is a dict of tensors and plain containers only, so `torch.load(weights_only=True)` reads it:

    format_version  int         FORMAT_VERSION of the writer
    stage           str         "rvq", "retriever", "mask", "residual", ...
    config          dict        the resolved stage config (utils.config.to_dict), enough to rebuild the model
    model           dict        the model's state_dict
    step, epoch     int         optimizer steps done, epoch of the next batch          (training checkpoints)
    optimizer, scheduler, scaler, rng, ema, extra, ...                                 (training checkpoints)
    extra["upstream"] dict      {name: {"path", "fingerprint"}} of every checkpoint the stage was trained on
                                (the frozen tokenizer, retriever, ...); `check_upstream` refuses a mismatch

`tensor_fingerprint(state)` is the content hash that identifies trained weights (a tokenizer's, a retriever's):
a database, a token cache and every downstream checkpoint record it.

Writes go to a temp file in the same folder, are fsync'ed and then `os.replace`d over the target, so a crash
mid-write leaves the previous file intact and no temp file behind.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from utils.atomic import atomic_open
from utils.config import from_dict

FORMAT_VERSION = 1

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, from another stage, or does not fit the model."""


def _check_plain(obj: Any, where: str) -> None:
    """Refuse objects that torch.load(weights_only=True) would not read back (numpy arrays, custom classes)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise CheckpointError(f"save_checkpoint: key {k!r} in {where} is a {type(k).__name__}; "
                                      f"use str/int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"save_checkpoint: {where} is a {type(obj).__module__}.{type(obj).__name__}, which "
                          f"torch.load(weights_only=True) cannot read; store tensors and plain Python values "
                          f"(e.g. torch.as_tensor(array) or array.tolist())")


def save_checkpoint(path: str | os.PathLike, *, stage: str, config: dict, model: dict, **extra: Any) -> None:
    """Write a checkpoint atomically (`utils.atomic`: temp file in the same folder + fsync + os.replace).

    Args:
        path: target file; its folder is created if needed
        stage: the stage that wrote it (checked by load_checkpoint(stage=...))
        config: resolved stage config as a plain dict (utils.config.to_dict)
        model: model state_dict
        **extra: step, epoch, optimizer, scheduler, rng, ... (tensors and plain containers only)
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, "stage": stage, "config": config, "model": model, **extra}
    _check_plain(payload, "checkpoint")
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike, *, stage: str | None = None, map_location: Any = "cpu",
                    mmap: bool = False) -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)` and check its format version and stage.

    `mmap=True` maps the tensors from the file instead of reading them (pages are read on first touch), so a
    caller that needs a few tensors of a large checkpoint (the retrieval query encoder) does not pay for the rest.

    Raises CheckpointError naming the file when it is missing, truncated or corrupt, written by a newer format,
    or written by another stage than `stage` (None = any stage).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            ckpt = torch.load(path, map_location=map_location, weights_only=True)   # legacy (non-zip) format
    except Exception as err:  # zip / unpickling / EOF errors all mean the same thing to the user
        size = path.stat().st_size
        raise CheckpointError(f"checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              f"use another checkpoint (e.g. best.pt) or re-create it") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a remomask checkpoint (expected a dict with "
                              f"'format_version', found {type(ckpt).__name__}"
                              f"{' with keys ' + str(sorted(ckpt)[:8]) if isinstance(ckpt, dict) else ''})")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {version!r}; this code reads versions "
                              f"<= {FORMAT_VERSION}; update the code")
    if stage is not None and ckpt.get("stage") != stage:
        raise CheckpointError(f"checkpoint {path} was written by stage {ckpt.get('stage')!r}, expected stage "
                              f"{stage!r}; pass the {stage} checkpoint instead")
    return ckpt


def unwrap_model(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def state_mismatches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts: missing keys, unexpected keys, shape mismatches."""
    out = []
    for k in expected:
        if k not in found:
            out.append(f"missing key {k!r}")
        elif hasattr(expected[k], "shape") and hasattr(found[k], "shape") and expected[k].shape != found[k].shape:
            out.append(f"{k!r}: model has shape {tuple(expected[k].shape)}, checkpoint has {tuple(found[k].shape)}")
    out += [f"unexpected key {k!r}" for k in found if k not in expected]
    return out


def load_model_state(module: nn.Module, state: dict, path: str | os.PathLike, max_listed: int = 5) -> None:
    """Strictly load `state` into `module`; on any key or shape mismatch raise CheckpointError naming `path`.

    The message lists the first `max_listed` mismatches (another dataset width or architecture shows up here).
    """
    module = unwrap_model(module)
    problems = state_mismatches(module.state_dict(), state)
    if problems:
        shown = "; ".join(problems[:max_listed])
        more = f"; and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise CheckpointError(f"checkpoint {path} does not fit {type(module).__name__} ({len(problems)} "
                              f"mismatches: {shown}{more}); was it written for another dataset or model config? "
                              f"Rebuild the model from the checkpoint's own config")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: {str(err).splitlines()[0]}") from None


def load_model(path: str | os.PathLike, model_cls: type[nn.Module], config_cls: type, *, stage: str,
               device: Any = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint alone: `model_cls(from_dict(config_cls, ckpt["config"]["model"]))` with the
    checkpoint's weights loaded strictly, in eval mode on `device`. Returns (model, the checkpoint dict).

    Every "load the trained X" of the stages goes through here, so the refusals (missing file, other stage, config
    or weights that do not fit) read the same everywhere.
    """
    ckpt = load_checkpoint(path, stage=stage, map_location="cpu")
    config = ckpt.get("config") or {}
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} has no config.model section to rebuild the {model_cls.__name__} "
                              f"from (config keys: {sorted(config)}); was it written by the {stage} stage's Trainer?")
    model = model_cls(from_dict(config_cls, config["model"], source=f"{path}: config.model"))
    load_model_state(model, ckpt["model"], path)
    return model.to(device).eval(), ckpt


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and upstream checkpoints
# --------------------------------------------------------------------------------------------------------------

def tensor_fingerprint(tensors: Mapping[str, Any]) -> str:
    """sha256 (16 hex) over the sorted names, shapes and bytes of a dict of tensors (other values by repr).

    Identifies trained weights and statistics: equal content gives the same fingerprint on any machine."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(memoryview(t.numpy()).cast("B") if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def upstream_record(path: str | os.PathLike, fingerprint: str) -> dict[str, str]:
    """What a downstream checkpoint stores about one checkpoint it was trained on."""
    return {"path": str(path), "fingerprint": str(fingerprint)}


def check_upstream(ckpt_path: str | os.PathLike, ckpt: Mapping[str, Any], name: str, path: str | os.PathLike,
                   fingerprint: str, allow_mismatch: bool = False) -> None:
    """Refuse to use checkpoint `ckpt` (read from `ckpt_path`) next to upstream `name` = (`path`, `fingerprint`)
    when `ckpt` was trained on an upstream of that name with other weights.

    The message names both files. With `allow_mismatch` a warning is issued instead. A checkpoint that records no
    upstream of that name passes (nothing to compare).
    """
    recorded = ((ckpt.get("extra") or {}).get("upstream") or {}).get(name)
    if not recorded or recorded.get("fingerprint") == fingerprint:
        return
    refuse_or_warn(f"checkpoint {ckpt_path} was trained on {name} {recorded.get('path')} (fingerprint "
                   f"{recorded.get('fingerprint')}), but {name} {path} (fingerprint {fingerprint}) is in use; pass "
                   f"the {name} it was trained with, or retrain it on this one", allow_mismatch,
                   " (allowed by the override; results may be meaningless)")


def refuse_or_warn(msg: str, allow_mismatch: bool, allowed_note: str = " (allowed by the override)") -> None:
    """A checkpoint next to weights it was not trained with: `CheckpointError(msg)`, or with `allow_mismatch` a
    warning (msg + allowed_note) for the caller's caller."""
    if not allow_mismatch:
        raise CheckpointError(msg)
    warnings.warn(msg + allowed_note, stacklevel=3)


def check_same_text_encoder(path_a: str | os.PathLike, ckpt_a: Mapping[str, Any], path_b: str | os.PathLike,
                            ckpt_b: Mapping[str, Any]) -> None:
    """Refuse two checkpoints meant to share a text feature (the mask and residual transformers of one pipeline)
    when their recorded text encoders (`extra["text_encoder"]`, a `TextEncoderConfig.identity()` dict) differ.

    The one-line message names both files and the first differing fields. Checkpoints that record none pass."""
    a = (ckpt_a.get("extra") or {}).get("text_encoder")
    b = (ckpt_b.get("extra") or {}).get("text_encoder")
    if not a or not b or a == b:
        return
    diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise CheckpointError(f"checkpoints {path_a} and {path_b} were trained with different text encoders "
                          f"({'; '.join(diff[:4])}); use a pair trained on the same text encoder")
