"""A tiny training run that tests/test_crash_resume.py SIGKILLs (from outside, or itself at a chosen point).

    python -m tests.crash_driver --root R --name N [--resume] [--kill write:3:0.4 | replace:2 | step:5 | none]

Trains the toy task (tests/toy_task.py, dropout on, so the RNG streams matter) for --steps steps, writing last.pt
after every step (train.ckpt_every=1) and best.pt at every validation, through the real Trainer, RunDir and
checkpoint code. Checkpoint bytes go to disk in 4 KiB chunks with a short pause (a slow disk), so an outside kill
often lands inside a write. `--kill` makes the process SIGKILL itself:
    write:N:F    inside its N-th checkpoint write, after fraction F of the bytes (temp file half-written)
    replace:N    its N-th checkpoint write complete and fsync'ed, just before the rename onto the target
    step:N       right after its N-th optimizer step (between checkpoints' worth of work)
Prints "READY <step>" on stdout once the Trainer is built (and resumed), then trains.
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--name", default="crash")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill", default="none")
    p.add_argument("--write-delay", type=float, default=0.01, help="seconds spent writing one checkpoint")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import utils.atomic as atomic
    from tests.toy_task import ToyDataset, ToyTask, toy_collate
    from utils.run_dir import RunDir
    from utils.training import Trainer, TrainConfig

    kind, *args = a.kill.split(":")
    state = {"saves": 0, "steps": 0, "replaces": 0}

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    real_save = torch.save

    def slow_save(obj, f, *rest, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, *rest, **kw)
        data = buf.getvalue()
        state["saves"] += 1
        cut = int(len(data) * float(args[1])) if kind == "write" and state["saves"] == int(args[0]) else None
        chunks = range(0, len(data), 4096)
        for i in chunks:
            if cut is not None and i >= cut:
                f.flush()
                os.fsync(f.fileno())
                die()
            f.write(data[i:i + 4096])
            time.sleep(a.write_delay / len(chunks))
        if cut is not None:
            die()

    torch.save = slow_save
    real_replace = atomic.os.replace

    def replace(src, dst):
        if str(dst).endswith(".pt"):
            state["replaces"] += 1
            if kind == "replace" and state["replaces"] == int(args[0]):
                die()
        return real_replace(src, dst)

    atomic.os.replace = replace

    class Task(ToyTask):
        def after_optimizer_step(self, step):
            super().after_optimizer_step(step)
            state["steps"] += 1
            if kind == "step" and state["steps"] == int(args[0]):
                die()

    cfg = TrainConfig(batch_size=8, max_steps=a.steps, lr=1e-2, device="cpu", log_every=5, val_every=5,
                      ckpt_every=1, schedule="cosine", warmup_steps=5, seed=3)
    run = RunDir("toy", a.name, root=a.root, resume=a.resume)
    trainer = Trainer(Task(dropout=0.3), cfg, run, ToyDataset(64), ToyDataset(16, seed=1), collate_fn=toy_collate)
    print(f"READY {trainer.step}", flush=True)
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
