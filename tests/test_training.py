"""utils/training.py: schedules, accumulation, bit-for-bit resume, the NaN stop, best / last checkpoints, logging."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from tests.toy_task import SimulatedCrash, ToyDataset, ToyTask, toy_collate
from utils.checkpoint import load_checkpoint
from utils.config import to_dict
from utils.run_dir import RunDir
from utils.training import (NonFiniteLossError, Trainer, TrainConfig, lr_factor, move_to_device, rng_state,
                            seed_everything, select_device, set_rng_state)


def cfg_for(**kw) -> TrainConfig:
    base = dict(batch_size=8, max_steps=20, lr=1e-2, log_every=5, val_every=0, ckpt_every=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def train(tmp_path, cfg, task=None, name="a", resume=False, n=64, val=True):
    task = task or ToyTask()
    run = RunDir("toy", name, root=tmp_path, resume=resume)
    trainer = Trainer(task, cfg, run, ToyDataset(n), ToyDataset(16, seed=1) if val else None,
                      collate_fn=toy_collate)
    return trainer, task, trainer.fit()


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---- schedules -------------------------------------------------------------------------------------------------

def test_warmup_then_multistep_factors_by_hand():
    cfg = TrainConfig(schedule="multistep", warmup_steps=4, milestones=[6, 9], gamma=0.5)
    got = [lr_factor(k, cfg, 100) for k in range(11)]
    want = [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert got == pytest.approx(want)


def test_cosine_factors_by_hand():
    cfg = TrainConfig(schedule="cosine", warmup_steps=2, lr=1.0, min_lr=0.2)
    # after warm-up: 0.2 + 0.8 * (1 + cos(pi * (k - 2) / 8)) / 2 over total 10 steps
    assert lr_factor(0, cfg, 10) == pytest.approx(1 / 3)
    assert lr_factor(2, cfg, 10) == pytest.approx(1.0)
    assert lr_factor(6, cfg, 10) == pytest.approx(0.6)            # half way: cos(pi/2) = 0
    assert lr_factor(10, cfg, 10) == pytest.approx(0.2)
    assert lr_factor(4, cfg, 10) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)))


def test_constant_schedule_is_one_after_warmup():
    cfg = TrainConfig(schedule="constant", warmup_steps=1)
    assert [lr_factor(k, cfg, 5) for k in range(3)] == [0.5, 1.0, 1.0]


def test_trainer_applies_the_schedule_per_optimizer_step(tmp_path):
    cfg = cfg_for(schedule="multistep", warmup_steps=2, milestones=[3], gamma=0.1, max_steps=5, lr=1.0,
                  optimizer="adam")
    task = ToyTask()
    seen = []
    task.after_optimizer_step = lambda step: seen.append(trainer.optimizer.param_groups[0]["lr"])
    trainer = Trainer(task, cfg, RunDir("toy", "s", root=tmp_path), ToyDataset(), collate_fn=toy_collate)
    trainer.fit()
    # lr used for step k is applied, then the scheduler moves to step k+1's value
    assert seen == pytest.approx([2 / 3, 1.0, 0.1, 0.1, 0.1])


def test_param_group_lr_factors(tmp_path):
    task = ToyTask()
    first, last = task.model.net[0], task.model.net[3]
    task.param_groups = lambda: [{"params": first.parameters(), "lr_factor": 10.0, "name": "first"},
                                 {"params": last.parameters()}]
    trainer = Trainer(task, cfg_for(lr=1e-3, max_steps=1), RunDir("toy", "g", root=tmp_path), ToyDataset(),
                      collate_fn=toy_collate)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1e-2, 1e-3])
    assert trainer.optimizer.param_groups[0]["name"] == "first"


# ---- accumulation and resume -----------------------------------------------------------------------------------

def test_accumulation_matches_the_large_batch(tmp_path):
    _, big, _ = train(tmp_path, cfg_for(batch_size=8, accum_steps=1, max_steps=10), ToyTask(dropout=0.0), "big")
    _, acc, _ = train(tmp_path, cfg_for(batch_size=4, accum_steps=2, max_steps=10), ToyTask(dropout=0.0), "acc")
    assert big.seen_ids == acc.seen_ids                      # same data order
    for a, b in zip(params(big.model), params(acc.model)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_after_a_crash_is_bit_for_bit(tmp_path, accum):
    """20 steps straight == a run that crashes after step 13 (last.pt at step 10) + --resume to step 20."""
    cfg = cfg_for(batch_size=8 // accum, accum_steps=accum, max_steps=20, val_every=3, ckpt_every=5,
                  schedule="cosine", warmup_steps=3)
    _, straight, m1 = train(tmp_path, cfg, ToyTask(dropout=0.3), "straight")

    with pytest.raises(SimulatedCrash):
        train(tmp_path, cfg, ToyTask(dropout=0.3, crash_at_step=13), "crashed")
    assert load_checkpoint(tmp_path / "toy" / "crashed" / "checkpoints" / "last.pt")["step"] == 10
    resumed_task = ToyTask(dropout=0.3, seed=123)            # other init: everything must come from the checkpoint
    trainer, resumed, m2 = train(tmp_path, cfg, resumed_task, "crashed", resume=True)

    tail = [(s, v) for s, v in straight.losses if s >= 10]
    assert resumed.losses == tail                             # identical floats, step by step
    assert resumed.seen_ids == straight.seen_ids[-len(resumed.seen_ids):]
    for a, b in zip(params(straight.model), params(resumed.model)):
        assert torch.equal(a, b)
    assert resumed.after_steps == list(range(11, 21))
    assert resumed.counter == 20                              # extra_state restored (10) + 10 more
    assert m1 == m2


def test_extending_a_finished_run_matches_a_longer_run(tmp_path):
    """max_steps=10, then --resume with max_steps=20 == 20 straight (the extra final validation at step 10 draws
    random numbers; it must not shift the training streams)."""
    _, straight, _ = train(tmp_path, cfg_for(max_steps=20, val_every=4), ToyTask(), "long")
    train(tmp_path, cfg_for(max_steps=10, val_every=4), ToyTask(), "short")
    _, resumed, _ = train(tmp_path, cfg_for(max_steps=20, val_every=4), ToyTask(), "short", resume=True)
    assert resumed.losses == [(s, v) for s, v in straight.losses if s >= 10]
    for a, b in zip(params(straight.model), params(resumed.model)):
        assert torch.equal(a, b)


def test_epochs_define_the_step_count_and_data_is_reshuffled_each_epoch(tmp_path):
    trainer, task, _ = train(tmp_path, cfg_for(max_steps=0, epochs=2, batch_size=8), n=64)
    assert trainer.max_steps == 16
    first, second = task.seen_ids[:64], task.seen_ids[64:]
    assert sorted(first) == sorted(second) == [f"{i:04d}" for i in range(64)]
    assert first != second


# ---- NaN stop, best / last -------------------------------------------------------------------------------------

def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    cfg = cfg_for(max_steps=20, val_every=2, ckpt_every=5)
    with pytest.raises(NonFiniteLossError, match=r"step 8: loss is nan.*last good checkpoint is .*last\.pt"):
        train(tmp_path, cfg, ToyTask(nan_at_step=8), "nan")
    run = tmp_path / "toy" / "nan" / "checkpoints"
    for name, step in (("last.pt", 5), ("best.pt", None)):
        ck = load_checkpoint(run / name, stage="toy")
        assert step is None or ck["step"] == step
        assert all(torch.isfinite(v).all() for v in ck["model"].values())
    # and the run can continue from it
    trainer = Trainer(ToyTask(), cfg, RunDir("toy", "nan", root=tmp_path, resume=True), ToyDataset(),
                      collate_fn=toy_collate)
    assert trainer.step == 5


def test_best_checkpoint_follows_the_best_validation(tmp_path):
    task = ToyTask()
    task.best_metric, task.best_mode = "val/neg_loss", "max"
    _, task, metrics = train(tmp_path, cfg_for(max_steps=12, val_every=3), task)
    assert len(task.val_losses) == 4                          # steps 3, 6, 9, 12
    best_i = min(range(4), key=lambda i: task.val_losses[i])
    best = load_checkpoint(tmp_path / "toy" / "a" / "checkpoints" / "best.pt")
    assert best["step"] == 3 * (best_i + 1)
    assert best["best"]["value"] == pytest.approx(-task.val_losses[best_i])
    assert metrics["val/loss"] == pytest.approx(task.val_losses[-1]) and metrics["step"] == 12


def test_validation_every_epoch_with_accumulation(tmp_path):
    # 64 items / batch 4 = 16 micro-batches per epoch; 2 per optimizer step -> an epoch is 8 steps
    _, task, _ = train(tmp_path, cfg_for(batch_size=4, accum_steps=2, max_steps=20, val_every_epochs=1), ToyTask())
    assert len(task.val_losses) == 3                          # steps 8, 16 and the final 20
    _, task, _ = train(tmp_path, cfg_for(batch_size=4, accum_steps=2, max_steps=20, val_every=6, val_every_epochs=2),
                       ToyTask(), name="both")
    assert len(task.val_losses) == 5                          # steps 6, 12, 16 (two epochs), 18, 20


def test_missing_best_metric_is_an_error_listing_the_metrics(tmp_path):
    task = ToyTask()
    task.best_metric = "val/acc"
    with pytest.raises(KeyError, match=r"val/acc.*val/loss"):
        train(tmp_path, cfg_for(max_steps=2), task)


def test_run_dir_contents_config_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    stage_config = {"train": to_dict(cfg_for(max_steps=10, val_every=5)), "width": 16}
    task = ToyTask()
    Trainer(task, cfg_for(max_steps=10, val_every=5), RunDir("toy", "tb", root=tmp_path), ToyDataset(),
            ToyDataset(16, seed=1), collate_fn=toy_collate, config=stage_config).fit()
    run = tmp_path / "toy" / "tb"
    assert yaml.safe_load((run / "config.yaml").read_text()) == stage_config
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"] == stage_config
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/mae", "train/samples_per_s", "val/loss"} <= tags
    assert [e.step for e in acc.Scalars("val/loss")] == [5, 10]
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10]


def test_without_val_set_there_is_no_best_and_final_checkpoint_is_last(tmp_path):
    trainer, _, metrics = train(tmp_path, cfg_for(max_steps=3), val=False)
    assert not trainer.run.best.exists() and trainer.run.final_checkpoint == trainer.run.last
    assert set(metrics) == {"train/loss", "step"}


# ---- bad input and helpers -------------------------------------------------------------------------------------

def test_dataset_smaller_than_a_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"train set has 4 items.*batch_size=8"):
        train(tmp_path, cfg_for(), n=4)


@pytest.mark.parametrize("kw,match", [({"schedule": "linear"}, "train.schedule"),
                                      ({"accum_steps": 0}, "accum_steps"),
                                      ({"optimizer": "sgd"}, "train.optimizer"),
                                      ({"bf16": True, "fp16": True}, "bf16")])
def test_bad_train_config_names_the_key(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(ToyTask(), cfg_for(**kw), RunDir("toy", "x", root=tmp_path), ToyDataset(), collate_fn=toy_collate)


def test_train_config_check_is_one_line_naming_key_value_and_allowed_values():
    from utils.config import ConfigError
    from utils.training import check_train_config

    cases = [({"schedule": "cosin"}, "train.schedule='cosin': expected one of 'constant', 'multistep', 'cosine'"),
             ({"optimizer": "sgd"}, "train.optimizer='sgd': expected one of 'adamw', 'adam'"),
             ({"log_every": 0}, "train.log_every=0: expected an integer >= 1"),
             ({"betas": [0.9]}, "train.betas=[0.9]: expected two numbers in [0, 1), e.g. [0.9, 0.99]"),
             ({"milestones": [5, 3]}, "train.milestones=[5, 3]: expected increasing step numbers"),
             ({"grad_clip": -1.0}, "train.grad_clip=-1.0: expected a number >= 0"),
             ({"device": "tpu0"}, "train.device='tpu0': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")]
    for kw, message in cases:
        with pytest.raises(ConfigError) as err:
            check_train_config(cfg_for(**kw))
        assert str(err.value) == message and err.value.key == "train." + next(iter(kw))
    check_train_config(cfg_for(device="cuda:1", schedule="cosine"))        # syntax only: no CUDA needed


def test_bf16_and_compile_are_ignored_with_a_warning_on_cpu(tmp_path):
    with pytest.warns(UserWarning, match="bf16"):
        trainer = Trainer(ToyTask(), cfg_for(bf16=True), RunDir("toy", "x", root=tmp_path), ToyDataset(),
                          collate_fn=toy_collate)
    assert trainer.amp_dtype is None


def test_select_device_and_move_to_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="train.device"):
        select_device("gpu0")
    batch = {"x": torch.zeros(2), "nested": [torch.ones(1), "s"], "n": 3}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["nested"][1] == "s" and moved["n"] == 3 and torch.equal(moved["x"], batch["x"])


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from utils.checkpoint import save_checkpoint
    seed_everything(5)
    random.gauss(0, 1), np.random.randn()                     # leave cached gaussians in both states
    save_checkpoint(tmp_path / "r.pt", stage="toy", config={}, model={}, rng=rng_state())
    a = (random.gauss(0, 1), np.random.randn(), torch.rand(1).item())
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.gauss(0, 1), np.random.randn(), torch.rand(1).item()) == a


def test_logged_lr_is_the_lr_each_update_used(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = cfg_for(max_steps=4, log_every=1, schedule="multistep", milestones=[2], gamma=0.5, lr=1.0)
    trainer, _, _ = train(tmp_path, cfg, val=False)
    acc = EventAccumulator(str(trainer.run.tb_dir))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/lr")] == [1.0, 1.0, 0.5, 0.5]


# ---- CUDA (run on a GPU machine; skipped on CPU-only CI) ---------------------------------------------------------

def cuda(test):
    """A CUDA test: marked `cuda` (`pytest -m cuda`) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


