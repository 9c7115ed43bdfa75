"""The main job of `make demo`: every stage, end to end, on the procedural mini dataset.

    python -m utils.demo --data data/mini [--name demo] [--runs-root runs]
    python -m utils.demo --smoke [--runs-root /tmp/smoke]        # the same chain at tiny sizes (minutes -> seconds)

Data → evaluator → tokenizer → retriever → masked and residual transformers and the length estimator →
evaluations (ground truth, reconstructions, retrieval, and a fast text-to-motion one) → three prompts generated.
Each stage runs its own script's `main` with its mini config (exactly the command a user would type, printed
before it runs), so the demo exercises the real entry points; they run in this process (one Python start-up and
one import of torch for the whole chain), or each in its own process with `--subprocess`. To fit in 10 minutes on
2 CPU cores the evaluations use 3 replications instead of the protocol's 20, and the text-to-motion one is `--fast`
(1 replication, MultiModality over one batch with 5 repeats); their reports say NOT COMPARABLE. The demo ends by
printing each step's time and where its outputs are: the GIFs, MP4s, BVHs and summary.json of the generated
prompts, and every report.

`--smoke` writes an 80-motion mini dataset into the runs root (unless --data is given) and runs every stage with tiny
models for a few steps: it checks that the chain works (the end-to-end test uses it), not that it learns.
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

DEMO_PROMPTS = ("a person walks forward", "a person jumps up in place", "a man waves his right hand")
DEMO_LENGTHS = (120, 80, 100)

# Tiny sizes for --smoke: the real classes, a few steps each (the values of tests/tiny_stages.py)
SMOKE = {
    "evaluator": ["train.max_steps=4", "train.batch_size=8", "train.val_every=4", "train.ckpt_every=4",
                  "loss.movement_pretrain_steps=2"],
    "rvq": ["data.window_size=32", "train.batch_size=4", "train.max_steps=4", "train.val_every=2", "train.ckpt_every=2",
            "train.warmup_steps=0", "val.max_batches=2", "model.width=32", "model.code_dim=16", "model.nb_code=16",
            "model.global_width=32", "model.global_code_dim=16", "model.global_nb_code=16", "model.dropout=0.0"],
    "retriever": ["model.part_width=8", "model.layers=1", "model.heads=2", "model.ff_dim=16", "model.latent_dim=16",
                  "model.text_tiny=true", "model.queue_size=16", "model.frame_pool=1", "train.batch_size=8",
                  "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2", "retriever.database_batch_size=16"],
    "mask": ["model.layers=1", "model.heads=2", "model.width=32", "model.ff_dim=64", "train.batch_size=8",
             "train.max_steps=4", "train.val_every=4", "train.ckpt_every=4", "train.warmup_steps=0",
             "train.milestones=[100]", "val.max_batches=1", "val.eval_batches=1", "val.eval_batch_size=8",
             "val.gen_steps=2", "upstream.text.tiny=true"],
    "residual": ["model.layers=1", "model.heads=2", "model.width=32", "model.ff_dim=64", "model.embed_dim=16",
                 "train.batch_size=8", "train.max_steps=4", "train.val_every=4", "train.ckpt_every=4",
                 "train.warmup_steps=0", "train.milestones=[100]", "val.max_batches=1", "val.recon_batches=1",
                 "upstream.text.tiny=true"],
    "length_estimator": ["length_model.hidden=[16]", "length_train.batch_size=8", "length_train.max_steps=4",
                         "length_train.val_every=4", "length_train.ckpt_every=4", "upstream.text.tiny=true"],
}
SMOKE_EVAL = ["eval.batch_size=8", "eval.diversity_times=8", "eval.mm_batches=1", "eval.mm_repeats=2",
              "eval.mm_times=1"]
SMOKE_MOTIONS = 80


@dataclass(frozen=True)
class Step:
    title: str
    script: str          # path relative to the repository root
    args: tuple[str, ...]
    output: str          # what to point the user at, relative to the run root; "{runs}" and "{name}" are filled in


def demo_steps(data: str, name: str, runs: str, smoke: bool = False) -> list[Step]:
    """The demo's commands in pipeline order (see README "Training order")."""
    common = ("--name", name, "--runs-root", runs, "--overwrite", f"data.root={data}")
    tiny = (lambda stage: tuple(SMOKE[stage])) if smoke else (lambda stage: ())
    ckpt = {stage: f"{runs}/{stage}/{name}/checkpoints/best.pt" for stage in ("rvq", "retriever", "mask", "residual")}
    evaluator = f"{runs}/evaluator/{name}/text_mot_match/model/finest.tar"
    upstream = (f"upstream.tokenizer={ckpt['rvq']}",)
    generator_common = (*common, *upstream)
    eval_common = ("--config", "configs/mini/eval.yaml", "--name", name, "--runs-root", runs, f"data.root={data}",
                   f"evaluator.path={evaluator}", f"checkpoints.rvq={ckpt['rvq']}",
                   f"checkpoints.retriever={ckpt['retriever']}", f"checkpoints.mask={ckpt['mask']}",
                   f"checkpoints.residual={ckpt['residual']}")
    steps = [
        Step("evaluator (train_evaluator.py)", "train_evaluator.py",
             ("--config", "configs/mini/evaluator.yaml", *common, *tiny("evaluator")), "{runs}/evaluator/{name}"),
        Step("tokenizer (train_rvq.py)", "train_rvq.py",
             ("--config", "configs/mini/rvq.yaml", *common, *tiny("rvq")), "{runs}/rvq/{name}"),
        Step("retriever (train_retriever.py)", "train_retriever.py",
             ("--config", "configs/mini/retriever.yaml", *common, *tiny("retriever"),
              "retriever.final_eval=false"), "{runs}/retriever/{name}"),     # eval_t2m.py --stage retriever below
        Step("masked transformer (train_mask_transformer.py)", "train_mask_transformer.py",
             ("--config", "configs/mini/mask.yaml", *generator_common, f"upstream.retriever={ckpt['retriever']}",
              f"val.evaluator={evaluator}", *tiny("mask")), "{runs}/mask/{name}"),
        Step("residual transformer (train_residual.py)", "train_residual.py",
             ("--config", "configs/mini/residual.yaml", *generator_common, *tiny("residual")),
             "{runs}/residual/{name}"),
        Step("length estimator (train_residual.py --length-estimator)", "train_residual.py",
             ("--config", "configs/mini/residual.yaml", "--length-estimator", *generator_common,
              *tiny("length_estimator")), "{runs}/length_estimator/{name}"),
    ]
    for stage in ("gt", "rvq", "retriever", "t2m"):
        flags = ["--replications", "1" if stage == "t2m" or smoke else "3"]
        flags += ["--fast"] if smoke or stage == "t2m" else []
        if smoke:
            overrides = SMOKE_EVAL + (["retrieval_protocols=[normal,table3]"] if stage == "retriever" else [])
        else:   # --fast MultiModality: one batch, 5 repeats, 5 pairs (the demo's time budget)
            overrides = ["eval.mm_times=5"] if stage == "t2m" else []
        steps.append(Step(f"evaluation: {stage} (eval_t2m.py)", "eval_t2m.py",
                          ("--stage", stage, *flags, *eval_common, *overrides),
                          f"{{runs}}/eval/{{name}}/{stage}/eval.md"))
    gen = ["--runs-root", runs, "--name", name, "--out", f"{runs}/generate/{name}", "--seed", "0",
           "--prompts-file", prompts_file(runs, name)]
    steps.append(Step("generation (generate.py)", "generate.py", tuple(gen), "{runs}/generate/{name}/summary.json"))
    return steps


