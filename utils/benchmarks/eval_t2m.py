"""Time the evaluation driver (`utils.evaluation.evaluate_t2m`) at HumanML3D test size and project the reference
protocol's 20 replications.

    python -m utils.benchmarks.eval_t2m [--size 4384] [--replications 1] [--gen-s-per-sample S | --from-json G.json]

The eval set is simulated (4,384 items, HumanML3D's test split: random normalised motions of 40–196 frames, random
GloVe-width word embeddings and POS one-hots, caption lengths 3–22); the evaluator is `models.evaluator.T2MEvaluator`
at the official widths with random weights (its time does not depend on the weights). The generate function is a
**stand-in** that returns random motions at the requested lengths, so the measured time is the driver's own cost:
loading and collating, the evaluator's text and motion encoders (ground truth and generated), the metrics, and
MultiModality's 30 repeats of the first 3 batches. It counts the samples the protocol asks the generator for.

Projection: 20 × (driver time per replication + generated samples per replication × generation seconds per
sample), the latter from `--gen-s-per-sample` or from a `utils.benchmarks.generate --json` file (`--from-json`,
its fastest path at batch 32 or its largest batch). Output: a markdown table, `--json PATH` for the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
from torch.utils.data import Dataset

_MOD = "utils/benchmarks/eval_t2m.py"
HUMANML3D_TEST_SIZE = 4384


class SimulatedEvalSet(Dataset):
    """Items of the "eval" mode layout (motion, length, caption, tokens, word_embs, pos_ohot, sent_len, id), drawn
    per (epoch seed, index) so replications are reproducible. Motions are already normalised (mean 0, std 1)."""

    def __init__(self, size: int = HUMANML3D_TEST_SIZE, frames: int = 196, dim: int = 263, seed: int = 0):
        self.size, self.frames, self.dim, self.seed = size, frames, dim, seed
        self.mean, self.std = np.zeros(dim, np.float32), np.ones(dim, np.float32)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.seed = int(epoch)

    def denormalize(self, x):
        return x

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        length = int(torch.randint(10, self.frames // 4 + 1, (1,), generator=g)) * 4
        motion = torch.randn(self.frames, self.dim, generator=g)
        motion[length:] = 0
        sent_len = int(torch.randint(3, 23, (1,), generator=g))
        pos = torch.zeros(22, 15)
        pos[torch.arange(22), torch.randint(0, 15, (22,), generator=g)] = 1
        return {"motion": motion, "length": length, "caption": f"caption {index}", "tokens": ["a/DET"],
                "word_embs": torch.randn(22, 300, generator=g), "pos_ohot": pos, "sent_len": sent_len,
                "id": f"{index:06d}"}


class StandInGenerator:
    """generate_fn(batch, multimodality, generator) -> random raw motions at the batch's lengths; counts samples."""

    def __init__(self, frames: int = 196, dim: int = 263):
        self.frames, self.dim = frames, dim
        self.samples = 0
        self.calls = 0

    def __call__(self, batch: dict, multimodality: bool = False, generator: torch.Generator | None = None):
        b = batch["length"].shape[0]
        self.samples += b
        self.calls += 1
        return torch.randn(b, self.frames, self.dim, generator=generator), batch["length"]


FAST_PATHS = ("fast_bf16_compile", "fast_bf16", "fast_bf16_autocast", "fast_fp32")


