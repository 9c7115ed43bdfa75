"""Issue #11: the shared run machinery (run dir reuse, resume allow-list, orphan temp files) and the small defects
of the data layer (cache content check, BOM) and of the mini dataset (mirrored POS tokens)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from tests.toy_task import ToyDataset, ToyTask, toy_collate
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import ConfigError
from utils.run_dir import RunDir, run_dir_problem, temp_files
from utils.training import NonFiniteLossError, RESUME_CHANGEABLE, Trainer, TrainConfig, check_resume_config

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(**kw) -> TrainConfig:
    base = dict(batch_size=8, max_steps=6, lr=1e-2, log_every=1, val_every=0, ckpt_every=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def trainer(tmp_path, cfg, task=None, name="a", resume=False, config=None):
    run = RunDir("toy", name, root=tmp_path, resume=resume)
    return Trainer(task or ToyTask(), cfg, run, ToyDataset(64), ToyDataset(16, seed=1), collate_fn=toy_collate,
                   config=config)


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---- defect 1: a run that dies before its first checkpoint can be restarted both ways ---------------------------

@pytest.mark.parametrize("way", ["plain rerun", "--resume"])
def test_a_nan_at_step_1_leaves_a_folder_that_reruns(tmp_path, way):
    cfg = cfg_for(ckpt_every=3)
    with pytest.raises(NonFiniteLossError) as err:
        trainer(tmp_path, cfg, ToyTask(nan_at_step=1)).fit()
    msg = str(err.value)
    assert "step 1: loss is nan" in msg and "no checkpoint was written yet" in msg
    assert "then rerun (the run dir, which holds no checkpoint, is reused; --resume also starts it from step 0)" in msg
    folder = tmp_path / "toy" / "a"
    assert (folder / "config.yaml").is_file() and not (folder / "checkpoints" / "last.pt").exists()
    assert run_dir_problem(folder, resume=way == "--resume", overwrite=False) is None
    t = trainer(tmp_path, cfg, ToyTask(), resume=way == "--resume")
    assert t.step == 0
    t.fit()
    assert load_checkpoint(folder / "checkpoints" / "last.pt")["step"] == 6
    fresh = trainer(tmp_path / "fresh", cfg, ToyTask())
    fresh.fit()
    for a, b in zip(params(fresh.task.model), params(t.task.model)):
        assert torch.equal(a, b)                       # the rerun is a clean start


def test_nan_after_a_checkpoint_still_advises_resume(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint is .*last\.pt.*then rerun with --resume"):
        trainer(tmp_path, cfg_for(ckpt_every=2), ToyTask(nan_at_step=4)).fit()


def test_a_kill_during_the_first_save_leaves_a_reusable_folder_and_the_temp_file_is_swept(tmp_path, caplog):
    folder = tmp_path / "toy" / "a"
    RunDir("toy", "a", root=tmp_path)
    (folder / "config.yaml").write_text("train: {}\n")
    orphan = folder / "checkpoints" / ".last.pt.0123456789ab.tmp.pt"      # utils.atomic's temp name
    orphan.write_bytes(b"\0" * 1000)
    (folder / "tb" / "events.out.tfevents.1").write_bytes(b"stale")
    assert temp_files(folder) == [orphan]
    assert run_dir_problem(folder, resume=False, overwrite=False) is None
    with caplog.at_level("WARNING", logger="remomask.run_dir"):
        RunDir("toy", "a", root=tmp_path)
    assert not orphan.exists() and "interrupted (1000 bytes)" in caplog.text
    assert "reusing run dir" in caplog.text
    assert list((folder / "tb").glob("*")) == []               # the failed start's events are gone


def test_resume_sweeps_orphan_temp_files_but_keeps_checkpoints(tmp_path):
    run = RunDir("toy", "a", root=tmp_path)
    save_checkpoint(run.last, stage="toy", config={}, model={"w": torch.zeros(2)}, step=3)
    orphans = [run.ckpt_dir / ".last.pt.aaaaaaaaaaaa.tmp.pt", run.ckpt_dir / ".best.pt.bbbbbbbbbbbb.tmp.pt",
               run.path / ".config.yaml.cccccccccccc.tmp.yaml"]
    for p in orphans:
        p.write_bytes(b"x" * 10)
    keep = run.ckpt_dir / "notes.txt"
    keep.write_text("mine\n")
    again = RunDir("toy", "a", root=tmp_path, resume=True)
    assert again.resuming and run.last.is_file() and keep.is_file()
    assert not any(p.exists() for p in orphans)


def test_only_real_checkpoints_protect_a_run(tmp_path):
    folder = tmp_path / "r"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    (folder / "checkpoints" / ".best.pt.0123456789ab.tmp.pt").write_bytes(b"x")
    assert run_dir_problem(folder, False, False) is None
    (folder / "checkpoints" / "best.pt").write_bytes(b"x")
    assert "already exists with checkpoints (best.pt)" in run_dir_problem(folder, False, False)
    assert run_dir_problem(folder, True, False) is None          # --resume: no last.pt -> step 0, with a note


# ---- defect 2: config drift on resume ----------------------------------------------------------------------------

def test_resume_with_a_new_lr_trains_at_that_lr(tmp_path):
    """lr 1e-2 for 3 steps, then --resume train.lr=5e-3: the next updates use 5e-3 (the restored scheduler used to
    win) and the checkpoint and config.yaml record 5e-3."""
    cfg = cfg_for(max_steps=3, schedule="cosine", min_lr=1e-4)
    trainer(tmp_path, cfg, config={"train": cfg}).fit()
    new = cfg_for(max_steps=6, schedule="cosine", min_lr=1e-4, lr=5e-3)
    t = trainer(tmp_path, new, resume=True, config={"train": new})
    from utils.training import lr_factor
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3 * lr_factor(3, new, 6))
    t.fit()
    ckpt = load_checkpoint(tmp_path / "toy" / "a" / "checkpoints" / "last.pt")
    assert ckpt["scheduler"]["base_lrs"] == [5e-3] and ckpt["config"]["train"]["lr"] == 5e-3
    assert yaml.safe_load((tmp_path / "toy" / "a" / "config.yaml").read_text())["train"]["lr"] == 5e-3


def test_resume_without_changes_is_unaffected_by_the_lr_reapplication(tmp_path):
    cfg = cfg_for(max_steps=10, schedule="cosine", warmup_steps=2, ckpt_every=4)
    straight = trainer(tmp_path, cfg, name="s")
    straight.fit()
    from tests.toy_task import SimulatedCrash
    with pytest.raises(SimulatedCrash):      # stops after step 5; last.pt holds step 4
        trainer(tmp_path, cfg, ToyTask(crash_at_step=5), name="r").fit()
    resumed = trainer(tmp_path, cfg, name="r", resume=True)
    resumed.fit()
    for a, b in zip(params(straight.task.model), params(resumed.task.model)):
        assert torch.equal(a, b)


def test_resume_refuses_a_key_outside_the_allow_list_naming_it_and_both_values(tmp_path):
    cfg = cfg_for(max_steps=2)
    trainer(tmp_path, cfg, config={"train": cfg}).fit()
    bad = cfg_for(max_steps=4, batch_size=4)
    with pytest.raises(ConfigError) as err:
        trainer(tmp_path, bad, resume=True, config={"train": bad})
    assert err.value.key == "train.batch_size"
    assert "--resume: train.batch_size=4 differs from the run's train.batch_size=8" in str(err.value)
    assert "\n" not in str(err.value)


def test_check_resume_config_allow_list():
    saved = {"train": {"lr": 1e-3, "max_steps": 10, "seed": 0, "betas": [0.9, 0.99]}, "model": {"width": 8},
             "data": {"root": "a", "window_size": 64}}
    same = {"train": {"lr": 1e-3, "max_steps": 10, "seed": 0, "betas": (0.9, 0.99)}, "model": {"width": 8},
            "data": {"root": "a", "window_size": 64}, "new_section": {"x": 1}}
    assert check_resume_config(saved, same, "ck") == []            # tuples == lists; new keys are not compared
    allowed = {**same, "train": {**same["train"], "lr": 5e-4, "max_steps": 20}, "data": {"root": "b",
                                                                                          "window_size": 64}}
    assert check_resume_config(saved, allowed, "ck") == ["data.root: 'a' -> 'b'", "train.lr: 0.001 -> 0.0005",
                                                         "train.max_steps: 10 -> 20"]
    for key, value in (("model.width", 16), ("train.seed", 1), ("data.window_size", 32)):
        section, name = key.split(".")
        changed = {**same, section: {**same[section], name: value}}
        with pytest.raises(ConfigError, match=rf"^--resume: {key}={value} differs from the run's {key}="):
            check_resume_config(saved, changed, "ck")
    assert "train.lr" in RESUME_CHANGEABLE and "train.batch_size" not in RESUME_CHANGEABLE


# ---- defect 6: dataset cache content check, BOM -------------------------------------------------------------------

def _copy_mini(mini_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mini_root, root, ignore=shutil.ignore_patterns(".cache"))
    return root


def test_a_replaced_file_with_the_same_size_and_mtime_is_not_served_from_the_cache(mini_root, tmp_path):
    from datasets.motion_dataset import DataConfig, MotionCorpus

    root = _copy_mini(mini_root, tmp_path)
    cfg = DataConfig(root=str(root))
    first = MotionCorpus.load(cfg, "val")
    assert not first.from_cache and MotionCorpus.load(cfg, "val").from_cache
    mid = first.ids[0]
    path = root / "new_joint_vecs" / f"{mid}.npy"
    st = os.stat(path)
    arr = np.load(path)
    arr[-1, 5] += 1.0                                   # last frame changed: same shape, same file size
    with open(path, "r+b") as f:                        # in place: same inode
        np.save(f, arr)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    again = MotionCorpus.load(cfg, "val")
    assert not again.from_cache
    assert np.array_equal(again.motion(0), arr)


def test_the_content_sample_sees_head_and_tail_changes(tmp_path):
    from datasets.motion_dataset import _content_sample

    data = bytearray(os.urandom(20000))
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(data))
    base = _content_sample(p, len(data))
    for pos in (0, 4095, len(data) - 4096, len(data) - 1):
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        p.write_bytes(bytes(changed))
        assert _content_sample(p, len(data)) != base, pos
    small = tmp_path / "s.txt"
    small.write_bytes(b"a person walks#a/DET#0.0#0.0\n")
    other = tmp_path / "t.txt"
    other.write_bytes(b"a person waves#a/DET#0.0#0.0\n")
    assert _content_sample(small, 29) != _content_sample(other, 29)


def test_a_utf8_bom_does_not_reach_the_first_caption_or_the_first_id(mini_root, tmp_path):
    from datasets.motion_dataset import DataConfig, MotionCorpus, parse_captions

    caps = parse_captions("\ufeffa person walks#a/DET person/NOUN walk/VERB#0.0#0.0\n", "t.txt")
    assert caps[0].caption == "a person walks"
    root = _copy_mini(mini_root, tmp_path)
    ids = (root / "val.txt").read_text().split()
    (root / "val.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(ids).encode() + b"\n")
    text = root / "texts" / f"{ids[0]}.txt"
    text.write_bytes(b"\xef\xbb\xbf" + text.read_bytes())
    corpus = MotionCorpus.load(DataConfig(root=str(root)), "val")
    assert corpus.ids == ids
    assert not corpus.texts[0][0].caption.startswith("\ufeff")


# ---- defect 6: the mini dataset mirrors POS tokens too -------------------------------------------------------------

def test_mirror_caption_of_a_text_line_mirrors_its_pos_tokens():
    from datasets import mini

    caption = "a man turns left, then waves his right hand clockwise."
    line = mini.format_text_line(caption, 0.0, 0.0)
    mirrored = mini.mirror_caption(line)
    assert mirrored == mini.format_text_line(mini.mirror_caption(caption), 0.0, 0.0)
    assert "right/" in mirrored.split("#")[1] and "counterclockwise/" in mirrored.split("#")[1]
    assert mini.mirror_caption(mirrored) == line                         # an involution
    assert mini.mirror_caption("Left foot first") == "Right foot first"
