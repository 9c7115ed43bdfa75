"""The paper's Table 4 on the mini dataset: ReMoMask against each ablation of the masked transformer, same captions,
same seeds, one markdown table.

    python -m utils.ablations --data data/mini [--runs-root runs] [--name demo] [--replications 3]
    python -m utils.ablations --smoke --runs-root /tmp/smoke        # after `python -m utils.demo --smoke`

It reuses the demo's runs (`<runs-root>/{evaluator,rvq,retriever,mask,residual}/<name>/`, i.e. `make demo` first):
the tokenizer, the retriever, the residual transformer and the full masked transformer. For each ablation
(`model.ablation=no_retrieval | concat | no_rag_cfg`, paper Table 4) it trains a masked transformer with the mini
config and otherwise identical settings (`--name <name>_<ablation>`); `whole_body_retrieval` also trains a whole-body
retriever (`model.part_level=false`, `--name <name>_whole_body`) first. Every variant is then scored by
`eval_t2m.py --stage t2m` with the same eval seed, so every row sees the same captions, crops and ground truth
(ARCHITECTURE §6.7) and the ground-truth embeddings are computed once for all rows (`GTEmbeddingCache`); real
motions (`--stage gt`) and the tokenizer's reconstruction (`--stage rvq`, an upper bound for any generator on this
tokenizer) are the first rows. The evaluations use 3 replications and MultiModality over one batch × 10 repeats
(the protocol's 20 and 3 × 30 would take ~7× longer on a CPU; `--replications`, `--mm-batches`, `--mm-repeats`).
About 30 minutes on 2 CPU cores. The table goes to `<runs-root>/ablations/<name>.md`.
Mini numbers are smoke-test numbers: never comparable to the paper's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.demo import SMOKE, SMOKE_EVAL, Step, run_step, smoke_data

ABLATIONS = ("no_retrieval", "concat", "no_rag_cfg", "whole_body_retrieval")
COLUMNS = ("R_precision_top1", "R_precision_top2", "R_precision_top3", "FID", "MM_Dist", "Diversity",
           "MultiModality")
ROW_NAMES = {"gt": "real motions", "rvq": "tokenizer reconstruction (upper bound)", "full": "ReMoMask (full)",
             "no_retrieval": "w/o retrieval", "concat": "w/o SSTA (concatenation)", "no_rag_cfg": "w/o RAG-CFG",
             "whole_body_retrieval": "w/o part-level retrieval (whole body)"}


def ablation_steps(data: str, name: str, runs: str, ablations=ABLATIONS, smoke: bool = False,
                   replications: int = 3, mm_batches: int = 1, mm_repeats: int = 10
                   ) -> tuple[list[Step], dict[str, str]]:
    """(the commands, {row: eval.json path}). Evaluations: `replications`, MultiModality over the first
    `mm_batches` batches × `mm_repeats` generations (the protocol: 20, 3 × 30)."""
    tiny = (lambda stage: tuple(SMOKE[stage])) if smoke else (lambda stage: ())
    ckpt = lambda stage, run=name: f"{runs}/{stage}/{run}/checkpoints/best.pt"      # noqa: E731
    evaluator = f"{runs}/evaluator/{name}/text_mot_match/model/finest.tar"
    steps: list[Step] = []
    reports = {}
    eval_flags = ["--replications", str(1 if smoke else replications), *(["--fast"] if smoke else [])]
    eval_over = [f"data.root={data}", f"evaluator.path={evaluator}", f"checkpoints.rvq={ckpt('rvq')}",
                 *(SMOKE_EVAL if smoke else [f"eval.mm_batches={mm_batches}", f"eval.mm_repeats={mm_repeats}",
                                             f"eval.mm_times={min(10, mm_repeats)}"])]

    def evaluate(row: str, stage: str, mask: str, retriever: str = "") -> None:
        eval_name = f"ablations_{name}_{row}"
        over = [*eval_over, f"checkpoints.mask={mask}", f"checkpoints.residual={ckpt('residual')}"]
        steps.append(Step(f"evaluation: {row}", "eval_t2m.py",
                          ("--stage", stage, *eval_flags, "--config", "configs/mini/eval.yaml", "--name", eval_name,
                           "--runs-root", runs, *over), ""))
        reports[row] = f"{runs}/eval/{eval_name}/{stage}/eval.json"

    evaluate("gt", "gt", ckpt("mask"))
    evaluate("rvq", "rvq", ckpt("mask"))
    evaluate("full", "t2m", ckpt("mask"))
    for ab in ablations:
        retriever = ckpt("retriever")
        if ab == "whole_body_retrieval":
            run = f"{name}_whole_body"
            steps.append(Step("whole-body retriever (train_retriever.py model.part_level=false)", "train_retriever.py",
                              ("--config", "configs/mini/retriever.yaml", "--name", run, "--runs-root", runs,
                               "--overwrite", f"data.root={data}", "model.part_level=false", *tiny("retriever"),
                               "retriever.final_eval=false"), ""))
            retriever = ckpt("retriever", run)
        run = f"{name}_{ab}"
        steps.append(Step(f"masked transformer, ablation {ab}", "train_mask_transformer.py",
                          ("--config", "configs/mini/mask.yaml", "--name", run, "--runs-root", runs, "--overwrite",
                           f"data.root={data}", f"upstream.tokenizer={ckpt('rvq')}", f"upstream.retriever={retriever}",
                           f"val.evaluator={evaluator}", f"model.ablation={ab}", *tiny("mask")), ""))
        evaluate(ab, "t2m", ckpt("mask", run))
    return steps, reports


def table(reports: dict[str, str], title: str) -> str:
    """Markdown: one row per report (mean ± 95% CI), the columns of the paper's tables."""
    lines = [f"### {title}", "", "| | " + " | ".join(c.replace("R_precision_", "R-prec ") for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row, path in reports.items():
        rep = json.loads(Path(path).read_text())
        metrics = rep.get("metrics", {})
        col = metrics.get("gt", {}) if row == "gt" else next((v for k, v in metrics.items() if k != "gt"), {})
        cells = []
        for c in COLUMNS:
            m = col.get(c)
            cells.append("–" if m is None else f"{m['mean']:.3f} ± {m['conf']:.3f}")
        lines.append(f"| {ROW_NAMES.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="mini dataset (default data/mini; --smoke: the smoke data)")
    parser.add_argument("--runs-root", default=None, help="the demo's runs root (default runs; --smoke runs/smoke)")
    parser.add_argument("--name", default="demo", help="the demo's run name (default demo)")
    parser.add_argument("--replications", type=int, default=3,
                        help="evaluation replications (default 3; the protocol's 20 take ~7x longer)")
    parser.add_argument("--mm-batches", type=int, default=1,
                        help="MultiModality over the first N batches (default 1; the protocol: 3)")
    parser.add_argument("--mm-repeats", type=int, default=10,
                        help="generations per MultiModality caption (default 10; the protocol: 30)")
    parser.add_argument("--only", nargs="*", choices=ABLATIONS, default=list(ABLATIONS),
                        help="a subset of the ablations (default: all four)")
    parser.add_argument("--smoke", action="store_true", help="tiny models (after `python -m utils.demo --smoke`)")
    args = parser.parse_args(argv)
    runs = args.runs_root or ("runs/smoke" if args.smoke else "runs")
    data = args.data or (smoke_data(runs) if args.smoke else "data/mini")
    missing = [s for s in ("rvq", "retriever", "mask", "residual")
               if not Path(runs, s, args.name, "checkpoints", "best.pt").is_file()]
    if missing:
        print(f"utils.ablations: no {missing[0]} run at {runs}/{missing[0]}/{args.name}/checkpoints/best.pt; run "
              f"`python -m utils.demo{' --smoke' if args.smoke else ''} --runs-root {runs}` first", file=sys.stderr)
        return 1
    steps, reports = ablation_steps(data, args.name, runs, args.only, args.smoke, args.replications,
                                    args.mm_batches, args.mm_repeats)
    total = 0.0
    for step in steps:
        seconds = run_step(step)
        print(f"=== {step.title}: {seconds:.0f} s", flush=True)
        total += seconds
    print(f"=== ablations finished in {total:.0f} s")
    from utils.atomic import atomic_write_text

    protocol = ("smoke sizes, 1 replication" if args.smoke else
                f"{args.replications} replication(s), MultiModality {args.mm_batches} batch(es) × {args.mm_repeats}")
    text = table(reports, f"Paper Table 4 on the mini dataset ({protocol}; not comparable to the paper)")
    out = Path(runs, "ablations", f"{args.name}.md")
    print(text)
    atomic_write_text(out, text)
    print(f"utils.ablations: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