def gen_seconds_from_json(path: str, batch_size: int = 32) -> tuple[float, str]:
    """(seconds per sample, description) of the fastest of the fast paths of a generate.py JSON (bf16 + compile,
    bf16, bf16 autocast, fp32: only fp32 where the run skipped bf16 as emulated) at the evaluation's batch size (the
    driver generates in batches of eval.batch_size = 32), or at its largest batch when that is absent."""
    data = json.loads(open(path).read())
    runs = data["runs"]
    batch = str(batch_size) if str(batch_size) in runs else max(runs, key=int)
    path_name = min((p for p in FAST_PATHS if p in runs[batch]),
                    key=lambda p: runs[batch][p]["stages"]["total"]["median"])
    total = runs[batch][path_name]["stages"]["total"]["median"]
    return total / int(batch), f"{path_name} at batch {batch} ({data['date']}, {data['machine']})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=HUMANML3D_TEST_SIZE, help="eval set size (default 4384)")
    ap.add_argument("--replications", type=int, default=1, help="replications timed (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="evaluator device: cpu | cuda (default cpu)")
    ap.add_argument("--gen-s-per-sample", type=float, default=None, help="generation seconds per sample")
    ap.add_argument("--from-json", default=None, help="a utils.benchmarks.generate --json file (its fastest path)")
    ap.add_argument("--quick", action="store_true", help="a 640-item set (not HumanML3D size)")
    ap.add_argument("--tiny-evaluator", action="store_true", help="tiny evaluator widths (tests; not a measurement)")
    ap.add_argument("--second-evaluation", action="store_true",
                    help="also time a second evaluation of another model under the same protocol, which reuses the "
                         "first one's ground-truth embeddings (utils.evaluation.GTEmbeddingCache)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.size = 640
    if args.size < 32 * 3 or args.replications < 1 or args.threads < 1:
        print(f"error: {_MOD}: --size must be >= 96 (3 MultiModality batches of 32), --replications and --threads "
              f">= 1; got {args.size}, {args.replications}, {args.threads}", file=sys.stderr)
        return 2
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"error: {_MOD}: --device {args.device} given but CUDA is not available", file=sys.stderr)
        return 2
    gen_s, gen_src = args.gen_s_per_sample, "--gen-s-per-sample"
    if args.from_json:
        try:
            gen_s, gen_src = gen_seconds_from_json(args.from_json)
        except (OSError, KeyError, ValueError) as err:
            print(f"error: {_MOD}: --from-json {args.from_json}: not a generate.py result ({err})", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)

    from models.evaluator import EvaluatorConfig, T2MEvaluator
    from utils.evaluation import EvalConfig, GTEmbeddingCache, evaluate_t2m
    import os

    torch.manual_seed(0)
    widths = {}
    if args.tiny_evaluator:
        widths = dict(dim_text_hidden=8, dim_motion_hidden=10, dim_coemb_hidden=6, dim_movement_enc_hidden=9,
                      dim_movement_latent=7)
    evaluator = T2MEvaluator(EvaluatorConfig.for_dataset("t2m", **widths), np.zeros(263), np.ones(263))
    evaluator = evaluator.to(args.device)
    eval_set = SimulatedEvalSet(args.size)
    gen = StandInGenerator()
    load_start = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    cache = GTEmbeddingCache()
    start = time.perf_counter()
    report = evaluate_t2m(gen, eval_set, evaluator, EvalConfig(replications=args.replications), progress=False,
                          gt_cache=cache)
    elapsed = time.perf_counter() - start
    second = None
    if args.second_evaluation:          # another "model": same protocol, the ground truth comes from the cache
        start = time.perf_counter()
        evaluate_t2m(StandInGenerator(), eval_set, evaluator, EvalConfig(replications=args.replications),
                     progress=False, gt_cache=cache)
        second = (time.perf_counter() - start) / args.replications
    per_rep = elapsed / args.replications
    samples = gen.samples / args.replications
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "size": args.size,
           "replications_timed": args.replications, "threads": args.threads, "device": args.device,
           "driver_s_per_replication": per_rep, "generated_samples_per_replication": samples,
           "generate_calls_per_replication": gen.calls / args.replications,
           "samples_per_replication_scored": report["samples_per_replication"],
           "load_start": load_start, "load_end": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
           "torch": torch.__version__}
    print(f"evaluation driver benchmark — {res['date']} — torch {res['torch']}, {args.threads} threads, evaluator "
          f"on {args.device} — load average {res['load_start']} → {res['load_end']}\n")
    print("| measurement | value |\n|---|---|")
    print(f"| eval set (simulated) | {args.size:,} items, {report['samples_per_replication']:,} scored per replication |")
    print(f"| generated samples asked per replication | {samples:,.0f} ({res['generate_calls_per_replication']:.0f} "
          f"calls of 32; MultiModality: 3 batches × 30) |")
    print(f"| driver + evaluator time per replication (stand-in generator) | {per_rep:.1f} s |")
    print(f"| 20 replications, driver only | {20 * per_rep / 60:.1f} min |")
    if second is not None:
        res["second_evaluation_s_per_replication"] = second
        print(f"| a second evaluation under the same protocol, ground-truth embeddings reused (same run) | "
              f"{second:.1f} s per replication ({per_rep / second:.2f}× faster) |")
    if gen_s is not None:
        proj = 20 * (per_rep + samples * gen_s)
        res.update(gen_s_per_sample=gen_s, gen_source=gen_src, projected_20_rep_s=proj)
        print(f"| generation at {gen_s:.3f} s/sample ({gen_src}) | {samples * gen_s / 3600:.2f} h per replication |")
        print(f"| **projected 20 replications** | {proj / 3600:.1f} h ({proj / 60:.1f} min) |")
    if args.json:
        from utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
