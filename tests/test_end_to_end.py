"""End to end: `python -m utils.demo --smoke` trains every stage at tiny sizes, evaluates, and generates.

One subprocess run (the exact command a user types, on its own 80-motion mini dataset); the test then checks what a
user would look at: every stage's checkpoint, the four evaluation reports, and the three generated samples (files,
lengths from the prompts file, GIF frame count, BVH frames, neighbours in summary.json).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run([sys.executable, "-m", "utils.demo", "--smoke", "--runs-root", str(runs)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout
    return runs


def test_every_stage_wrote_its_checkpoint(smoke_run):
    for stage in ("rvq", "retriever", "mask", "residual", "length_estimator"):
        ckpts = list((smoke_run / stage / "demo" / "checkpoints").glob("*.pt"))
        assert ckpts, stage
    assert (smoke_run / "evaluator/demo/text_mot_match/model/finest.tar").is_file()
    assert (smoke_run / "retriever/demo/checkpoints/best_database.pt").is_file()


def test_the_four_evaluations_report_their_metrics(smoke_run):
    for stage in ("gt", "rvq", "t2m"):
        report = json.loads((smoke_run / "eval/demo" / stage / "eval.json").read_text())
        table = report["metrics"]
        generated = [v for k, v in table.items() if k != "gt"][0]
        top1 = generated["R_precision_top1"]["mean"]
        assert 0.0 <= top1 <= 1.0 and np.isfinite(generated["MM_Dist"]["mean"]), stage
    t2m = json.loads((smoke_run / "eval/demo/t2m/eval.json").read_text())
    assert "FID" in [v for k, v in t2m["metrics"].items() if k != "gt"][0]
    assert (smoke_run / "eval/demo/retriever/eval.md").read_text().count("| normal |") == 1


def test_generated_samples_match_the_prompts_file(smoke_run):
    from PIL import Image

    from utils.bvh import read_bvh

    out = smoke_run / "generate" / "demo"
    summary = json.loads((out / "summary.json").read_text())
    samples = summary["samples"]
    assert [s["prompt"] for s in samples] == ["a person walks forward", "a person jumps up in place",
                                              "a man waves his right hand"]
    assert [s["length"] for s in samples] == [120, 80, 100] and [s["seed"] for s in samples] == [0, 1, 2]
    for s in samples:
        joints = np.load(out / s["joints"])
        assert joints.shape == (s["length"], 22, 3) and np.isfinite(joints).all()
        assert np.load(out / s["features"]).shape == (s["length"], 263)
        with Image.open(out / s["animation"]) as gif:
            assert gif.n_frames == s["length"]
        assert len(read_bvh(out / s["bvh"]).data) == s["length"]
        assert len(s["neighbours"]) == 1 and set(s["neighbours"][0]) == {"id", "caption", "score"}
    assert summary["settings"]["dataset"] == "t2m" and summary["settings"]["fps"] == 20.0
