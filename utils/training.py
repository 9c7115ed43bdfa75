"""The shared training loop of every stage (ARCHITECTURE.md §3, §6.2).

A stage supplies a `TrainTask` (its model, the loss of one micro-batch, validation); the `Trainer` owns everything
else: device, seeding, data order, optimizer and learning-rate schedule, gradient accumulation and clipping, bf16 /
fp16 autocast and torch.compile on CUDA, DistributedDataParallel under torchrun, tqdm, tensorboard, periodic
validation on the val split, best / last checkpoints, bit-for-bit resume and the NaN stop.

    task = RVQTask(model, loss_cfg)
    run = RunDir("rvq", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    metrics = Trainer(task, cfg.train, run, train_set, val_set, config=cfg).fit()

Step counting: `step` is the number of optimizer steps done. One optimizer step consumes `accum_steps` micro-batches
of `batch_size` items on each of the `world_size` processes, so the global batch is batch_size × world_size ×
accum_steps. The data is one stream of micro-batches: epoch e is shuffled by (seed, e) and a resumed run skips the
micro-batches the interrupted epoch had already consumed, so resuming gives the same data order as never stopping.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datasets.motion_dataset import collate
from utils.checkpoint import check_upstream, load_checkpoint, load_model_state, save_checkpoint, unwrap_model
from utils.config import ConfigError, bad_value, check_choice, save_config, to_dict
from utils.distributed import (DistContext, all_reduce_mean, barrier, destroy_distributed, gather_objects,
                               init_distributed, local_device, resolve_device)
from utils.run_dir import RESUME_CHANGEABLE, RunDir, check_resume_config  # noqa: F401 (re-exported)

log = logging.getLogger("remomask.train")

SCHEDULES = ("constant", "multistep", "cosine")
OPTIMIZERS = ("adamw", "adam")


@dataclass
class TrainConfig:
    """Optimisation settings shared by all stages; each stage's YAML sets its own values (reference.md §5-6)."""
    seed: int = 0                     # seeds python / numpy / torch (rank r uses seed + r) and the data order
    device: str = "auto"              # "auto" = cuda if available else cpu; or "cpu", "cuda", "cuda:1"
    batch_size: int = 64              # per process and micro-batch; global = batch_size × ranks × accum_steps
    accum_steps: int = 1              # micro-batches per optimizer step (emulates the official large batches)
    epochs: int = 1                   # used when max_steps = 0
    max_steps: int = 0                # optimizer steps; 0 = epochs × (micro-batches per epoch // accum_steps)
    lr: float = 2e-4                  # paper §4.1: 2e-4 for the generator stages
    weight_decay: float = 0.0         # reference §5.1 (VQ: 0; transformers 1e-5, §6.1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # reference §5.1, §6.1
    optimizer: str = "adamw"          # "adamw" | "adam" (reference §5.1; retriever: adam, §6.4)
    schedule: str = "constant"        # "constant" | "multistep" | "cosine" (retriever: cosine, reference §6.4)
    warmup_steps: int = 0             # linear warm-up lr·(k+1)/(warmup+1) for steps k < warmup (reference §5.1: 2000)
    milestones: list[int] = field(default_factory=list)  # multistep: lr × gamma at each (reference §5.1: [150k, 250k])
    gamma: float = 0.1                # multistep decay factor (reference §5.1)
    min_lr: float = 0.0               # cosine floor (absolute lr of a factor-1 group)
    cosine_length: float = 1.0        # cosine half-period (CosineAnnealingLR's T_max) in runs: 1 ends at min_lr;
                                      # 2 = official retriever (T_max twice the run: ends at (lr + min_lr) / 2)
    grad_clip: float = 0.0            # max global grad norm; 0 = off
    bf16: bool = False                # bf16 autocast (CUDA only; ignored with a warning on CPU)
    fp16: bool = False                # fp16 autocast + loss scaling (CUDA GPUs without bf16)
    compile: bool = False             # torch.compile the model (CUDA only; ignored with a warning on CPU)
    log_every: int = 50               # tensorboard scalars every this many steps
    val_every: int = 0                # validate every this many steps (0 = off; the last step always validates)
    val_every_epochs: int = 0         # validate every this many epochs (0 = off); epoch = batches // accum_steps steps
    ckpt_every: int = 1000            # write last.pt every this many steps (0 = only at the end)
    num_workers: int = 0              # DataLoader workers; random per-item crops resume bit-exactly only with 0

    def check_values(self, prefix: str = "train.") -> None:
        """Choices and ranges (`check_train_config`); run by utils.config on loading."""
        check_train_config(self, prefix)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN / Inf; the run stopped without applying the update."""


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu" / "cuda" / "cuda:N" as given (checked to exist;
    `utils.distributed.resolve_device`)."""
    return resolve_device(name)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (inside dicts / lists / tuples) moved to `device`; everything else unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of each group's base lr for the optimizer step with index `step` (0 = the first update).

    Warm-up (reference §5.1): (step+1) / (warmup_steps+1) while step < warmup_steps. Then "constant": 1;
    "multistep": gamma ** (number of milestones <= step), applied on top of the warm-up as MultiStepLR does;
    "cosine": from 1 towards min_lr / lr, CosineAnnealingLR's curve with T_max = cosine_length × the steps after
    the warm-up: floor + (1 − floor)·(1 + cos(π·progress / cosine_length)) / 2, progress ∈ [0, 1] the fraction of
    those steps done. cosine_length 1 reaches the floor at the end; 2 (the official retriever) ends at
    (1 + floor) / 2, i.e. half the base rate with min_lr 0.
    """
    warm = (step + 1) / (cfg.warmup_steps + 1) if step < cfg.warmup_steps else 1.0
    if cfg.schedule == "constant":
        return warm
    if cfg.schedule == "multistep":
        return warm * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        if step < cfg.warmup_steps:
            return warm
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress / cfg.cosine_length))
    raise ValueError(f"train.schedule={cfg.schedule!r}: expected one of {SCHEDULES}")


def rng_state() -> dict:
    """Every global RNG (python, numpy, torch CPU, CUDA) as tensors and plain values (weights_only-safe)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": py[0], "state": torch.tensor(py[1], dtype=torch.int64), "gauss_next": py[2]},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of rng_state()."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def isolated_rng():
    """Run a block (validation) without disturbing the global RNG streams of training."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def configure_logging(level: int = logging.INFO) -> None:
    """Give the root logger a console handler when nobody has (scripts may call this first)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    if log.getEffectiveLevel() > level:
        log.setLevel(level)


