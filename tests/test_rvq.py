"""RVQVAE2D (models/rvq.py): token-map shapes, exact encode/decode, joint format, loss, bad input."""
from __future__ import annotations

import pytest
import torch

from models.rvq import (RVQConfig, RVQLoss, RVQLossConfig, RVQOutput, RVQVAE2D, features_index, joint_format_index,
                        joint_padding)

DIMS = {"t2m": (263, 22), "kit": (251, 21)}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def tiny_cfg(dataset="t2m", global_branch=False, **kw) -> RVQConfig:
    base = dict(dataset=dataset, width=32, code_dim=16, nb_code=16, global_branch=global_branch, global_width=32,
                global_code_dim=16, global_nb_code=12, dropout=0.0)
    base.update(kw)
    return RVQConfig(**base)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {(ds, gb): RVQVAE2D(tiny_cfg(ds, gb)).eval() for ds in DIMS for gb in (False, True)}


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
@pytest.mark.parametrize("global_branch", [False, True])
def test_token_map_and_reconstruction_shapes(models, dataset, global_branch):
    model = models[(dataset, global_branch)]
    d, _ = DIMS[dataset]
    x = torch.randn(3, 48, d)
    idx = model.encode(x)
    columns = 7 if global_branch else 6
    assert idx.shape == (3, 12, columns, 6)                 # (B, T/4, C, Q)
    assert idx.dtype == torch.long and bool((idx >= 0).all())
    assert model.num_columns == columns and model.downsample == 4
    assert model.codebook_sizes == [16] * 6 + ([12] if global_branch else [])
    for col, size in enumerate(model.codebook_sizes):
        assert int(idx[:, :, col].max()) < size
    assert model.decode(idx).shape == (3, 48, d)
    out = model(x)
    assert isinstance(out, RVQOutput) and out.recon.shape == (3, 48, d)
    assert set(out.heads) == ({"joint", "global"} if global_branch else {"joint"})


@pytest.mark.parametrize("global_branch", [False, True])
def test_decode_of_encode_equals_forward_exactly_in_eval(models, global_branch):
    model = models[("t2m", global_branch)]
    x = torch.randn(2, 32, 263)
    with torch.no_grad():
        recon = model(x).recon
    assert torch.equal(model.decode(model.encode(x)), recon)


@pytest.mark.parametrize("global_branch", [False, True])
def test_forward_token_map_equals_encode_in_eval(models, global_branch):
    """RVQOutput.indices is the map forward quantized with: in eval exactly encode(x) (no second encoder pass)."""
    model = models[("t2m", global_branch)]
    x = torch.randn(2, 32, 263)
    with torch.no_grad():
        out = model(x)
    assert out.indices.shape == (2, 8, 7 if global_branch else 6, 6)
    assert torch.equal(out.indices, model.encode(x))


def test_forward_token_map_marks_dropped_levels_in_training():
    torch.manual_seed(0)
    model = RVQVAE2D(tiny_cfg(quantize_dropout=1.0)).train()      # always drop: 1..Q-1 active levels
    out = model(torch.randn(2, 32, 263))
    active = (out.indices >= 0).all(dim=(0, 1, 2))                 # (Q,) levels used by every token
    assert bool(active[0]) and not bool(active[-1])
    assert bool(((out.indices >= 0) == active).all())              # one draw for the whole batch


