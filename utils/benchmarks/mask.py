"""Masked-transformer training speed: optimizer steps/s of the mask stage at mini and at paper size.

    python -m utils.benchmarks.mask [--device cpu|cuda] [--threads N] [--sizes mini paper] [--batch-mini 32]
                                    [--batch-paper 64] [--steps 3] [--out runs/bench_mask]

Random weights and random token maps (T' = 49 steps of C = 7 columns, lengths drawn in [10, 49], codes of each
column's codebook), conditions t (B, text_dim) and R_t, R_m (B, 1, 512): one step is `MaskTransformer.forward`
(2D masking, BERT corruption, loss) + backward + AdamW, as `MaskTask.training_step` runs it on a cached batch
(the data pipeline serves precomputed tokens and features, so the model dominates). Sizes:
- mini: configs/mini/mask.yaml (3 layers, width 128, 4 heads, ff 256; tokenizer 64 codes per column; MiniLM 384-d);
- paper: paper §2.5 (6 layers, width 512, 8 heads, ff 1024; codebooks 256; CLIP 512-d).
One warm-up step is not timed. Prints a Markdown table and writes `<out>/bench_mask.json`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from models.mask_transformer import MaskTransformer, MaskTransformerConfig
from utils.atomic import atomic_write_text

SIZES = {
    "mini": dict(layers=3, heads=4, width=128, ff_dim=256, dropout=0.0, codebook_sizes=[64] * 7, text_dim=384),
    "paper": dict(layers=6, heads=8, width=512, ff_dim=1024, dropout=0.2, codebook_sizes=[256] * 7, text_dim=512),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(size: str, batch: int, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = MaskTransformerConfig(**SIZES[size])
    model = MaskTransformer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    tp, c = 49, cfg.num_columns
    sizes = torch.tensor(cfg.codebook_sizes)
    tokens = (torch.rand(batch, tp, c, generator=g) * sizes).long().to(device)
    lengths = torch.randint(10, tp + 1, (batch,), generator=g).to(device)
    t = torch.randn(batch, cfg.text_dim, generator=g).to(device)
    r_t = torch.randn(batch, 1, 512, generator=g).to(device)
    r_m = torch.randn(batch, 1, 512, generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        loss, _ = model(tokens, t, r_t, r_m, lengths, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()                                   # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"size": size, "batch": batch, "steps": steps, "params": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": seconds, "steps_per_s": 1.0 / seconds, "samples_per_s": batch / seconds}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--sizes", nargs="+", default=["mini", "paper"], choices=list(SIZES))
    p.add_argument("--batch-mini", type=int, default=32)
    p.add_argument("--batch-paper", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="runs/bench_mask")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench(s, args.batch_mini if s == "mini" else args.batch_paper, args.steps, device) for s in args.sizes]
    print("| size | parameters | batch | s / step | steps/s | samples/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f} M | {r['batch']} | {r['seconds_per_step']:.3f} | "
              f"{r['steps_per_s']:.3f} | {r['samples_per_s']:.1f} |")
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    atomic_write_text(Path(args.out) / "bench_mask.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