# --------------------------------------------------------------------------------------------------------------
# What a stage supplies
# --------------------------------------------------------------------------------------------------------------

class TrainTask:
    """A stage's part of training; the Trainer calls these hooks and owns everything else.

    Attributes:
        stage: "rvq", "retriever", "evaluator", "mask", "residual" (checked when resuming)
        model: the nn.Module that is optimised; the Trainer moves it to the device and, under torchrun, wraps it in
            DistributedDataParallel. DDP only synchronises gradients through `model(...)` (its forward), so
            `training_step` must compute the loss through the `model` argument's forward call.
        ema: optional module whose state is checkpointed with the model (the task updates it in after_optimizer_step)
        best_metric / best_mode: the validation key that selects best.pt, and "min" or "max"
        find_unused_parameters: passed to DDP (set True when some parameters get no gradient in a step)
        broadcast_buffers: passed to DDP; False when the task keeps its buffers identical on every rank itself
            (the retriever's queues are all-gathered, so re-broadcasting 2 × 65,536 × 512 floats per step is waste)
        device: set by the Trainer before training

    Frozen components (a tokenizer, a text encoder, retrieval: what the stage uses but does not train) are built in
    `setup(device)`, which the Trainer calls once before it builds the optimizer. They are attributes of the task,
    never of `model`, so they are neither in the checkpoint's model state nor in the optimizer. `upstream()` names
    the checkpoints they came from with their fingerprints; the Trainer stores that as `extra["upstream"]` in every
    checkpoint and refuses to resume next to different upstream weights. A task may also build `model` in
    `setup` (when its config depends on the frozen parts, e.g. the tokenizer's codebook sizes): the model config
    it saves must then have every derived field resolved, so the checkpoint rebuilds the model alone.
    """
    stage: str = ""
    model: nn.Module
    ema: nn.Module | None = None
    best_metric: str = "val/loss"
    best_mode: str = "min"
    find_unused_parameters: bool = False
    broadcast_buffers: bool = True
    device: torch.device = torch.device("cpu")

    def setup(self, device: torch.device) -> None:
        """Build the frozen components on `device` (and `model`, if it depends on them). Default: nothing."""

    def resolve_config(self, config: dict) -> dict:
        """The stage config (plain dict) to save, after `setup`: fill the fields derived from the frozen parts
        (e.g. the tokenizer's codebook sizes). Default: unchanged."""
        return config

    def upstream(self) -> dict[str, dict[str, str]]:
        """{name: utils.checkpoint.upstream_record(path, fingerprint)} of every checkpoint the stage is trained on."""
        return {}

    def training_step(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        """Mean loss of one micro-batch (already on the device) and scalars to log. `step` = steps done so far."""
        raise NotImplementedError

    def param_groups(self) -> list[dict] | None:
        """Optimizer groups; each dict may carry `lr_factor` (× train.lr) and `name`. None = one group."""
        return None

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (`step` = steps done): momentum encoders, queues, EMA, ..."""

    def validate(self, loader: Iterator[dict]) -> dict[str, float]:
        """Metrics on the val split (never test). Batches arrive on the device; the model is in eval mode."""
        return {}

    def extra_state(self) -> dict:
        """Stage state to checkpoint beyond the model (tensors and plain values), saved under "extra"."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Inverse of extra_state()."""


# --------------------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------------------

class _SkipSampler(Sampler):
    """The indices of `base` from position `skip` on (resuming inside an epoch)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class _OnDevice:
    """Iterates a loader and moves each batch to the device."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield move_to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------

class Trainer:
    """Train `task.model` on `train_set` as `cfg` says, writing into `run`.

    Args:
        task: the stage's TrainTask
        cfg: optimisation settings
        run: the run directory (its `resume` flag makes fit() continue from run.last)
        train_set, val_set: map-style datasets of item dicts (val_set None = no validation, no best.pt)
        collate_fn: builds a batch from a list of items
        config: the resolved stage config (dataclass or dict), written to config.yaml and into every checkpoint
    """

    def __init__(self, task: TrainTask, cfg: TrainConfig, run: RunDir, train_set: Dataset,
                 val_set: Dataset | None = None, collate_fn: Callable = collate, config: Any = None):
        check_train_config(cfg)
        if not task.stage:
            raise ValueError(f"{type(task).__name__}.stage is empty; set it to the stage name (e.g. 'rvq')")
        if task.best_mode not in ("min", "max"):
            raise ValueError(f"{type(task).__name__}.best_mode={task.best_mode!r}: expected 'min' or 'max'")
        self.task, self.cfg, self.run = task, cfg, run
        self.train_set, self.val_set, self.collate_fn = train_set, val_set, collate_fn
        self.config = to_dict(config) if config is not None else {"train": to_dict(cfg)}

        device = select_device(cfg.device)
        self.dist: DistContext = init_distributed(device)
        self.device = local_device(device, self.dist)
        self.main = self.dist.is_main
        if self.main:
            configure_logging()
        seed_everything(cfg.seed + self.dist.rank)
        self.cuda = self.device.type == "cuda"
        for flag in ("bf16", "fp16", "compile"):
            if getattr(cfg, flag) and not self.cuda:
                warnings.warn(f"train.{flag}=true is ignored on {self.device} (CUDA only)", stacklevel=2)
        self.amp_dtype = (torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None) if self.cuda else None

        task.device = self.device
        task.setup(self.device)
        self.config = task.resolve_config(self.config)
        if not isinstance(getattr(task, "model", None), nn.Module):
            raise ValueError(f"{type(task).__name__}.model must be an nn.Module, got "
                             f"{type(getattr(task, 'model', None)).__name__}")
        task.model.to(self.device)
        if task.ema is not None:
            task.ema.to(self.device)

        self.sampler = DistributedSampler(train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=False)
        self.batches_per_epoch = len(self.sampler) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"train set has {len(train_set)} items, fewer than train.batch_size={cfg.batch_size} "
                             f"per process (× {self.dist.world_size} processes); lower train.batch_size")
        self.max_steps = cfg.max_steps or cfg.epochs * self.batches_per_epoch // cfg.accum_steps
        if self.max_steps <= 0:
            raise ValueError(f"train.epochs={cfg.epochs} × {self.batches_per_epoch} micro-batches per epoch // "
                             f"train.accum_steps={cfg.accum_steps} gives 0 optimizer steps; raise train.epochs "
                             f"or set train.max_steps")

        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: lr_factor(k, self.cfg, self.max_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        model: nn.Module = task.model
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None,
                find_unused_parameters=task.find_unused_parameters,
                broadcast_buffers=task.broadcast_buffers)
        if cfg.compile and self.cuda:
            model = torch.compile(model)
        self.train_model = model

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0           # micro-batches of `epoch` already consumed
        self.best: dict | None = None     # {"metric", "value", "step"}
        self.last_val: dict[str, float] = {}
        self.writer = None
        if run.resuming:
            self._resume(run.last)
        elif run.resume and self.main:
            log.warning("--resume: %s does not exist; training starts from step 0", run.last)

    # ---- setup ------------------------------------------------------------------------------------------------

    def _build_optimizer(self) -> torch.optim.Optimizer:
        groups = self.task.param_groups()
        if groups is None:
            groups = [{"params": [p for p in self.task.model.parameters() if p.requires_grad]}]
        built = []
        self._lr_factors: list[float] = []
        for i, g in enumerate(groups):
            g = dict(g)
            g["params"] = [p for p in g["params"] if p.requires_grad]
            factor = float(g.pop("lr_factor", 1.0))
            self._lr_factors.append(factor)
            g["lr"] = self.cfg.lr * factor
            g.setdefault("name", f"group{i}")
            built.append(g)
        if not any(g["params"] for g in built):
            raise ValueError(f"{type(self.task).__name__}: the model has no trainable parameters")
        kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.cfg.optimizer]
        return kind(built, lr=self.cfg.lr, betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay)

    def _loader(self, dataset: Dataset, sampler: Sampler | None, drop_last: bool, generator_seed: int) -> DataLoader:
        # A dedicated generator: DataLoader draws its worker base seed from it, not from the global torch RNG.
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=self.collate_fn, num_workers=self.cfg.num_workers, pin_memory=self.cuda,
                          generator=torch.Generator().manual_seed(generator_seed))

    def _micro_batches(self) -> Iterator[Any]:
        """The endless stream of training micro-batches, tracking (epoch, batch_in_epoch) for resume."""
        while True:
            self.sampler.set_epoch(self.epoch)
            if hasattr(self.train_set, "set_epoch"):       # items' caption / crop draws: (seed, epoch, index)
                self.train_set.set_epoch(self.epoch, seed=self.cfg.seed)
            skip = self.batch_in_epoch * self.cfg.batch_size
            seed = (self.cfg.seed * 1_000_003 + self.epoch) * 1024 + self.dist.rank
            for batch in self._loader(self.train_set, _SkipSampler(self.sampler, skip), True, seed):
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # ---- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train to `max_steps`, validating and checkpointing on the way. Returns the final metrics
        (the last validation's metrics, `train/loss` of the last step and `step`)."""
        try:
            out = self._fit()
            barrier(self.dist)        # every rank (rank 0: its last checkpoint) done before the group is destroyed;
            return out                # a rank leaving early made gloo abort the other at exit (seen once in CI)
        finally:
            if self.writer is not None:
                self.writer.close()
            destroy_distributed(self.dist)

    def _fit(self) -> dict[str, float]:
        from tqdm.auto import tqdm
        cfg, task = self.cfg, self.task
        if self.main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run.tb_dir), purge_step=self.step + 1 if self.step else None)
            save_config(self.config, self.run.config_path)
            self._log_header()
        if self.step >= self.max_steps:
            log.warning("%s is already at step %d of %d: nothing to train (raise train.max_steps or train.epochs "
                        "to continue)", self.run.last, self.step, self.max_steps)
        pbar = tqdm(total=self.max_steps, initial=self.step, desc=task.stage, disable=not self.main,
                    dynamic_ncols=True)
        stream = self._micro_batches()
        global_batch = cfg.batch_size * cfg.accum_steps * self.dist.world_size
        self.train_model.train()
        tick, tick_step = time.perf_counter(), self.step
        loss_value = float("nan")
        while self.step < self.max_steps:
            loss_value, logs = self._optimizer_step(stream)
            self.step += 1
            task.after_optimizer_step(self.step)
            pbar.update(1)
            if self.main and (self.step % cfg.log_every == 0 or self.step == self.max_steps):
                now = time.perf_counter()
                speed = (self.step - tick_step) * global_batch / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                lr = next(v for k, v in logs.items() if k.startswith("lr"))
                pbar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}", samples_s=f"{speed:.0f}")
                self._log_scalars({"train/loss": loss_value, "train/samples_per_s": speed,
                                   **{f"train/{k}": v for k, v in logs.items()}})
            final = self.step == self.max_steps
            if final or self._validation_due():
                self._validate()
            if final or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                self._save(self.run.last)
        pbar.close()
        stream.close()                      # shuts down the loader (and its workers, if any)
        if self.main:
            log.info("done: %d steps; last.pt at %s%s", self.step, self.run.last,
                     f"; best {self.best['metric']}={self.best['value']:.5g} at step {self.best['step']}"
                     if self.best else "")
        return {**self.last_val, "train/loss": loss_value, "step": float(self.step)}

    def _optimizer_step(self, stream: Iterator[Any]) -> tuple[float, dict[str, float]]:
        """Accumulate `accum_steps` micro-batches, check the loss is finite, clip, and update."""
        cfg, task = self.cfg, self.task
        accum = cfg.accum_steps
        loss_sum = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        for i in range(accum):
            batch = move_to_device(next(stream), self.device)
            sync = (self.train_model.no_sync() if self.dist.enabled and i < accum - 1 else contextlib.nullcontext())
            with sync:
                with self._autocast():
                    loss, step_logs = task.training_step(self.train_model, batch, self.step)
                if not isinstance(loss, Tensor) or loss.dim() != 0:
                    raise ValueError(f"{type(task).__name__}.training_step must return (scalar loss tensor, dict); "
                                     f"got loss {type(loss).__name__} "
                                     f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
                self.scaler.scale(loss.float() / accum).backward()
            loss_sum += loss.detach().float()
            for k, v in (step_logs or {}).items():
                logs[k] = logs.get(k, 0.0) + float(v) / accum
        mean_loss = all_reduce_mean(loss_sum / accum, self.dist).item()
        if not math.isfinite(mean_loss):
            self._stop(f"loss is {mean_loss}")
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.task.model.parameters(), cfg.grad_clip)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                self._stop(f"gradient norm is {norm.item()}")
            logs["grad_norm"] = float(norm)
        logs.update(self._lrs())           # the learning rates this update used
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return mean_loss, logs

    def _stop(self, what: str) -> None:
        if self.run.last.is_file():
            last, again = f"the last good checkpoint is {self.run.last}", "then rerun with --resume"
        else:
            last, again = ("no checkpoint was written yet", "then rerun (the run dir, which holds no checkpoint, is "
                                                            "reused; --resume also starts it from step 0)")
        raise NonFiniteLossError(
            f"{self.task.stage}: step {self.step + 1}: {what}; stopped without applying this update "
            f"({last}). Lower train.lr, set train.grad_clip, or check the data, {again}")

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---- validation and checkpoints ----------------------------------------------------------------------------

    def _validate(self) -> None:
        """Validate on rank 0 (other ranks go on), log, and write best.pt when the metric improved."""
        if self.val_set is None or not self.main:
            return
        task = self.task
        if hasattr(self.val_set, "set_epoch"):              # the same val items at every validation
            self.val_set.set_epoch(0, seed=self.cfg.seed)
        loader = _OnDevice(self._loader(self.val_set, None, False, self.cfg.seed), self.device)
        model = task.model
        was_training = model.training
        model.eval()
        try:
            with isolated_rng(), torch.no_grad(), self._autocast():
                metrics = {k: float(v) for k, v in (task.validate(loader) or {}).items()}
        finally:
            model.train(was_training)
        self.last_val = metrics
        if not metrics:
            return
        self._log_scalars(metrics)
        log.info("step %d: %s", self.step, "  ".join(f"{k}={v:.5g}" for k, v in metrics.items()))
        if task.best_metric not in metrics:
            raise KeyError(f"{type(task).__name__}.best_metric={task.best_metric!r} is not among the validation "
                           f"metrics {sorted(metrics)}; set best_metric to one of them")
        value = metrics[task.best_metric]
        if not math.isfinite(value):
            log.warning("step %d: %s=%s is not finite; best.pt not updated", self.step, task.best_metric, value)
            return
        if self.best is None or (value < self.best["value"] if task.best_mode == "min" else value > self.best["value"]):
            self.best = {"metric": task.best_metric, "value": value, "step": self.step}
            self._save(self.run.best, gathered=False)

    def _validation_due(self) -> bool:
        """Whether this optimizer step ends a train.val_every step period or a train.val_every_epochs period."""
        cfg = self.cfg
        if cfg.val_every and self.step % cfg.val_every == 0:
            return True
        steps_per_epoch = max(self.batches_per_epoch // cfg.accum_steps, 1)
        return bool(cfg.val_every_epochs) and self.step % (cfg.val_every_epochs * steps_per_epoch) == 0

    def _state(self, rng: list) -> dict:
        task = self.task
        at_epoch_end = self.batch_in_epoch >= self.batches_per_epoch
        return dict(
            stage=task.stage, config=self.config, model=unwrap_model(task.model).state_dict(),
            step=self.step, epoch=self.epoch + int(at_epoch_end),
            batch_in_epoch=0 if at_epoch_end else self.batch_in_epoch,
            world_size=self.dist.world_size,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=rng, best=self.best,
            ema=task.ema.state_dict() if task.ema is not None else None,
            extra=self._extra())

    def _extra(self) -> dict:
        extra = dict(self.task.extra_state() or {})
        upstream = self.task.upstream()
        if upstream:
            extra["upstream"] = {k: dict(v) for k, v in upstream.items()}
        return extra

    def _save(self, path, gathered: bool = True) -> None:
        """Write a full-state checkpoint (rank 0). With `gathered`, every rank must call this (RNG states are
        collected from all ranks so a resumed DDP run continues each rank's streams)."""
        rng = gather_objects(rng_state(), self.dist) if gathered else [rng_state()]
        if not self.main:
            return
        for name, p in unwrap_model(self.task.model).named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLossError(f"{self.task.stage}: step {self.step}: parameter {name!r} is not finite; "
                                         f"{path} is left as it was")
        save_checkpoint(path, **self._state(rng))

    def _resume(self, path) -> None:
        task = self.task
        ckpt = load_checkpoint(path, stage=task.stage, map_location="cpu")
        for name, rec in task.upstream().items():          # other upstream weights first: the cause of any drift
            check_upstream(path, ckpt, name, rec["path"], rec["fingerprint"])     # of the fields derived from them
        changed = check_resume_config(ckpt.get("config") or {}, self.config, str(path))
        load_model_state(task.model, ckpt["model"], path)
        if task.ema is not None and ckpt.get("ema") is not None:
            load_model_state(task.ema, ckpt["ema"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self._apply_lr()
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        self.best = ckpt.get("best")
        task.load_extra_state(ckpt.get("extra") or {})
        rng = ckpt.get("rng") or []
        if ckpt.get("world_size") != self.dist.world_size:
            log.warning("%s was written with %s process(es), resuming with %d: the data order and RNG streams "
                        "differ from an uninterrupted run", path, ckpt.get("world_size"), self.dist.world_size)
            self.batch_in_epoch = 0
            seed_everything(self.cfg.seed + self.dist.rank + self.step)
        elif self.dist.rank < len(rng):
            set_rng_state(rng[self.dist.rank])
        if changed and self.main:
            log.warning("resuming %s with a changed config (applied): %s", path, ", ".join(changed))
        if self.main:
            log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", path, self.step, self.epoch,
                     self.batch_in_epoch)

    def _apply_lr(self) -> None:
        """After restoring the scheduler: base lrs from this config's train.lr (a --resume may change it), and the
        lr of the next update recomputed as LambdaLR does (the same value when nothing changed)."""
        bases = [self.cfg.lr * f for f in self._lr_factors]
        self.scheduler.base_lrs = list(bases)
        factor = lr_factor(self.scheduler.last_epoch, self.cfg, self.max_steps)
        for g, base in zip(self.optimizer.param_groups, bases):
            g["initial_lr"] = base
            g["lr"] = base * factor

    # ---- logging ----------------------------------------------------------------------------------------------

    def _lrs(self) -> dict[str, float]:
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            return {"lr": groups[0]["lr"]}
        return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)}

    def _log_scalars(self, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, self.step)

    def _log_header(self) -> None:
        cfg = self.cfg
        trainable, total = count_parameters(self.task.model)
        world = self.dist.world_size
        print(f"run dir: {self.run.path}", flush=True)
        log.info("stage %s on %s (%s)%s", self.task.stage, self.device,
                 f"{world} processes, DDP" if world > 1 else "1 process",
                 f", {self.amp_dtype} autocast" if self.amp_dtype else "")
        log.info("global batch %d = %d per process × %d process(es) × %d accumulation step(s)",
                 cfg.batch_size * world * cfg.accum_steps, cfg.batch_size, world, cfg.accum_steps)
        log.info("%d optimizer steps (%d micro-batches per epoch, ≈%.2f epochs); %s",
                 self.max_steps, self.batches_per_epoch,
                 self.max_steps * cfg.accum_steps / self.batches_per_epoch,
                 f"resuming at step {self.step}" if self.step else "starting at step 0")
        log.info("parameters: %s trainable of %s", f"{trainable:,}", f"{total:,}")


