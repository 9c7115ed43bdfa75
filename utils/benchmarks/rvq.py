"""Tokenizer benchmark: speed at paper size and reconstruction quality on the mini dataset.

    python -m utils.benchmarks.rvq [--device cpu|cuda] [--threads N] [--skip-speed] [--skip-quality]
                                   [--data data/mini] [--steps 400] [--out runs/bench_rvq]

Speed (random weights, paper size: width 512, joint codebook 256 × 1024, global branch 256 × 1024, 6 levels):
- training throughput in windows/s (64-frame windows, forward + backward + AdamW step, batch --train-batch);
- encode and decode time for a batch of 32 × 196-frame motions (eval mode, no grad).
Quality (labelled "mini", not comparable to any paper table): the mini config is trained for --steps steps with and
without the global branch (same seed, same data) and scored on the mini test split with
`evaluate_reconstruction` (MPJPE in mm on recovered joints, root error, feature L1, codebook usage).
Prints a Markdown table per part and writes `<out>/bench_rvq.json`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from models.rvq import RVQConfig, RVQLoss, RVQLossConfig, RVQVAE2D
from utils.atomic import atomic_write_text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_speed(device: torch.device, train_batch: int = 8, train_steps: int = 3, enc_batch: int = 32,
                frames: int = 196, global_branch: bool = True, repeats: int = 2) -> dict:
    """Paper-size timings; returns windows/s, seconds per encode / decode of enc_batch × frames, parameter count."""
    torch.manual_seed(0)
    cfg = RVQConfig(global_branch=global_branch)
    model = RVQVAE2D(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    loss_fn = RVQLoss(RVQLossConfig(), cfg.dataset)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    x = torch.randn(train_batch, 64, model.feature_dim, device=device)
    model.train()
    times = []
    for step in range(train_steps + 1):                 # the first step is warm-up (allocations, codebook init)
        _sync(device)
        t0 = time.perf_counter()
        out = model(x)
        loss, _ = loss_fn(out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step:
            times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)
    model.eval()
    motion = torch.randn(enc_batch, frames, model.feature_dim, device=device)
    enc, dec = [], []
    with torch.no_grad():
        idx = model.encode(motion)
        model.decode(idx)
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            idx = model.encode(motion)
            _sync(device)
            t1 = time.perf_counter()
            model.decode(idx)
            _sync(device)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
    return {"global_branch": global_branch, "params_M": params / 1e6, "train_batch": train_batch,
            "train_step_s": step_s, "train_windows_per_s": train_batch / step_s,
            "encode_s": min(enc), "decode_s": min(dec), "encode_batch": enc_batch, "frames": frames,
            "token_map": list(idx.shape)}


def bench_quality(data: str, out: Path, steps: int, device: str, extra: list[str] = ()) -> list[dict]:
    """Train the mini config with and without the global branch; reconstruction metrics on the mini test split."""
    from datasets.motion_dataset import build_dataset, collate
    from utils.config import load_config, to_dict
    from utils.run_dir import RunDir
    from utils.tasks.rvq import (RVQStageConfig, RVQTask, evaluate_reconstruction, render_val_example,
                                 validation_windows)
    from utils.training import Trainer, seed_everything

    rows = []
    for global_branch in (False, True):
        name = f"global_{str(global_branch).lower()}"
        overrides = [f"data.root={data}", f"model.global_branch={str(global_branch).lower()}",
                     f"train.max_steps={steps}", f"train.device={device}", *extra]
        cfg = load_config(RVQStageConfig, "configs/mini/rvq.yaml", overrides)
        seed_everything(cfg.train.seed)
        train_set = build_dataset(cfg.data, "train", "window")
        val_set = validation_windows(cfg)
        task = RVQTask(cfg, train_set.mean, train_set.std)
        run = RunDir("rvq", name, out / "runs", overwrite=True)
        t0 = time.perf_counter()
        Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=to_dict(cfg)).fit()
        train_s = time.perf_counter() - t0
        report = evaluate_reconstruction(run.final_checkpoint, cfg.data, split="test", device=device)
        png = out / f"recon_{name}.png"
        render_val_example(run.final_checkpoint, cfg.data, png, split="test")
        row = {"global_branch": global_branch, "steps": steps, "train_s": train_s,
               "columns": task.model.num_columns, **{k: v for k, v in report.items() if not k.startswith("usage/")},
               "used_min_joint": report.get("usage/joint/used_min"), "used_min_global": report.get(
                   "usage/global/used_min"), "png": str(png), "overrides": list(extra)}
        rows.append(row)
        print(f"  mini, global_branch={global_branch}: MPJPE {row['mpjpe_mm']:.1f} mm (root-relative "
              f"{row['mpjpe_local_mm']:.1f} mm), root {row['root_err_mm']:.1f} "
              f"mm, feature L1 {row['feature_l1']:.4f} ({train_s:.0f} s training)", flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m utils.benchmarks.rvq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--train-batch", type=int, default=8, help="windows per training step for the speed test")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--data", default="data/mini", help="mini dataset folder (python -m datasets.mini --out ...)")
    p.add_argument("--steps", type=int, default=0, help="training steps per mini model (0 = the mini config's)")
    p.add_argument("--out", default="runs/bench_rvq", help="folder of the JSON, the PNGs and the quality runs (runs/)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides of the quality part, e.g. model.mu=0.9")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
              "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"),
              "torch": torch.__version__}
    print(f"# RVQVAE2D benchmark, {result['date']}, {result['machine']}, torch {result['torch']}")
    if not args.skip_speed:
        rows = [bench_speed(device, train_batch=args.train_batch, global_branch=gb) for gb in (False, True)]
        result["speed"] = rows
        print("\n| paper size | params | train windows/s (batch %d × 64) | encode 32×196 (s) | decode 32×196 (s) |"
              % args.train_batch)
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| global_branch={r['global_branch']} | {r['params_M']:.1f} M | {r['train_windows_per_s']:.2f} | "
                  f"{r['encode_s']:.3f} | {r['decode_s']:.3f} |")
    if not args.skip_quality:
        steps = args.steps
        if not steps:
            from utils.config import load_config
            from utils.tasks.rvq import RVQStageConfig
            steps = load_config(RVQStageConfig, "configs/mini/rvq.yaml").train.max_steps
        rows = bench_quality(args.data, Path(args.out), steps, args.device, args.set)
        result["quality_mini"] = rows
        print("\n| mini test split | token map | MPJPE (mm) | root-relative MPJPE (mm) | root error (mm) | feature L1 "
              "| min used fraction (joint / global) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            g = f" / {r['used_min_global']:.2f}" if r["used_min_global"] is not None else ""
            print(f"| global_branch={r['global_branch']} | T'×{r['columns']} | {r['mpjpe_mm']:.1f} | "
                  f"{r['mpjpe_local_mm']:.1f} | "
                  f"{r['root_err_mm']:.1f} | {r['feature_l1']:.4f} | {r['used_min_joint']:.2f}{g} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_rvq.json", json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