def test_paper_size_token_map_of_196_frames():
    """reference.md §5.3: 196 frames → 49 × 6 = 294 base tokens; paper codebooks 256 × 1024."""
    cfg = RVQConfig()
    assert (cfg.nb_code, cfg.code_dim, cfg.num_quantizers, cfg.global_nb_code, cfg.global_code_dim) == \
        (256, 1024, 6, 256, 1024)
    model = RVQVAE2D(tiny_cfg())
    idx = model.encode(torch.randn(1, 196, 263))
    assert idx.shape[1] * idx.shape[2] == 294


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_joint_format_layout_and_round_trip(dataset):
    d, j = DIMS[dataset]
    model = RVQVAE2D(tiny_cfg(dataset))
    x = torch.arange(d, dtype=torch.float32).expand(2, 4, d) + 1000.0   # value = its dim index + 1000
    jf = model.to_joint_format(x)
    assert jf.shape == (2, 4, j, 12)
    f = jf[0, 0] - 1000.0
    # root slot (ARCHITECTURE §6.1): ch 0:4 root data, 4:8 contacts, 8 pad (zero), 9:12 root local velocity
    assert f[0, :4].tolist() == [0, 1, 2, 3]
    assert f[0, 4:8].tolist() == [d - 4, d - 3, d - 2, d - 1]
    assert float(jf[0, 0, 0, 8]) == 0.0
    vel0 = 4 + 9 * (j - 1)
    assert f[0, 9:12].tolist() == [vel0, vel0 + 1, vel0 + 2]
    # joint 5: ric dims 4+3·4.., rot6d dims 4+3(J−1)+6·4.., local velocity dims vel0+15..
    assert f[5, 0:3].tolist() == [16, 17, 18]
    rot0 = 4 + 3 * (j - 1) + 24
    assert f[5, 3:9].tolist() == list(range(rot0, rot0 + 6))
    assert f[5, 9:12].tolist() == [vel0 + 15, vel0 + 16, vel0 + 17]
    assert torch.equal(model.from_joint_format(jf), x)
    # every feature dim appears exactly once
    idx = joint_format_index(dataset)
    assert sorted(i for i in idx.tolist() if i < d) == list(range(d))
    assert features_index(dataset).shape == (d,)


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_joint_format_agrees_with_datasets_representation(dataset):
    rep = pytest.importorskip("datasets.representation")
    d, _ = DIMS[dataset]
    model = RVQVAE2D(tiny_cfg(dataset))
    x = torch.randn(2, 8, d)
    torch.testing.assert_close(model.to_joint_format(x), torch.as_tensor(rep.features_to_joint_format(x, dataset)))


def test_joint_padding_reaches_24():
    assert joint_padding(22) == (1, 1)          # reference.md §5.3: [pad, 0..21, pad]
    assert joint_padding(21) == (1, 2)          # KIT: one before, two after


def test_global_fusion_starts_as_average_of_the_heads(models):
    model = models[("t2m", True)]
    with torch.no_grad():
        out = model(torch.randn(2, 16, 263))
    torch.testing.assert_close(out.recon, 0.5 * (out.heads["joint"] + out.heads["global"]))


