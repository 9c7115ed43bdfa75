"""Tokenizer training and evaluation (utils/tasks/rvq.py, train_rvq.py): overfits, metrics, checkpoints, the CLI."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.motion_dataset import DataConfig, build_dataset, collate
from datasets.representation import default_target_offsets, features_to_joints, joints_to_features
from models.rvq import RVQConfig, RVQLoss, RVQLossConfig, RVQVAE2D
from tests.tiny_stages import tiny_rvq_model_cfg as tiny_model_cfg
from tests.tiny_stages import tiny_rvq_overrides as tiny_stage_overrides
from utils.config import load_config, to_dict
from utils.run_dir import RunDir
from models.tokenizer import MotionTokenizer
from utils.tasks.rvq import (RVQStageConfig, RVQTask, ReconstructionMeter, evaluate_reconstruction, render_val_example,
                             spread_windows, validation_windows)
from utils.training import Trainer

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


# ----------------------------------------------------------------------------------------------------------------
# Overfit one real mocap window: the root trajectory and the foot contacts survive without the global branch
# ----------------------------------------------------------------------------------------------------------------
CLIP, START, FRAMES = "climb0_down", 124, 64       # a walking stretch: 20 contact changes, 70 % contact frames


@pytest.fixture(scope="module")
def overfit_one(real_motion_dir):
    joints = np.load(real_motion_dir / "joints" / f"{CLIP}.npy")
    raw = torch.as_tensor(joints_to_features(joints, default_target_offsets("t2m"))[START:START + FRAMES])
    mean = raw.mean(0)
    std = raw.std(0).clamp_min(1e-2)
    x = ((raw - mean) / std)[None]
    torch.manual_seed(0)
    # mu 0.9: a codebook that follows the encoder within a 150-step overfit (paper-scale training uses 0.99)
    model = RVQVAE2D(RVQConfig(**tiny_model_cfg(global_branch=False), mu=0.9))
    loss_fn = RVQLoss(RVQLossConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(150):
        loss, _ = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        recon = model.decode(model.encode(x))[0] * std + mean
    return raw, recon, losses


def test_loss_falls_on_a_tiny_overfit(overfit_one):
    _, _, losses = overfit_one
    assert losses[-1] < 0.15 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_root_trajectory_survives_reconstruction_without_global_branch(overfit_one):
    """Measured 2026-11-30 (one thread): mean root error 157 mm (282 mm at the last frame) on a 1,564 mm path."""
    raw, recon, _ = overfit_one
    root_true = features_to_joints(raw, "t2m")[:, 0]            # (T, 3) metres
    root_rec = features_to_joints(recon, "t2m")[:, 0]
    err_mm = float((root_true - root_rec).norm(dim=-1).mean()) * 1000
    path_mm = float((root_true[1:, [0, 2]] - root_true[:-1, [0, 2]]).norm(dim=-1).sum()) * 1000
    # An empty root slot (the reference's 2D branch alone) loses the whole path; ours keeps it.
    assert path_mm > 1000
    assert err_mm < 0.2 * path_mm, f"root error {err_mm:.0f} mm on a {path_mm:.0f} mm path"


def test_foot_contacts_survive_reconstruction_without_global_branch(overfit_one):
    """Measured 2026-11-30 (one thread): 93.4 % of the 4 × 64 contact labels agree."""
    raw, recon, _ = overfit_one
    true_c = raw[:, -4:] > 0.5
    rec_c = recon[:, -4:] > 0.5
    agreement = float((true_c == rec_c).float().mean())
    constant_baseline = max(float(true_c.float().mean()), 1 - float(true_c.float().mean()))
    assert constant_baseline < 0.75
    assert agreement >= 0.9, f"contact agreement {agreement:.3f} (constant guess {constant_baseline:.2f})"


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------
def test_mpjpe_of_a_10cm_root_lift(mini_root):
    """Root height (dim 3) moves only the root joint (ric y is absolute, reference.md §2.5): 100 mm / 22 joints."""
    ds = build_dataset(DataConfig(root=str(mini_root)), "val", "window")
    raw = torch.as_tensor(ds.denormalize(torch.stack([ds[0]["motion"], ds[1]["motion"]]).numpy())).float()
    lifted = raw.clone()
    lifted[..., 3] += 0.1                                      # root height + 0.1 m
    meter = ReconstructionMeter("t2m")
    lengths = torch.tensor([64, 32])
    meter.update(raw, lifted, lengths, raw, lifted)
    res = meter.result()
    assert res["mpjpe_mm"] == pytest.approx(100.0 / 22, rel=1e-4)
    assert res["root_err_mm"] == pytest.approx(100.0, rel=1e-4)
    assert res["mpjpe_local_mm"] == pytest.approx(100.0 * 21 / 22, rel=1e-4)   # 21 joints 0.1 m off the root
    assert res["feature_l1"] == pytest.approx(0.1 / 263, rel=1e-4)
    same = ReconstructionMeter("t2m")
    same.update(raw, raw, lengths, raw, raw)
    assert same.result()["mpjpe_mm"] == 0.0


def test_kit_joints_are_already_in_millimetres():
    from utils.tasks.rvq import MM_PER_UNIT
    assert MM_PER_UNIT == {"t2m": 1000.0, "kit": 1.0}


# ----------------------------------------------------------------------------------------------------------------
# The task with the shared Trainer, checkpoints, evaluation, the CLI
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(mini_root, tmp_path_factory):
    cfg = load_config(RVQStageConfig, str(REPO / "configs/mini/rvq.yaml"),
                      tiny_stage_overrides(mini_root, **{"model.global_branch": "true"}))
    train_set = build_dataset(cfg.data, "train", "window")
    val_set = validation_windows(cfg)
    task = RVQTask(cfg, train_set.mean, train_set.std)
    run = RunDir("rvq", "t", tmp_path_factory.mktemp("runs"))
    metrics = Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=to_dict(cfg)).fit()
    return cfg, task, run, metrics


def test_validation_reports_mpjpe_feature_l1_and_usage(trained_run):
    _, _, _, metrics = trained_run
    for key in ("val/mpjpe_mm", "val/root_err_mm", "val/feature_l1", "val/loss", "val/usage/joint/used_min",
                "val/usage/joint/perplexity/l0", "val/usage/global/perplexity/l5", "val/usage/joint/used/l3"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["val/mpjpe_mm"] > 0 and 0 < metrics["val/usage/joint/used_min"] <= 1
    used = [metrics[f"val/usage/joint/used/l{q}"] for q in range(6)]
    assert metrics["val/usage/joint/used_min"] == pytest.approx(min(used))


def test_training_logs_usage_of_every_level(trained_run):
    cfg, task, _, _ = trained_run
    batch = collate([build_dataset(cfg.data, "val", "window")[i] for i in range(4)])
    model = copy.deepcopy(task.model).train()        # a training step moves the EMA codebooks: leave the run's alone
    _, logs = task.training_step(model, batch, step=0)
    for part in ("joint", "global"):
        for name in ("perplexity", "used", "live"):
            values = [logs[f"{part}/{name}/l{q}"] for q in range(6)]
            assert all(np.isfinite(values)), (part, name)
            if name != "perplexity":
                assert all(0.0 <= v <= 1.0 for v in values), (part, name, values)


def test_checkpoint_rebuilds_the_tokenizer_with_ema_state_and_stats(trained_run):
    cfg, task, run, _ = trained_run
    assert run.best.is_file() and run.last.is_file()
    tok = MotionTokenizer.from_checkpoint(run.last)
    assert tok.model.num_columns == 7 and not tok.model.training
    torch.testing.assert_close(tok.mean, torch.as_tensor(task.mean))
    for a, b in zip(tok.model.quantizer.layers, task.model.quantizer.layers):
        assert torch.equal(a.code_count, b.code_count.cpu()) and torch.equal(a.codebook, b.codebook.cpu())
    task.model.eval()
    x = torch.randn(2, 16, 263)
    assert torch.equal(tok.model.encode(x), task.model.encode(x))


def test_tokenizer_round_trip_equals_rvqvae2d_directly(trained_run):
    """MotionTokenizer.encode/decode = RVQVAE2D.encode/decode on the tokenizer's normalisation, tokens past a length
    are −1, and the fingerprint follows the weights and statistics."""
    cfg, task, run, _ = trained_run
    tok = MotionTokenizer.from_checkpoint(run.last)
    assert (tok.num_columns, tok.codebook_sizes, tok.downsample, tok.num_quantizers) == (7, [16] * 7, 4, 6)
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 32, 263, generator=g) * tok.std + tok.mean
    tokens = tok.encode(raw)
    model = tok.model
    direct = model.encode((raw - tok.mean) / tok.std)
    assert torch.equal(tokens, direct)
    torch.testing.assert_close(tok.decode(tokens), model.decode(direct) * tok.std + tok.mean)
    torch.testing.assert_close(tok.denormalize(tok.normalize(raw)), raw)
    # lengths: the input is zeroed past 21 frames (normalised space), ceil(21 / 4) = 6 token steps stay, the rest -1
    short = tok.encode(raw, torch.tensor([21, 32]))
    x = (raw - tok.mean) / tok.std
    x[0, 21:] = 0
    assert torch.equal(short[0, :6], model.encode(x)[0, :6]) and bool((short[0, 6:] == -1).all())
    assert torch.equal(short[1], direct[1])
    # fingerprint: stable on reload, changes with the weights or with the statistics
    again = MotionTokenizer.from_checkpoint(run.last)
    assert tok.fingerprint == again.fingerprint and len(tok.fingerprint) == 16
    other = MotionTokenizer(model=again.model, mean=again.mean + 1.0, std=again.std, config={})
    assert other.fingerprint != tok.fingerprint
    with torch.no_grad():
        next(again.model.parameters()).add_(1e-3)
    again._fingerprint = None
    assert again.fingerprint != tok.fingerprint
    with pytest.raises(ValueError, match="argument 'lengths'"):
        tok.encode(raw, torch.tensor([0, 32]))


def test_load_rvq_refuses_another_stage(trained_run, tmp_path):
    from utils.checkpoint import CheckpointError, save_checkpoint
    path = tmp_path / "other.pt"
    save_checkpoint(path, stage="retriever", config={}, model={})
    with pytest.raises(CheckpointError, match="expected stage 'rvq'"):
        MotionTokenizer.from_checkpoint(path)


def test_evaluate_reconstruction_with_an_evaluator_reports_fid(trained_run, mini_root):
    from models.evaluator import EvaluatorConfig, T2MEvaluator
    cfg, task, run, _ = trained_run
    torch.manual_seed(0)
    evaluator = T2MEvaluator(EvaluatorConfig.for_dataset("t2m"), task.mean.numpy(), task.std.numpy())
    report = evaluate_reconstruction(run.best, cfg.data, split="val", evaluator=evaluator, batch_size=8,
                                     max_batches=2, progress=False)
    assert report["num_motions"] == min(16, len(build_dataset(cfg.data, "val", "text")))
    for key in ("mpjpe_mm", "root_err_mm", "feature_l1", "fid", "usage/joint/used_min", "usage/global/used_min"):
        assert np.isfinite(report[key]) and report[key] >= 0, key
    again = evaluate_reconstruction(run.best, cfg.data, split="val", batch_size=8, max_batches=2, progress=False)
    assert again["mpjpe_mm"] == pytest.approx(report["mpjpe_mm"])        # seeded crops: reproducible
    with pytest.raises(ValueError, match="was trained on 't2m'"):
        evaluate_reconstruction(run.best, DataConfig(root=str(mini_root), dataset="kit"), progress=False)


def test_render_val_example_writes_a_png(trained_run, tmp_path):
    cfg, _, run, _ = trained_run
    png = render_val_example(run.best, cfg.data, tmp_path / "recon.png")
    assert png is not None and Path(png).stat().st_size > 1000


def test_train_rvq_cli_runs_and_refuses_mismatched_datasets(mini_root, tmp_path, capsys):
    import train_rvq
    argv = ["--config", str(REPO / "configs/mini/rvq.yaml"), "--runs-root", str(tmp_path), "--name", "cli",
            *tiny_stage_overrides(mini_root, **{"train.max_steps": 2, "val.render": "false"})]
    metrics = train_rvq.main(argv)
    assert metrics["step"] == 2.0 and (tmp_path / "rvq/cli/checkpoints/best.pt").is_file()
    assert (tmp_path / "rvq/cli/config.yaml").is_file()
    with pytest.raises(SystemExit) as ex:
        train_rvq.main(argv[:-1] + ["model.dataset=kit", "--overwrite"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "error: override 'model.dataset=kit': data.dataset='t2m' but model.dataset='kit'; set both" in err
    assert (tmp_path / "rvq/cli/checkpoints/best.pt").is_file()          # refused before --overwrite deleted it


def test_train_rvq_refuses_bad_settings_before_loading_data(tmp_path, capsys):
    import train_rvq
    argv = ["--config", str(REPO / "configs/mini/rvq.yaml"), "--runs-root", str(tmp_path), "data.root=/nonexistent"]
    for bad, message in (("train.schedule=cosin", "train.schedule='cosin': expected one of 'constant', 'multistep', "
                                                  "'cosine'"),
                         ("model.sample=top1", "model.sample='top1': expected one of 'argmax', 'gumbel'"),
                         ("loss.recon=l2", "loss.recon='l2': expected one of 'smooth_l1', 'l1'")):
        with pytest.raises(SystemExit) as ex:
            train_rvq.main([*argv, bad])
        assert ex.value.code == 2 and message in capsys.readouterr().err
    assert not tmp_path.joinpath("rvq").exists()


def test_render_after_training_happens_on_rank_zero_only(trained_run, monkeypatch):
    import train_rvq
    from utils import distributed
    cfg, _, run, _ = trained_run
    assert cfg.val.render
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    assert train_rvq.after_training(run, cfg) is None
    assert not (run.path / "recon.png").exists()
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    png = train_rvq.after_training(run, cfg)
    assert png is not None and Path(png) == run.path / "recon.png" and Path(png).stat().st_size > 1000


def test_train_rvq_help_lists_the_config_keys(capsys):
    import train_rvq
    with pytest.raises(SystemExit) as exit_info:
        train_rvq.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "model.global_branch" in out and "loss.ric_weight" in out and "configs/mini/rvq.yaml" in out


# ----------------------------------------------------------------------------------------------------------------
# Slow: a tiny model overfits a handful of mini motions
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("global_branch", [False, True])
def test_tiny_model_overfits_a_handful_of_mini_motions(mini_root, global_branch):
    ds = build_dataset(DataConfig(root=str(mini_root)), "train", "window")
    torch.manual_seed(0)
    # (6, 64, 263): the first window of each of six motions
    x = torch.stack([ds[int(ds.window_offsets[k])]["motion"] for k in range(6)])
    model = RVQVAE2D(RVQConfig(**tiny_model_cfg(global_branch), mu=0.9))
    loss_fn = RVQLoss(RVQLossConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))

    def recon_l1() -> float:
        model.eval()
        with torch.no_grad():
            err = float((model(x).recon - x).abs().mean())
        model.train()
        return err

    before = recon_l1()
    for _ in range(400):
        loss, _ = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = recon_l1()
    assert after < before / 4, f"feature L1 {before:.3f} -> {after:.3f}"
    model.eval()
    idx = model.encode(x)
    for col_range, size in ((range(6), 16),) + (((6,), 16),) * global_branch:
        for level in range(6):
            used = torch.unique(idx[:, :, list(col_range), level]).numel()
            assert used >= 2, f"level {level} uses {used} of {size} codes"


def test_resume_continues_codebooks_and_ema_bit_for_bit(mini_root, tmp_path):
    """The EMA sums and counts are in the checkpoint (reference.md §9.13 forgets them): 2 + 2 steps == 4 steps."""
    import train_rvq
    flags = ["--config", str(REPO / "configs/mini/rvq.yaml"), "--runs-root", str(tmp_path)]
    over = tiny_stage_overrides(mini_root, **{"val.render": "false", "train.val_every": 0, "train.ckpt_every": 0})
    train_rvq.main(flags + ["--name", "straight"] + over + ["train.max_steps=4"])
    train_rvq.main(flags + ["--name", "split"] + over + ["train.max_steps=2"])
    train_rvq.main(flags + ["--name", "split", "--resume"] + over + ["train.max_steps=4"])
    a = torch.load(tmp_path / "rvq/straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "rvq/split/checkpoints/last.pt", weights_only=True)["model"]
    assert "quantizer.layers.0.code_sum" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_spread_windows_takes_evenly_spaced_items_or_all():
    items = list(range(101))
    picked = spread_windows(items, 5)
    assert [picked[i] for i in range(len(picked))] == [0, 25, 50, 75, 100]
    assert spread_windows(items, 0) is items
    assert spread_windows(items, 500) is items
