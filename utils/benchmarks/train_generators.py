"""Training throughput of the masked and residual transformers at the paper's sizes, and of their data path.

    python -m utils.benchmarks.train_generators [--device cpu|cuda] [--batch 8] [--steps 3] [--bf16] [--json PATH]

Each step is the model's training forward (masking / layer draw, condition dropout, loss) + backward + AdamW
(lr 2e-4, betas (0.9, 0.99), wd 1e-5, reference.md §6.1) on synthetic token batches of 196 frames (T' = 49, the
T'×7 map, 6 levels) with CLIP-width text features and one retrieved neighbour; one warm-up step, then the median
of `--steps`. `--bf16` runs the forward under bfloat16 autocast. The data path is the real
`utils.tasks.generator_data.GeneratorDataset.__getitem__` (caption and crop draw, token crop, text and retrieval
lookups) over synthetic caches of HumanML3D train size (23,384 entries, 3 captions each), batched by a DataLoader
with `collate_generator` (0 workers): items/s, to set beside the models' samples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import torch

from models.low_precision import bf16_slow_reason

_MOD = "utils/benchmarks/train_generators.py"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch: int, device, seed: int = 0, q: int = 6, c: int = 7, tp: int = 49) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, tp + 1, (batch,), generator=g)
    tokens = torch.randint(0, 256, (batch, tp, c, q), generator=g)
    tokens = tokens.masked_fill(torch.arange(tp)[None, :, None, None] >= lengths[:, None, None, None], -1)
    r = torch.nn.functional.normalize(torch.randn(batch, 1, 512, generator=g), dim=-1)
    return {"tokens": tokens.to(device), "length_tokens": lengths.to(device), "t": torch.randn(batch, 512, generator=g)
            .to(device), "r_t": r.to(device), "r_m": r.clone().to(device)}


def bench_model(name: str, device, batch: int, steps: int, bf16: bool) -> dict:
    from models import mask_transformer as mt
    from models import residual_transformer as rt

    torch.manual_seed(0)
    if name == "mask":
        model = mt.MaskTransformer(mt.MaskTransformerConfig())
    else:
        model = rt.ResidualTransformer(rt.ResidualTransformerConfig())
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=1e-5)
    b = synthetic_batch(batch, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if name == "mask":
                loss, _ = model(b["tokens"][..., 0], b["t"], b["r_t"], b["r_m"], b["length_tokens"], generator=gen)
            else:
                loss, _ = model(b["tokens"], b["t"], b["length_tokens"], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    dt = statistics.median(times)
    return {"batch": batch, "s_per_step": dt, "min": min(times), "max": max(times), "steps_per_s": 1 / dt,
            "samples_per_s": batch / dt, "params": sum(p.numel() for p in model.parameters())}


def synthetic_generator_dataset(entries: int = 23384, captions: int = 3, seed: int = 0):
    """A prepared GeneratorDataset over synthetic caches (no files): the real __getitem__ on HumanML3D-size data."""
    from datasets.registry import dataset_facts
    from utils.benchmarks.generate import simulated_database
    from utils.tasks.generator_data import GeneratorDataset

    g = torch.Generator().manual_seed(seed)
    facts = dataset_facts("t2m")
    ds = object.__new__(GeneratorDataset)
    ds.cfg, ds.split = None, "train"
    ds.spec = SimpleNamespace(unit_length=facts.unit_length, pad_length=facts.pad_length)
    ds.entries = [SimpleNamespace(key=f"{i:06d}", captions=[f"caption {i} {j}" for j in range(captions)])
                  for i in range(entries)]
    ds.captions = [c for e in ds.entries for c in e.captions]
    ds.motion_ids = [e.key for e in ds.entries for _ in e.captions]
    ds.offsets = np.arange(entries, dtype=np.int64) * captions
    ds.seed, ds.epoch = seed, 0
    ds.tmax = facts.pad_length // facts.unit_length
    ds.tokens = torch.randint(0, 256, (entries, ds.tmax, 7, 6), generator=g, dtype=torch.int16)
    ds.lengths_tokens = torch.randint(10, ds.tmax + 1, (entries,), generator=g)
    ds.text_feats = torch.randn(len(ds.captions), 512, generator=g)
    db = simulated_database(72000)
    ds.retrieved = torch.randint(0, len(db), (len(ds.captions), 1), generator=g)
    ds.frozen = SimpleNamespace(database=db)
    ds.k, ds.retrieval_dim = 1, 512
    return ds


def bench_data(batch: int, batches: int) -> dict:
    from torch.utils.data import DataLoader

    from utils.tasks.generator_data import collate_generator

    ds = synthetic_generator_dataset()
    loader = DataLoader(ds, batch_size=batch, shuffle=True, collate_fn=collate_generator, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - start
    return {"batch": batch, "batches": batches, "items_per_s": batch * batches / dt, "s_per_batch": dt / batches}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 8 on CPU, 64 on CUDA)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--bf16", action="store_true", help="forward under bfloat16 autocast")
    ap.add_argument("--data-batches", type=int, default=20, help="batches of 64 items timed for the data path")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        print(f"error: {_MOD}: --device must be cpu, or cuda on a machine with CUDA; got {args.device!r}",
              file=sys.stderr)
        return 2
    if (args.batch is not None and args.batch < 1) or args.steps < 1 or args.threads < 1 or args.data_batches < 1:
        print(f"error: {_MOD}: --batch, --steps, --threads and --data-batches must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    slow = bf16_slow_reason(device) if args.bf16 else None
    if slow:
        print(f"warning: {_MOD}: --bf16 on {device}: {slow}", file=sys.stderr)
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
           "threads": args.threads, "bf16": args.bf16, "torch": torch.__version__,
           "load_start": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())}
    for name in ("mask", "residual"):
        res[name] = bench_model(name, device, batch, args.steps, args.bf16)
    res["data"] = bench_data(64, args.data_batches)
    res["load_end"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"\ngenerator training throughput — {res['date']} — {device}, {args.threads} threads, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'} — load average {res['load_start']} → {res['load_end']}\n")
    print("| model (paper size) | parameters | batch | s/step (min–max) | steps/s | samples/s |\n|---|---:|---:|---:|---:|---:|")
    for name in ("mask", "residual"):
        r = res[name]
        print(f"| {name} transformer | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['s_per_step']:.3f} "
              f"({r['min']:.3f}–{r['max']:.3f}) | {r['steps_per_s']:.3f} | {r['samples_per_s']:.1f} |")
    d = res["data"]
    print(f"\ndata path (GeneratorDataset items, batch {d['batch']}, 0 workers): {d['items_per_s']:,.0f} items/s "
          f"({d['s_per_batch'] * 1000:.1f} ms per batch)")
    if args.json:
        from utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
