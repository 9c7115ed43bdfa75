"""kill -9 a tiny training run at random points (seeded), resume it each time, and check nothing is lost.

Each trial starts `tests/crash_driver.py` (the real Trainer / RunDir / checkpoint code on the toy task, last.pt after
every step) and SIGKILLs it: a quarter of the trials from outside at a random time, the others by the process
itself at a seeded point inside a checkpoint write (temp file half-written), just before a checkpoint's rename, or
between steps. After every kill, last.pt (when one exists) must load with weights_only=True and never go back in
steps; the next start (with --resume, and once as a plain rerun of a folder that has no checkpoint yet) must sweep
the orphan temp files. At the end the final weights must equal an uninterrupted run's, bit for bit.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_checkpoint
from utils.run_dir import temp_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 150
TRIALS = 16
SUMMARY = os.environ.get("CRASH_RESUME_SUMMARY")        # write the figures (README "Reliability") to this file


def start(root: Path, name: str, kill: str = "none", resume: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.crash_driver", "--root", str(root), "--name", name, "--steps", str(STEPS),
           "--kill", kill] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = open(root / f"{name}.log", "ab")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def wait_ready(proc: subprocess.Popen) -> int | None:
    """The step the process starts at ("READY <step>"), or None when it died before (e.g. killed in its setup)."""
    for line in proc.stdout:
        if line.startswith("READY "):
            return int(line.split()[1])
    return None


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    proc.communicate(timeout=timeout)
    return proc.returncode


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, stage="toy")["model"]


def test_kill_minus_9_at_random_points_then_resume_loses_nothing(tmp_path):
    rng = random.Random(20261201)
    root = tmp_path
    # the uninterrupted reference
    ref = start(root, "ref", resume=False)
    assert finish(ref) == 0, (root / "ref.log").read_text()[-2000:]
    expected = state(root / "toy" / "ref" / "checkpoints" / "last.pt")

    run = root / "toy" / "crash"
    last = run / "checkpoints" / "last.pt"
    plans = ["write:1:0.5"]                 # the first start dies inside its first save: no checkpoint yet
    kinds = ["write", "replace", "step", "external"]
    for i in range(1, TRIALS):
        kind = kinds[i % 4]
        plans.append({"write": f"write:{rng.randint(1, 6)}:{rng.random():.3f}", "replace": f"replace:{rng.randint(1, 6)}",
                      "step": f"step:{rng.randint(1, 6)}", "external": "external"}[kind])
    figures = {"trials": 0, "killed": 0, "killed_in_write": 0, "temp_files_swept": 0, "finished_early": 0,
               "last_pt_loads": 0, "steps_at_kill": []}
    previous_step = -1
    for i, plan in enumerate(plans):
        orphans_before = len(temp_files(run)) if run.exists() else 0
        # trial 1 reruns a folder without a checkpoint plainly (defect 1); every other start passes --resume,
        # which also works when last.pt does not exist yet
        proc = start(root, "crash", kill="none" if plan == "external" else plan, resume=i != 1)
        began = wait_ready(proc)
        if orphans_before:
            figures["temp_files_swept"] += orphans_before
        if began is not None:
            assert temp_files(run) == [], "the start did not sweep the orphan temp files"
            assert began == (load_checkpoint(last)["step"] if last.is_file() else 0)
        if plan == "external":
            import time

            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        rc = finish(proc)
        figures["trials"] += 1
        if rc == 0:
            figures["finished_early"] += 1
            break
        assert rc == -signal.SIGKILL, (plan, rc, (root / "crash.log").read_text()[-3000:])
        figures["killed"] += 1
        if temp_files(run):
            figures["killed_in_write"] += 1
        if last.is_file():
            ckpt = load_checkpoint(last, stage="toy")          # always loads (atomic replace)
            figures["last_pt_loads"] += 1
            assert ckpt["step"] >= previous_step
            previous_step = ckpt["step"]
            figures["steps_at_kill"].append(ckpt["step"])
        elif i > 0 and previous_step >= 0:
            pytest.fail(f"last.pt disappeared after trial {i} ({plan})")

    # let it finish
    final = start(root, "crash", resume=True)
    assert wait_ready(final) is not None
    assert finish(final) == 0, (root / "crash.log").read_text()[-3000:]
    assert temp_files(run) == []
    got = load_checkpoint(last, stage="toy")
    assert got["step"] == STEPS
    for key, value in expected.items():
        assert torch.equal(value, got["model"][key]), key          # bit for bit: nothing lost
    assert figures["killed"] >= 10 and figures["killed_in_write"] >= 3
    figures["weights_equal_uninterrupted"] = True
    if SUMMARY:
        Path(SUMMARY).write_text(json.dumps(figures, indent=2) + "\n")
    print("crash/resume figures:", json.dumps(figures))
