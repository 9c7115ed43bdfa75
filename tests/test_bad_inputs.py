"""Every bad input of issue #11 through the scripts' real entry point (`utils.script.run_script(main, argv)`, what
`python train_*.py` runs), in-process: each case asserts the exit code and the one line the user sees.

Settings refused at load exit 2 before any folder is created or any data is read (argparse's usage line, then one
`error:` line); data, checkpoint and run-dir errors exit 1 with one `script.py: message` line; no traceback either
way. `--debug` brings the traceback back.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_t2m
import train_evaluator
import train_retriever
import train_rvq
from tests.tiny_stages import tiny_retriever_overrides, tiny_rvq_overrides
from utils.script import run_script

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPTS = {"train_rvq.py": train_rvq.main, "train_retriever.py": train_retriever.main,
           "train_evaluator.py": train_evaluator.main, "eval_t2m.py": eval_t2m.main}

# how many bad-input cases this file covers (README "Reliability" counts them)
CASES: list[str] = []


def run(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `script` run on argv as `python script argv` would."""
    capsys.readouterr()
    try:
        rc = run_script(SCRIPTS[script], argv, prog=script)
    except SystemExit as e:                    # argparse: usage + one error line, code 2
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def last_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    return lines[-1]


def rvq_args(runs: Path, data: Path, *extra: str, name: str = "bad") -> list[str]:
    return ["--runs-root", str(runs), "--name", name, *tiny_rvq_overrides(data), "val.render=false", *extra]


def retriever_args(runs: Path, data: Path, *extra: str, name: str = "bad") -> list[str]:
    return ["--config", "configs/mini/retriever.yaml", "--runs-root", str(runs), "--name", name,
            *tiny_retriever_overrides(data), "retriever.final_eval=false", "retriever.build_database=false", *extra]


def evaluator_args(runs: Path, data: Path, *extra: str) -> list[str]:
    return ["--config", "configs/mini/evaluator.yaml", "--runs-root", str(runs), "--name", "bad",
            f"data.root={data}", "train.max_steps=1", "loss.movement_pretrain_steps=1", *extra]


# ---- settings refused at load: exit 2, nothing created ---------------------------------------------------------

LOAD_CASES = [
    ("train_rvq.py", ["model.mu=2"], r"model.mu=2.0: expected an EMA decay in [0, 1)"),
    ("train_rvq.py", ["model.down_t=10"], "model.down_t=10: expected one of 1, 2, 3"),
    ("train_rvq.py", ["data.window_size=30"], "data.window_size=30: expected a multiple of 4"),
    ("train_rvq.py", ["model.quantize_dropout=2"], "model.quantize_dropout=2.0: expected a probability"),
    ("train_retriever.py", ["train.batch_size=3"], "train.batch_size=3 does not divide model.queue_size=16"),
    ("train_retriever.py", ["model.text_tiny=false", "model.text_path=/no/such/folder"], "model.text_path='/no/such/folder': does not exist"),
    ("train_retriever.py", ["retriever.val_protocol=fast"], "retriever.val_protocol='fast': expected one of"),
    ("train_evaluator.py", ["train.schedule=cosin"], "train.schedule='cosin': expected one of"),
    ("eval_t2m.py", ["--stage", "gt", "eval.replications=0"], "eval.replications"),
]


@pytest.mark.parametrize("script,extra,message", LOAD_CASES, ids=[f"{s}:{e[-1]}" for s, e, _ in LOAD_CASES])
def test_bad_settings_stop_at_load_with_exit_2(tmp_path, mini_root, capsys, script, extra, message):
    runs = tmp_path / "runs"
    argv = {"train_rvq.py": lambda: rvq_args(runs, mini_root, *extra),
            "train_retriever.py": lambda: retriever_args(runs, mini_root, *extra),
            "train_evaluator.py": lambda: evaluator_args(runs, mini_root, *extra),
            "eval_t2m.py": lambda: ["--runs-root", str(runs), f"data.root={mini_root}", *extra]}[script]()
    rc, _, err = run(script, argv, capsys)
    assert rc == 2
    line = last_line(err)
    assert "error:" in line and message in line, line
    assert not runs.exists()                                  # refused before anything was created


