"""A toy TrainTask and dataset for the tests of the shared training loop (utils/training.py).

The model is a 2-layer MLP with dropout regressing y = x·W* + noise; the loss is the MSE of one micro-batch.
Every micro-batch loss is recorded (with the step it belongs to), so tests can compare runs step by step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from utils.training import TrainConfig, TrainTask


class ToyDataset(Dataset):
    """`n` items {"x": (D,), "y": (1,), "id": str}, a fixed function of `seed`."""

    def __init__(self, n: int = 64, dim: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, 1, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "id": f"{i:04d}"}


def toy_collate(items: list[dict]) -> dict:
    return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items]),
            "id": [it["id"] for it in items]}


class ToyModel(nn.Module):
    """x (B, D) -> prediction (B, 1) through Linear-ReLU-Dropout-Linear."""

    def __init__(self, dim: int = 8, width: int = 16, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyTask(TrainTask):
    """MSE regression. `nan_at_step`: the loss of that step (1-based optimizer step) becomes NaN.
    `crash_at_step`: after_optimizer_step raises SimulatedCrash there (an interrupted run)."""
    stage = "toy"
    best_metric = "val/loss"
    best_mode = "min"

    def __init__(self, dim: int = 8, width: int = 16, dropout: float = 0.3, seed: int = 0,
                 nan_at_step: int | None = None, crash_at_step: int | None = None):
        torch.manual_seed(seed)
        self.model = ToyModel(dim, width, dropout)
        self.nan_at_step, self.crash_at_step = nan_at_step, crash_at_step
        self.losses: list[tuple[int, float]] = []     # (optimizer step index, micro-batch loss)
        self.after_steps: list[int] = []
        self.seen_ids: list[str] = []
        self.counter = 0                              # extra state round trip
        self.val_losses: list[float] = []

    def training_step(self, model, batch, step):
        pred = model(batch["x"])
        loss = nn.functional.mse_loss(pred, batch["y"])
        if self.nan_at_step is not None and step + 1 >= self.nan_at_step:
            loss = loss * float("nan")
        self.losses.append((step, loss.item()))
        self.seen_ids += batch["id"]
        return loss, {"mae": (pred.detach() - batch["y"]).abs().mean().item()}

    def after_optimizer_step(self, step):
        self.after_steps.append(step)
        self.counter += 1
        if self.crash_at_step is not None and step == self.crash_at_step:
            raise SimulatedCrash(f"crash after step {step}")

    def validate(self, loader):
        total, n = 0.0, 0
        for batch in loader:
            total += nn.functional.mse_loss(self.model(batch["x"]), batch["y"], reduction="sum").item()
            n += len(batch["x"])
        torch.rand(3)   # like a sampling-based validation: must not shift the training RNG streams
        self.val_losses.append(total / n)
        return {"val/loss": total / n, "val/neg_loss": -total / n}

    def extra_state(self):
        return {"counter": self.counter}

    def load_extra_state(self, state):
        self.counter = state.get("counter", 0)


class SimulatedCrash(RuntimeError):
    pass


@dataclass
class ToyStageConfig:
    """A stage config of the usual shape (sub-configs), for config / CLI tests."""
    train: TrainConfig = field(default_factory=TrainConfig)
    width: int = 16          # toy MLP width
    tags: list[str] = field(default_factory=list)


def main(argv=None) -> None:
    """Train the toy task once; `python -m torch.distributed.run --nproc_per_node 2 -m tests.toy_task ...` runs
    it under DDP (used by tests/test_distributed.py)."""
    import argparse

    from utils.run_dir import RunDir
    from utils.training import Trainer
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--name", default="ddp")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--crash-at", type=int, default=None, help="raise SimulatedCrash after this step")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = TrainConfig(batch_size=a.batch_size, accum_steps=a.accum_steps, max_steps=a.steps, lr=1e-2,
                      device="cpu", log_every=1, val_every=3, ckpt_every=a.ckpt_every)
    task = ToyTask(dropout=a.dropout, crash_at_step=a.crash_at)
    Trainer(task, cfg, RunDir("toy", a.name, root=a.root, resume=a.resume, overwrite=a.overwrite), ToyDataset(64),
            ToyDataset(16, seed=1), collate_fn=toy_collate).fit()


if __name__ == "__main__":
    main()
