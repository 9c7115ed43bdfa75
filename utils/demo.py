"""The main job of `make demo`: every implemented stage, end to end, on the procedural mini dataset.

    python -m utils.demo --data data/mini [--name demo] [--runs-root runs]

Each stage runs its own script as a subprocess with its mini config (exactly the command a user would
type, printed before it runs), so the demo exercises the real entry points. Stages that are not implemented yet
(the generator stages) are listed and skipped. The evaluations use 5 replications instead of the protocol's 20 to
keep the demo short; their reports say so. The demo ends by printing where its outputs are.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Step:
    title: str
    script: str          # path relative to the repository root
    args: tuple[str, ...]
    output: str          # what to point the user at, relative to the run root; "{runs}" and "{name}" are filled in


def demo_steps(data: str, name: str, runs: str) -> list[Step]:
    """The demo's commands in pipeline order (see README "Training order")."""
    common = ("--name", name, "--runs-root", runs, "--overwrite", f"data.root={data}")
    return [
        Step("evaluator (train_evaluator.py)", "train_evaluator.py",
             ("--config", "configs/mini/evaluator.yaml", *common), "{runs}/evaluator/{name}"),
        Step("tokenizer (train_rvq.py)", "train_rvq.py",
             ("--config", "configs/mini/rvq.yaml", *common), "{runs}/rvq/{name}"),
        Step("retriever (train_retriever.py)", "train_retriever.py",
             ("--config", "configs/mini/retriever.yaml", *common), "{runs}/retriever/{name}"),
        *(Step(f"evaluation: {stage} (eval_t2m.py)", "eval_t2m.py",
               ("--config", "configs/mini/eval.yaml", "--stage", stage, "--name", name, "--runs-root", runs,
                "--replications", "5",
                f"data.root={data}", f"evaluator.path={runs}/evaluator/{name}/text_mot_match/model/finest.tar",
                f"checkpoints.rvq={runs}/rvq/{name}/checkpoints/best.pt",
                f"checkpoints.retriever={runs}/retriever/{name}/checkpoints/best.pt"),
               f"{{runs}}/eval/{{name}}/{stage}/eval.md")
          for stage in ("gt", "rvq", "retriever")),
    ]


# Stages of the paper that later issues add to this demo, in pipeline order.
PENDING = ("train_mask_transformer.py", "train_residual.py", "generate.py")


def run_step(step: Step) -> float:
    cmd = [sys.executable, step.script, *step.args]
    print(f"\n=== {step.title}\n$ {shlex.join(['python', step.script, *step.args])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"demo: step '{step.title}' failed with exit code {result.returncode}; "
                         f"its command is printed above.")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/mini", help="mini dataset folder (default: data/mini)")
    parser.add_argument("--name", default="demo", help="run name used for every stage (default: demo)")
    parser.add_argument("--runs-root", default="runs", help="root of the run directories (default: runs)")
    args = parser.parse_args(argv)

    if not (REPO / args.data / "train.txt").exists() and not Path(args.data, "train.txt").exists():
        raise SystemExit(f"demo: no dataset at '{args.data}' (expected {args.data}/train.txt); "
                         f"run `python -m datasets.mini --out {args.data}` first.")
    total = 0.0
    done = []
    for step in demo_steps(args.data, args.name, args.runs_root):
        if not (REPO / step.script).exists():
            print(f"\n=== {step.title}: {step.script} is not in this checkout yet; skipped")
            continue
        total += run_step(step)
        done.append(step)
    print(f"\n=== demo finished in {total:.0f} s")
    for step in done:
        print(f"  {step.title:32s} -> {step.output.format(runs=args.runs_root, name=args.name)}")
    missing = [s for s in PENDING if not (REPO / s).exists()]
    if missing:
        print("  not yet implemented (later issues): " + ", ".join(missing))


if __name__ == "__main__":
    main()
