"""Benchmark the motion dataset loader on a HumanML3D-sized folder of random features.

    python -m utils.benchmarks.data_load --num-motions 15000

Writes `--num-motions` random float32 (T, 263) feature files (T uniform in [40, 199], as HumanML3D's kept lengths)
with short three-caption texts (every 10th motion also gets a sub-clip caption) into a temporary HumanML3D-layout
folder, then times:
  1. the cold load (`MotionCorpus.load`: every file read once, the `.cache/` file written),
  2. the cached load (the same call again: one .npz read),
  3. one epoch over the "text" dataset with a DataLoader (batch 64, `collate`).
The page cache is not dropped, so "cold" means "no .npz cache yet", not "disk never read". Prints a markdown table
and writes it as JSON with `--json`.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.motion_dataset import DataConfig, MotionCorpus, build_dataset, collate
from utils.atomic import atomic_write_text

WORDS = ["walk", "run", "jump", "turn", "wave", "sit", "kick", "squat", "spin", "stand"]


def write_random_dataset(root: Path, num_motions: int, seed: int, dim: int = 263) -> int:
    """HumanML3D-layout folder of random features; returns the total number of frames."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True, exist_ok=True)
    (root / "texts").mkdir(exist_ok=True)
    ids = [f"{i:06d}" for i in range(num_motions)]
    total = 0
    for k, mid in enumerate(tqdm(ids, desc="writing random motions", unit="motion")):
        length = int(rng.integers(40, 200))
        total += length
        np.save(root / "new_joint_vecs" / f"{mid}.npy", rng.standard_normal((length, dim), dtype=np.float32))
        lines = []
        for _ in range(3):
            w = WORDS[int(rng.integers(len(WORDS)))]
            lines.append(f"a person {w}s forward#a/DET person/NOUN {w}/VERB forward/ADV#0.0#0.0")
        if k % 10 == 0:
            lines.append(f"a person waves#a/DET person/NOUN wave/VERB#0.0#{length / 20 * 0.6:.2f}")
        (root / "texts" / f"{mid}.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    np.save(root / "Mean.npy", np.zeros(dim, np.float32))
    np.save(root / "Std.npy", np.ones(dim, np.float32))
    return total


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-motions", type=int, default=15000, help="motions to simulate (HumanML3D: ~15k, x2 mirrored)")
    p.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size for the epoch timing")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the epoch timing")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in the main process (0 = torch default); collate's copy is "
                        "memory-bound and spinning threads only hurt on a shared machine")
    p.add_argument("--seed", type=int, default=0, help="seed of the random features and of the item sampling")
    p.add_argument("--out", default="", help="folder to write the dataset into (default: a temp dir, removed after)")
    p.add_argument("--json", default="", help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.out:
        root = Path(args.out)
        if root.exists() and any(root.iterdir()):
            p.error(f"--out {root} exists and is not empty; pass an empty or new folder")
    else:
        tmp = tempfile.mkdtemp(prefix="remomask_data_load_")
        root = Path(tmp) / "HumanML3D"
    try:
        t0 = time.perf_counter()
        frames = write_random_dataset(root, args.num_motions, args.seed)
        t_write = time.perf_counter() - t0
        cfg = DataConfig(root=str(root))

        t0 = time.perf_counter()
        corpus = MotionCorpus.load(cfg, "train")
        t_cold = time.perf_counter() - t0
        n_entries = len(corpus.entries)
        del corpus
        gc.collect()
        t0 = time.perf_counter()
        corpus = MotionCorpus.load(cfg, "train")
        t_cached = time.perf_counter() - t0
        assert corpus.from_cache, "the second load should come from the cache"
        cache_bytes = sum(f.stat().st_size for f in (root / ".cache").glob("*.npz"))

        torch.manual_seed(args.seed)
        ds = build_dataset(cfg, "train", "text", corpus=corpus)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                            num_workers=args.num_workers, drop_last=False)
        t0 = time.perf_counter()
        n_items = 0
        for batch in tqdm(loader, desc="one epoch (text)", unit="batch"):
            n_items += len(batch["length"])
        t_epoch = time.perf_counter() - t0
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPU, torch {torch.__version__}",
        "num_motions": args.num_motions, "frames": frames, "entries": n_entries,
        "data_gb": frames * 263 * 4 / 1e9, "cache_gb": cache_bytes / 1e9,
        "write_s": t_write, "cold_load_s": t_cold, "cached_load_s": t_cached,
        "epoch_s": t_epoch, "epoch_items": n_items, "items_per_s": n_items / t_epoch,
        "batch_size": args.batch_size, "num_workers": args.num_workers, "threads": torch.get_num_threads(),
    }
    print(f"\n{args.num_motions} motions ({frames} frames, {result['data_gb']:.2f} GB float32), {n_entries} entries; "
          f"{result['machine']}; {result['date']}")
    print("| step | time |\n|---|---|")
    print(f"| write the random folder | {t_write:.1f} s |")
    print(f"| cold load (read every file, write .cache/) | {t_cold:.1f} s |")
    print(f"| cached load (one .npz, {result['cache_gb']:.2f} GB) | {t_cached:.1f} s |")
    print(f"| one epoch, text mode, batch {args.batch_size}, {args.num_workers} workers, {torch.get_num_threads()} thread(s) | {t_epoch:.1f} s "
          f"({result['items_per_s']:.0f} items/s) |")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        del loader, ds, corpus
        shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
