"""Residual-transformer benchmark: training steps/s and generation time at the mini and paper sizes.

    python -m utils.benchmarks.residual [--device cpu|cuda] [--threads N] [--steps 5] [--mini-batch 32]
                                        [--paper-batch 64] [--out runs/bench_residual]

Random weights and random full-length token maps (49 token steps = 196 frames, 7 columns = 6 joint groups + the
global column, Q = 6 levels). "mini": the model block of configs/mini/residual.yaml on the mini tokenizer's map
(64 codes per codebook, MiniLM 384-d text); "paper": configs/humanml3d/residual.yaml (6 layers, 6 heads, 384-d,
256 codes, CLIP 512-d). A training step is forward + backward + AdamW on one batch (the first step is warm-up and
not timed; "CPU s / step" is the process time, which a shared machine's load inflates less than the wall time);
generation is `generate` on 8 prompts (5 layers, guidance 5 = doubled batch). Prints a Markdown table
and writes `<out>/bench_residual.json`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from models.residual_transformer import ResidualTransformer, ResidualTransformerConfig
from utils.atomic import atomic_write_text
from utils.config import load_config

SIZES = {"mini": ("configs/mini/residual.yaml", 64, 384), "paper": ("configs/humanml3d/residual.yaml", 256, 512)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_config(size: str) -> ResidualTransformerConfig:
    from utils.tasks.residual import ResidualStageConfig

    path, codes, text_dim = SIZES[size]
    cfg = load_config(ResidualStageConfig, path).model
    cfg.codebook_sizes, cfg.text_dim, cfg.num_quantizers, cfg.num_columns = [codes] * 7, text_dim, 6, 7
    return cfg


def bench(size: str, device: torch.device, batch: int, steps: int, tokens: int = 49) -> dict:
    torch.manual_seed(0)
    cfg = model_config(size)
    model = ResidualTransformer(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=1e-5)
    k = cfg.codebook_sizes[0]
    tok = torch.randint(0, k, (batch, tokens, 7, 6), device=device)
    t = torch.randn(batch, cfg.text_dim, device=device)
    lengths = torch.full((batch,), tokens, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    model.train()
    times, cpu = [], []
    for step in range(steps + 1):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = model(tok, t, lengths, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    step_s = sum(times) / len(times)
    model.eval()
    b = min(8, batch)
    _sync(device)
    t0 = time.perf_counter()
    model.generate(tok[:b, ..., 0], t[:b], lengths[:b], generator=g)
    _sync(device)
    gen_s = time.perf_counter() - t0
    return {"size": size, "parameters": params, "batch": batch, "step_s": step_s, "steps_per_s": 1.0 / step_s,
            "cpu_s_per_step": sum(cpu) / len(cpu),
            "generate_8_s": gen_s}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--paper-batch", type=int, default=64)
    parser.add_argument("--out", default="runs/bench_residual")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench("mini", device, args.mini_batch, args.steps), bench("paper", device, args.paper_batch, args.steps)]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
              "rows": rows}
    print("| size | parameters | batch | s / step (wall) | steps/s (wall) | CPU s / step | generate 8 × 196 frames |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['parameters'] / 1e6:.2f} M | {r['batch']} | {r['step_s']:.3f} | "
              f"{r['steps_per_s']:.3f} | {r['cpu_s_per_step']:.3f} | {r['generate_8_s']:.2f} s |")
    out = Path(args.out)
    atomic_write_text(out / "bench_residual.json", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
