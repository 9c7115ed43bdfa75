"""Issue #12 options that make the paper configs train as the official code: projection head, similarity in the loss,
text pooling, the cosine schedule's length, the Table 3 retrieval protocol and the per-level straight-through
estimator. Each is checked against a hand computation, round-tripped through its config and checkpoint, and refused
with a one-line ConfigError when its value is bad."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.projection_head import OfficialProjectionHead, build_projection_head
from models.quantizer import ResidualVQ
from models.retriever import BMMRetriever, RetrieverConfig, bmm_loss
from utils.config import ConfigError, from_dict, load_config, to_dict
from utils.retrieval_metrics import PROTOCOLS, identical_caption_metrics, protocol_table3, retrieval_protocols

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def tiny_cfg(**kw) -> RetrieverConfig:
    base = dict(dataset="t2m", latent_dim=16, part_width=8, layers=1, heads=2, ff_dim=32, dropout=0.0,
                head_dropout=0.0, max_frames=32, text_encoder="minilm", text_tiny=True, text_freeze_backbone=True,
                queue_size=8)
    base.update(kw)
    return RetrieverConfig(**base)


def tiny_batch(B=4, T=20, D=263, seed=0):
    g = torch.Generator().manual_seed(seed)
    captions = ["a person walks forward", "someone jumps", "a man waves his hand", "a person sits down"]
    return {"motion": torch.randn(B, T, D, generator=g), "length": torch.tensor([T, T - 4, T - 8, 12]),
            "caption": captions[:B]}


# ------------------------------------------------------------------------------------------------ projection head

def test_head_parameter_shapes():
    official = OfficialProjectionHead(6, 4, dropout=0.5)
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == {
        "proj.weight": (4, 6), "proj.bias": (4,), "fc.weight": (4, 4), "fc.bias": (4,),
        "norm.weight": (4,), "norm.bias": (4,)}
    linear = build_projection_head("linear", 6, 4, 0.5)        # the names of the checkpoints before the option
    assert {k: tuple(v.shape) for k, v in linear.state_dict().items()} == {"1.weight": (4, 6), "1.bias": (4,)}
    assert isinstance(linear[0], nn.Dropout) and linear[0].p == 0.5
    with pytest.raises(ValueError, match="projection head must be one of"):
        build_projection_head("mlp", 6, 4)


def _gelu(v: float) -> float:
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def test_official_head_forward_by_hand():
    head = OfficialProjectionHead(2, 2, dropout=0.5).eval()        # eval: dropout off
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
        head.proj.bias.copy_(torch.tensor([0.1, -0.2]))
        head.fc.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.0, 0.3]))
        head.norm.weight.copy_(torch.tensor([2.0, 0.5]))
        head.norm.bias.copy_(torch.tensor([1.0, -1.0]))
    x = [0.3, -0.4]
    p = [1.0 * 0.3 + 2.0 * -0.4 + 0.1, -1.0 * 0.3 + 0.5 * -0.4 - 0.2]          # [-0.4, -0.7]
    g = [_gelu(v) for v in p]
    h = [0.5 * g[0] - 1.0 * g[1] + 0.0, 2.0 * g[0] + 1.0 * g[1] + 0.3]
    s = [h[0] + p[0], h[1] + p[1]]                                              # residual
    mean = (s[0] + s[1]) / 2
    var = ((s[0] - mean) ** 2 + (s[1] - mean) ** 2) / 2                         # biased, as LayerNorm
    y = [(s[i] - mean) / math.sqrt(var + 1e-5) * [2.0, 0.5][i] + [1.0, -1.0][i] for i in range(2)]
    out = head(torch.tensor([x]))
    assert torch.allclose(out, torch.tensor([y]), atol=1e-6)
    # in training mode the dropout acts on the fc branch only: with p = 1 the output is LayerNorm(proj(x))
    head1 = OfficialProjectionHead(2, 2, dropout=1.0).train()
    head1.load_state_dict(head.state_dict())
    assert torch.allclose(head1(torch.tensor([x])), head.norm(head.proj(torch.tensor([x]))), atol=1e-6)


def test_both_towers_and_their_momentum_copies_use_the_configured_head():
    model = BMMRetriever(tiny_cfg(projection_head="official"))
    for module in (model.motion_encoder.head, model.text_tower.head, model.momentum_text_head,
                   model.momentum_motion_encoder.head):
        assert isinstance(module, OfficialProjectionHead)
    assert model.motion_encoder.head.proj.in_features == 6 * 8 and model.text_tower.head.proj.out_features == 16
    linear = BMMRetriever(tiny_cfg())
    assert isinstance(linear.motion_encoder.head, nn.Sequential)
    # the head's parameters are the "head" optimizer group (lr factor 10, reference §6.4)
    groups = {g["name"]: g for g in model.param_groups()}
    head_ids = {id(p) for p in groups["head"]["params"]}
    assert {id(p) for p in model.motion_encoder.head.parameters()} <= head_ids
    assert {id(p) for p in model.text_tower.head.parameters()} <= head_ids


def test_text_pooling_cls_takes_the_first_token():
    from models.text_encoders import build_text_encoder

    torch.manual_seed(0)
    mean = build_text_encoder("distilbert", tiny=True, pooling="mean", freeze_backbone=True, out_dim=0)
    cls = build_text_encoder("distilbert", tiny=True, pooling="cls", freeze_backbone=True, out_dim=0)
    cls.backbone.load_state_dict(mean.backbone.state_dict())
    texts = ["a person walks forward", "someone jumps"]
    tok = mean.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = mean.backbone(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    m = tok["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(cls(texts), hidden[:, 0], atol=1e-6)
    assert torch.allclose(mean(texts), (hidden * m).sum(1) / m.sum(1), atol=1e-6)


# ------------------------------------------------------------------------------------------- similarity in the loss

def test_official_loss_on_raw_vectors_by_hand():
    """bmm_loss does not normalise: logits are the raw dot products / τ (the official similarity)."""
    q = torch.tensor([[0.2, 0.0], [0.1, 0.1]])
    k = torch.tensor([[0.1, 0.1], [0.0, 0.3]])
    queue = torch.tensor([[-0.1, 0.2]])
    tau = 0.07
    loss = bmm_loss(q, k, queue, tau, in_batch_negatives=True, reduction="mean")
    # row 0: logits [0.02, 0, -0.02] / τ, positive 0; row 1: logits [0.02, 0.03, 0.01] / τ, positive 1
    rows = [([0.02, 0.0, -0.02], 0), ([0.02, 0.03, 0.01], 1)]
    hand = 0.0
    for logits, pos in rows:
        z = [v / tau for v in logits]
        top = max(z)
        hand += -(z[pos] - top - math.log(sum(math.exp(v - top) for v in z)))
    assert loss.item() == pytest.approx(hand / 2, rel=1e-6)


def test_official_similarity_feeds_the_raw_layernorm_outputs_to_the_loss():
    torch.manual_seed(0)
    model = BMMRetriever(tiny_cfg(projection_head="official", similarity="official")).eval()
    b = tiny_batch()
    loss, _ = model(b)
    q_m = model.encode_motion(b["motion"], b["length"], normalize=False)
    q_t = model.encode_text(b["caption"], normalize=False)
    k_t, k_m = model.momentum_keys(b["caption"], b["motion"], b["length"], normalize=False)
    # LayerNorm outputs (weight 1, bias 0 at init) have norm √D, D = latent_dim = 16
    assert torch.allclose(q_m.norm(dim=-1), torch.full((4,), 4.0), atol=1e-3)
    hand = 0.5 * (bmm_loss(q_m, k_t, None, 0.07) + bmm_loss(q_t, k_m, None, 0.07))
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    # the normalized similarity on the same weights gives another loss (cosine / τ)
    model.cfg.similarity = "normalized"
    loss_n, _ = model(b)
    unit = 0.5 * (bmm_loss(torch.nn.functional.normalize(q_m, dim=-1), torch.nn.functional.normalize(k_t, dim=-1),
                           None, 0.07)
                  + bmm_loss(torch.nn.functional.normalize(q_t, dim=-1), torch.nn.functional.normalize(k_m, dim=-1),
                             None, 0.07))
    assert loss_n.item() == pytest.approx(unit.item(), rel=1e-5) and abs(loss_n.item() - loss.item()) > 1e-3
    model.cfg.similarity = "official"
    # evaluation embeddings are unit vectors either way; the queues hold the raw keys under "official"
    assert torch.allclose(model.encode_motion(b["motion"], b["length"]).norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(model.encode_text(b["caption"]).norm(dim=-1), torch.ones(4), atol=1e-5)
    model.train()
    model(b)
    model.after_optimizer_step()
    assert torch.allclose(model.queue_entries("motion").norm(dim=-1), torch.full((4,), 4.0), atol=1e-3)


# --------------------------------------------------------------------------------------------- cosine schedule

def test_cosine_length_two_ends_at_half_the_base_rate():
    from utils.training import TrainConfig, lr_factor

    cfg = TrainConfig(schedule="cosine", lr=1.0, cosine_length=2.0)
    total = 100
    assert lr_factor(0, cfg, total) == pytest.approx(1.0)
    assert lr_factor(50, cfg, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, cfg, total) == pytest.approx(0.5)
    # CosineAnnealingLR(T_max = 2 × run, eta_min = 0) gives the same curve
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * total)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(step, cfg, total), abs=1e-9)
        opt.step()
        sched.step()
    # with a floor and a warm-up: floor + (1 − floor)·(1 + cos(π·p/2))/2 after the warm-up
    cfg = TrainConfig(schedule="cosine", lr=2.0, min_lr=0.4, warmup_steps=10, cosine_length=2.0)
    assert lr_factor(4, cfg, 110) == pytest.approx(5 / 11)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.2 + 0.8 * 0.5)
    assert TrainConfig(schedule="cosine", lr=1.0).cosine_length == 1.0          # default: ends at min_lr
    assert lr_factor(100, TrainConfig(schedule="cosine", lr=1.0), 100) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- Table 3 protocol

TABLE3_SIMS = np.array([[0.9, 0.9, 0.1, 0.2],     # text 0 "walk": hits motions 0, 2; ties with 1, gallery order wins
                        [0.8, 0.8, 0.2, 0.3],     # text 1 "jump": hit 1 only; ties with 0, which comes first
                        [0.5, 0.1, 0.3, 0.7],     # text 2 "walk": 3 above, then motion 0 (identical caption)
                        [0.1, 0.2, 0.3, 0.25]])   # text 3 "run": motion 2 above
TABLE3_CAPTIONS = ["a person walks", "a person jumps", "a person walks", "a person runs"]


def test_table3_protocol_on_duplicate_captions_and_ties_by_hand():
    out = identical_caption_metrics(TABLE3_SIMS, TABLE3_CAPTIONS)
    # text→motion ranks [0, 1, 1, 1]
    assert (out["t2m/R01"], out["t2m/R02"], out["t2m/R03"], out["t2m/R05"], out["t2m/R10"]) == (25, 100, 100, 100, 100)
    assert out["t2m/MedR"] == 2.0
    # motion→text (columns): motion 0 → texts [.9 .8 .5 .1], hits {0, 2}: rank 0; motion 1 → [.9 .8 .1 .2],
    # hit {1}: rank 1; motion 2 → [.1 .2 .3 .3], hits {0, 2}: text 2 ties text 3 and comes first: rank 0; motion 3 →
    # [.2 .3 .7 .25], hit {3}: rank 2. Ranks [0, 1, 0, 2].
    assert (out["m2t/R01"], out["m2t/R02"], out["m2t/R03"]) == (50, 75, 100)
    assert out["m2t/MedR"] == 1.5
    # TMR's "normal" protocol on the same matrix averages ties (rows 0 and 1: rank 0.5, hits) and has no
    # identical-caption hits (row 2: rank 2): t2m ranks [0.5, 0.5, 2, 1]
    from utils.retrieval_metrics import contrastive_metrics
    normal = contrastive_metrics(TABLE3_SIMS)
    assert (normal["t2m/R01"], normal["t2m/R02"], normal["t2m/MedR"]) == (50.0, 75.0, 1.75)


def test_table3_protocol_on_embeddings_is_the_scaled_cosine():
    g = np.random.default_rng(0)
    text, motion = g.normal(size=(40, 8)), g.normal(size=(40, 8))
    captions = [f"caption {i % 13}" for i in range(40)]                 # many duplicates
    out = protocol_table3(text, motion, captions)
    tn = text / np.linalg.norm(text, axis=1, keepdims=True)
    mn = motion / np.linalg.norm(motion, axis=1, keepdims=True)
    assert out == identical_caption_metrics(tn @ mn.T, captions)
    unique = protocol_table3(text, motion, [f"unique {i}" for i in range(40)])
    from utils.retrieval_metrics import protocol_normal
    assert unique == protocol_normal(text, motion)                     # no duplicates, no ties: TMR's (a)
    assert "table3" in PROTOCOLS
    both = retrieval_protocols(text, motion, captions, [f"{i:03d}" for i in range(40)], protocols=("table3", "guo"))
    assert both["table3"] == out and set(both) == {"table3", "guo"}


def test_eval_config_lists_table3_and_refuses_unknown_protocols():
    from eval_t2m import EvalStageConfig

    for ds in ("humanml3d", "kit", "mini"):
        cfg = load_config(EvalStageConfig, f"configs/{ds}/eval.yaml")
        assert cfg.retrieval_protocols == ["normal", "threshold", "nsim", "guo", "table3"]
    assert EvalStageConfig().retrieval_protocols == list(PROTOCOLS)
    with pytest.raises(ConfigError) as err:
        load_config(EvalStageConfig, "configs/mini/eval.yaml", ["retrieval_protocols=[normal,part_tmr]"])
    assert "retrieval_protocols" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- straight-through estimator

def _rvq(mode: str) -> ResidualVQ:
    torch.manual_seed(0)
    return ResidualVQ(num_quantizers=3, nb_code=4, code_dim=2, quantize_dropout=0.0, straight_through=mode).eval()


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_per_level_ste_gradient_is_active_levels_times_identity(levels):
    x0 = torch.tensor([[[0.3, -1.2], [2.0, 0.5]]])                     # (N=1, T=2, d=2)
    for mode, factor in (("sum", 1.0), ("per_level", float(levels))):
        rvq = _rvq(mode)
        jac = torch.autograd.functional.jacobian(lambda x: rvq(x, num_levels=levels)[0], x0)   # (1,2,2, 1,2,2)
        assert torch.allclose(jac.reshape(4, 4), factor * torch.eye(4)), (mode, levels)


def test_per_level_ste_equals_the_sum_of_the_levels_own_estimates():
    """The official form Σ_l (r_l + sg(y_l − r_l)) with r_l = x − Σ_{m<l} sg(y_m): same value, same gradients."""
    x0 = torch.tensor([[[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]]])
    rvq = _rvq("per_level")
    x = x0.clone().requires_grad_(True)
    out, idx, commit, _ = rvq(x, num_levels=3)
    (out.pow(2).sum() + 7.0 * commit).backward()
    grad_ours = x.grad.clone()

    xr = x0.clone().requires_grad_(True)
    codes = rvq.codes_from_indices(idx)                                # (Q, N, T, d)
    residual, total, commit_ref = xr, 0.0, 0.0
    for level in range(3):
        y = codes[level]
        total = total + residual + (y - residual).detach()
        commit_ref = commit_ref + torch.nn.functional.mse_loss(residual, y)
        residual = residual - y.detach()
    (total.pow(2).sum() + 7.0 * commit_ref / 3).backward()
    assert torch.allclose(out, rvq.decode_indices(idx)) and torch.allclose(out, total.detach(), atol=1e-6)
    assert torch.allclose(grad_ours, xr.grad, atol=1e-5)


def test_commitment_gradient_is_not_scaled_by_the_ste_mode():
    x0 = torch.tensor([[[0.3, -1.2], [2.0, 0.5]]])
    grads = []
    for mode in ("sum", "per_level"):
        x = x0.clone().requires_grad_(True)
        _rvq(mode)(x, num_levels=3)[2].backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1])


def test_ste_mode_is_validated():
    with pytest.raises(ValueError, match="straight_through"):
        ResidualVQ(2, 4, 2, straight_through="global")


# ------------------------------------------------------------------------ configs, checkpoints and refusals

def test_paper_configs_default_to_the_official_behaviour():
    from utils.tasks.retriever import RetrieverStageConfig
    from utils.tasks.rvq import RVQStageConfig

    for ds, dropout in (("humanml3d", 0.5), ("kit", 0.0)):
        cfg = load_config(RetrieverStageConfig, f"configs/{ds}/retriever.yaml")
        m = cfg.model
        assert (m.similarity, m.projection_head, m.text_pooling, m.head_dropout) == ("official", "official", "cls",
                                                                                    dropout)
        assert cfg.train.schedule == "cosine" and cfg.train.cosine_length == 2.0 and cfg.train.min_lr == 0.0
        assert load_config(RVQStageConfig, f"configs/{ds}/rvq.yaml").model.straight_through == "per_level"
    # the dataclass defaults stay ours
    assert (RetrieverConfig().similarity, RetrieverConfig().projection_head) == ("normalized", "linear")


def test_retriever_options_round_trip_through_config_and_checkpoint(tmp_path):
    from utils.checkpoint import save_checkpoint
    from utils.tasks.retriever import RetrieverStageConfig, load_retriever

    over = ["model.similarity=official", "model.projection_head=official", "model.text_pooling=cls",
            "model.head_dropout=0.0", "train.cosine_length=2.0", "model.part_width=8", "model.layers=1",
            "model.heads=2", "model.ff_dim=16", "model.latent_dim=16", "model.text_tiny=true", "model.queue_size=16",
            "train.batch_size=8"]   # a batch that divides the queue (checked at load)
    cfg = load_config(RetrieverStageConfig, "configs/mini/retriever.yaml", over)
    d = to_dict(cfg)
    assert from_dict(RetrieverStageConfig, d) == cfg
    assert d["model"]["similarity"] == "official" and d["train"]["cosine_length"] == 2.0
    torch.manual_seed(0)
    model = BMMRetriever(cfg.model)
    path = tmp_path / "r.pt"
    save_checkpoint(path, stage="retriever", config=d, model=model.state_dict())
    loaded, config = load_retriever(path)
    assert loaded.cfg == cfg.model and config["train"]["cosine_length"] == 2.0
    assert isinstance(loaded.motion_encoder.head, OfficialProjectionHead) and loaded.text_tower.pooling == "cls"
    b = tiny_batch()
    model.eval()
    assert torch.allclose(loaded.encode_motion(b["motion"], b["length"]), model.encode_motion(b["motion"], b["length"]))
    assert torch.allclose(loaded.encode_text(b["caption"]), model.encode_text(b["caption"]))


def test_ste_option_round_trips_through_config_and_checkpoint(tmp_path):
    from models.rvq import RVQConfig, RVQVAE2D
    from tests.tiny_stages import tiny_rvq_model_cfg
    from utils.checkpoint import load_model, save_checkpoint
    from utils.tasks.rvq import RVQStageConfig

    cfg = load_config(RVQStageConfig, "configs/mini/rvq.yaml", ["model.straight_through=per_level"])
    assert from_dict(RVQStageConfig, to_dict(cfg)) == cfg
    mcfg = RVQConfig(**{**tiny_rvq_model_cfg(global_branch=True), "straight_through": "per_level"})
    model = RVQVAE2D(mcfg)
    assert model.quantizer.straight_through == "per_level" and model.global_quantizer.straight_through == "per_level"
    path = tmp_path / "t.pt"
    save_checkpoint(path, stage="rvq", config={"model": to_dict(mcfg)}, model=model.state_dict())
    loaded, _ = load_model(path, RVQVAE2D, RVQConfig, stage="rvq")
    assert loaded.cfg.straight_through == "per_level"
    assert loaded.quantizer.straight_through == "per_level" and loaded.global_quantizer.straight_through == "per_level"


@pytest.mark.parametrize("stage,override,key", [
    ("retriever", "model.similarity=cosine", "model.similarity"),
    ("retriever", "model.projection_head=mlp", "model.projection_head"),
    ("retriever", "model.text_pooling=max", "model.text_pooling"),
    ("retriever", "model.head_dropout=1.0", "model.head_dropout"),
    ("retriever", "train.cosine_length=0.5", "train.cosine_length"),
    ("rvq", "model.straight_through=global", "model.straight_through"),
])
def test_bad_option_values_are_refused_with_one_line_naming_the_key(stage, override, key):
    from utils.tasks.retriever import RetrieverStageConfig
    from utils.tasks.rvq import RVQStageConfig

    schema = {"retriever": RetrieverStageConfig, "rvq": RVQStageConfig}[stage]
    with pytest.raises(ConfigError) as err:
        load_config(schema, f"configs/mini/{stage}.yaml", [override])
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_bad_option_exits_with_code_2(tmp_path, capsys):
    import train_retriever

    with pytest.raises(SystemExit) as exc:
        train_retriever.main(["--config", "configs/mini/retriever.yaml", "--runs-root", str(tmp_path),
                              "model.similarity=cosine"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("model.similarity" in line for line in err)
    assert not (tmp_path / "retriever").exists()
