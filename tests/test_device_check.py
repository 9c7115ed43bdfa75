"""utils.benchmarks.device_check: the one prepared GPU run (its plumbing; the GPU figures need a GPU)."""
from __future__ import annotations

import json
import sys

import pytest

from utils.benchmarks import device_check as dc


def _gen_json(path, per_sample: dict[int, float], compiled: dict[int, float] | None = None):
    runs = {}
    for batch, s in per_sample.items():
        runs[str(batch)] = {"fast_bf16": {"stages": {"total": {"median": s * batch}}}}
        if compiled and batch in compiled:
            runs[str(batch)]["fast_bf16_compile"] = {"stages": {"total": {"median": compiled[batch] * batch}}}
    path.write_text(json.dumps({"runs": runs}))


def test_targets_read_the_fastest_path_of_each_batch_and_the_eval_projection(tmp_path):
    _gen_json(tmp_path / "gen.json", {1: 0.020, 32: 0.004, 256: 0.0025})
    _gen_json(tmp_path / "gen_compile.json", {1: 0.030, 256: 0.003}, compiled={1: 0.012, 256: 0.0021})
    (tmp_path / "eval.md").write_text("| **projected 20 replications** | 0.1 h (4.6 min) |\n")
    rows = {target: (measured, met) for target, measured, met in dc.targets(tmp_path)}
    measured, met = rows["≤ 15 ms per sample at batch 1"]
    assert met == "yes" and measured.startswith("fast_bf16_compile (gen_compile.json) 12.00 ms")
    assert rows["≤ 2 ms per sample at batch 256"][1] == "no"          # best 2.1 ms
    assert rows["20-replication HumanML3D-size evaluation ≤ 5 min"] == ("4.6 min projected (eval.md)", "yes")


def test_targets_say_not_measured_without_results(tmp_path):
    assert all(met == "–" and measured == "not measured" for _, measured, met in dc.targets(tmp_path))


def test_a_step_past_its_limit_is_killed_and_the_budget_skips_the_rest(tmp_path):
    logged = []
    slow = dc.Step("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1.5)
    dc.run_step(slow, tmp_path, left_s=100, log=logged.append)
    assert slow.result["status"] == "timed out after 2 s" and slow.result["seconds"] < 10
    assert any("started" in text for text in logged)
    late = dc.Step("late", [sys.executable, "-c", "pass"], 60)
    dc.run_step(late, tmp_path, left_s=5, log=logged.append)
    assert late.result["status"] == "skipped (budget spent)"
    failing = dc.Step("failing", [sys.executable, "-c", "raise SystemExit(3)"], 60, stdout_file="f.md")
    dc.run_step(failing, tmp_path, left_s=100, log=logged.append)
    assert failing.result["status"] == "failed (exit 3)" and (tmp_path / "f.md").is_file()


def test_the_step_list_and_its_files_fit_what_the_device_tool_returns(tmp_path):
    steps = dc.steps_for(tmp_path, "cuda", rehearsal=False)
    assert [s.name for s in steps] == ["cuda_tests", "generate", "eval", "train", "generate_compile"]
    files = {"summary.md", "logs.txt", "gen.json", "gen_compile.json"} | {s.stdout_file for s in steps if s.stdout_file}
    assert len(files) <= 8                                               # the device tool returns at most 8 files
    generate = next(s for s in steps if s.name == "generate").argv
    assert "--tiny" not in generate and generate[generate.index("--device") + 1] == "cuda"
    assert sum(s.cap_s for s in steps) < 15 * 60


def test_the_cuda_test_files_hold_every_cuda_test():
    import re
    from pathlib import Path

    marked = {f"tests/{p.name}" for p in Path(dc.REPO, "tests").glob("test_*.py")
              if re.search(r"mark\.cuda\b", p.read_text())}
    assert marked == set(dc.CUDA_TEST_FILES)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert dc.main(["--out", str(tmp_path), "--device", "cpu", "--rehearsal", "--steps", "generate,nope"]) == 2
    assert "--steps: unknown ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dc.main(["--out", str(tmp_path), "--device", "cpu"])
    assert "--rehearsal" in capsys.readouterr().err


def test_rehearsal_of_one_step_writes_the_summary(tmp_path):
    assert dc.main(["--out", str(tmp_path), "--device", "cpu", "--rehearsal", "--steps", "train"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| train | ok |" in text and "not measured" in text and (tmp_path / "train.md").is_file()
    assert "samples/s" in (tmp_path / "train.md").read_text()
