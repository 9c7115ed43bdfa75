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
    import os

    reuse = os.environ.get("REMOMASK_SMOKE_RUNS")          # a finished `utils.demo --smoke` runs root (dev loop)
    if reuse and (Path(reuse) / "generate" / "demo" / "summary.json").is_file():
        return Path(reuse)
    runs = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run([sys.executable, "-m", "utils.demo", "--smoke", "--runs-root", str(runs)], cwd=REPO,
                          capture_output=True, text=True, timeout=500)
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
    from utils.plot import mp4_available

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
        if mp4_available():                                   # imageio-ffmpeg (requirements.txt)
            import imageio_ffmpeg

            assert imageio_ffmpeg.count_frames_and_secs(str(out / s["mp4"]))[0] == s["length"]
        assert len(read_bvh(out / s["bvh"]).data) == s["length"]
        assert len(s["neighbours"]) == 1 and set(s["neighbours"][0]) == {"id", "caption", "score"}
        with Image.open(out / s["frames"]) as sheet:              # 8 frames of 1.7 in × 2.3 in at 80 dpi, one row
            assert sheet.size == (1088, 184)
    with Image.open(out / summary["overview"]) as overview:       # one row per sample
        assert overview.size == (1088, 3 * 184)
    assert summary["settings"]["dataset"] == "t2m" and summary["settings"]["fps"] == 20.0


# ---- generate.py on the smoke runs: options and bad input (one line, exit code, nothing half-written) -----------

def _generate(smoke_run, capsys, *extra):
    import generate
    from utils.script import run_script

    rc = run_script(generate.main, ["--runs-root", str(smoke_run), "--name", "demo", "--no-animation", *extra],
                    prog="generate.py")
    return rc, capsys.readouterr().err.strip()


def test_generate_fits_smpl_with_a_model_dir(smoke_run, tmp_path, capsys):
    from utils.smpl_toy import write_toy_smpl_model

    write_toy_smpl_model(tmp_path / "smpl_models")
    out = tmp_path / "out"
    rc, err = _generate(smoke_run, capsys, "--prompt", "a person walks forward", "--length", "60", "--out", str(out),
                        "--smpl-model-dir", str(tmp_path / "smpl_models"), "--no-bvh")
    assert rc == 0, err
    sample = json.loads((out / "summary.json").read_text())["samples"][0]
    npz = np.load(out / sample["smpl"])
    assert npz["poses"].shape == (60, 72) and npz["trans"].shape == (60, 3)
    assert float(npz["mocap_framerate"]) == 20.0 and "bvh" not in sample
    assert sample["smpl_fit_error_mm"]["mean"] >= 0


@pytest.mark.parametrize("extra, message, code", [
    (["--prompt", "   "], "empty prompt", 2),
    (["--prompt", "a person walks", "--length", "20"], "length 20 frames is outside the HumanML3D range [40, 196]", 2),
    (["--prompt", "a person walks", "--num-samples", "0"], "--num-samples must be >= 1", 2),
    (["--prompt", "a person walks", "--guidance-scale", "-1"], "--guidance-scale must be >= 0", 2),
    (["--prompt", "a person walks", "--name", "missing"], "mask checkpoint", 1),
    (["--prompt", "a person walks", "--tokenizer", "/nonexistent.pt"], "tokenizer checkpoint /nonexistent.pt (--tokenizer) not found", 2),
    (["--prompt", "a person walks", "--smpl-model-dir", "/nonexistent"], "smpl.is.tue.mpg.de", 2),
    (["--prompts-file", "/nonexistent/prompts.txt"], "prompts file /nonexistent/prompts.txt not found", 1),
])
def test_generate_bad_input_is_one_line(smoke_run, tmp_path, capsys, extra, message, code):
    rc, err = _generate(smoke_run, capsys, "--out", str(tmp_path / "o"), *extra)
    assert rc == code and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_generate_mp4_without_imageio_ffmpeg_is_one_line(smoke_run, tmp_path, capsys, monkeypatch):
    import utils.plot

    monkeypatch.setattr(utils.plot, "mp4_available", lambda: False)
    rc, err = _generate(smoke_run, capsys, "--prompt", "a person walks", "--out", str(tmp_path / "o"), "--mp4")
    assert rc == 2 and err == "generate.py: error: --mp4: needs the imageio-ffmpeg package (pip install imageio-ffmpeg)"


def test_generate_refuses_an_unwritable_output_folder(smoke_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, err = _generate(smoke_run, capsys, "--prompt", "a person walks", "--out", str(blocker / "sub"))
    assert rc == 2 and "--out" in err and "not a writable folder" in err


def test_generate_foot_cleanup_reports_the_skating_ratio(smoke_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _generate(smoke_run, capsys, "--prompt", "a person walks forward", "--length", "80", "--out", str(out),
                        "--foot-cleanup", "--no-bvh")
    assert rc == 0, err
    sample = json.loads((out / "summary.json").read_text())["samples"][0]
    ratio = sample["foot_skating_ratio"]
    assert 0.0 <= ratio["after"] <= ratio["before"] <= 1.0


def test_generate_bf16_records_its_precision_and_keeps_the_lengths(smoke_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _generate(smoke_run, capsys, "--prompt", "a person walks forward", "--length", "64", "--out", str(out),
                        "--precision", "bf16", "--no-bvh", "--no-sheet")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    joints = np.load(out / summary["samples"][0]["joints"])
    assert summary["settings"]["precision"] == "bf16" and joints.shape == (64, 22, 3) and np.isfinite(joints).all()
    assert "overview" not in summary and "frames" not in summary["samples"][0]         # --no-sheet
    assert not list(out.rglob("*.png"))


def test_generate_compile_compiles_the_pipeline_and_keeps_the_motion(smoke_run, tmp_path, capsys, monkeypatch):
    from models.pipeline import ReMoMaskPipeline

    calls, original = [], ReMoMaskPipeline.compile
    monkeypatch.setattr(ReMoMaskPipeline, "compile",       # the eager backend: the plumbing without code generation
                        lambda self, *a, **k: calls.append(self) or original(self, backend="eager"))
    joints = {}
    for flag in ("--no-compile", "--compile"):
        out = tmp_path / flag
        args = ["--prompt", "a person walks forward", "--length", "64", "--out", str(out), "--no-bvh"]
        rc, err = _generate(smoke_run, capsys, *args, *([flag] if flag == "--compile" else []))
        assert rc == 0, err
        summary = json.loads((out / "summary.json").read_text())
        joints[flag] = np.load(out / summary["samples"][0]["joints"])
        assert summary["settings"]["compile"] is (flag == "--compile")
    assert len(calls) == 1 and calls[0].pad_to == 49
    np.testing.assert_allclose(joints["--compile"], joints["--no-compile"], atol=1e-5)
