"""Benchmark the retrieval database queries and the retriever's training step.

    python -m utils.benchmarks.retriever [--device cpu] [--entries 24000] [--captions 3] [--train-steps 2]

1. **Database queries per second.** A simulated HumanML3D-size database: `--entries` motions (default 24,000, about
   HumanML3D's train entries) × `--captions` rows each (one row per caption, as the real build), 512-d random
   unit features. It times `RetrievalDatabase.query` with k = 1 at batch 1 and batch 32, with and without self-
   exclusion (the training-time call). It reports queries/s, i.e. prompts per second.
2. **Training steps per second at paper size.** `BMMRetriever` with the paper config (six 4-layer 512-d part
   encoders, queue 65,536, both queues) and a DistilBERT-size text tower with random weights (offline). Batch 128,
   motions of 196 frames, with forward + backward + Adam + EMA + enqueue (`--train-batch`, `--train-steps`; one
   warm-up step first). `--skip-train` skips it.
Prints a markdown table with the machine and date, and writes JSON with `--json PATH`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone

import torch

from models.retrieval_database import DatabaseMeta, RetrievalDatabase
from models.retriever import BMMRetriever, RetrieverConfig
from utils.atomic import atomic_write_text


def simulated_database(entries: int, captions: int, dim: int = 512, seed: int = 0,
                       device: str = "cpu") -> RetrievalDatabase:
    g = torch.Generator().manual_seed(seed)
    motion = torch.randn(entries, dim, generator=g).repeat_interleave(captions, 0)
    text = torch.randn(entries * captions, dim, generator=g)
    ids = [f"{i:06d}" for i in range(entries) for _ in range(captions)]
    meta = DatabaseMeta(dataset="t2m", feature_dim=263, latent_dim=dim, split="train", data_root="<simulated>",
                        retriever_checkpoint="<none>", retriever_fingerprint="<none>")
    return RetrievalDatabase(text, motion, ids, ["a person walks"] * len(ids), [100] * len(ids), meta).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_queries(db: RetrievalDatabase, batch: int, exclude: bool, device: torch.device, seconds: float = 3.0,
                  k: int = 1) -> float:
    """Queries (prompts) per second of db.query at this batch size."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, db.motion_feats.shape[1], generator=g).to(device)
    ids = [db.motion_ids[(i * 37) % len(db)] for i in range(batch)] if exclude else None
    db.query(q, k=k, exclude_ids=ids)
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        db.query(q, k=k, exclude_ids=ids)
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - start)


def paper_size_config(queue_size: int = 65536) -> RetrieverConfig:
    return RetrieverConfig(dataset="t2m", text_encoder="distilbert", text_random_init=True,
                           text_freeze_backbone=False, queue_size=queue_size)


def bench_train(device: torch.device, batch: int, steps: int, frames: int = 196) -> dict:
    torch.manual_seed(0)
    model = BMMRetriever(paper_size_config()).to(device).train()
    groups = model.param_groups()
    opt = torch.optim.Adam([{"params": g["params"], "lr": 1e-5 * g["lr_factor"]} for g in groups])
    g = torch.Generator().manual_seed(0)
    words = ["walks", "runs", "jumps", "waves", "kicks", "turns", "sits", "squats"]
    captions = [f"a person {words[i % 8]} forward then {words[(i * 3) % 8]} slowly" for i in range(batch)]
    b = {"motion": torch.randn(batch, frames, 263, generator=g).to(device),
         "length": torch.randint(40, frames + 1, (batch,), generator=g).to(device), "caption": captions}

    def step():
        loss, _ = model(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_optimizer_step()

    step()                                   # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - start) / steps
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"train_batch": batch, "train_steps_timed": steps, "train_s_per_step": dt, "train_steps_per_s": 1.0 / dt,
           "train_samples_per_s": batch / dt, "params_total": total, "params_trainable": trainable}
    if device.type == "cuda":
        out["cuda_max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--entries", type=int, default=24000, help="simulated motions in the database (default 24000)")
    ap.add_argument("--captions", type=int, default=3, help="rows (captions) per motion (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per query setting (default 3)")
    ap.add_argument("--train-batch", type=int, default=128, help="training batch (default 128, paper §2.1)")
    ap.add_argument("--train-steps", type=int, default=2, help="timed training steps after one warm-up (default 2)")
    ap.add_argument("--skip-train", action="store_true", help="only benchmark the database queries")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    results: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                     "device": str(device), "torch": torch.__version__}
    db = simulated_database(args.entries, args.captions, device=str(device))
    results["db_rows"] = len(db)
    results["db_motions"] = db.num_motions
    for batch in (1, 32):
        for exclude in (False, True):
            key = f"query_qps_b{batch}{'_exclude' if exclude else ''}"
            results[key] = bench_queries(db, batch, exclude, device, args.seconds)
    if not args.skip_train:
        results.update(bench_train(device, args.train_batch, args.train_steps))

    print(f"\nretriever benchmark — {results['date']} — {results['machine']} — device {device} — torch "
          f"{results['torch']}\n")
    print("| measurement | value |\n|---|---|")
    print(f"| database rows (motions × captions) | {results['db_rows']:,} ({results['db_motions']:,} × {args.captions}) |")
    for batch in (1, 32):
        print(f"| query k=1, batch {batch}: prompts/s | {results[f'query_qps_b{batch}']:,.0f} |")
        print(f"| query k=1, batch {batch}, self-excluded: prompts/s | "
              f"{results[f'query_qps_b{batch}_exclude']:,.0f} |")
    if not args.skip_train:
        print(f"| paper-size training step, batch {results['train_batch']}: s/step | "
              f"{results['train_s_per_step']:.3f} ({results['train_steps_per_s']:.3f} steps/s, "
              f"{results['train_samples_per_s']:.1f} samples/s) |")
        print(f"| parameters (online + momentum) | {results['params_total'] / 1e6:.1f}M "
              f"({results['params_trainable'] / 1e6:.1f}M trainable) |")
        if "cuda_max_memory_gib" in results:
            print(f"| peak CUDA memory | {results['cuda_max_memory_gib']:.1f} GiB |")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
