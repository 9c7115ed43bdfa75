"""utils/checkpoint.py and utils/run_dir.py: atomic writes, safe loads, refusals that name the file and the mismatch."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from utils import checkpoint as ckpt_mod
from utils.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint, load_model_state, save_checkpoint,
                              unwrap_model)
from utils.run_dir import RunDir, RunDirError


def make_model(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def save(path, model=None, stage="rvq", **extra):
    model = model or make_model()
    save_checkpoint(path, stage=stage, config={"model": {"width": 4}}, model=model.state_dict(), **extra)
    return model


def test_round_trip_keeps_everything(tmp_path):
    model = make_model()
    rng = {"torch": torch.get_rng_state(), "python": [3, [1, 2], None]}
    save(tmp_path / "a.pt", model, step=7, epoch=1, rng=rng, best={"metric": "val/loss", "value": 0.5})
    ck = load_checkpoint(tmp_path / "a.pt", stage="rvq")
    assert ck["format_version"] == FORMAT_VERSION and ck["stage"] == "rvq" and ck["step"] == 7
    assert ck["config"] == {"model": {"width": 4}} and ck["best"]["value"] == 0.5
    assert torch.equal(ck["rng"]["torch"], rng["torch"])
    other = make_model()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_model_state(other, ck["model"], tmp_path / "a.pt")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_crash_inside_torch_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save(path, step=1)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")   # some bytes land in the temp file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save(path, step=2)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_crash_at_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save(path, step=1)

    def no_replace(src, dst):
        raise KeyboardInterrupt   # interrupted between writing the temp file and renaming it

    monkeypatch.setattr(ckpt_mod.os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        save(path, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_other_stage_is_refused_naming_file_and_stages(tmp_path):
    save(tmp_path / "rvq.pt", stage="rvq")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "rvq.pt", stage="mask")
    msg = str(err.value)
    assert str(tmp_path / "rvq.pt") in msg and "'rvq'" in msg and "'mask'" in msg


def test_other_width_is_refused_naming_file_keys_and_shapes(tmp_path):
    save(tmp_path / "w4.pt", make_model(width=4))
    ck = load_checkpoint(tmp_path / "w4.pt")
    with pytest.raises(CheckpointError) as err:
        load_model_state(make_model(width=8), ck["model"], tmp_path / "w4.pt")
    msg = str(err.value)
    assert str(tmp_path / "w4.pt") in msg
    assert "'0.weight': model has shape (8, 3), checkpoint has (4, 3)" in msg
    assert "'2.weight'" in msg and "3 mismatches" in msg   # 0.weight, 0.bias, 2.weight


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path):
    save(tmp_path / "a.pt")
    deeper = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as err:
        load_model_state(deeper, load_checkpoint(tmp_path / "a.pt")["model"], tmp_path / "a.pt")
    assert "missing key '3.weight'" in str(err.value) and "missing key '3.bias'" in str(err.value)
    state = make_model().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load_model_state(make_model(), state, "x.pt")


def test_long_mismatch_lists_are_cut(tmp_path):
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(CheckpointError) as err:
        load_model_state(big, {}, "empty.pt")
    assert "12 mismatches" in str(err.value) and "and 7 more" in str(err.value)


def test_loads_into_ddp_or_compiled_wrappers_via_unwrap():
    inner = make_model()

    class Wrapped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m
    assert unwrap_model(Wrapped(inner)) is inner
    load_model_state(Wrapped(inner), make_model().state_dict(), "x.pt")


@pytest.mark.parametrize("keep", [0, 10, 200, -20])
def test_truncated_or_garbage_file_is_a_checkpoint_error_naming_file(tmp_path, keep):
    good = tmp_path / "good.pt"
    save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a remomask checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_newer_format_version_is_refused(tmp_path):
    torch.save({"format_version": FORMAT_VERSION + 1, "stage": "rvq"}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=f"format_version {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "new.pt")


def test_unsafe_values_are_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint\['rng'\]\['numpy'\] is a numpy.ndarray"):
        save(tmp_path / "x.pt", rng={"numpy": np.zeros(3)})
    assert not any(tmp_path.iterdir())


def test_everything_saved_loads_with_weights_only(tmp_path):
    opt = torch.optim.AdamW(make_model().parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    save(tmp_path / "full.pt", optimizer=opt.state_dict(), scheduler=sched.state_dict(), step=0)
    ck = torch.load(tmp_path / "full.pt", weights_only=True)
    assert set(ck) >= {"optimizer", "scheduler", "model", "config"}


# ---- run directories -------------------------------------------------------------------------------------------

def test_run_dir_layout(tmp_path):
    run = RunDir("rvq", "mini", root=tmp_path)
    assert run.path == tmp_path / "rvq" / "mini"
    assert run.last == run.path / "checkpoints" / "last.pt" and run.best == run.path / "checkpoints" / "best.pt"
    assert run.config_path == run.path / "config.yaml" and run.tb_dir == run.path / "tb"
    assert run.ckpt_dir.is_dir() and run.tb_dir.is_dir()


def test_second_run_with_same_name_is_refused(tmp_path):
    run = RunDir("rvq", "mini", root=tmp_path)
    run.config_path.write_text("x: 1\n")
    save(run.best)
    with pytest.raises(RunDirError) as err:
        RunDir("rvq", "mini", root=tmp_path)
    assert str(run.path) in str(err.value) and "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert "(best.pt)" in str(err.value)
    assert run.config_path.read_text() == "x: 1\n" and run.best.is_file()       # nothing lost


def test_overwrite_deletes_the_old_run(tmp_path):
    run = RunDir("rvq", "mini", root=tmp_path)
    save(run.last)
    RunDir("rvq", "mini", root=tmp_path, overwrite=True)
    assert not run.last.exists() and run.ckpt_dir.is_dir()


def test_resume_without_last_checkpoint_starts_from_step_zero_with_a_warning(tmp_path, caplog):
    run = RunDir("rvq", "mini", root=tmp_path, resume=True)          # no such run: a fresh start
    assert run.resume and not run.resuming and run.ckpt_dir.is_dir()
    run.config_path.write_text("x: 1\n")                              # a start that died before its checkpoint
    with caplog.at_level("WARNING", logger="remomask.run_dir"):
        again = RunDir("rvq", "mini", root=tmp_path, resume=True)
    assert not again.resuming
    assert "has no checkpoints/last.pt" in caplog.text and "starting from step 0" in caplog.text
    save(run.last)
    assert RunDir("rvq", "mini", root=tmp_path, resume=True).resuming


def test_run_dir_rejects_bad_names_and_flag_combination(tmp_path):
    with pytest.raises(RunDirError, match="plain folder name"):
        RunDir("rvq", "../x", root=tmp_path)
    with pytest.raises(RunDirError, match="exclude"):
        RunDir("rvq", "mini", root=tmp_path, resume=True, overwrite=True)


def test_only_rank_zero_touches_the_file_system(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = RunDir("rvq", "mini", root=tmp_path)
    assert not run.path.exists()


# ------------------------------------------------------------------------------------------------ load_model

from dataclasses import dataclass  # noqa: E402


@dataclass
class WidthConfig:
    width: int = 8


class WidthModel(nn.Sequential):
    """make_model's layout, built from a config dataclass as every stage model is."""

    def __init__(self, cfg: WidthConfig):
        super().__init__(nn.Linear(3, cfg.width), nn.ReLU(), nn.Linear(cfg.width, 2))
        self.cfg = cfg


def test_load_model_rebuilds_from_the_checkpoint_config_alone(tmp_path):
    model = save(tmp_path / "a.pt")                            # config {"model": {"width": 4}}, not the default 8
    rebuilt, ck = ckpt_mod.load_model(tmp_path / "a.pt", WidthModel, WidthConfig, stage="rvq")
    assert rebuilt.cfg == WidthConfig(width=4) and not rebuilt.training and ck["stage"] == "rvq"
    x = torch.randn(5, 3)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_load_model_refuses_other_stage_and_missing_model_config(tmp_path):
    save(tmp_path / "a.pt", stage="retriever")
    with pytest.raises(CheckpointError, match="expected stage 'rvq'"):
        ckpt_mod.load_model(tmp_path / "a.pt", WidthModel, WidthConfig, stage="rvq")
    save_checkpoint(tmp_path / "b.pt", stage="rvq", config={"train": {}}, model=make_model().state_dict())
    with pytest.raises(CheckpointError, match=r"b\.pt has no config\.model"):
        ckpt_mod.load_model(tmp_path / "b.pt", WidthModel, WidthConfig, stage="rvq")
