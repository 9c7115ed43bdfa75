"""Issue #12 options side by side on the mini dataset: ours against the official code's training details.

    python -m utils.benchmarks.faithful_options [--data data/mini] [--retriever-steps 300] [--rvq-steps 300]
                                                [--threads 1] [--out runs/bench_faithful]

Every variant starts from the same seed and trains the same number of steps on the same data, with the mini
configs (`configs/mini/{retriever,rvq}.yaml`) plus the variant's overrides:
- retriever: `model.similarity` × `model.projection_head` (normalized/linear = ours, official/official = the official
  code; the two mixed ones show which of the two matters). Scored with the **last** checkpoint (equal steps) on the
  mini val split under TMR's "normal" and "guo" protocols and the paper's "table3" protocol (R@1, both directions).
- tokenizer: `model.straight_through` sum (ours) against per_level (official), val MPJPE (mm, recovered joints)
  and root-relative MPJPE at equal steps (the last validation of the run).
Prints one markdown table per stage (labelled mini: never comparable to paper tables) and writes
`<out>/faithful_options.json` and `<out>/faithful_options.md`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from utils.atomic import atomic_write_text

RETRIEVER_VARIANTS = (("normalized", "linear"), ("normalized", "official"), ("official", "linear"),
                      ("official", "official"))
STE_VARIANTS = ("sum", "per_level")
PROTOCOLS = ("normal", "guo", "table3")


def bench_retriever(data: str, out: Path, steps: int, extra: list[str] = (),
                    variants=RETRIEVER_VARIANTS) -> list[dict]:
    from datasets.motion_dataset import build_dataset, collate
    from utils.config import load_config, to_dict
    from utils.run_dir import RunDir
    from utils.tasks.retriever import RetrieverStageConfig, RetrieverTask, evaluate_retriever
    from utils.training import Trainer, seed_everything

    rows = []
    for similarity, head in variants:
        name = f"{similarity}_{head}"
        over = [f"data.root={data}", f"model.similarity={similarity}", f"model.projection_head={head}",
                f"train.max_steps={steps}", "train.device=cpu", f"train.val_every={steps}", f"train.ckpt_every={steps}",
                "train.log_every=50", "retriever.build_database=false", "retriever.final_eval=false", *extra]
        cfg = load_config(RetrieverStageConfig, "configs/mini/retriever.yaml", over)
        seed_everything(cfg.train.seed)
        train_set = build_dataset(cfg.data, "train", "text")
        val_set = build_dataset(cfg.data, "val", "text")
        task = RetrieverTask(cfg, val_set=val_set)
        run = RunDir("retriever", name, out / "runs", overwrite=True)
        t0 = time.perf_counter()
        Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=to_dict(cfg)).fit()
        train_s = time.perf_counter() - t0
        res = evaluate_retriever(run.last, cfg.data, split="val", protocols=PROTOCOLS)
        row = {"similarity": similarity, "projection_head": head, "steps": steps, "train_s": train_s,
               "lr": cfg.train.lr,
               "val_entries": len(val_set.corpus.entries), "overrides": over,
               **{f"{p}/{d}/R01": res[p][f"{d}/R01"] for p in PROTOCOLS for d in ("t2m", "m2t")}}
        rows.append(row)
        print(f"  retriever similarity={similarity} head={head}: " + ", ".join(
            f"{p} t2m R@1 {row[f'{p}/t2m/R01']:.2f}" for p in PROTOCOLS) + f" ({train_s:.0f} s)", flush=True)
    return rows


def bench_rvq(data: str, out: Path, steps: int, extra: list[str] = ()) -> list[dict]:
    from datasets.motion_dataset import build_dataset, collate
    from utils.config import load_config, to_dict
    from utils.run_dir import RunDir
    from utils.tasks.rvq import RVQStageConfig, RVQTask, validation_windows
    from utils.training import Trainer, seed_everything

    rows = []
    for mode in STE_VARIANTS:
        over = [f"data.root={data}", f"model.straight_through={mode}", f"train.max_steps={steps}",
                "train.device=cpu", f"train.val_every={steps}", f"train.ckpt_every={steps}", "val.render=false",
                *extra]
        cfg = load_config(RVQStageConfig, "configs/mini/rvq.yaml", over)
        seed_everything(cfg.train.seed)
        train_set = build_dataset(cfg.data, "train", "window")
        val_set = validation_windows(cfg)
        task = RVQTask(cfg, train_set.mean, train_set.std)
        run = RunDir("rvq", f"ste_{mode}", out / "runs", overwrite=True)
        t0 = time.perf_counter()
        final = Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=to_dict(cfg)).fit()
        train_s = time.perf_counter() - t0
        row = {"straight_through": mode, "steps": steps, "train_s": train_s, "overrides": over,
               "val_mpjpe_mm": final.get("val/mpjpe_mm"), "val_mpjpe_local_mm": final.get("val/mpjpe_local_mm"),
               "val_loss": final.get("val/loss")}
        rows.append(row)
        print(f"  tokenizer straight_through={mode}: val MPJPE {row['val_mpjpe_mm']:.1f} mm (root-relative "
              f"{row['val_mpjpe_local_mm']:.1f} mm) ({train_s:.0f} s)", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Mini dataset (not comparable to any paper table), {result['date']}, {result['machine']}, "
             f"torch {result['torch']}. Command: `{result['command']}`.", ""]
    if "retriever" in result:
        r0 = result["retriever"][0]
        lines += [f"Retriever, mini config, {r0['steps']} steps each, seed 0, last checkpoint, val split "
                  f"({r0['val_entries']} entries), R@1 in % (text→motion / motion→text):", "",
                  "| similarity | projection head | base lr | normal | guo (batches of 32) | table3 | train s |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["retriever"]:
            cells = " | ".join(f"{r[f'{p}/t2m/R01']:.2f} / {r[f'{p}/m2t/R01']:.2f}" for p in PROTOCOLS)
            tag = " (ours)" if (r["similarity"], r["projection_head"]) == ("normalized", "linear") else (
                " (official)" if (r["similarity"], r["projection_head"]) == ("official", "official") else "")
            lines.append(f"| {r['similarity']}{tag} | {r['projection_head']} | {r['lr']:g} | {cells} | "
                         f"{r['train_s']:.0f} |")
        lines.append("")
    if "rvq" in result:
        r0 = result["rvq"][0]
        lines += [f"Tokenizer, mini config, {r0['steps']} steps each, seed 0, val windows:", "",
                  "| straight-through | val MPJPE (mm) | val root-relative MPJPE (mm) | val loss | train s |",
                  "|---|---|---|---|---|"]
        for r in result["rvq"]:
            tag = " (ours)" if r["straight_through"] == "sum" else " (official)"
            lines.append(f"| {r['straight_through']}{tag} | {r['val_mpjpe_mm']:.1f} | {r['val_mpjpe_local_mm']:.1f} | "
                         f"{r['val_loss']:.4f} | {r['train_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    import sys

    p = argparse.ArgumentParser(prog="python -m utils.benchmarks.faithful_options", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/mini", help="mini dataset folder (python -m datasets.mini --out ...)")
    p.add_argument("--retriever-steps", type=int, default=300, help="training steps per retriever variant (0 = skip)")
    p.add_argument("--rvq-steps", type=int, default=300, help="training steps per tokenizer variant (0 = skip)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/bench_faithful", help="folder of the runs, the JSON and the markdown")
    p.add_argument("--set-retriever", nargs="*", default=[], metavar="KEY=VALUE", help="extra retriever overrides")
    p.add_argument("--set-rvq", nargs="*", default=[], metavar="KEY=VALUE", help="extra tokenizer overrides")
    p.add_argument("--retriever-variants", nargs="*", default=None, metavar="SIMILARITY/HEAD",
                   help="retriever variants to train (default: all four, e.g. official/official)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
              "torch": torch.__version__,
              "command": "python -m utils.benchmarks.faithful_options " + " ".join(sys.argv[1:] if argv is None
                                                                                   else argv)}
    print(f"# issue-12 options on the mini dataset, {result['date']}, {result['machine']}", flush=True)
    if args.retriever_steps:
        variants = (RETRIEVER_VARIANTS if args.retriever_variants is None
                    else [tuple(v.split("/")) for v in args.retriever_variants])
        result["retriever"] = bench_retriever(args.data, out, args.retriever_steps, args.set_retriever, variants)
    if args.rvq_steps:
        result["rvq"] = bench_rvq(args.data, out, args.rvq_steps, args.set_rvq)
    md = markdown(result)
    print("\n" + md)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "faithful_options.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "faithful_options.md", md + "\n")
    return result


if __name__ == "__main__":
    main()