def prompts_file(runs: str, name: str) -> str:
    """The path of the demo's prompts file (`text#length` lines), written by `write_prompts_file`."""
    return f"{runs}/generate/{name}_prompts.txt"


def write_prompts_file(runs: str, name: str) -> Path:
    path = Path(prompts_file(runs, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p}#{n}\n" for p, n in zip(DEMO_PROMPTS, DEMO_LENGTHS)))
    return path


def run_step(step: Step, subprocess_: bool = False) -> float:
    """Run one step (its script's `main` here, or `python <script>` in a subprocess); returns its seconds."""
    print(f"\n=== {step.title}\n$ {shlex.join(['python', step.script, *step.args])}", flush=True)
    start = time.perf_counter()
    if subprocess_:
        rc = subprocess.run([sys.executable, step.script, *step.args], cwd=REPO).returncode
    else:
        rc = _run_in_process(step)
    if rc != 0:
        raise SystemExit(f"demo: step '{step.title}' failed with exit code {rc}; its command is printed above.")
    return time.perf_counter() - start


def _run_in_process(step: Step) -> int:
    """`python <script> <args>` without a new interpreter: the script's main under run_script, from the repo root."""
    import importlib
    import os

    from utils.script import run_script

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = importlib.import_module(Path(step.script).stem)
    here = os.getcwd()
    os.chdir(REPO)
    try:
        return run_script(module.main, list(step.args), prog=step.script)
    except SystemExit as exit_:              # argparse's usage errors (exit 2) and explicit SystemExit("message")
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return 1
        return int(exit_.code or 0)
    finally:
        os.chdir(here)
        sys.stdout.flush()
        sys.stderr.flush()


def smoke_data(runs: str) -> str:
    """A small mini dataset for --smoke (written once into the runs root)."""
    from datasets.mini import write_mini_dataset

    out = Path(runs) / "smoke_data"
    if not (out / "train.txt").is_file():
        write_mini_dataset(out, num_motions=SMOKE_MOTIONS, seed=0, overwrite=True)
    return str(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="mini dataset folder (default: data/mini; --smoke: its own)")
    parser.add_argument("--name", default="demo", help="run name used for every stage (default: demo)")
    parser.add_argument("--runs-root", default=None, help="root of the run directories (default: runs; --smoke: "
                                                          "runs/smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps each: checks the chain")
    parser.add_argument("--subprocess", action="store_true",
                        help="run each stage in its own Python process (default: in this one, same entry points)")
    args = parser.parse_args(argv)
    runs = args.runs_root or ("runs/smoke" if args.smoke else "runs")
    data = args.data or (smoke_data(runs) if args.smoke else "data/mini")
    if not (REPO / data / "train.txt").exists() and not Path(data, "train.txt").exists():
        raise SystemExit(f"demo: no dataset at '{data}' (expected {data}/train.txt); "
                         f"run `python -m datasets.mini --out {data}` first.")
    write_prompts_file(runs, args.name)
    total = 0.0
    done = []
    for step in demo_steps(data, args.name, runs, smoke=args.smoke):
        seconds = run_step(step, subprocess_=args.subprocess)
        print(f"=== {step.title}: {seconds:.0f} s", flush=True)
        total += seconds
        done.append((step, seconds))
    print(f"\n=== demo finished in {total:.0f} s")
    for step, seconds in done:
        print(f"  {step.title:56s} {seconds:5.0f} s -> {step.output.format(runs=runs, name=args.name)}")
    animations = sorted(Path(runs, "generate", args.name).glob("*/motion.gif")) + \
        sorted(Path(runs, "generate", args.name).glob("*/motion.mp4"))
    if animations:
        print("  animations:\n" + "\n".join(f"    {g}" for g in animations))
    overview = Path(runs, "generate", args.name, "overview.png")
    if overview.is_file():
        print(f"  all generated motions in one picture: {overview}")


if __name__ == "__main__":
    main()