@cuda
def test_cuda_resume_is_bit_for_bit_including_the_cuda_rng(tmp_path):
    cfg = cfg_for(device="cuda", max_steps=12, val_every=3, ckpt_every=4)
    _, straight, _ = train(tmp_path, cfg, ToyTask(dropout=0.3), "straight")
    with pytest.raises(SimulatedCrash):
        train(tmp_path, cfg, ToyTask(dropout=0.3, crash_at_step=6), "crashed")
    _, resumed, _ = train(tmp_path, cfg, ToyTask(dropout=0.3, seed=7), "crashed", resume=True)
    assert resumed.losses == [(s, v) for s, v in straight.losses if s >= 4]
    for a, b in zip(params(straight.model), params(resumed.model)):
        assert a.device.type == "cuda" and torch.equal(a, b)


@cuda
@pytest.mark.parametrize("flags", [{"bf16": True}, {"fp16": True}, {"bf16": True, "compile": True}])
def test_cuda_autocast_and_compile_train_and_checkpoint(tmp_path, flags):
    cfg = cfg_for(device="cuda", max_steps=60, ckpt_every=30, val_every=30, **flags)
    trainer, task, metrics = train(tmp_path, cfg, ToyTask(dropout=0.0))
    assert trainer.amp_dtype == (torch.float16 if flags.get("fp16") else torch.bfloat16)
    losses = [v for _, v in task.losses]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5       # it learns
    assert all(p.dtype == torch.float32 for p in task.model.parameters())   # autocast, not a cast of the weights
    ck = load_checkpoint(trainer.run.last, stage="toy")
    assert ck["step"] == 60 and all(torch.isfinite(v).all() and v.device.type == "cpu" for v in ck["model"].values())
    assert math.isfinite(metrics["val/loss"])


def test_loader_workers_keep_the_data_order_and_losses(tmp_path):
    _, main_proc, _ = train(tmp_path, cfg_for(max_steps=10, num_workers=0), ToyTask(), "w0", val=False)
    _, workers, _ = train(tmp_path, cfg_for(max_steps=10, num_workers=2), ToyTask(), "w2", val=False)
    assert workers.seen_ids == main_proc.seen_ids and workers.losses == main_proc.losses
