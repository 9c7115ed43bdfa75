"""Loading the pipeline's components from checkpoints (`ReMoMaskPipeline.from_checkpoints`).

The masked and residual transformer checkpoints record their upstream checkpoints (`extra["upstream"]`: the
tokenizer, and for the masked transformer the retriever, each with the fingerprint of its weights) and their text
encoder (`extra["text_encoder"]`, the `TextEncoderConfig` in `config["upstream"]["text"]`). Loading finds the
tokenizer and the retriever there unless paths are given, and refuses, naming both files:
- a transformer trained on another tokenizer (or retriever) than the one in use (`--allow-mismatch` only warns);
- a mask / residual pair trained with different text encoders;
- components of different datasets or token maps (`ReMoMaskPipeline._check_components`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from utils.checkpoint import (CheckpointError, check_same_text_encoder, check_upstream, load_model, refuse_or_warn,
                              tensor_fingerprint)

_MOD = "models/pipeline_loading.py"


def _upstream_path(name: str, explicit, *ckpts: tuple[str, dict]) -> str:
    if explicit:
        return str(explicit)
    for path, ckpt in ckpts:
        rec = ((ckpt.get("extra") or {}).get("upstream") or {}).get(name)
        if rec and rec.get("path"):
            return rec["path"]
    raise CheckpointError(f"{ckpts[0][0]} records no {name} checkpoint (extra.upstream.{name}); pass its path "
                          f"(--{name} PATH)")


def _require(path: str, name: str, script: str, source: str, explicit: bool = False) -> None:
    if not Path(path).is_file():
        where = f"--{name}" if explicit else f"recorded in {source}"
        raise CheckpointError(f"{name} checkpoint {path} ({where}) not found; train it with `python {script}` "
                              f"or pass --{name} PATH")


def load_components(mask: str | os.PathLike, residual: str | os.PathLike, *, tokenizer=None, retriever=None,
                    database=None, length_estimator=None, text_path: str | None = None,
                    device: str | torch.device = "cpu", allow_mismatch: bool = False) -> dict:
    """The keyword arguments of `ReMoMaskPipeline(...)` built from checkpoints (module docstring)."""
    from models.length_estimator import LengthEstimator
    from models.mask_transformer import MaskTransformer, MaskTransformerConfig
    from models.pipeline import Retrieval
    from models.residual_transformer import ResidualTransformer, ResidualTransformerConfig
    from models.retrieval_database import load_retrieval
    from models.text_encoders import TextEncoderConfig, build_text_encoder_from_config
    from models.tokenizer import MotionTokenizer
    from utils.config import from_dict

    mask, residual = str(mask), str(residual)
    mask_model, mask_ckpt = load_model(mask, MaskTransformer, MaskTransformerConfig, stage="mask", device=device)
    res_model, res_ckpt = load_model(residual, ResidualTransformer, ResidualTransformerConfig, stage="residual",
                                     device=device)
    check_same_text_encoder(mask, mask_ckpt, residual, res_ckpt)

    tok_path = _upstream_path("tokenizer", tokenizer, (mask, mask_ckpt), (residual, res_ckpt))
    _require(tok_path, "tokenizer", "train_rvq.py", mask, explicit=bool(tokenizer))
    tok = MotionTokenizer.from_checkpoint(tok_path, device)
    for path, ckpt in ((mask, mask_ckpt), (residual, res_ckpt)):
        check_upstream(path, ckpt, "tokenizer", tok_path, tok.fingerprint, allow_mismatch)
        trained_on = ((ckpt.get("config") or {}).get("data") or {}).get("dataset", tok.dataset)
        if trained_on != tok.dataset:
            raise CheckpointError(f"{path} was trained on dataset {trained_on!r} but tokenizer {tok_path} on "
                                  f"{tok.dataset!r}; use checkpoints of one dataset")

    text_dict = ((mask_ckpt.get("config") or {}).get("upstream") or {}).get("text")
    if not isinstance(text_dict, dict):
        raise CheckpointError(f"{mask} has no config.upstream.text (the text encoder it was trained with)")
    text_cfg = from_dict(TextEncoderConfig, text_dict, source=f"{mask}: config.upstream.text")
    if text_path:
        text_cfg = dataclasses.replace(text_cfg, path=str(text_path))
    text_encoder = build_text_encoder_from_config(text_cfg).to(device).eval()
    weights = tensor_fingerprint(text_encoder.state_dict())
    for path, ckpt in ((mask, mask_ckpt), (residual, res_ckpt)):
        recorded = (ckpt.get("extra") or {}).get("text_weights")
        if recorded and recorded != weights:
            refuse_or_warn(f"{path} was trained with text encoder weights {recorded}, but the text encoder rebuilt "
                           f"from {text_cfg.path or text_cfg.name!r} has {weights}; pass the weights it was trained "
                           f"with (--text-path)", allow_mismatch)

    retrieval = None
    if mask_model.uses_retrieval:
        ret_path = _upstream_path("retriever", retriever, (mask, mask_ckpt))
        _require(ret_path, "retriever", "train_retriever.py", mask, explicit=bool(retriever))
        recorded_db = ((mask_ckpt.get("extra") or {}).get("upstream") or {}).get("database") or {}
        db_path = database or recorded_db.get("path") or None
        encoder, db = load_retrieval(ret_path, device, dataset=tok.dataset, db_path=db_path)
        check_upstream(mask, mask_ckpt, "retriever", ret_path, encoder.weights_fingerprint(), allow_mismatch)
        if recorded_db:
            check_upstream(mask, mask_ckpt, "database", db_path or "<default database>", db.content_fingerprint(),
                           allow_mismatch)
        k = int(((mask_ckpt.get("config") or {}).get("upstream") or {}).get("retrieval_k", 1))
        retrieval = Retrieval(encoder, db, k=k)

    estimator = None
    if length_estimator:
        estimator, est_ckpt = LengthEstimator.from_checkpoint(str(length_estimator), device)
        check_same_text_encoder(mask, mask_ckpt, str(length_estimator), est_ckpt)
        if estimator.cfg.dataset != tok.dataset:
            raise CheckpointError(f"length estimator {length_estimator} is for dataset {estimator.cfg.dataset!r}, "
                                  f"the tokenizer {tok_path} for {tok.dataset!r}")
    return dict(tokenizer=tok, text_encoder=text_encoder, mask=mask_model, residual=res_model, retrieval=retrieval,
                length_estimator=estimator)