def check_train_config(cfg: TrainConfig, prefix: str = "train.") -> None:
    """Refuse bad optimisation settings with a one-line ConfigError naming the key, the value and what is allowed.

    `TrainConfig.check_values` calls it, so utils.config runs it right after loading a script's config (before any
    folder is created or data loaded); the Trainer runs it again for configs built in code.
    """
    def bad(key: str, expected: str) -> ConfigError:
        return bad_value(prefix + key, getattr(cfg, key), expected)
    check_choice(prefix + "schedule", cfg.schedule, SCHEDULES)
    check_choice(prefix + "optimizer", cfg.optimizer, OPTIMIZERS)
    if not _valid_device_name(cfg.device):
        raise bad("device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    for key in ("batch_size", "accum_steps", "log_every"):
        if getattr(cfg, key) < 1:
            raise bad(key, "an integer >= 1")
    for key in ("epochs", "max_steps", "warmup_steps", "val_every", "val_every_epochs", "ckpt_every", "num_workers"):
        if getattr(cfg, key) < 0:
            raise bad(key, "an integer >= 0")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise bad("betas", "two numbers in [0, 1), e.g. [0.9, 0.99]")
    if list(cfg.milestones) != sorted(cfg.milestones):
        raise bad("milestones", "increasing step numbers")
    if not cfg.lr > 0:
        raise bad("lr", "a number > 0")
    for key in ("weight_decay", "grad_clip", "min_lr"):
        if getattr(cfg, key) < 0:
            raise bad(key, "a number >= 0")
    if not cfg.gamma > 0:
        raise bad("gamma", "a number > 0")
    if not cfg.cosine_length >= 1.0:
        raise bad("cosine_length", "a number >= 1 (the cosine's T_max in runs: 1 ends at min_lr, 2 = official "
                                   "retriever, ends at half the base lr)")
    if cfg.bf16 and cfg.fp16:
        raise ConfigError(f"{prefix}bf16 and {prefix}fp16 are both true: expected at most one of them (choose one)",
                          key=prefix + "fp16")


def _valid_device_name(name: str) -> bool:
    if name == "auto":
        return True
    try:
        return torch.device(name).type in ("cpu", "cuda", "mps")
    except (RuntimeError, TypeError):
        return False
