"""train_residual.py end to end on the mini dataset (tiny sizes): checkpoints record the tokenizer and text encoder,
rebuild alone, validation reports per-layer accuracy and the named reconstruction groups; the length estimator
flag; refusals (another tokenizer, bad settings)."""
from __future__ import annotations

import types

import pytest
import torch

import train_residual
from models.tokenizer import MotionTokenizer
from models.text_encoders import TextEncoderConfig
from tests.tiny_stages import tiny_text_overrides
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.tasks.residual import check_same_tokenizer, load_length_estimator, load_residual

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_residual_overrides(root, tokenizer, cache_dir, **extra) -> list[str]:
    over = [f"data.root={root}", f"upstream.tokenizer={tokenizer}", f"upstream.cache_dir={cache_dir}",
            "upstream.encode_batch_size=16", *tiny_text_overrides(), "model.layers=1", "model.heads=2",
            "model.width=16", "model.ff_dim=16", "model.embed_dim=8", "train.device=cpu", "train.batch_size=4",
            "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2", "train.warmup_steps=0",
            "val.max_batches=1", "val.recon_batches=1", "length_model.hidden=[8]", "length_train.device=cpu",
            "length_train.batch_size=4", "length_train.max_steps=2", "length_train.val_every=2",
            "length_train.ckpt_every=2"]
    return over + [f"{k}={v}" for k, v in extra.items()]


