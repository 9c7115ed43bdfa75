"""DistributedDataParallel plumbing for `torchrun` launches (ARCHITECTURE.md §3).

`torchrun --nproc_per_node N train_rvq.py ...` sets WORLD_SIZE / RANK / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT).
`init_distributed` reads them and joins the process group (nccl on CUDA, gloo on CPU); a plain `python train_rvq.py`
sees no WORLD_SIZE and runs as a single process with `DistContext()` (rank 0 of 1).

Only rank 0 writes files. Steps outside the training loop (writing config.yaml before it, exports, databases and
reports after it) check `is_main_process()`; the Trainer destroys the process group when `fit` returns, so those
post-training steps run on rank 0 alone and the other ranks simply finish.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. `owns_group`: this context created the process group (and destroys it)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def env_context() -> DistContext:
    """The DistContext described by the torchrun environment variables (nothing is initialised)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"torchrun environment: RANK={rank} must lie in [0, WORLD_SIZE={world})")
    return DistContext(rank=rank, local_rank=local, world_size=world)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the only one that writes files. Reads the environment, so it
    also holds before the process group exists and after the Trainer has destroyed it (post-training steps)."""
    return env_context().is_main


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """On CUDA each rank uses GPU LOCAL_RANK; CPU stays CPU."""
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo otherwise)."""
    ctx = env_context()
    if not ctx.enabled:
        return ctx
    if dist.is_initialized():
        return ctx
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    return DistContext(ctx.rank, ctx.local_rank, ctx.world_size, owns_group=True)


def destroy_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of `t` over ranks (in place; returns `t`). A NaN on any rank makes the result NaN on every rank."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return t


def gather_objects(obj: Any, ctx: DistContext) -> list:
    """`[obj of rank 0, obj of rank 1, ...]` on every rank (every rank must call it)."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu" / "cuda" / "cuda:N" as given (checked to exist). ValueError
    naming train.device otherwise. `utils.training.select_device` and the config check at load both use it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"train.device={name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available here; use train.device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device
