"""The tokenizer stage: `RVQStageConfig`, `RVQTask` (training / validation of RVQVAE2D), checkpoint loading and
`evaluate_reconstruction` (MPJPE, feature L1, codebook usage, reconstruction FID). Loading a trained tokenizer is
`models.tokenizer.MotionTokenizer.from_checkpoint` (inference code never imports this training module).

Training follows `reference.md` §5.1/§5.3: every 64-frame window of the motions (an epoch enumerates them all),
normalised with the feat_bias statistics, the `RVQLoss`, AdamW 2e-4 with warm-up and step decay (schedule in
`TrainConfig`). Validation (val split, never test; the windows of `validation_windows`) reports MPJPE in mm on
joints recovered from the reconstructed features, the feature L1 in normalised units, the root-path error and the
codebook usage; the best checkpoint is chosen by val MPJPE.

Units: HumanML3D joints are in metres (×1000 → mm); KIT-ML joints are already in millimetres (`MM_PER_UNIT`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from utils.tensors import lengths_to_mask
from datasets.motion_dataset import DataConfig
from datasets.registry import DATASETS, dataset_facts
from models.rvq import RVQConfig, RVQLoss, RVQLossConfig, RVQOutput, RVQVAE2D
from models.tokenizer import MotionTokenizer
from utils.config import ConfigError, bad_value, check_choice
from utils.training import TrainConfig, TrainTask

def spread_windows(windows: Dataset, count: int) -> Dataset:
    """`count` items spread evenly over `windows` (all of them when count is 0 or not smaller).

    The val loader is not shuffled and consecutive windows overlap (one per start frame), so a prefix of
    val.max_batches batches would score only the first few motions of the split.
    """
    if count <= 0 or count >= len(windows):
        return windows
    return Subset(windows, np.linspace(0, len(windows) - 1, count).round().astype(int).tolist())


def validation_windows(cfg: "RVQStageConfig") -> Dataset:
    """The val windows the tokenizer is scored on: val.max_batches × train.batch_size of them spread over the split."""
    from datasets.motion_dataset import build_dataset

    return spread_windows(build_dataset(cfg.data, "val", "window"), cfg.val.max_batches * cfg.train.batch_size)


MM_PER_UNIT = {ds: dataset_facts(ds).mm_per_unit for ds in DATASETS}   # datasets.registry: metres (t2m), mm (kit)


def _default_train() -> TrainConfig:
    # reference.md §5.1: AdamW lr 2e-4, betas (0.9, 0.99), wd 0, warm-up 2000, milestones [150k, 250k], batch 256
    return TrainConfig(batch_size=256, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0, optimizer="adamw",
                       schedule="multistep", warmup_steps=2000, milestones=[150_000, 250_000], gamma=0.1)


@dataclass
class RVQValConfig:
    max_batches: int = 0          # 0 = the whole val split each validation
    render: bool = True           # after training: PNG of a val motion next to its reconstruction (run dir)


@dataclass
class RVQStageConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: RVQConfig = field(default_factory=RVQConfig)
    train: TrainConfig = field(default_factory=_default_train)
    loss: RVQLossConfig = field(default_factory=RVQLossConfig)
    val: RVQValConfig = field(default_factory=RVQValConfig)

    def check_values(self, prefix: str = "") -> None:
        """Run by utils.config on loading: `check_stage_config`."""
        check_stage_config(self, prefix)


def check_stage_config(cfg: RVQStageConfig, prefix: str = "") -> None:
    """Enumerated model / loss settings and the data ↔ model dataset match (run by utils.config on loading)."""
    m, loss = cfg.model, cfg.loss
    check_choice(f"{prefix}model.dataset", m.dataset, DATASETS)
    check_choice(f"{prefix}model.sample", m.sample, ("argmax", "gumbel"))
    check_choice(f"{prefix}model.straight_through", m.straight_through, ("sum", "per_level"))
    check_choice(f"{prefix}loss.recon", loss.recon, ("smooth_l1", "l1"))
    for key in ("width", "depth", "nb_code", "code_dim", "num_quantizers", "global_nb_code", "global_code_dim",
                "global_width"):
        if getattr(m, key) < 1:
            raise bad_value(f"{prefix}model.{key}", getattr(m, key), "an integer >= 1")
    if not 0.0 <= m.quantize_dropout <= 1.0:
        raise bad_value(f"{prefix}model.quantize_dropout", m.quantize_dropout, "a probability in [0, 1]")
    if cfg.val.max_batches < 0:
        raise bad_value(f"{prefix}val.max_batches", cfg.val.max_batches, "an integer >= 0 (0 = the whole split)")
    if not 0.0 <= m.mu < 1.0:
        raise bad_value(f"{prefix}model.mu", m.mu, "an EMA decay in [0, 1), e.g. 0.99")
    from models.rvq import PADDED_JOINTS
    downs = [d for d in range(1, 8) if PADDED_JOINTS % 2 ** d == 0]
    if m.down_t not in downs:
        raise bad_value(f"{prefix}model.down_t", m.down_t, f"one of {', '.join(map(str, downs))} (2**down_t must "
                                                          f"divide the {PADDED_JOINTS} padded joints)")
    if cfg.data.window_size % 2 ** m.down_t:
        factor = 2 ** m.down_t
        raise ConfigError(f"{prefix}data.window_size={cfg.data.window_size}: expected a multiple of {factor} "
                          f"(2**{prefix}model.down_t, the temporal downsampling), e.g. "
                          f"{max(factor, cfg.data.window_size // factor * factor)}", key=f"{prefix}data.window_size")
    if cfg.data.dataset != m.dataset:
        raise ConfigError(f"{prefix}data.dataset={cfg.data.dataset!r} but {prefix}model.dataset={m.dataset!r}; set "
                          f"both to the same dataset", key=f"{prefix}model.dataset")



# ----------------------------------------------------------------------------------------------------------------
# Metrics on recovered joints
# ----------------------------------------------------------------------------------------------------------------
def recover_joints(raw_features: Tensor, dataset: str) -> Tensor:
    """De-normalised features (B, T, D) → global joint positions (B, T, J, 3) (the standard inverse)."""
    from datasets.representation import features_to_joints
    return torch.as_tensor(features_to_joints(raw_features.float().cpu(), dataset=dataset))


class ReconstructionMeter:
    """Accumulates reconstruction errors over batches, on valid frames only (per-frame means, then frame-weighted).

    mpjpe_mm: mean joint position error of the recovered global joints (root trajectory drift included);
    mpjpe_local_mm: the same after subtracting each frame's root position (pose error alone);
    root_err_mm: root position error; feature_l1: mean |x̂ − x| of the normalised features.

    update(real, recon, lengths): raw (de-normalised) features (B, T, D) each; lengths (B,) valid frames.
    """

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.scale = MM_PER_UNIT[dataset]
        self.sum_mpjpe = self.sum_local = self.sum_root = self.sum_l1 = 0.0
        self.frames = 0
        self.values = 0

    def update(self, real_raw: Tensor, recon_raw: Tensor, lengths: Tensor, real_norm: Tensor,
               recon_norm: Tensor) -> None:
        b, t, d = real_raw.shape
        mask = lengths_to_mask(lengths.cpu(), t).float()                            # (B, T)
        j_real = recover_joints(real_raw, self.dataset)
        j_rec = recover_joints(recon_raw, self.dataset)
        per_joint = (j_real - j_rec).norm(dim=-1)                                   # (B, T, J)
        self.sum_mpjpe += float((per_joint.mean(-1) * mask).sum()) * self.scale
        local = ((j_real - j_real[..., :1, :]) - (j_rec - j_rec[..., :1, :])).norm(dim=-1)   # root-relative
        self.sum_local += float((local.mean(-1) * mask).sum()) * self.scale
        root = (j_real[..., 0, :] - j_rec[..., 0, :]).norm(dim=-1)                   # (B, T)
        self.sum_root += float((root * mask).sum()) * self.scale
        l1 = (real_norm.cpu() - recon_norm.cpu()).abs().mean(-1)                    # (B, T)
        self.sum_l1 += float((l1 * mask).sum())
        self.frames += int(mask.sum())

    def result(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {"mpjpe_mm": self.sum_mpjpe / n, "mpjpe_local_mm": self.sum_local / n, "root_err_mm": self.sum_root / n,
                "feature_l1": self.sum_l1 / n}


class UsageMeter:
    """Code histograms per quantizer and level from token maps (B, T', C, Q); perplexity and used fraction."""

    def __init__(self, model: RVQVAE2D):
        self.sizes = model.codebook_sizes
        self.groups = model.num_groups
        q = model.num_quantizers
        self.hist = {"joint": torch.zeros(q, self.sizes[0])}
        if len(self.sizes) > self.groups:
            self.hist["global"] = torch.zeros(q, self.sizes[self.groups])

    def update(self, indices: Tensor) -> None:
        parts = {"joint": indices[:, :, :self.groups]}
        if "global" in self.hist:
            parts["global"] = indices[:, :, self.groups:]
        for name, idx in parts.items():
            h = self.hist[name]
            for level in range(h.shape[0]):
                col = idx[..., level].reshape(-1).cpu()
                col = col[col >= 0]
                h[level] += torch.bincount(col, minlength=h.shape[1]).float()

    def result(self) -> dict[str, float]:
        out = {}
        for name, h in self.hist.items():
            p = h / h.sum(-1, keepdim=True).clamp_min(1)
            ppl = torch.exp(-(p * torch.log(p + 1e-10)).sum(-1))
            used = (h > 0).float().mean(-1)
            for level in range(h.shape[0]):
                out[f"usage/{name}/perplexity/l{level}"] = float(ppl[level])
                out[f"usage/{name}/used/l{level}"] = float(used[level])
            out[f"usage/{name}/used_min"] = float(used.min())      # fraction of the codebook used, worst level
            out[f"usage/{name}/used_mean"] = float(used.mean())
        return out


# ----------------------------------------------------------------------------------------------------------------
# The training task
# ----------------------------------------------------------------------------------------------------------------
class RVQTask(TrainTask):
    """What the shared Trainer needs to train RVQVAE2D.

    Args:
        cfg: the stage config; mean, std: (D,) the statistics the data is normalised with (saved in checkpoints,
        so the tokenizer de-normalises its output without the dataset folder)
    """

    stage = "rvq"
    best_metric = "val/mpjpe_mm"       # task: best checkpoint by val MPJPE
    best_mode = "min"
    broadcast_buffers = False          # the quantizers keep their codebooks identical on every rank themselves

    def __init__(self, cfg: RVQStageConfig, mean: np.ndarray, std: np.ndarray):
        self.cfg = cfg
        self.model = RVQVAE2D(cfg.model)
        self.loss = RVQLoss(cfg.loss, cfg.model.dataset)
        self.mean = torch.as_tensor(np.asarray(mean, np.float32))
        self.std = torch.as_tensor(np.asarray(std, np.float32))
        d = self.model.feature_dim
        if self.mean.shape != (d,) or self.std.shape != (d,):
            raise ValueError(f"utils/tasks/rvq.py: dataset statistics must have shape ({d},) for dataset "
                             f"{cfg.model.dataset!r}, got mean {tuple(self.mean.shape)}, std {tuple(self.std.shape)}; "
                             f"set data.dataset and model.dataset to the same value")
        self.last_val_batch: dict[str, Tensor] | None = None

    def training_step(self, model, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        motion = batch["motion"]                                   # (B, window, D) normalised
        out = model(motion)
        loss, logs = self.loss(out, motion)
        logs.update(out.stats)          # perplexity, used and live fractions of every level (tensorboard only)
        return loss, logs

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        recon_meter = ReconstructionMeter(self.cfg.model.dataset)
        usage = UsageMeter(model)
        losses = []
        for i, batch in enumerate(loader):
            if self.cfg.val.max_batches and i >= self.cfg.val.max_batches:
                break
            motion = batch["motion"].to(device)
            lengths = torch.as_tensor(batch["length"]).reshape(-1)
            out = model(motion)
            loss, _ = self.loss(out, motion)
            losses.append(float(loss))
            usage.update(out.indices)                               # eval mode: = model.encode(motion)
            recon_meter.update(self.denormalize(motion).cpu(), self.denormalize(out.recon).cpu(), lengths,
                               motion, out.recon)
            if i == 0:
                self.last_val_batch = {"motion": motion[:1].cpu(), "recon": out.recon[:1].cpu(),
                                       "length": lengths[:1]}
        model.train(was_training)
        res = {"loss": float(np.mean(losses)) if losses else math.nan, **recon_meter.result(), **usage.result()}
        return {f"val/{k}": v for k, v in res.items()}

    def denormalize(self, x: Tensor) -> Tensor:
        """The tokenizer's normalised features (..., D) → raw features (the statistics saved in checkpoints)."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def extra_state(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_extra_state(self, d: dict) -> None:
        if "mean" in d:
            self.mean = torch.as_tensor(d["mean"]).float()
            self.std = torch.as_tensor(d["std"]).float()



# ----------------------------------------------------------------------------------------------------------------
# Loading a trained tokenizer and evaluating reconstruction
# ----------------------------------------------------------------------------------------------------------------
def _tokenizer(tokenizer: MotionTokenizer | str | Path, device) -> MotionTokenizer:
    return tokenizer if isinstance(tokenizer, MotionTokenizer) else MotionTokenizer.from_checkpoint(tokenizer, device)


@torch.no_grad()
def evaluate_reconstruction(tokenizer: MotionTokenizer | str | Path, data_cfg: DataConfig | None = None,
                            split: str = "test", evaluator=None, device: str | torch.device = "cpu",
                            batch_size: int = 32, seed: int = 0, max_batches: int = 0, progress: bool = True,
                            dataset: Dataset | None = None) -> dict[str, Any]:
    """Tokenizer reconstruction quality on a split (items as the generator sees them: random crops ≤ 196 frames).

    `tokenizer` is a loaded MotionTokenizer or the path of its checkpoint. The items come from `dataset` (a "text" or
    "eval" MotionTextDataset normalised with the tokenizer's statistics, e.g. the one eval_t2m.py already built) or
    are read from `data_cfg`/`split`; their caption/crop draws are those of sampling seed `seed`.
    Returns a dict: `mpjpe_mm` (mean per-joint position error on recovered global joints, valid frames only),
    `root_err_mm`, `feature_l1` (normalised units), `usage/...` (perplexity and used fraction per level), `num_motions`,
    and with an evaluator object `fid` (reconstructions vs the same real motions, `utils.metrics.fid`).
    Each batch is normalised once (by the dataset, with the tokenizer's statistics); the evaluator normalises the
    raw features once with its own meta statistics.
    """
    from datasets.motion_dataset import build_dataset, collate
    from utils.metrics import fid as fid_fn

    tok = _tokenizer(tokenizer, device)
    model = tok.model
    name = model.cfg.dataset
    if dataset is None:
        if data_cfg is None:
            raise ValueError("utils/tasks/rvq.py: evaluate_reconstruction needs data_cfg or dataset")
        if data_cfg.dataset != name:
            raise ValueError(f"utils/tasks/rvq.py: data_cfg.dataset is {data_cfg.dataset!r} but the tokenizer "
                             f"{tok.path or '<in memory>'} was trained on {name!r}")
        dataset = build_dataset(data_cfg, split, "text", stats=(tok.mean.numpy(), tok.std.numpy()))
    dataset.set_epoch(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=0)
    meter = ReconstructionMeter(name)
    usage = UsageMeter(model)
    real_emb, rec_emb = [], []
    n = 0
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc=f"rvq reconstruction ({split})", leave=False)
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        lengths = torch.as_tensor(batch["length"]).reshape(-1)
        motion = batch["motion"].to(tok.device)                        # normalised once, zero-padded
        out = model(motion)
        raw = dataset.denormalize(batch["motion"])
        recon_raw = tok.denormalize(out.recon).cpu()
        meter.update(raw, recon_raw, lengths, motion.cpu(), out.recon.cpu())
        usage.update(out.indices)
        if evaluator is not None:
            keep = lengths_to_mask(lengths, raw.shape[1]).float()[..., None]
            real_e = evaluator.encode_motion(evaluator.normalize_for_evaluator(raw) * keep, lengths)
            rec_e = evaluator.encode_motion(evaluator.normalize_for_evaluator(recon_raw) * keep, lengths)
            real_emb.append(real_e.cpu().numpy())
            rec_emb.append(rec_e.cpu().numpy())
        n += raw.shape[0]
    report: dict[str, Any] = {"split": split, "num_motions": n, "dataset": name, "checkpoint": tok.path,
                              **meter.result(), **usage.result()}
    if evaluator is not None and real_emb:
        report["fid"] = float(fid_fn(np.concatenate(rec_emb), np.concatenate(real_emb)))
    return report


def render_reconstruction(real_raw: Tensor, recon_raw: Tensor, dataset: str, path: str | Path,
                          title: str = "") -> Path | None:
    """PNG of a motion (T, D) next to its reconstruction (T, D) via `utils.plot.plot_side_by_side`."""
    try:
        from utils.plot import plot_side_by_side
    except ImportError:
        return None
    joints = [recover_joints(x[None], dataset)[0].numpy() for x in (real_raw, recon_raw)]
    return plot_side_by_side(joints[0], joints[1], path, dataset=dataset, title=title)


@torch.no_grad()
def render_val_example(tokenizer: MotionTokenizer | str | Path, data_cfg: DataConfig, path: str | Path,
                       index: int = 0, split: str = "val", seed: int = 0) -> Path | None:
    """Reconstruct one whole motion of `split` (the `index`-th item, its full length cropped to a multiple of 4)
    with the tokenizer (or its checkpoint path) and render it next to its source; returns the PNG path (None
    without a renderer)."""
    from datasets.motion_dataset import build_dataset

    tok = _tokenizer(tokenizer, "cpu")
    ds = build_dataset(data_cfg, split, "text", stats=(tok.mean.numpy(), tok.std.numpy()))
    ds.set_epoch(seed)
    item = ds[index]
    length = int(item["length"])
    raw = ds.denormalize(item["motion"][:length]).float()          # (T, D)
    recon = tok.reconstruct(raw[None], torch.tensor([length]))[2][0]
    return render_reconstruction(raw, recon, tok.dataset, path, title=f"{split} {item.get('id', '')}")
