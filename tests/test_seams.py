"""The seams the generator stages build on (issue: seams for the generator).

- frozen components built in TrainTask.setup stay out of the optimizer and the checkpoint's model state;
- a checkpoint records its upstream checkpoints' fingerprints and refuses a different upstream;
- ground truth and captions of the evaluation do not depend on the randomness the model under test draws;
- one normaliser: build_dataset(stats=...) normalises with the consumer's statistics;
- the dataset registry is the one source of dataset facts; no module under models/ imports the training loop.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.toy_task import ToyDataset, ToyModel, ToyTask, toy_collate
from utils.checkpoint import CheckpointError, check_upstream, load_checkpoint, upstream_record
from utils.run_dir import RunDir
from utils.training import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# Frozen components and upstream fingerprints
# ----------------------------------------------------------------------------------------------------------------

class FrozenUpstreamTask(ToyTask):
    """A toy stage that uses a frozen "tokenizer" (a Linear it never trains), built in setup(device)."""

    def __init__(self, upstream_fp: str = "aaaa", **kw):
        super().__init__(**kw)
        self.upstream_fp = upstream_fp
        self.frozen: nn.Module | None = None
        self.setup_device = None

    def setup(self, device):
        self.setup_device = device
        self.frozen = nn.Linear(8, 8).to(device).requires_grad_(False)
        self.model = ToyModel(8, 16, 0.0)              # built here: its config could depend on the frozen part

    def upstream(self):
        return {"tokenizer": upstream_record("runs/rvq/x/checkpoints/best.pt", self.upstream_fp)}

    def training_step(self, model, batch, step):
        with torch.no_grad():
            x = self.frozen(batch["x"])
        pred = model(x)
        return nn.functional.mse_loss(pred, batch["y"]), {}


def _fit(task, tmp_path, steps=4, resume=False):
    cfg = TrainConfig(device="cpu", batch_size=8, max_steps=steps, lr=1e-2, log_every=1, ckpt_every=2,
                      warmup_steps=0, schedule="constant")
    run = RunDir("toy", "frozen", tmp_path, resume=resume, overwrite=not resume)
    trainer = Trainer(task, cfg, run, ToyDataset(32), None, collate_fn=toy_collate, config={"train": {}})
    trainer.fit()
    return trainer, run


def test_frozen_parts_are_outside_the_optimizer_and_the_state_dict(tmp_path):
    task = FrozenUpstreamTask()
    trainer, run = _fit(task, tmp_path)
    assert task.setup_device == torch.device("cpu")
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in task.model.parameters()}
    assert not optimised & {id(p) for p in task.frozen.parameters()}
    frozen_before = task.frozen.weight.clone()
    ckpt = load_checkpoint(run.last, stage="toy")
    assert set(ckpt["model"]) == set(task.model.state_dict())          # net.0.weight ...: no frozen keys
    assert torch.equal(task.frozen.weight, frozen_before)
    assert ckpt["extra"]["upstream"] == {"tokenizer": {"path": "runs/rvq/x/checkpoints/best.pt",
                                                       "fingerprint": "aaaa"}}


def test_resume_next_to_another_upstream_is_refused_naming_both(tmp_path):
    _fit(FrozenUpstreamTask("aaaa"), tmp_path, steps=2)
    with pytest.raises(CheckpointError) as err:
        _fit(FrozenUpstreamTask("bbbb"), tmp_path, steps=4, resume=True)
    msg = str(err.value)
    assert "last.pt" in msg and "runs/rvq/x/checkpoints/best.pt" in msg and "aaaa" in msg and "bbbb" in msg
    assert "\n" not in msg


def test_check_upstream_refuses_or_warns_with_the_override(tmp_path):
    ckpt = {"extra": {"upstream": {"tokenizer": upstream_record("a/best.pt", "1111")}}}
    check_upstream("mask.pt", ckpt, "tokenizer", "a/best.pt", "1111")             # same weights: fine
    check_upstream("mask.pt", {"extra": {}}, "tokenizer", "b.pt", "2222")          # nothing recorded: fine
    with pytest.raises(CheckpointError, match=r"mask\.pt was trained on tokenizer a/best\.pt .*1111.* b/best\.pt"):
        check_upstream("mask.pt", ckpt, "tokenizer", "b/best.pt", "2222")
    with pytest.warns(UserWarning, match="allowed by the override"):
        check_upstream("mask.pt", ckpt, "tokenizer", "b/best.pt", "2222", allow_mismatch=True)


# ----------------------------------------------------------------------------------------------------------------
# Explicit randomness: the evaluation's ground truth does not depend on the model under test
# ----------------------------------------------------------------------------------------------------------------

class RecordingEvaluator:
    """A stand-in evaluator: embeds a motion by its mean raw feature (deterministic), records captions."""
    source = "recording"

    def __init__(self, dim: int):
        self.proj = torch.randn(dim, 6, generator=torch.Generator().manual_seed(0))
        self.texts: list[list[float]] = []

    def normalize_for_evaluator(self, raw):
        return torch.as_tensor(raw).float()

    def encode_text(self, word_embs, pos_ohot, cap_lens):
        self.texts.append(word_embs.sum((1, 2)).tolist())
        return word_embs.mean(1)[:, :6]

    def encode_motion(self, motions, m_lens):
        mask = (torch.arange(motions.shape[1])[None] < torch.as_tensor(m_lens)[:, None]).float()[..., None]
        return ((motions * mask).sum(1) / mask.sum(1)) @ self.proj


def _evaluate(generate_fn, eval_set, captions_seen):
    from utils.evaluation import EvalConfig, evaluate_t2m

    evaluator = RecordingEvaluator(eval_set.spec.dim)
    cfg = EvalConfig(replications=2, batch_size=8, diversity_times=8, mm_mode="off")
    report = evaluate_t2m(generate_fn, eval_set, evaluator, cfg, progress=False)
    captions_seen.extend(evaluator.texts)
    return report


def test_ground_truth_and_captions_do_not_depend_on_the_generators_randomness(mini_root):
    from datasets.motion_dataset import DataConfig, build_dataset

    eval_set = build_dataset(DataConfig(root=str(mini_root)), "train", "eval")
    draws = {"frugal": 0, "greedy": 0}

    def frugal(batch, generator=None):          # draws one number per batch from the generator it is given
        draws["frugal"] += 1
        noise = torch.rand((), generator=generator)
        return eval_set.denormalize(batch["motion"]) + noise, batch["length"]

    def greedy(batch):                          # draws a lot from the global generators
        draws["greedy"] += 1
        torch.rand(10_000)
        np.random.rand(1000)
        return eval_set.denormalize(batch["motion"]) * 1.5, batch["length"]

    caps_a, caps_b = [], []
    a = _evaluate(frugal, eval_set, caps_a)
    b = _evaluate(greedy, eval_set, caps_b)
    assert draws["frugal"] > 0 and draws["greedy"] > 0
    assert caps_a == caps_b                                         # the same captions, in the same batches
    gt_a, gt_b = a["metrics"]["gt"], b["metrics"]["gt"]
    for metric in gt_a:                                             # the same ground-truth column, per replication
        assert gt_a[metric]["values"] == gt_b[metric]["values"], metric
    assert a["metrics"]["generated"]["MM_Dist"] != b["metrics"]["generated"]["MM_Dist"]


def test_item_draws_come_from_seed_epoch_and_index_only(mini_root):
    from datasets.motion_dataset import DataConfig, build_dataset

    ds = build_dataset(DataConfig(root=str(mini_root)), "train", "text")
    ds.set_epoch(3, seed=7)
    first = [(ds[i]["caption"], ds[i]["length"], float(ds[i]["motion"].sum())) for i in range(12)]
    torch.manual_seed(123)
    np.random.seed(5)
    again = [(ds[i]["caption"], ds[i]["length"], float(ds[i]["motion"].sum())) for i in range(12)]
    assert first == again
    ds.set_epoch(4)
    other = [(ds[i]["caption"], ds[i]["length"], float(ds[i]["motion"].sum())) for i in range(12)]
    assert other != first                                           # another epoch, other draws


# ----------------------------------------------------------------------------------------------------------------
# One normaliser
# ----------------------------------------------------------------------------------------------------------------

def test_build_dataset_normalises_with_the_consumers_statistics(mini_root):
    from datasets.motion_dataset import DataConfig, DatasetError, build_dataset, load_stats

    cfg = DataConfig(root=str(mini_root))
    mean, std = load_stats(cfg)
    own = build_dataset(cfg, "val", "window")
    theirs = build_dataset(cfg, "val", "window", stats=(mean + 1.0, std * 2.0))
    raw = own.denormalize(own[0]["motion"])
    torch.testing.assert_close(theirs[0]["motion"], (raw - torch.as_tensor(mean + 1.0)) / torch.as_tensor(std * 2.0))
    torch.testing.assert_close(theirs.denormalize(theirs[0]["motion"]), raw)
    with pytest.raises(DatasetError, match="argument 'stats' must be"):
        build_dataset(cfg, "val", "window", stats=(mean[:10], std[:10]))


# ----------------------------------------------------------------------------------------------------------------
# The dataset registry and the import layering
# ----------------------------------------------------------------------------------------------------------------

def test_registry_agrees_with_the_skeletons_and_the_models():
    from datasets.motion_dataset import SPECS
    from datasets.registry import DATASETS, UnknownDatasetError, dataset_facts
    from datasets.skeleton import skeleton_info
    from models.evaluator import dim_pose_of
    from models.retriever import part_feature_indices
    from models.rvq import dataset_dims

    assert DATASETS == ("t2m", "kit")
    for ds, (dim, joints, fps) in {"t2m": (263, 22, 20.0), "kit": (251, 21, 12.5)}.items():
        facts = dataset_facts(ds)
        assert (facts.dim, facts.joints, facts.fps) == (dim, joints, fps)
        assert skeleton_info(ds).num_joints == joints
        assert dataset_dims(ds) == (dim, joints) and dim_pose_of(ds) == dim
        assert (SPECS[ds].dim, SPECS[ds].joints, SPECS[ds].min_length) == (dim, joints, facts.min_length)
        parts = part_feature_indices(ds)
        assert sorted({i for idx in parts.values() for i in idx}) == list(range(dim))   # parts cover every dim
    with pytest.raises(UnknownDatasetError, match="must be one of"):
        dataset_facts("amass")


def test_joint_layout_helper_matches_the_joint_format():
    from datasets.representation import features_to_joint_format, joint_feature_indices

    x = np.arange(263, dtype=np.float32)[None]
    jf = features_to_joint_format(x)[0]                              # (22, 12)
    for j in (0, 1, 9, 21):
        idx = joint_feature_indices(j)
        assert [float(v) for v in jf[j]] == [0.0 if i < 0 else float(i) for i in idx]
    assert joint_feature_indices(1) == [4, 5, 6, 67, 68, 69, 70, 71, 72, 196, 197, 198]   # ric, rot6d, velocity


def test_procedural_flag_comes_from_the_folder_not_its_name(mini_root, tmp_path):
    from datasets.registry import is_procedural

    assert is_procedural(mini_root)
    renamed = tmp_path / "mini_but_real"
    renamed.mkdir()
    assert not is_procedural(renamed)


GROUND = ("utils/atomic.py", "utils/config.py", "utils/checkpoint.py", "utils/run_dir.py", "utils/distributed.py",
          "utils/markdown.py", "utils/tensors.py")
UPPER = ("utils.training", "utils.tasks", "utils.evaluation", "utils.plot", "utils.demo", "utils.benchmarks")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "models").glob("*.py")) +
                         list(GROUND))
def test_models_and_the_ground_layer_never_import_the_training_side(path):
    """models/ and utils' ground layer import only downward: never the training loop, the tasks or evaluation."""
    bad = sorted(name for name in _imports(REPO / path) if name.startswith(UPPER))
    assert not bad, f"{path} imports {bad}"


