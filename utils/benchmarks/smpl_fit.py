"""Benchmark the SMPL fit (utils/smpl_fit.py) on the real mocap clips with the toy SMPL model (utils/smpl_toy.py).

    python -m utils.benchmarks.smpl_fit [--clips ../shared/data/real_motion/joints] [--iters 100] [--device cpu]

For every clip (T, 22, 3) it times and scores three fits:
  1. "template": the analytic pose initialisation on the template body (betas 0, --iters 0);
  2. "fit": the full fit (shape stage, analytic init, --iters refinement steps);
  3. "reposed": the fit again, from scratch, on the joints that fit 2 produced. An exact toy-body solution exists
     there, so its error is the optimiser's own; on the raw clips the error is dominated by the mocap subject's
     proportions, which the toy body's 10 betas cannot reach (the real SMPL shape space can).
Errors are per-joint Euclidean distances over all frames and the 22 joints (mean and max, mm), from a full smplx
forward of the saved axis-angle parameters. Prints a markdown table; `--json` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_write_text
from utils.smpl_fit import fit_smpl, load_smpl_model
from utils.smpl_toy import write_toy_smpl_model

DEFAULT_CLIPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real_motion" / "joints"


def run(clips: list[Path], iters: int, device: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        write_toy_smpl_model(tmp)
        model = load_smpl_model(tmp, device=device)
    rows = []
    for path in clips:
        joints = np.load(path)
        template = fit_smpl(joints, model=model, iters=0, device=device, progress=False)
        fit = fit_smpl(joints, model=model, iters=iters, device=device, progress=False)
        reposed = fit_smpl(fit.joints, model=model, iters=iters, device=device, progress=False)
        print(f"{path.stem}: {fit.summary()}", flush=True)
        rows.append({"clip": path.stem, "frames": int(len(joints)),
                     **{f"{name}_{key}": getattr(f, attr) for name, f in
                        (("template", template), ("fit", fit), ("reposed", reposed))
                        for key, attr in (("mean_mm", "error_mean_mm"), ("max_mm", "error_max_mm"),
                                          ("s", "seconds"))}})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.benchmarks.smpl_fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of joints .npy (T, 22, 3)")
    parser.add_argument("--iters", type=int, default=100, help="refinement steps (default 100, the CLI's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    clips = sorted(args.clips.glob("*.npy"))
    if not clips:
        parser.error(f"--clips: no .npy files in {args.clips} (expected joints (T, 22, 3))")
    torch.set_num_threads(args.threads)
    rows = run(clips, args.iters, args.device)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}, iters {args.iters}, toy SMPL model")
    print("| clip | frames | template mean / max (mm) | fit mean / max (mm) | fit time (s) | "
          "reposed mean / max (mm) | reposed time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['frames']} | {r['template_mean_mm']:.1f} / {r['template_max_mm']:.1f} | "
              f"{r['fit_mean_mm']:.1f} / {r['fit_max_mm']:.1f} | {r['fit_s']:.2f} | "
              f"{r['reposed_mean_mm']:.2f} / {r['reposed_max_mm']:.2f} | {r['reposed_s']:.2f} |")
    frames = sum(r["frames"] for r in rows)
    w = np.array([r["frames"] for r in rows], dtype=np.float64) / frames
    print(f"| **all** | {frames} | {sum(w * [r['template_mean_mm'] for r in rows]):.1f} / "
          f"{max(r['template_max_mm'] for r in rows):.1f} | {sum(w * [r['fit_mean_mm'] for r in rows]):.1f} / "
          f"{max(r['fit_max_mm'] for r in rows):.1f} | {sum(r['fit_s'] for r in rows):.2f} | "
          f"{sum(w * [r['reposed_mean_mm'] for r in rows]):.2f} / {max(r['reposed_max_mm'] for r in rows):.2f} | "
          f"{sum(r['reposed_s'] for r in rows):.2f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
