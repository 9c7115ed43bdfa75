"""Training our own standard evaluator (`reference.md` §3.5) on any dataset in the HumanML3D layout.

Recipe (reference §3.5): text and motion encoders trained with a contrastive loss of margin 10 (positive pairs d²,
negatives made by shifting the batch by a random amount, max(0, 10 − d)²; d the Euclidean distance of the
embeddings), Adam lr 1e-4, batch 32, gradient-norm clip 0.5, the checkpoint kept at minimum validation loss.

The movement encoder. The reference takes it from a separately trained autoencoder and freezes it. We do the same
in one run: `loss.movement_mode="pretrain"` (default) first trains the movement encoder with a small reconstruction
head (`MovementConvDecoder`, smooth-L1 on the valid frames) for `movement_pretrain_steps` steps, then freezes it
(eval mode, no gradient) for the contrastive phase. `movement_mode="joint"` instead trains it jointly with the
contrastive loss (faster, but the movement features then only encode what separates captions).

Output: besides the run dir's own `checkpoints/{last,best}.pt`, `export_official` writes the official layout
    <run>/text_mot_match/model/finest.tar      text_encoder / motion_encoder / movement_encoder state dicts,
                                                opt_text_encoder / opt_motion_encoder, epoch, iter
    <run>/text_mot_match/meta/{mean,std}.npy    the statistics it trained with (Mean/Std + feat_bias rule, §1.5)
    <run>/text_mot_match/opt.txt                options in the T2M opt.txt format
so `models.evaluator.load_official_evaluator("<run>/text_mot_match/model/finest.tar")` loads it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.tensors import lengths_to_mask
from datasets.motion_dataset import DataConfig
from models.evaluator import (EvaluatorConfig, MotionEncoderBiGRUCo, MovementConvDecoder, MovementConvEncoder,
                              TextEncoderBiGRUCo, build_encoders, dim_pose_of, evaluator_state, write_opt_txt)
from utils import metrics
from utils.atomic import atomic_open
from utils.checkpoint import load_model_state
from utils.config import ConfigError, bad_value, check_choice
from utils.training import TrainConfig, TrainTask, move_to_device

log = logging.getLogger(__name__)


@dataclass
class EvaluatorLossConfig:
    margin: float = 10.0                   # contrastive margin (reference §3.5)
    movement_mode: str = "pretrain"        # "pretrain": AE pre-training, then frozen (reference §3.5) | "joint"
    movement_pretrain_steps: int = 2000    # our choice (the reference trains a full autoencoder separately)
    movement_pretrain_lr: float = 1e-4     # same Adam lr as the encoders (reference §3.5)


def _evaluator_train_defaults() -> TrainConfig:
    # reference §3.5: Adam lr 1e-4, batch 32, up to 300 epochs, grad-norm clip 0.5 (torch Adam default betas)
    return TrainConfig(batch_size=32, lr=1e-4, optimizer="adam", grad_clip=0.5, epochs=300, betas=[0.9, 0.999])


@dataclass
class EvaluatorStageConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    train: TrainConfig = field(default_factory=_evaluator_train_defaults)
    loss: EvaluatorLossConfig = field(default_factory=EvaluatorLossConfig)

    def check_values(self, prefix: str = "") -> None:
        """Run by utils.config on loading: `check_stage_config` once train_evaluator.py's rule has filled
        model.dim_pose from the dataset (`replace_model_dim`)."""
        check_stage_config(replace_model_dim(self), prefix)


def check_stage_config(cfg: EvaluatorStageConfig, prefix: str = "") -> None:
    """The model width must match the dataset; the movement mode must be known. ConfigError naming the key."""
    check_choice(f"{prefix}loss.movement_mode", cfg.loss.movement_mode, ("pretrain", "joint"))
    if cfg.loss.movement_pretrain_steps < 0:
        raise bad_value(f"{prefix}loss.movement_pretrain_steps", cfg.loss.movement_pretrain_steps, "an integer >= 0")
    if not cfg.loss.movement_pretrain_lr > 0:
        raise bad_value(f"{prefix}loss.movement_pretrain_lr", cfg.loss.movement_pretrain_lr, "a number > 0")
    expected = dim_pose_of(cfg.data.dataset)
    if cfg.model.dim_pose != expected:
        raise ConfigError(f"{prefix}model.dim_pose={cfg.model.dim_pose} does not match {prefix}data.dataset="
                          f"{cfg.data.dataset!r} ({expected}-d features); set model.dim_pose={expected}",
                          key=f"{prefix}model.dim_pose")


class EvaluatorModel(nn.Module):
    """The three evaluator encoders plus the movement reconstruction head, as one module for the training loop."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        self.cfg = cfg
        self.text_encoder: TextEncoderBiGRUCo
        self.motion_encoder: MotionEncoderBiGRUCo
        self.movement_encoder: MovementConvEncoder
        self.text_encoder, self.motion_encoder, self.movement_encoder = build_encoders(cfg)
        self.movement_decoder = MovementConvDecoder(cfg.dim_movement_latent, cfg.dim_movement_enc_hidden,
                                                    cfg.dim_pose - 4)
        self.movement_frozen = False

    def freeze_movement(self) -> None:
        """Freeze the movement encoder (and drop the decoder from training), as the reference does."""
        self.movement_encoder.requires_grad_(False)
        self.movement_decoder.requires_grad_(False)
        self.movement_frozen = True

    def train(self, mode: bool = True) -> "EvaluatorModel":
        super().train(mode)
        if self.movement_frozen:
            self.movement_encoder.eval()
        return self

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """= `embed` (the Trainer's DDP wrapper synchronises gradients through forward)."""
        return self.embed(batch)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_emb (B, 512), motion_emb (B, 512)) of an "eval" batch (motion normalised, lengths in frames)."""
        motion = batch["motion"].float()
        movements = self.movement_encoder(motion[..., :-4])
        if self.movement_frozen:
            movements = movements.detach()
        m_lens = batch["length"].detach().cpu().long() // self.cfg.unit_length
        motion_emb = self.motion_encoder(movements, m_lens)
        text_emb = self.text_encoder(batch["word_embs"].float(), batch["pos_ohot"].float(),
                                     batch["sent_len"].detach().cpu().long())
        return text_emb, motion_emb

    def reconstruction_loss(self, batch: dict) -> torch.Tensor:
        """Smooth-L1 of the movement autoencoder over the valid frames of (B, T, D-4)."""
        x = batch["motion"].float()[..., :-4]
        t = (x.shape[1] // self.cfg.unit_length) * self.cfg.unit_length
        x = x[:, :t]
        recon = self.movement_decoder(self.movement_encoder(x))
        valid = lengths_to_mask(batch["length"], t, x.device).float()
        err = F.smooth_l1_loss(recon, x, reduction="none").mean(-1)
        return (err * valid).sum() / valid.sum().clamp_min(1.0)


def contrastive_loss(text_emb: torch.Tensor, motion_emb: torch.Tensor, margin: float,
                     shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference §3.5: positives d², negatives (motions shifted by `shift` in the batch) max(0, margin − d)².

    Args:
        text_emb, motion_emb: (B, D); shift in [1, B-1] (a shift of 0 would pair every text with its own motion)
    Returns:
        (loss_pos, loss_neg), batch means
    """
    d_pos = F.pairwise_distance(text_emb, motion_emb)
    neg = torch.roll(motion_emb, shifts=-shift, dims=0)               # row i gets motion (i + shift) % B
    d_neg = F.pairwise_distance(text_emb, neg)
    return (d_pos ** 2).mean(), (torch.clamp(margin - d_neg, min=0.0) ** 2).mean()