LOAD_CASES_COUNT = len(LOAD_CASES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("script", ["train_rvq.py", "eval_t2m.py"])
def test_cuda_device_without_cuda_is_refused_at_load(tmp_path, mini_root, capsys, script):
    runs = tmp_path / "runs"
    argv = (rvq_args(runs, mini_root, "train.device=cuda") if script == "train_rvq.py"
            else ["--stage", "gt", "--runs-root", str(runs), f"data.root={mini_root}", "device=cuda"])
    rc, _, err = run(script, argv, capsys)
    key = "train.device" if script == "train_rvq.py" else "device"
    assert rc == 2 and f"{key}='cuda' but CUDA is not available here" in last_line(err)
    assert not runs.exists()


# ---- unwritable output folders: found before any work ----------------------------------------------------------

@pytest.mark.parametrize("script", ["train_rvq.py", "train_retriever.py", "train_evaluator.py", "eval_t2m.py"])
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    runs = blocker / "runs"
    no_data = tmp_path / "no_data"             # loading it would fail: the folder check must come first
    argv = {"train_rvq.py": lambda: rvq_args(runs, no_data),
            "train_retriever.py": lambda: retriever_args(runs, no_data),
            "train_evaluator.py": lambda: evaluator_args(runs, no_data),
            "eval_t2m.py": lambda: ["--stage", "gt", "--runs-root", str(runs), f"data.root={no_data}"]}[script]()
    rc, _, err = run(script, argv, capsys)
    assert rc == 2
    line = last_line(err)
    assert f"{blocker} is a file, not a folder" in line and "no_data" not in line


# ---- data errors: one line naming the file, exit 1 --------------------------------------------------------------

def _copy(mini_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(mini_root, root, ignore=shutil.ignore_patterns(".cache"))
    return root


def _first_train_id(root: Path) -> str:
    return (root / "train.txt").read_text().split()[0]


def _wrong_width(root: Path) -> str:
    mid = _first_train_id(root)
    np.save(root / "new_joint_vecs" / f"{mid}.npy", np.zeros((60, 251), np.float32))
    return f"new_joint_vecs/{mid}.npy: expected features of shape (T, 263)"


def _bad_caption(root: Path) -> str:
    mid = _first_train_id(root)
    (root / "texts" / f"{mid}.txt").write_text("a person walks#a/DET#zero#0.0\n")
    return f"texts/{mid}.txt line 1: expected a number of seconds as start"


def _missing_file(root: Path) -> str:
    mid = _first_train_id(root)
    (root / "texts" / f"{mid}.txt").unlink()
    return f"texts/{mid}.txt (expected new_joint_vecs/<id>.npy and texts/<id>.txt for every id)"


def _not_npy(root: Path) -> str:
    mid = _first_train_id(root)
    (root / "new_joint_vecs" / f"{mid}.npy").write_bytes(b"not an npy file")
    return f"new_joint_vecs/{mid}.npy: expected a float32 .npy array"


def _no_split(root: Path) -> str:
    (root / "train.txt").unlink()
    return "train.txt is missing (expected one id per line)"


DATA_CASES = {"wrong_width": _wrong_width, "bad_caption": _bad_caption, "missing_file": _missing_file,
              "not_npy": _not_npy, "no_split": _no_split}


@pytest.mark.parametrize("script", ["train_rvq.py", "train_retriever.py", "train_evaluator.py", "eval_t2m.py"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_file_errors_are_one_line_with_exit_1(tmp_path, mini_root, capsys, script, case):
    root = _copy(mini_root, tmp_path)
    expected = DATA_CASES[case](root)
    runs = tmp_path / "runs"
    if script == "eval_t2m.py":
        from tests.test_evaluation import _official_tiny_evaluator
        evaluator = _official_tiny_evaluator(tmp_path / "ev")
    argv = {"train_rvq.py": lambda: rvq_args(runs, root),
            "train_retriever.py": lambda: retriever_args(runs, root),
            "train_evaluator.py": lambda: evaluator_args(runs, root),
            "eval_t2m.py": lambda: ["--stage", "gt", "--runs-root", str(runs), f"data.root={root}",
                                    "split=train", f"evaluator.path={evaluator}", "device=cpu"]}[script]()
    rc, _, err = run(script, argv, capsys)
    assert rc == 1, err
    line = last_line(err)
    assert line.startswith(f"{script}: ") and expected in line, line
    assert len(err.strip().splitlines()) <= 3, err       # the line, plus at most the loader's own warnings


DATA_CASES_COUNT = len(DATA_CASES) * 4


def test_debug_flag_shows_the_traceback(tmp_path, mini_root, capsys):
    from datasets.motion_dataset import DatasetError

    root = _copy(mini_root, tmp_path)
    _wrong_width(root)
    with pytest.raises(DatasetError, match="expected features of shape"):
        run_script(train_rvq.main, [*rvq_args(tmp_path / "runs", root), "--debug"], prog="train_rvq.py")


def test_a_real_bug_keeps_its_traceback(monkeypatch):
    def buggy(argv):
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run_script(buggy, [], prog="x.py")


def test_warnings_print_as_one_line_and_debug_keeps_python_format(capsys):
    import warnings

    def warns(argv):
        warnings.warn(f"models/pipeline.py: precision 'bf16' on cpu: emulated{argv}\nsecond line", stacklevel=2)
    assert run_script(warns, [], prog="x.py") == 0
    assert capsys.readouterr().err == "x.py: warning: models/pipeline.py: precision 'bf16' on cpu: emulated[]\n"
    with pytest.warns(UserWarning, match=r"emulated\['--debug'\]\nsecond line"):         # Python's own path
        assert run_script(warns, ["--debug"], prog="x.py") == 0
    assert "x.py: warning" not in capsys.readouterr().err
    assert warnings.showwarning.__module__ == "warnings"             # restored after the script


# ---- resume: drift refused by name, allowed keys applied --------------------------------------------------------

@pytest.fixture(scope="module")
def finished_rvq_run(tmp_path_factory, mini_root):
    runs = tmp_path_factory.mktemp("runs")
    assert run_script(train_rvq.main, rvq_args(runs, mini_root, name="r"), prog="train_rvq.py") == 0
    return runs


@pytest.mark.parametrize("override,old", [("train.batch_size=2", "4"), ("model.nb_code=8", "16"),
                                          ("train.seed=3", "0"), ("data.window_size=32", "64"),
                                          ("train.weight_decay=0.1", "0.0")])
def test_resume_refuses_a_change_of_a_key_that_defines_the_run(finished_rvq_run, mini_root, capsys, override, old):
    key, value = override.split("=")
    before = (finished_rvq_run / "rvq" / "r" / "checkpoints" / "last.pt").read_bytes()
    rc, _, err = run("train_rvq.py", [*rvq_args(finished_rvq_run, mini_root, override, name="r"), "--resume"], capsys)
    assert rc == 2
    line = last_line(err)
    assert f"--resume: {key}=" in line and f"differs from the run's {key}={old}" in line
    assert "cannot change on resume" in line
    assert (finished_rvq_run / "rvq" / "r" / "checkpoints" / "last.pt").read_bytes() == before   # nothing touched


def test_resume_applies_a_new_lr_and_records_only_what_was_used(finished_rvq_run, mini_root, capsys):
    import yaml

    from utils.checkpoint import load_checkpoint

    argv = [*rvq_args(finished_rvq_run, mini_root, "train.lr=5e-4", "train.max_steps=6", name="r"), "--resume"]
    rc, _, err = run("train_rvq.py", argv, capsys)
    assert rc == 0, err
    run_dir = finished_rvq_run / "rvq" / "r"
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [5e-4]          # the optimizer used it
    assert ckpt["scheduler"]["base_lrs"] == [5e-4]
    assert ckpt["config"]["train"]["lr"] == 5e-4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 5e-4


# ---- small or odd splits ----------------------------------------------------------------------------------------

def test_train_rvq_succeeds_when_no_val_motion_has_a_caption(tmp_path, mini_root, capsys):
    root = _copy(mini_root, tmp_path)
    for mid in (root / "val.txt").read_text().split():
        (root / "texts" / f"{mid}.txt").write_text("")
    argv = ["--runs-root", str(tmp_path / "runs"), "--name", "r", *tiny_rvq_overrides(root)]   # render on
    rc, _, err = run("train_rvq.py", argv, capsys)
    assert rc == 0, err
    assert "train_rvq.py: warning: recon.png not drawn" in err and "no text entries" in err
    assert (tmp_path / "runs" / "rvq" / "r" / "checkpoints" / "last.pt").is_file()


def test_short_motions_are_counted_out_of_the_tokenizer_windows(mini_root, caplog):
    from datasets.motion_dataset import DataConfig, build_dataset

    with caplog.at_level("WARNING", logger="datasets.motion_dataset"):
        ds = build_dataset(DataConfig(root=str(mini_root), window_size=64), "train", "window")
    lengths = ds.corpus.lengths
    short = int((lengths < 64).sum())
    assert short > 0 and len(ds.short_for_window) == short
    assert f"{short} of {len(lengths)} motions are shorter than data.window_size=64 frames" in caplog.text


def test_retriever_validation_and_eval_agree_on_a_split_too_small_for_guo(tmp_path, mini_root, capsys, caplog):
    runs = tmp_path / "runs"
    argv = retriever_args(runs, mini_root, name="r")
    with caplog.at_level("WARNING", logger="remomask.retriever"):
        rc, _, err = run("train_retriever.py", argv, capsys)
    assert rc == 0, err
    assert ("retriever.val_protocol='guo' needs at least one batch of 32 entries; the val split has 2: "
            "validating with protocol 'normal'") in caplog.text
    rc, out, err = run("eval_t2m.py", ["--stage", "retriever", "--runs-root", str(runs), "--name", "r",
                                       f"data.root={mini_root}", "split=val", "device=cpu",
                                       f"checkpoints.retriever={runs}/retriever/r/checkpoints/best.pt"], capsys)
    assert rc == 0, err
    assert "protocol guo skipped: needs at least one batch of 32 entries; the val split has 2" in err
    assert "guo: skipped (needs at least one batch of 32 entries; the val split has 2)" in out   # printed table
    assert (runs / "eval" / "r" / "retriever" / "eval.md").is_file()


def test_eval_prints_the_table_before_writing_it(tmp_path, mini_root, capsys, monkeypatch):
    """A report folder that becomes unwritable during the evaluation still leaves the numbers on screen."""
    import utils.evaluation as evaluation

    def fail(path, text):
        raise OSError(30, "Read-only file system", str(path))
    monkeypatch.setattr(evaluation, "atomic_write_text", fail)
    from tests.test_evaluation import _official_tiny_evaluator

    ev = _official_tiny_evaluator(tmp_path)
    rc, out, err = run("eval_t2m.py", ["--stage", "gt", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                                       f"data.root={mini_root}", f"evaluator.path={ev}", "eval.batch_size=4",
                                       "eval.diversity_times=2", "device=cpu", "--replications", "1", "--fast"],
                         capsys)
    assert rc == 1
    assert "R_precision_top1" in out or "R-precision" in out
    assert last_line(err).startswith("eval_t2m.py: ") and "Read-only file system" in last_line(err)


# ---- the other command lines ------------------------------------------------------------------------------------

def test_mini_dataset_cli_checks_its_output_paths_before_generating(tmp_path, capsys):
    from datasets import mini

    blocker = tmp_path / "a_file"
    blocker.write_text("x\n")
    assert mini.main(["--out", str(blocker / "mini"), "--num-motions", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m datasets.mini: error: --out folder {blocker / 'mini'} cannot be created: {blocker} " \
                  f"is a file, not a folder; choose another location"
    assert mini.main(["--out", str(tmp_path / "m"), "--num-motions", "3", "--preview", str(tmp_path / "p.gif")]) == 2
    assert "--preview" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("script", [*SCRIPTS, "generate.py", "train_mask_transformer.py", "train_residual.py",
                                    "datasets.mini", "utils.plot"])
def test_help_cites_the_paper_or_the_reference_code_not_internal_notes(script, capsys):
    import importlib

    main = SCRIPTS.get(script) or importlib.import_module(script.removesuffix(".py")).main
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert len(out) > 300
    for internal in ("reference.md", "reference §", "paper.md"):
        assert internal not in out, f"{script} --help cites {internal!r}"
    if script.endswith(".py"):
        assert "--debug" in out


def test_user_citations_maps_the_design_note_sections():
    from utils.config import user_citations

    assert user_citations("AdamW (reference §5.1)") == "AdamW (MoMask code, options/vq_option.py)"
    assert user_citations("raw Std (reference.md §1.5)") == "raw Std (MoMask / T2M normalisation)"
    assert user_citations("dropout 0.5 (paper.md §7)") == "dropout 0.5 (the paper)"
    assert user_citations("(VQ: 0; transformers 1e-5, §6.1)") == "(VQ: 0; transformers 1e-5, MoMask code, " \
                                                                 "models/mask_transformer)"
    assert user_citations("paper §2.1 and ARCHITECTURE.md §3") == "paper §2.1 and ARCHITECTURE.md §3"


@pytest.mark.slow          # two interpreter starts (~10 s each on a shared CPU); the in-process tests above are the fast path
@pytest.mark.parametrize("extra,code,needle", [
    (["model.mu=2"], 2, "train_rvq.py: error: override 'model.mu=2': model.mu=2.0: expected an EMA decay"),
    (["data.root=/no/such/dataset"], 1, "train_rvq.py: datasets/motion_dataset.py: "),
])
def test_the_real_command_line_exits_with_one_line(tmp_path, extra, code, needle):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    cmd = [sys.executable, "train_rvq.py", "--runs-root", str(tmp_path / "runs"), "train.device=cpu", *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith(needle), proc.stderr


def test_resume_from_a_corrupt_last_checkpoint_is_one_line(finished_rvq_run, mini_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(finished_rvq_run / "rvq" / "r", runs / "rvq" / "c")
    last = runs / "rvq" / "c" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])                  # truncated by hand (an atomic write never does this)
    rc, _, err = run("train_rvq.py", [*rvq_args(runs, mini_root, name="c"), "--resume"], capsys)
    assert rc == 1
    line = last_line(err)
    assert line.startswith(f"train_rvq.py: checkpoint {last} (1000 bytes) is truncated or corrupt")
    assert "use another checkpoint (e.g. best.pt)" in line


@pytest.mark.parametrize("script", ["train_rvq.py", "train_retriever.py", "train_evaluator.py", "eval_t2m.py",
                                    "generate.py", "train_mask_transformer.py", "train_residual.py"])
def test_every_script_exits_through_run_script(script):
    from tests.conftest import REPO_ROOT

    tail = (REPO_ROOT / script).read_text().rstrip().splitlines()[-1]
    assert tail.strip() == f'sys.exit(run_script(main, prog="{script}"))'
