"""The residual-transformer stage and the length estimator: stage config, training tasks, loading, and the
reconstruction diagnostics of the residual layers.

    ResidualStageConfig        data, upstream (the shared generator data block), model, train, val, and the length
                               estimator's length_model / length_train blocks
    ResidualTask               trains ResidualTransformer on the cached token maps (utils/tasks/generator_data.py)
    LengthEstimatorTask        trains LengthEstimator on (text feature, full motion length) pairs
    load_residual(path, device, tokenizer=None) / load_length_estimator(path, device)
    check_same_tokenizer(path_a, ckpt_a, path_b, ckpt_b)   a base-token map from another tokenizer is refused

Data (shared with the masked transformer, `utils/tasks/generator_data.py`): every entry of a split is encoded once
by the frozen tokenizer (cache keyed by its fingerprint), captions once by the frozen text encoder. Training items
are token-granularity crops of (T', C, Q) maps with a random caption's feature; no retrieval (STA on the text only,
paper §2.6).

Validation (val split, never test), on the whole entries of the split (first caption each, no crop):
- `val/loss`, `val/loss/l{l}`, `val/acc/l{l}`: teacher-forced cross-entropy and accuracy of each residual layer l
  given the ground-truth layers below it (the best checkpoint is chosen by val/loss);
- `val/recon/tokenizer/*`: all Q ground-truth layers decoded (the tokenizer's own ceiling);
- `val/recon/base_only/*`: the ground-truth base layer alone decoded (layers 1..Q−1 as −1 = zero codes, which the
  tokenizer's quantize dropout trained its decoder for);
- `val/upper_bound/*`: the **"upper bound" diagnostic**: the ground-truth base layer plus the residual layers this
  model generates from it (guidance 5, seeded), decoded. It measures what the residual layers add on top of a perfect
  base layer; it is NOT text-to-motion quality and must never be reported as such (paper.md §6: a published number
  of a peer came from exactly that confusion). Text-to-motion numbers come from `eval_t2m.py` on the full pipeline.
Each reconstruction group reports mpjpe_mm, mpjpe_local_mm, root_err_mm (recovered joints) and feature_l1
(normalised units) against the real motion, as the tokenizer stage does (`utils/tasks/rvq.py ReconstructionMeter`).

Checkpoints record `extra["upstream"]["tokenizer"]` (path + fingerprint) and `extra["text_encoder"]`
(`TextEncoderConfig.identity()`); loading next to another tokenizer, or pairing with a mask transformer of
another tokenizer or text encoder, is refused with a message naming both files.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datasets.motion_dataset import DataConfig
from models.length_estimator import LengthEstimator, LengthEstimatorConfig
from models.residual_transformer import ResidualTransformer, ResidualTransformerConfig, token_map_config
from utils.checkpoint import (CheckpointError, check_upstream, load_checkpoint, load_model, load_model_state,
                              tensor_fingerprint, upstream_record)
from utils.config import ConfigError, bad_value, from_dict, to_dict
from utils.tasks.generator_data import (FrozenUpstream, GeneratorDataset, GeneratorUpstreamConfig, prepare_splits,
                                        trim_batch)
from utils.tasks.rvq import ReconstructionMeter
from utils.training import TrainConfig, TrainTask

_MOD = "utils/tasks/residual.py"


def _default_train() -> TrainConfig:
    # reference.md §6.1-6.2 (MoMask transformers): AdamW lr 2e-4, betas (0.9, 0.99), wd 1e-5, warm-up 2000,
    # MultiStepLR [50,000] × 0.1; batch 64 (ReMoMask README R-trans command)
    return TrainConfig(batch_size=64, lr=2e-4, betas=[0.9, 0.99], weight_decay=1e-5, optimizer="adamw",
                       schedule="multistep", warmup_steps=2000, milestones=[50_000], gamma=0.1)


def _default_length_train() -> TrainConfig:
    # reference.md §5.2 gives the network only; we train it like the transformers (§6.1): AdamW, betas (0.9, 0.99)
    return TrainConfig(batch_size=64, lr=1e-4, betas=[0.9, 0.99], weight_decay=1e-5, optimizer="adamw")


def _paper_upstream() -> GeneratorUpstreamConfig:
    from models.text_encoders import TextEncoderConfig
    # ARCHITECTURE §1 order (train_rvq.py output); paper §2.4 frozen CLIP ViT-B/32 text feature; no retrieval (§2.6)
    return GeneratorUpstreamConfig(tokenizer="runs/rvq/humanml3d/checkpoints/best.pt", retriever="",
                                   text=TextEncoderConfig(name="clip", path="checkpoints/clip/ViT-B-32.pt"))


@dataclass
class ResidualValConfig:
    max_batches: int = 0             # val batches per validation; 0 = the whole val split
    recon_batches: int = 2           # of those, batches also decoded for the reconstruction / upper-bound groups
    seed: int = 0                    # the upper-bound generation's generator seed (same draws at every validation)


@dataclass
class ResidualStageConfig:
    data: DataConfig = field(default_factory=DataConfig)
    upstream: GeneratorUpstreamConfig = field(default_factory=_paper_upstream)
    model: ResidualTransformerConfig = field(default_factory=ResidualTransformerConfig)
    train: TrainConfig = field(default_factory=_default_train)
    val: ResidualValConfig = field(default_factory=ResidualValConfig)
    length_model: LengthEstimatorConfig = field(default_factory=LengthEstimatorConfig)   # --length-estimator
    length_train: TrainConfig = field(default_factory=_default_length_train)             # --length-estimator

    def check_values(self, prefix: str = "") -> None:
        """Run by utils.config on loading: model and length-model rules, val counts, dataset agreement."""
        for block, cfg in (("model", self.model), ("length_model", self.length_model)):
            try:
                cfg.validate()
            except ValueError as err:
                key = str(err).split(": model.", 1)[-1].split(" ", 1)[0]
                raise ConfigError(f"{prefix}{block}.{str(err).split(': model.', 1)[-1]}",
                                  key=f"{prefix}{block}.{key}") from None
        for key in ("max_batches", "recon_batches"):
            if getattr(self.val, key) < 0:
                raise bad_value(f"{prefix}val.{key}", getattr(self.val, key), "an integer >= 0")
        if self.length_model.dataset != self.data.dataset:
            raise ConfigError(f"{prefix}length_model.dataset={self.length_model.dataset!r} but "
                              f"{prefix}data.dataset={self.data.dataset!r}; set both to the same dataset",
                              key=f"{prefix}length_model.dataset")


# ----------------------------------------------------------------------------------------------------------------
# Validation items: whole entries with their real motion
# ----------------------------------------------------------------------------------------------------------------
class WholeEntries(Dataset):
    """Item i of a prepared GeneratorDataset as one whole entry (no crop, first caption): tokens (T'_max, C, Q),
    length_tokens, length (frames), t, caption, motion (pad_length, D) raw features zero-padded past `length`."""

    def __init__(self, ds: GeneratorDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        ds = self.ds
        n = int(ds.lengths_tokens[index])
        tokens = torch.full((ds.tmax,) + tuple(ds.tokens.shape[2:]), -1, dtype=torch.long)
        tokens[:n] = ds.tokens[index, :n].long()
        frames = n * ds.spec.unit_length
        motion = torch.zeros(ds.tmax * ds.spec.unit_length, ds.spec.dim)
        motion[:frames] = torch.from_numpy(np.asarray(ds.corpus.entry_motion(ds.entries[index])[:frames],
                                                      dtype=np.float32))
        pair = int(ds.offsets[index])
        return {"tokens": tokens, "length_tokens": n, "length": frames, "t": ds.text_feats[pair],
                "caption": ds.captions[pair], "id": ds.entries[index].key, "motion": motion}


class LengthItems(Dataset):
    """(text feature of a random caption, full entry length in frames) pairs of a prepared GeneratorDataset; the
    caption is drawn from the item's generator (seed, epoch, index). The length is the whole entry's (≤ 196 frames,
    a multiple of 4), not a training crop's."""

    def __init__(self, ds: GeneratorDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.ds.set_epoch(epoch, seed)

    def __getitem__(self, index: int) -> dict:
        ds = self.ds
        rng = ds.item_rng(index)
        j = int(rng.integers(len(ds.entries[index].captions)))
        pair = int(ds.offsets[index]) + j
        return {"t": ds.text_feats[pair], "length": int(ds.lengths_tokens[index]) * ds.spec.unit_length,
                "caption": ds.captions[pair], "id": ds.entries[index].key}


# ----------------------------------------------------------------------------------------------------------------
# Shared setup of both tasks
# ----------------------------------------------------------------------------------------------------------------
class _GeneratorTaskBase(TrainTask):
    """Frozen tokenizer + text encoder built in `setup`, caches of the given splits prepared there."""

    def __init__(self, cfg: ResidualStageConfig, train_set: GeneratorDataset, val_set: GeneratorDataset | None):
        self.cfg = cfg
        self.train_set, self.val_set = train_set, val_set
        self.frozen: FrozenUpstream | None = None

    def _setup_frozen(self, device: torch.device) -> FrozenUpstream:
        self.frozen = FrozenUpstream.load(self.cfg.upstream, self.cfg.data.dataset, device, retrieval=False)
        prepare_splits(self.frozen, self.cfg.data, [self.train_set, self.val_set])
        return self.frozen

    def upstream(self) -> dict[str, dict[str, str]]:
        tok = self.frozen.tokenizer
        return {"tokenizer": upstream_record(self.cfg.upstream.tokenizer, tok.fingerprint)}

    def extra_state(self) -> dict:
        """The text encoder (identity and weights' fingerprint), read at inference."""
        return {"text_encoder": self.cfg.upstream.text.identity(),
                "text_weights": tensor_fingerprint(self.frozen.text_encoder.state_dict())}


class ResidualTask(_GeneratorTaskBase):
    """What the shared Trainer needs to train the ResidualTransformer (module docstring)."""

    stage = "residual"
    best_metric = "val/loss"
    best_mode = "min"

    def setup(self, device: torch.device) -> None:
        frozen = self._setup_frozen(device)
        self.cfg.model = ResidualTransformerConfig(**{**to_dict(self.cfg.model), **token_map_config(frozen.tokenizer),
                                                      "text_dim": frozen.text_dim})
        self.model = ResidualTransformer(self.cfg.model)
        self.generator = torch.Generator(device=device)
        self.rank = int(os.environ.get("RANK", "0"))

    def resolve_config(self, config: dict) -> dict:
        """The token-map fields and text_dim come from the tokenizer and the text encoder (setup)."""
        return {**config, "model": to_dict(self.cfg.model)}

    def training_step(self, model, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        batch = trim_batch(batch)
        # layer draws and condition dropout from an explicit generator: seed, rank and step
        self.generator.manual_seed(((self.cfg.train.seed * 1_000_003 + step) * 64 + self.rank) % (2 ** 62))
        return model(batch["tokens"], batch["t"], batch["length_tokens"], generator=self.generator)

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """`residual_validation` over the val loader (batches of `WholeEntries` items)."""
        res = residual_validation(self.model, self.frozen.tokenizer, loader, self.cfg.data.dataset,
                                  self.cfg.val.max_batches, self.cfg.val.recon_batches, self.cfg.val.seed)
        return {f"val/{k}": v for k, v in res.items()}


def residual_validation(model: ResidualTransformer, tokenizer, batches, dataset: str, max_batches: int = 0,
                        recon_batches: int = 2, seed: int = 0) -> dict[str, float]:
    """The validation metrics of the module docstring over `batches` of `WholeEntries` items (on the model's device).

    Returns {"loss", "loss/l{l}", "acc/l{l}", "recon/tokenizer/*", "recon/base_only/*", "upper_bound/*"} (no
    "val/" prefix)."""
    device = next(model.parameters()).device
    q = model.cfg.num_quantizers
    ce = {l: 0.0 for l in range(1, q)}
    hits = {l: 0.0 for l in range(1, q)}
    count = 0
    meters = {name: ReconstructionMeter(dataset) for name in ("recon/tokenizer", "recon/base_only", "upper_bound")}
    gen = torch.Generator(device=device).manual_seed(seed)
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        batch = trim_batch(batch)
        tokens, t = batch["tokens"].to(device), batch["t"].to(device)
        lengths = torch.as_tensor(batch["length_tokens"]).to(device)
        tp = tokens.shape[1]
        valid = torch.arange(tp, device=device)[None, :] < lengths[:, None]
        sel = valid[:, :, None].expand(-1, -1, tokens.shape[2])
        n = int(sel.sum())
        for level in range(1, q):
            logits = model.logits(tokens, level, t, ~valid)
            target = tokens[..., level]
            ce[level] += float(torch.nn.functional.cross_entropy(logits[sel], target[sel], reduction="sum"))
            hits[level] += float((logits.argmax(-1)[sel] == target[sel]).sum())
        count += n
        if i < recon_batches:
            frames = lengths.cpu() * tokenizer.downsample
            real = batch["motion"][:, :tp * tokenizer.downsample].float()
            base_only = tokens.clone()
            base_only[..., 1:] = -1
            upper = model.generate(tokens[..., 0], t, lengths, generator=gen)
            real_norm = tokenizer.normalize(real)
            for name, toks in (("recon/tokenizer", tokens), ("recon/base_only", base_only), ("upper_bound", upper)):
                recon = tokenizer.decode(toks).cpu()
                meters[name].update(real, recon, frames, real_norm, tokenizer.normalize(recon))
    out: dict[str, float] = {}
    if count:
        for level in range(1, q):
            out[f"loss/l{level}"] = ce[level] / count
            out[f"acc/l{level}"] = hits[level] / count
        out["loss"] = float(np.mean([out[f"loss/l{l}"] for l in range(1, q)]))
    else:
        out["loss"] = math.nan
    for name, meter in meters.items():
        if meter.frames:
            out.update({f"{name}/{k}": v for k, v in meter.result().items()})
    return out


class LengthEstimatorTask(_GeneratorTaskBase):
    """Trains the LengthEstimator on (text feature, whole motion length) pairs (`LengthItems`)."""

    stage = "length_estimator"
    best_metric = "val/loss"
    best_mode = "min"

    def setup(self, device: torch.device) -> None:
        frozen = self._setup_frozen(device)
        self.cfg.length_model = LengthEstimatorConfig(**{**to_dict(self.cfg.length_model),
                                                         "text_dim": frozen.text_dim,
                                                         "dataset": self.cfg.data.dataset})
        self.model = LengthEstimator(self.cfg.length_model)

    def resolve_config(self, config: dict) -> dict:
        """text_dim comes from the text encoder (setup); `load_length_estimator` rebuilds from config.length_model."""
        return {**config, "length_model": to_dict(self.cfg.length_model)}

    def training_step(self, model, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        return model(batch["t"], batch["length"])

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        model = self.model
        losses, acc, within, err, n = 0.0, 0.0, 0.0, 0.0, 0
        for i, batch in enumerate(loader):
            if self.cfg.val.max_batches and i >= self.cfg.val.max_batches:
                break
            t, lengths = batch["t"], torch.as_tensor(batch["length"]).to(batch["t"].device)
            b = t.shape[0]
            loss, logs = model(t, lengths)
            pred = model.predict(t, mode="argmax")
            losses += float(loss) * b
            acc += logs["acc"] * b
            within += logs["within1"] * b
            err += float((pred - lengths).abs().float().sum())
            n += b
        n = max(n, 1)
        return {"val/loss": losses / n, "val/acc": acc / n, "val/within1": within / n, "val/mae_frames": err / n}


# ----------------------------------------------------------------------------------------------------------------
# Loading trained models and pairing checks
# ----------------------------------------------------------------------------------------------------------------
def check_same_tokenizer(path_a: str | os.PathLike, ckpt_a: Mapping[str, Any], path_b: str | os.PathLike,
                         ckpt_b: Mapping[str, Any]) -> None:
    """Refuse two generator checkpoints (the mask transformer that writes the base layer, the residual transformer
    that reads it) trained on different tokenizers: a base-token map of one tokenizer means nothing to the other.
    The one-line CheckpointError names both files and both tokenizers. Checkpoints that record none pass."""
    a = ((ckpt_a.get("extra") or {}).get("upstream") or {}).get("tokenizer")
    b = ((ckpt_b.get("extra") or {}).get("upstream") or {}).get("tokenizer")
    if not a or not b or a.get("fingerprint") == b.get("fingerprint"):
        return
    raise CheckpointError(f"checkpoints {path_a} and {path_b} were trained on different tokenizers ({a.get('path')} "
                          f"fingerprint {a.get('fingerprint')} vs {b.get('path')} fingerprint {b.get('fingerprint')}); "
                          f"base tokens of one cannot feed the other: use a pair trained on the same tokenizer")


def load_residual(path: str | os.PathLike, device: str | torch.device = "cpu",
                  tokenizer=None) -> tuple[ResidualTransformer, dict]:
    """Rebuild a ResidualTransformer from its checkpoint alone (eval mode). With `tokenizer` (a MotionTokenizer),
    refuse a checkpoint trained on another tokenizer: other fingerprint, columns, codebook sizes or levels (the
    one-line message names both files). Returns (model, checkpoint)."""
    model, ckpt = load_model(path, ResidualTransformer, ResidualTransformerConfig, stage="residual", device=device)
    if tokenizer is not None:
        tok_path = getattr(tokenizer, "path", "") or "<in memory>"
        if hasattr(tokenizer, "model"):
            theirs = token_map_config(tokenizer)
            mine = {k: getattr(model.cfg, k) for k in theirs}
            mine["codebook_sizes"] = [int(v) for v in mine["codebook_sizes"]]
            if mine != theirs:
                diff = "; ".join(f"{k} {mine[k]} vs {theirs[k]}" for k in theirs if mine[k] != theirs[k])
                raise CheckpointError(f"residual transformer {path} does not fit tokenizer {tok_path} ({diff}); use "
                                      f"the tokenizer it was trained with")
        check_upstream(path, ckpt, "tokenizer", tok_path, tokenizer.fingerprint)
    return model, ckpt


def load_length_estimator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LengthEstimator, dict]:
    """Rebuild a LengthEstimator from its checkpoint alone (`LengthEstimator.from_checkpoint`). Returns (model,
    checkpoint)."""
    return LengthEstimator.from_checkpoint(path, device)