class EvaluatorTask(TrainTask):
    """Contrastive training of the text and motion encoders (reference §3.5) for the shared `Trainer`."""

    stage = "evaluator"
    best_metric = "val/loss"          # reference: finest.tar at minimum validation loss
    best_mode = "min"

    def __init__(self, cfg: EvaluatorStageConfig, model: EvaluatorModel | None = None, seed: int = 0):
        check_stage_config(cfg)
        self.cfg = cfg
        self.model = model if model is not None else EvaluatorModel(cfg.model)
        # the negative shift is drawn from a task-owned generator (reproducible, saved for resume)
        self.rng = np.random.default_rng(seed)

    def training_step(self, model, batch: dict, step: int):
        text_emb, motion_emb = model(batch)
        b = text_emb.shape[0]
        shift = int(self.rng.integers(1, b)) if b > 1 else 0
        loss_pos, loss_neg = contrastive_loss(text_emb, motion_emb, self.cfg.loss.margin, shift)
        loss = loss_pos + loss_neg
        return loss, {"loss": float(loss.detach()), "loss_pos": float(loss_pos.detach()),
                      "loss_neg": float(loss_neg.detach())}

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """Contrastive loss (fixed shift B//2) and R-precision top-1/3 over the val batches."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        tot = {"loss": 0.0, "loss_pos": 0.0, "loss_neg": 0.0}
        hits, n, nb = np.zeros(3), 0, 0
        for batch in loader:
            batch = move_to_device(batch, device)
            text_emb, motion_emb = self.model.embed(batch)
            b = text_emb.shape[0]
            pos, neg = contrastive_loss(text_emb, motion_emb, self.cfg.loss.margin, max(b // 2, 1) % max(b, 1))
            tot["loss_pos"] += float(pos) * b
            tot["loss_neg"] += float(neg) * b
            tot["loss"] += float(pos + neg) * b
            if b >= 3:
                hits += metrics.r_precision(text_emb.cpu().numpy(), motion_emb.cpu().numpy(), 3) * b
            n += b
            nb += 1
        self.model.train(was_training)
        if n == 0:
            return {}
        out = {f"val/{k}": v / n for k, v in tot.items()}
        out["val/R_precision_top1"] = float(hits[0] / n)
        out["val/R_precision_top3"] = float(hits[2] / n)
        return out

    def extra_state(self) -> dict:
        return {"movement_frozen": bool(self.model.movement_frozen),
                "rng": self.rng.bit_generator.state}

    def load_extra_state(self, d: dict) -> None:
        if d.get("movement_frozen"):
            self.model.freeze_movement()
        if "rng" in d:
            self.rng.bit_generator.state = d["rng"]


def pretrain_movement_encoder(model: EvaluatorModel, train_set, cfg: EvaluatorStageConfig, collate_fn,
                              device: torch.device, writer=None, progress: bool = True) -> list[float]:
    """Reference §3.5 substitute: train movement encoder + decoder on reconstruction, then freeze the encoder.

    Returns the per-step losses (for logging / tests).
    """
    steps = cfg.loss.movement_pretrain_steps
    losses: list[float] = []
    if steps > 0:
        params = list(model.movement_encoder.parameters()) + list(model.movement_decoder.parameters())
        opt = torch.optim.Adam(params, lr=cfg.loss.movement_pretrain_lr)
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                                             drop_last=len(train_set) >= cfg.train.batch_size,
                                             collate_fn=collate_fn, num_workers=cfg.train.num_workers)
        model.to(device).train()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc="movement encoder pre-training", unit="step")
        step = 0
        while step < steps:
            for batch in loader:
                batch = move_to_device(batch, device)
                loss = model.reconstruction_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip or 1e9)
                opt.step()
                losses.append(float(loss.detach()))
                if writer is not None:
                    writer.add_scalar("pretrain/loss_recon", losses[-1], step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                step += 1
                if step >= steps:
                    break
        if bar is not None:
            bar.close()
    model.freeze_movement()
    return losses


# ------------------------------------------------------------------------------------------------------ export

def official_dir(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / "text_mot_match"


def export_official(run_path: str | os.PathLike, model_state: dict, mean: np.ndarray, std: np.ndarray,
                    cfg: EvaluatorStageConfig, epoch: int = 0, iteration: int = 0,
                    optimizer_state: dict | None = None) -> Path:
    """Write `<run>/text_mot_match/{model/finest.tar, meta/{mean,std}.npy, opt.txt}` (official layout, atomic).

    `model_state` is an `EvaluatorModel` state dict (keys `text_encoder.*`, ...); the movement decoder is dropped.
    Returns the path of finest.tar.
    """
    root = official_dir(run_path)
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    model = EvaluatorModel(cfg.model)
    load_model_state(model, model_state, f"{run_path} (EvaluatorModel state)")
    # The official file also stores the two Adam states; ours has one optimizer over all encoders, saved under
    # opt_text_encoder (opt_motion_encoder left empty). Loaders ignore both.
    ckpt = evaluator_state(model.text_encoder, model.motion_encoder, model.movement_encoder,
                           opt_text_encoder=optimizer_state or {}, opt_motion_encoder={}, epoch=int(epoch),
                           iter=int(iteration))
    for name, arr in (("mean.npy", mean), ("std.npy", std)):
        with atomic_open(root / "meta" / name, "wb") as f:
            np.save(f, np.asarray(arr, np.float32))
    final = root / "model" / "finest.tar"
    with atomic_open(final, "wb") as f:
        torch.save(ckpt, f)
    m, d, t, l = cfg.model, cfg.data, cfg.train, cfg.loss
    opts = {"name": "text_mot_match", "dataset_name": d.dataset, "data_root": d.root,
            "checkpoints_dir": str(Path(run_path).parent), "dim_pose": m.dim_pose, "dim_word": m.dim_word,
            "dim_pos_ohot": m.dim_pos_ohot, "dim_text_hidden": m.dim_text_hidden,
            "dim_motion_hidden": m.dim_motion_hidden, "dim_coemb_hidden": m.dim_coemb_hidden,
            "dim_movement_enc_hidden": m.dim_movement_enc_hidden, "dim_movement_latent": m.dim_movement_latent,
            "max_motion_length": d.max_motion_length, "max_text_len": d.max_text_len,
            "unit_length": m.unit_length, "feat_bias": float(d.feat_bias), "batch_size": t.batch_size,
            "lr": float(t.lr), "negative_margin": float(l.margin), "movement_mode": l.movement_mode,
            "movement_pretrain_steps": l.movement_pretrain_steps, "which_epoch": "finest", "is_train": False}
    write_opt_txt(root / "opt.txt", opts)
    return final


def replace_model_dim(cfg: EvaluatorStageConfig) -> EvaluatorStageConfig:
    """A copy with model.dim_pose set from data.dataset when it was left at the t2m default for a kit run."""
    expected = dim_pose_of(cfg.data.dataset)
    if cfg.model.dim_pose == EvaluatorConfig().dim_pose and expected != cfg.model.dim_pose:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dim_pose=expected))
    return cfg