@pytest.fixture(scope="module")
def residual_run(tiny_upstream, mini_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    metrics = train_residual.main(["--runs-root", str(runs), "--name", "tiny",
                                   *tiny_residual_overrides(mini_root, tiny_upstream["tokenizer"], cache)])
    return {"runs": runs, "cache": cache, "metrics": metrics,
            "best": runs / "residual" / "tiny" / "checkpoints" / "best.pt"}


def test_checkpoint_records_tokenizer_and_text_encoder(residual_run, tiny_upstream):
    ckpt = load_checkpoint(residual_run["best"], stage="residual")
    tok = MotionTokenizer.from_checkpoint(tiny_upstream["tokenizer"])
    assert ckpt["extra"]["upstream"]["tokenizer"] == {"path": tiny_upstream["tokenizer"],
                                                      "fingerprint": tok.fingerprint}
    assert ckpt["extra"]["text_encoder"] == TextEncoderConfig(name="minilm", tiny=True).identity()
    model_cfg = ckpt["config"]["model"]                         # derived fields resolved from the frozen parts
    assert model_cfg["codebook_sizes"] == tok.codebook_sizes and model_cfg["num_quantizers"] == tok.num_quantizers
    assert model_cfg["num_columns"] == 7


def test_checkpoint_rebuilds_the_model_alone_and_generates(residual_run, tiny_upstream):
    tok = MotionTokenizer.from_checkpoint(tiny_upstream["tokenizer"])
    model, _ = load_residual(residual_run["best"], tokenizer=tok)
    base = torch.zeros(2, 5, 7, dtype=torch.long)
    out = model.generate(base, torch.randn(2, model.cfg.text_dim), torch.tensor([5, 3]),
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 5, 7, tok.num_quantizers) and bool((out[1, 3:] == -1).all())
    assert tok.decode(out).shape == (2, 20, 263)


def test_validation_reports_layers_and_named_reconstruction_groups(residual_run):
    m = residual_run["metrics"]
    for level in range(1, 6):
        assert 0.0 <= m[f"val/acc/l{level}"] <= 1.0 and m[f"val/loss/l{level}"] > 0
    for group in ("val/recon/tokenizer", "val/recon/base_only", "val/upper_bound"):
        assert m[f"{group}/mpjpe_mm"] >= 0 and f"{group}/feature_l1" in m
    assert not any("t2m" in k or "fid" in k for k in m)      # no text-to-motion number from this stage


def test_a_residual_checkpoint_of_another_tokenizer_is_refused(residual_run, tiny_upstream):
    other = types.SimpleNamespace(path="runs/rvq/other/best.pt", fingerprint="0123456789abcdef")
    with pytest.raises(CheckpointError) as err:
        load_residual(residual_run["best"], tokenizer=other)
    msg = str(err.value)
    assert str(residual_run["best"]) in msg and "runs/rvq/other/best.pt" in msg and "\n" not in msg


def test_a_tokenizer_with_another_token_map_is_refused_naming_both_files(residual_run):
    from models.rvq import RVQConfig, RVQVAE2D
    from tests.tiny_stages import tiny_rvq_model_cfg

    rvq = RVQVAE2D(RVQConfig(**tiny_rvq_model_cfg(global_branch=True), num_quantizers=3))
    other = MotionTokenizer(model=rvq, mean=torch.zeros(263), std=torch.ones(263), config={}, path="runs/rvq/q3.pt")
    with pytest.raises(CheckpointError, match="num_quantizers 6 vs 3") as err:
        load_residual(residual_run["best"], tokenizer=other)
    assert str(residual_run["best"]) in str(err.value) and "runs/rvq/q3.pt" in str(err.value)


def test_a_base_token_map_of_another_tokenizer_is_refused_naming_both_files(residual_run):
    ckpt = load_checkpoint(residual_run["best"], stage="residual")
    mask_ckpt = {"extra": {"upstream": {"tokenizer": {"path": "runs/rvq/b/best.pt", "fingerprint": "ffff"}}}}
    with pytest.raises(CheckpointError, match="different tokenizers") as err:
        check_same_tokenizer("runs/mask/b/best.pt", mask_ckpt, residual_run["best"], ckpt)
    assert "runs/mask/b/best.pt" in str(err.value) and str(residual_run["best"]) in str(err.value)
    same = {"extra": {"upstream": {"tokenizer": dict(ckpt["extra"]["upstream"]["tokenizer"])}}}
    check_same_tokenizer("runs/mask/a/best.pt", same, residual_run["best"], ckpt)     # the same tokenizer passes


def test_length_estimator_flag_trains_and_predicts_in_range(residual_run, tiny_upstream, mini_root):
    runs = residual_run["runs"]
    metrics = train_residual.main(["--runs-root", str(runs), "--name", "tiny", "--length-estimator",
                                   *tiny_residual_overrides(mini_root, tiny_upstream["tokenizer"],
                                                            residual_run["cache"])])
    assert {"val/loss", "val/acc", "val/within1", "val/mae_frames"} <= set(metrics)
    model, ckpt = load_length_estimator(runs / "length_estimator" / "tiny" / "checkpoints" / "best.pt")
    assert ckpt["extra"]["text_encoder"]["name"] == "minilm"
    frames = model.predict(torch.randn(50, model.cfg.text_dim), generator=torch.Generator().manual_seed(0))
    assert int(frames.min()) >= 40 and int(frames.max()) <= 196 and bool((frames % 4 == 0).all())


@pytest.mark.parametrize("override, key", [("model.guidance_scale=-1", "model.guidance_scale"),
                                           ("model.layer_schedule=linear", "model.layer_schedule"),
                                           ("length_model.max_length=400", "length_model.max_length"),
                                           ("val.recon_batches=-1", "val.recon_batches")])
def test_bad_settings_exit_2_naming_the_key(override, key, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        train_residual.main(["--runs-root", str(tmp_path), override])
    assert err.value.code == 2
    assert key in capsys.readouterr().err


@pytest.mark.slow
def test_residual_layers_lower_the_reconstruction_error_of_the_base_layer_alone(mini_root, tmp_path):
    """On mini data: a small tokenizer (200 steps), then a small residual transformer (300 steps). Decoding the
    ground-truth base layer plus the generated residual layers (the "upper bound" diagnostic) must beat decoding the
    base layer alone; the tokenizer's own reconstruction (all ground-truth layers) is the ceiling."""
    import train_rvq
    from tests.tiny_stages import tiny_rvq_overrides

    runs = tmp_path / "runs"
    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(runs), "--name", "small",
                    *tiny_rvq_overrides(mini_root, **{"model.global_branch": True, "model.width": 32,
                                                      "model.code_dim": 32, "model.global_width": 32,
                                                      "model.global_code_dim": 32, "model.mu": 0.9,
                                                      "train.batch_size": 16, "train.max_steps": 200,
                                                      "train.lr": 2e-3, "train.val_every": 200,
                                                      "train.ckpt_every": 200, "val.render": False})])
    tokenizer = runs / "rvq" / "small" / "checkpoints" / "best.pt"
    torch.manual_seed(0)
    m = train_residual.main(["--runs-root", str(runs), "--name", "small",
                             *tiny_residual_overrides(mini_root, tokenizer, tmp_path / "cache", **{
                                 "model.layers": 2, "model.heads": 4, "model.width": 64, "model.ff_dim": 128,
                                 "model.embed_dim": 32, "model.dropout": 0.0, "train.batch_size": 16,
                                 "train.max_steps": 300, "train.lr": 2e-3, "train.val_every": 300,
                                 "train.ckpt_every": 300, "val.max_batches": 0, "val.recon_batches": 4})])
    base, upper, full = (m[f"val/{g}/mpjpe_mm"] for g in ("recon/base_only", "upper_bound", "recon/tokenizer"))
    print(f"mini val MPJPE (mm): base layer only {base:.1f}, GT base + generated residual layers (upper bound) "
          f"{upper:.1f}, all GT layers (tokenizer) {full:.1f}; per-layer acc "
          f"{[round(m[f'val/acc/l{l}'], 3) for l in range(1, 6)]}")
    assert full < base
    assert upper < base


def test_a_missing_tokenizer_exits_2_naming_the_key(tmp_path, mini_root, capsys):
    with pytest.raises(SystemExit) as err:
        train_residual.main(["--runs-root", str(tmp_path), *tiny_residual_overrides(mini_root, tmp_path / "none.pt",
                                                                                     tmp_path / "cache")])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "upstream.tokenizer" in msg and "none.pt" in msg


def test_resume_next_to_another_tokenizer_exits_2(residual_run, mini_root, tmp_path, capsys):
    import shutil
    import train_rvq
    from tests.tiny_stages import tiny_rvq_overrides

    runs = tmp_path / "runs"
    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(runs), "--name", "other",
                    *tiny_rvq_overrides(mini_root, **{"model.global_branch": True, "train.max_steps": 1,
                                                      "train.seed": 7, "val.render": False})])
    shutil.copytree(residual_run["runs"] / "residual" / "tiny", runs / "residual" / "tiny")
    with pytest.raises(SystemExit) as err:
        train_residual.main(["--runs-root", str(runs), "--name", "tiny", "--resume",
                             *tiny_residual_overrides(mini_root, runs / "rvq" / "other" / "checkpoints" / "best.pt",
                                                      tmp_path / "cache", **{"train.max_steps": 3})])
    assert err.value.code == 2
    assert "other" in capsys.readouterr().err
