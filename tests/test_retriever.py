"""Part-level BMM retriever: part split, motion encoder, queues, EMA, the BMM loss and its switches."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.retriever import (BMMRetriever, PartMotionEncoder, RetrieverConfig, RetrieverError, bmm_loss,
                              part_feature_indices)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def tiny_cfg(**kw) -> RetrieverConfig:
    base = dict(dataset="t2m", latent_dim=16, part_width=8, layers=1, heads=2, ff_dim=32, dropout=0.0, head_dropout=0.0,
                max_frames=32, text_encoder="minilm", text_tiny=True, text_freeze_backbone=True, queue_size=8)
    base.update(kw)
    return RetrieverConfig(**base)


def tiny_batch(B=4, T=20, D=263, seed=0):
    g = torch.Generator().manual_seed(seed)
    captions = ["a person walks forward", "someone jumps", "a man waves his hand", "a person sits down",
                "a figure runs in a circle", "he kicks with the left leg", "she spins around", "crawling"]
    return {"motion": torch.randn(B, T, D, generator=g), "length": torch.tensor([T, T - 4, T - 8, 12][:B] + [T] * (B - 4)),
            "caption": captions[:B]}


# ----------------------------------------------------------------------------------------------------- part split

def test_part_dims_t2m():
    parts = part_feature_indices("t2m")
    assert list(parts) == ["root", "r_leg", "l_leg", "backbone", "r_arm", "l_arm"]
    assert [len(v) for v in parts.values()] == [7, 50, 50, 60, 60, 60]


def test_part_dims_kit():
    assert [len(v) for v in part_feature_indices("kit").values()] == [7, 62, 62, 48, 48, 48]


def test_part_indices_by_hand_t2m():
    parts = part_feature_indices("t2m")
    # root: root data 0:4 + the root's local velocity 193:196 (4 + 9·21 = 193)
    assert parts["root"] == [0, 1, 2, 3, 193, 194, 195]
    # joint 2 (first of R_Leg): ric 4+3·1 = 7:10, rot6d 4+63+6·1 = 73:79, velocity 193+3·2 = 199:202
    assert parts["r_leg"][:12] == [7, 8, 9, 73, 74, 75, 76, 77, 78, 199, 200, 201]
    # contacts: R_Leg gets fid_r (261, 262), L_Leg fid_l (259, 260)
    assert parts["r_leg"][-2:] == [261, 262] and parts["l_leg"][-2:] == [259, 260]
    # joint 21 (last of R_Arm): ric 64:67, rot6d 187:193, velocity 256:259
    assert parts["r_arm"][-12:] == [64, 65, 66, 187, 188, 189, 190, 191, 192, 256, 257, 258]


def test_part_indices_by_hand_kit():
    parts = part_feature_indices("kit")
    assert parts["root"] == [0, 1, 2, 3, 184, 185, 186]                # 4 + 9·20 = 184
    assert parts["r_leg"][-2:] == [249, 250] and parts["l_leg"][-2:] == [247, 248]
    # joint 1 (first of Backbone): ric 4:7, rot6d 64:70, velocity 187:190
    assert parts["backbone"][:12] == [4, 5, 6, 64, 65, 66, 67, 68, 69, 187, 188, 189]


@pytest.mark.parametrize("dataset,shared,D", [("t2m", 9, 263), ("kit", 3, 251)])
def test_shared_joint_in_three_parts_and_full_cover(dataset, shared, D):
    parts = part_feature_indices(dataset)
    from datasets.representation import joint_feature_indices

    ric0 = joint_feature_indices(shared, dataset)[0]
    assert sorted(n for n, idx in parts.items() if ric0 in idx) == ["backbone", "l_arm", "r_arm"]
    assert sorted(set(i for idx in parts.values() for i in idx)) == list(range(D))   # every dim is used


# ------------------------------------------------------------------------------------------------- motion encoder

def test_part_encoder_shape_norm_and_padding_invariance():
    torch.manual_seed(0)
    enc = PartMotionEncoder(tiny_cfg()).eval()
    b = tiny_batch()
    out = enc(b["motion"], b["length"])
    assert out.shape == (4, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    noisy = b["motion"].clone()
    noisy[1, 16:] = 99.0                              # frames beyond length 16 are padding
    torch.testing.assert_close(enc(noisy, b["length"]), out, atol=1e-5, rtol=1e-5)
    assert enc.part_names == ("root", "r_leg", "l_leg", "backbone", "r_arm", "l_arm")


def test_whole_body_variant_has_one_part():
    enc = PartMotionEncoder(tiny_cfg(part_level=False))
    assert enc.part_names == ("body",) and enc.parts["body"].embed.in_features == 263
    assert enc.head[1].in_features == 8 and enc.head[1].out_features == 16


def test_part_encoder_rejects_wrong_width():
    enc = PartMotionEncoder(tiny_cfg(dataset="kit"))
    with pytest.raises(RetrieverError, match=r"expects motion \(B, T, 251\).*'kit'.*263"):
        enc(torch.zeros(2, 10, 263), torch.tensor([10, 10]))


# --------------------------------------------------------------------------------------------------------- queues

def test_queue_fifo_fixed_size_and_pointer_wrap():
    torch.manual_seed(0)
    model = BMMRetriever(tiny_cfg(queue_size=4))
    keys = [torch.full((2, 16), float(i)) for i in range(3)]          # batches 0, 1, 2
    model.dequeue_and_enqueue(keys[0], -keys[0])
    assert int(model.queue_ptr) == 2 and int(model.queue_count) == 2
    assert model.queue_fifo("text")[:, 0].tolist() == [0.0, 0.0]
    model.dequeue_and_enqueue(keys[1], -keys[1])
    assert int(model.queue_ptr) == 0 and int(model.queue_count) == 4          # pointer wrapped
    model.dequeue_and_enqueue(keys[2], -keys[2])                              # overwrites the oldest (batch 0)
    assert model.text_queue.shape == (4, 16) and int(model.queue_count) == 4
    assert model.queue_fifo("text")[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert model.queue_fifo("motion")[:, 0].tolist() == [-1.0, -1.0, -2.0, -2.0]
    assert int(model.queue_ptr) == 2


def test_batch_size_must_divide_queue_size():
    model = BMMRetriever(tiny_cfg(queue_size=8))
    model.check_batch_size(4)
    with pytest.raises(RetrieverError, match=r"queue_size \(8\) must be a multiple of the batch size \(3\)"):
        model.check_batch_size(3)


def test_queues_are_checkpoint_buffers():
    model = BMMRetriever(tiny_cfg(queue_size=8))
    model.dequeue_and_enqueue(torch.ones(4, 16), torch.ones(4, 16))
    state = model.state_dict()
    assert {"text_queue", "motion_queue", "queue_ptr", "queue_count"} <= set(state)
    twin = BMMRetriever(tiny_cfg(queue_size=8))
    twin.load_state_dict(state)
    assert int(twin.queue_count) == 4 and torch.equal(twin.text_queue, model.text_queue)


def test_after_optimizer_step_enqueues_the_forward_keys():
    torch.manual_seed(0)
    model = BMMRetriever(tiny_cfg()).train()
    b = tiny_batch()
    model(b)
    k_t, k_m = model.momentum_keys(b["caption"], b["motion"], b["length"])
    model.after_optimizer_step()                          # EMA with identical weights: keys unchanged
    torch.testing.assert_close(model.queue_fifo("text"), k_t)
    torch.testing.assert_close(model.queue_fifo("motion"), k_m)
    model.eval()(b)                                       # eval forward keeps nothing
    model.after_optimizer_step()
    assert int(model.queue_count) == 4


# ------------------------------------------------------------------------------------------------------------ EMA

def test_momentum_update_arithmetic():
    model = BMMRetriever(tiny_cfg(momentum=0.99))
    with torch.no_grad():
        for p in model.motion_encoder.parameters():
            p.fill_(1.0)
        for p in model.momentum_motion_encoder.parameters():
            p.fill_(0.0)
        model.text_tower.head[1].weight.fill_(2.0)
        model.momentum_text_head[1].weight.fill_(4.0)
    model.momentum_update()
    w = model.momentum_motion_encoder.parts["root"].embed.weight
    torch.testing.assert_close(w, torch.full_like(w, 0.01))                   # 0.99·0 + 0.01·1
    model.momentum_update()
    torch.testing.assert_close(w, torch.full_like(w, 0.99 * 0.01 + 0.01))     # 0.0199
    h = model.momentum_text_head[1].weight
    torch.testing.assert_close(h, torch.full_like(h, 0.99 * (0.99 * 4 + 0.02) + 0.02))
    assert model.momentum_text_backbone is None                               # frozen backbone is shared


def test_trainable_text_backbone_gets_a_momentum_copy():
    model = BMMRetriever(tiny_cfg(text_encoder="distilbert", text_freeze_backbone=False))
    assert model.momentum_text_backbone is not None
    assert not any(p.requires_grad for p in model.momentum_text_backbone.parameters())
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["motion", "text", "head"]
    assert [g["lr_factor"] for g in groups] == [10.0, 1.0, 10.0]                 # reference §6.4
    n_opt = sum(p.numel() for g in groups for p in g["params"])
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_opt == n_train                                                      # momentum copies excluded


# ----------------------------------------------------------------------------------------------------------- loss

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
K = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
QUEUE = torch.tensor([[-1.0, 0.0]])
TAU = 0.5


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_bmm_loss_in_batch_plus_queue_by_hand():
    # row 1 logits [0.6, 0.8, -1]/0.5, positive 0; row 2 logits [0.8, -0.6, 0]/0.5, positive 1
    l1 = -1.2 + _lse(1.2, 1.6, -2.0)
    l2 = 1.2 + _lse(1.6, -1.2, 0.0)
    assert float(bmm_loss(Q, K, QUEUE, TAU, True, "mean")) == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert float(bmm_loss(Q, K, QUEUE, TAU, True, "sum")) == pytest.approx(l1 + l2, abs=1e-6)


def test_bmm_loss_paper_eq5_queue_only_by_hand():
    # paper Eq. 4/5: positive q_i·k_i and the queue only: row 1 [0.6, -1]/0.5, row 2 [-0.6, 0]/0.5
    l1 = -1.2 + _lse(1.2, -2.0)
    l2 = 1.2 + _lse(-1.2, 0.0)
    assert float(bmm_loss(Q, K, QUEUE, TAU, False, "sum")) == pytest.approx(l1 + l2, abs=1e-6)


def test_bmm_loss_without_queue_is_in_batch_infonce():
    l1 = -1.2 + _lse(1.2, 1.6)
    l2 = 1.2 + _lse(1.6, -1.2)
    assert float(bmm_loss(Q, K, None, TAU, True, "mean")) == pytest.approx((l1 + l2) / 2, abs=1e-6)


def _filled(model: BMMRetriever, seed: int = 1) -> BMMRetriever:
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        model.dequeue_and_enqueue(torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1),
                                  torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1))
    return model


@pytest.mark.parametrize("text_q,motion_q", [(False, False), (False, True), (True, True)])
def test_queue_switches_select_the_negatives(text_q, motion_q):
    """Table 5 rows: M2T uses Q_t only if use_text_queue, T2M uses Q_m only if use_motion_queue."""
    torch.manual_seed(0)
    model = _filled(BMMRetriever(tiny_cfg(use_text_queue=text_q, use_motion_queue=motion_q))).eval()
    b = tiny_batch()
    _, logs = model(b)
    with torch.no_grad():
        q_m, q_t = model.encode_motion(b["motion"], b["length"]), model.encode_text(b["caption"])
        k_t, k_m = model.momentum_keys(b["caption"], b["motion"], b["length"])
        m2t = bmm_loss(q_m, k_t, model.queue_entries("text") if text_q else None, 0.07)
        t2m = bmm_loss(q_t, k_m, model.queue_entries("motion") if motion_q else None, 0.07)
    assert logs["loss_m2t"] == pytest.approx(float(m2t), rel=1e-5)
    assert logs["loss_t2m"] == pytest.approx(float(t2m), rel=1e-5)
    assert logs["loss"] == pytest.approx(0.5 * float(m2t + t2m), rel=1e-5)
    assert model.text_queue.shape[0] == (8 if text_q else 0)
    assert model.motion_queue.shape[0] == (8 if motion_q else 0)


def test_text_queue_affects_only_motion_to_text():
    torch.manual_seed(0)
    model = _filled(BMMRetriever(tiny_cfg())).eval()
    b = tiny_batch()
    _, before = model(b)
    model.text_queue.mul_(-1.0)                         # different text negatives
    _, after = model(b)
    assert after["loss_t2m"] == pytest.approx(before["loss_t2m"], rel=1e-6)
    assert after["loss_m2t"] != pytest.approx(before["loss_m2t"], rel=1e-3)


def test_no_negatives_config_is_refused():
    with pytest.raises(RetrieverError, match="in_batch_negatives=false every direction needs its queue"):
        BMMRetriever(tiny_cfg(in_batch_negatives=False, use_text_queue=False))
    with pytest.raises(RetrieverError, match="loss_reduction must be 'mean' or 'sum'"):
        BMMRetriever(tiny_cfg(loss_reduction="avg"))


def test_tiny_overfit_loss_falls():
    torch.manual_seed(0)
    # in-batch negatives only: on one repeated batch a queue would hold the positives' own keys as negatives
    model = BMMRetriever(tiny_cfg(use_text_queue=False, use_motion_queue=False, momentum=0.5)).train()
    b = tiny_batch()
    opt = torch.optim.Adam([p for g in model.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for _ in range(30):
        loss, logs = model(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
        losses.append(logs["loss"])
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    sims = model.encode_text(b["caption"]) @ model.encode_motion(b["motion"], b["length"]).t()
    assert torch.equal(sims.argmax(1), torch.arange(4))          # each caption retrieves its own motion


def test_config_round_trip_rebuilds_same_shapes():
    cfg = tiny_cfg()
    twin = RetrieverConfig(**dataclasses.asdict(cfg))
    a, b = BMMRetriever(cfg), BMMRetriever(twin)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_pool_frames_by_hand():
    from models.retriever import pool_frames

    h = torch.arange(10, dtype=torch.float32).view(1, 5, 2)            # frames [0,1], [2,3], ..., [8,9]
    pad = torch.tensor([[False, False, False, True, True]])            # length 3
    pooled, ppad = pool_frames(h, pad, 2)
    # tokens: mean(frames 0,1) = [1, 2]; frame 2 only (frame 3 is padding) = [4, 5]; frame 4 is padding
    torch.testing.assert_close(pooled[0, :2], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    assert ppad.tolist() == [[False, False, True]]


def test_frame_pool_keeps_padding_invariance():
    torch.manual_seed(0)
    enc = PartMotionEncoder(tiny_cfg(frame_pool=4)).eval()
    b = tiny_batch()
    out = enc(b["motion"], b["length"])
    noisy = b["motion"].clone()
    noisy[3, 12:] = -50.0
    torch.testing.assert_close(enc(noisy, b["length"]), out, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- the stage

def _stage_cfg(root, **train):
    from datasets.motion_dataset import DataConfig
    from utils.tasks.retriever import RetrieverRunConfig, RetrieverStageConfig
    from utils.training import TrainConfig

    tcfg = dict(batch_size=8, max_steps=4, epochs=0, lr=1e-4, optimizer="adam", schedule="cosine", val_every=2,
                ckpt_every=2, log_every=1, betas=[0.9, 0.999])
    tcfg.update(train)
    return RetrieverStageConfig(data=DataConfig(root=str(root), feat_bias=1.0), model=tiny_cfg(queue_size=16),
                                train=TrainConfig(**tcfg), retriever=RetrieverRunConfig(database_batch_size=16))


def test_task_param_groups_use_reference_factors(mini_root):
    from utils.tasks.retriever import RetrieverTask

    task = RetrieverTask(_stage_cfg(mini_root))
    groups = task.param_groups()
    assert [(g["name"], g["lr_factor"]) for g in groups] == [("motion", 10.0), ("head", 10.0)]   # text frozen


def test_task_refuses_batch_not_dividing_queue(mini_root):
    from utils.config import ConfigError
    from utils.tasks.retriever import RetrieverTask

    # checked with the config (utils.config runs check_stage_config at load), naming the key to change
    with pytest.raises(ConfigError, match=r"train\.batch_size=6 does not divide model\.queue_size=16: .* "
                                          r"e\.g\. train\.batch_size=4"):
        RetrieverTask(_stage_cfg(mini_root, batch_size=6))


def test_stage_trains_builds_database_and_evaluates(mini_root, tmp_path):
    """Trainer → best.pt (by val R@1 sum) → database next to it → evaluation, all from the checkpoint alone."""
    from datasets.motion_dataset import build_dataset
    from models.retrieval_database import RetrievalDatabase, default_database_path
    from models.retrieval_database import RetrievalQueryEncoder, load_retrieval
    from utils.checkpoint import load_checkpoint
    from utils.run_dir import RunDir
    from utils.tasks.retriever import (RetrieverTask, build_database, evaluate_retriever, load_retriever,
                                       retrieval_markdown)
    from utils.training import Trainer

    cfg = _stage_cfg(mini_root)
    train_set = build_dataset(cfg.data, "train", "text")
    val_set = build_dataset(cfg.data, "val", "text")
    task = RetrieverTask(cfg, val_set=val_set)
    run = RunDir("retriever", "t", tmp_path)
    out = Trainer(task, cfg.train, run, train_set, val_set, config=cfg).fit()
    assert out["step"] == 4.0 and "val/R01_sum" in out
    assert out["val/R01_sum"] == pytest.approx(out["val/t2m/R01"] + out["val/m2t/R01"])
    assert int(task.model.queue_count) == 16 and int(task.model.queue_ptr) == 0          # 4 steps × 8 keys, wrapped
    ckpt = load_checkpoint(run.last, stage="retriever")
    assert int(ckpt["model"]["queue_count"]) == 16                                       # queues are checkpointed
    assert ckpt["extra"]["text_encoder"] == cfg.model.text_encoder_config().identity()   # the text encoder used
    model, _ = load_retriever(run.final_checkpoint)
    final = load_checkpoint(run.final_checkpoint, stage="retriever")
    assert torch.equal(model.motion_queue, final["model"]["motion_queue"])             # rebuilt from the file alone

    db = build_database(run.final_checkpoint, cfg.data, progress=False, batch_size=16)
    assert default_database_path(run.final_checkpoint).is_file()
    encoder, again = load_retrieval(run.final_checkpoint, dataset="t2m")
    assert again.motion_ids == db.motion_ids
    assert again.meta.retriever_fingerprint == model.weights_fingerprint() == encoder.weights_fingerprint()
    # the inference-only query encoder: the text tower alone, bit-equal to the full retriever's text path
    assert isinstance(encoder, RetrievalQueryEncoder)
    assert not any(k.startswith(("momentum_", "motion_")) or "queue" in k for k in encoder.state_dict())
    prompts = ["a person walks forward", "someone jumps twice", "a man waves with his left hand"]
    assert torch.equal(encoder.encode_text(prompts), model.encode_text(prompts))
    full, light = db.retrieve(model, prompts, k=2), again.retrieve(encoder, prompts, k=2)
    assert torch.equal(full.indices, light.indices) and torch.equal(full.scores, light.scores)

    results = evaluate_retriever(run.final_checkpoint, cfg.data, split="test", protocols=("normal",))
    assert set(results["normal"]) == {f"{d}/{k}" for d in ("t2m", "m2t")
                                      for k in ("R01", "R02", "R03", "R05", "R10", "MedR")}
    table = retrieval_markdown(results, "Retriever (mini dataset)", note="mini numbers")
    assert "| normal | text→motion |" in table and "R@1" in table and "R@10" in table

    # another retriever's weights: the database is refused
    other = BMMRetriever(tiny_cfg(queue_size=16))
    with pytest.raises(RetrieverError, match="rebuild the database"):
        RetrievalDatabase.load(default_database_path(run.final_checkpoint), fingerprint=other.weights_fingerprint())


@pytest.mark.slow
def test_mini_training_retrieves_far_above_chance(tmp_path):
    """The mini config (400 optimizer steps cut to 250 here) on a 400-motion mini dataset: text→motion R@1 on the
    test split (protocol "normal": every test entry against all of them) must be far above chance 1/N.
    Observed on the shared 2-core CPU (2026-11-25, OMP_NUM_THREADS=1): 78 test entries (chance R@1 1.28 %),
    t2m/R01 44.87, m2t/R01 50.00, t2m/R10 98.72, MedR 2; 111 s."""
    from datasets.mini import write_mini_dataset
    from datasets.motion_dataset import build_dataset
    from utils.config import load_config
    from utils.run_dir import RunDir
    from utils.tasks.retriever import RetrieverStageConfig, RetrieverTask, evaluate_retriever
    from utils.training import Trainer

    root = tmp_path / "mini"
    write_mini_dataset(root, num_motions=400, seed=1)
    cfg = load_config(RetrieverStageConfig, "configs/mini/retriever.yaml",
                      [f"data.root={root}", "train.max_steps=250", "train.val_every=125", "train.ckpt_every=125"])
    train_set = build_dataset(cfg.data, "train", "text")
    val_set = build_dataset(cfg.data, "val", "text")
    task = RetrieverTask(cfg, val_set=val_set)
    run = RunDir("retriever", "slow", tmp_path / "runs")
    Trainer(task, cfg.train, run, train_set, val_set, config=cfg).fit()
    res = evaluate_retriever(run.final_checkpoint, cfg.data, split="test", protocols=("normal",))["normal"]
    n_test = len(build_dataset(cfg.data, "test", "text"))
    chance = 100.0 / n_test
    print(f"mini retriever: {n_test} test entries, chance R@1 {chance:.2f}%, t2m/R01 {res['t2m/R01']}, "
          f"m2t/R01 {res['m2t/R01']}, t2m/R10 {res['t2m/R10']}, t2m/MedR {res['t2m/MedR']}")
    assert res["t2m/R01"] > 5 * chance
    assert res["t2m/R10"] > min(90.0, 3 * 10 * chance)             # R@10 chance is 10/N


def test_train_retriever_writes_the_val_report_of_all_protocols_on_rank_zero_only(mini_root, tmp_path, monkeypatch,
                                                                                  capsys):
    """train_retriever.py: after training, the kept checkpoint on val under TMR's four protocols and the paper's table3
    → retrieval_val.*;
    on a rank other than 0 the post-training step writes nothing (no database, no report)."""
    import json

    import train_retriever
    from datasets.motion_dataset import build_dataset
    from models.retrieval_database import default_database_path
    from tests.tiny_stages import tiny_retriever_overrides
    from utils import distributed
    from utils.config import load_config
    from utils.run_dir import RunDir
    from utils.tasks.retriever import RetrieverStageConfig

    argv = ["--config", "configs/mini/retriever.yaml", "--runs-root", str(tmp_path), "--name", "s",
            *tiny_retriever_overrides(mini_root)]
    assert train_retriever.main(argv) == 0
    run_path = tmp_path / "retriever" / "s"
    md, js = run_path / "retrieval_val.md", run_path / "retrieval_val.json"
    assert f"{md}" in capsys.readouterr().out                              # the path is printed
    n_val = len(build_dataset(load_config(RetrieverStageConfig, "configs/mini/retriever.yaml",
                                          tiny_retriever_overrides(mini_root)).data, "val", "text").corpus.entries)
    report = json.loads(js.read_text())
    assert report["split"] == "val" and report["num_entries"] == n_val
    assert report["checkpoint"] == str(run_path / "checkpoints" / "best.pt")
    text = md.read_text()
    for proto in ("normal", "threshold", "nsim", "guo", "table3"):
        assert f"| {proto} | text→motion |" in text and f"| {proto} | motion→text |" in text
    expected = {"normal", "threshold", "nsim", "table3"} | ({"guo"} if n_val >= 32 else set())
    assert set(report["protocols"]) == expected
    for metrics in report["protocols"].values():
        assert 0 <= metrics["t2m/R01"] <= metrics["t2m/R10"] <= 100 and metrics["m2t/MedR"] >= 1
    if n_val < 32:                                                         # mini val split: too small for guo
        assert "needs at least one batch of 32" in report["skipped"]["guo"] and "guo: skipped" in text
        assert "| guo | text→motion | – | – | – | – | – | – |" in text

    # a faked rank 1: the post-training step writes nothing
    md.unlink()
    js.unlink()
    db = default_database_path(run_path / "checkpoints" / "best.pt")
    db.unlink()
    cfg = load_config(RetrieverStageConfig, "configs/mini/retriever.yaml", tiny_retriever_overrides(mini_root))
    run = RunDir("retriever", "s", tmp_path, resume=True)
    before = sorted(p.relative_to(run_path) for p in run_path.rglob("*"))
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    assert train_retriever.after_training(run, cfg, "cpu") is None
    assert sorted(p.relative_to(run_path) for p in run_path.rglob("*")) == before
    assert not md.exists() and not js.exists() and not db.exists()