# ----------------------------------------------------------------------------------------------------------------
# One text-encoder config
# ----------------------------------------------------------------------------------------------------------------

def test_text_encoder_config_is_checked_and_recorded(mini_root, tmp_path):
    from models.retriever import RetrieverConfig
    from models.text_encoders import TextEncoderConfig, build_text_encoder_from_config
    from utils.checkpoint import check_same_text_encoder
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"mask\.text\.pooling"):
        TextEncoderConfig(name="clip", pooling="cls").check_values("mask.text.")
    with pytest.raises(ConfigError, match=r"text\.name"):
        TextEncoderConfig(name="bert").check_values()
    tiny = TextEncoderConfig(name="minilm", tiny=True)
    enc = build_text_encoder_from_config(tiny)
    assert enc(["a person walks"]).shape == (1, enc.out_dim) and enc.max_tokens == 128
    assert tiny.identity()["pooling"] == "mean" and TextEncoderConfig().identity()["max_length"] == 77
    # the retriever's tower is described by the same config
    r = RetrieverConfig(text_encoder="minilm", text_tiny=True, latent_dim=16, text_pooling="cls").text_encoder_config()
    assert (r.name, r.out_dim, r.pooling, r.tiny) == ("minilm", 16, "cls", True)
    # a pair trained with different text encoders is refused, naming both files
    a = {"extra": {"text_encoder": TextEncoderConfig(name="clip").identity()}}
    b = {"extra": {"text_encoder": TextEncoderConfig(name="minilm").identity()}}
    check_same_text_encoder("mask.pt", a, "residual.pt", a)
    with pytest.raises(CheckpointError, match=r"mask\.pt and residual\.pt .*different text encoders.*name: 'clip' "
                                              r"vs 'minilm'"):
        check_same_text_encoder("mask.pt", a, "residual.pt", b)