def test_gradients_reach_the_encoder_through_the_quantizer():
    torch.manual_seed(0)
    model = RVQVAE2D(tiny_cfg(global_branch=True)).train()
    x = torch.randn(2, 16, 263)
    out = model(x)
    loss, _ = RVQLoss(RVQLossConfig())(out, x)
    loss.backward()
    for name in ("encoder", "decoder", "linear_merge", "global_encoder", "global_decoder", "fusion"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # codebooks are buffers, updated by EMA only
    assert not any("codebook" in n for n, _ in model.named_parameters())


def test_loss_matches_hand_computation():
    """smooth-L1 over all dims + 0.5 × smooth-L1 over the ric dims + 0.02 × commit (reference.md §5.1)."""
    target = torch.zeros(1, 4, 263)
    recon = target.clone()
    recon[..., 4:67] = 2.0                      # ric dims of t2m: 4 : 4 + 3·21; smooth-L1(2) = 2 − 0.5 = 1.5
    out = RVQOutput(recon=recon, losses={"commit": torch.tensor(3.0), "commit_joint": torch.tensor(3.0)})
    loss, logs = RVQLoss(RVQLossConfig())(out, target)
    expected = 1.5 * 63 / 263 + 0.5 * 1.5 + 0.02 * 3.0
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss_l1, _ = RVQLoss(RVQLossConfig(recon="l1"))(out, target)
    assert float(loss_l1) == pytest.approx(2.0 * 63 / 263 + 0.5 * 2.0 + 0.06, rel=1e-6)
    assert logs["loss/commit"] == pytest.approx(3.0)


def test_loss_with_global_branch_adds_both_heads():
    target = torch.zeros(1, 4, 251)
    zero = torch.zeros(1, 4, 251)
    one = torch.ones(1, 4, 251)              # smooth-L1(1) = 0.5 everywhere
    out = RVQOutput(recon=zero, heads={"joint": one, "global": zero},
                    losses={"commit": torch.tensor(1.0), "commit_joint": torch.tensor(1.5),
                            "commit_global": torch.tensor(0.5)})
    loss, logs = RVQLoss(RVQLossConfig(), dataset="kit")(out, target)
    expected = 0.02 * 1.0 + (0.5 + 0.5 * 0.5 + 0.02 * 1.5) + (0.02 * 0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert logs["loss/head_joint"] == pytest.approx(0.78, rel=1e-6)


def test_state_dict_rebuilds_the_same_tokenizer():
    torch.manual_seed(0)
    model = RVQVAE2D(tiny_cfg(global_branch=True)).train()
    for _ in range(2):
        model(torch.randn(2, 16, 263))
    model.eval()
    clone = RVQVAE2D(tiny_cfg(global_branch=True)).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 16, 263)
    assert torch.equal(clone.encode(x), model.encode(x))
    assert "quantizer.layers.0.code_count" in model.state_dict()
    assert "global_quantizer.layers.5.code_sum" in model.state_dict()


def test_encode_does_not_touch_codebooks_in_training_mode():
    torch.manual_seed(0)
    model = RVQVAE2D(tiny_cfg()).train()
    before = model.quantizer.layers[0].codebook.clone()
    model.encode(torch.randn(2, 16, 263))
    assert torch.equal(model.quantizer.layers[0].codebook, before)
    assert model.training and model.quantizer.training


def test_skipped_levels_decode_as_zero_codes(models):
    model = models[("t2m", False)]
    idx = model.encode(torch.randn(1, 16, 263))
    base_only = idx.clone()
    base_only[..., 1:] = -1
    zq = model.quantizer.decode_indices(base_only[0].permute(1, 0, 2))
    torch.testing.assert_close(zq, model.quantizer.layers[0].codebook[base_only[0, :, :, 0].t()])
    assert model.decode(base_only).shape == (1, 16, 263)


@pytest.mark.parametrize("motion, match", [
    (torch.randn(2, 30, 263), r"'motion' has 30 frames, expected a multiple of 4.*crop to 28"),
    (torch.randn(2, 0, 263), r"'motion' is too short: 0 frames, need at least 4"),
    (torch.randn(2, 32, 251), r"'motion' has width 251, expected 263 \(dataset 't2m'\)"),
    (torch.randn(32, 263), r"'motion' must be a tensor \(B, T, 263\), got \(32, 263\)"),
])
def test_bad_motion_input_is_refused_with_the_argument_named(models, motion, match):
    with pytest.raises(ValueError, match=match):
        models[("t2m", False)].encode(motion)


def test_nan_motion_is_refused(models):
    x = torch.randn(1, 16, 263)
    x[0, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="'motion' contains NaN"):
        models[("t2m", True)](x)


def test_bad_indices_are_refused(models):
    model = models[("t2m", True)]
    with pytest.raises(ValueError, match=r"'indices' must have shape \(B, T', 7, 6\)"):
        model.decode(torch.zeros(1, 4, 6, 6, dtype=torch.long))
    bad = torch.zeros(1, 4, 7, 6, dtype=torch.long)
    bad[0, 0, 6, 0] = 12                                   # the global codebook has 12 codes
    with pytest.raises(ValueError, match=r"column 6 must lie in -1..11"):
        model.decode(bad)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="'dataset'"):
        RVQVAE2D(tiny_cfg(dataset="h3d"))
    with pytest.raises(ValueError, match="recon"):
        RVQLoss(RVQLossConfig(recon="mse"))
