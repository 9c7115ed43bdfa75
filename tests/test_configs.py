"""Every YAML under configs/<dataset>/ loads with its stage schema, and the paper-size ones say what README promises."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA_ROOTS = {"humanml3d": ("data/HumanML3D", "t2m"), "kit": ("data/KIT-ML", "kit"), "mini": ("data/mini", "t2m")}


def stage_schema(stage: str) -> type:
    """The config dataclass of each stage's YAML (the one its script passes to stage_cli / load_config)."""
    if stage == "rvq":
        from utils.tasks.rvq import RVQStageConfig
        return RVQStageConfig
    if stage == "retriever":
        from utils.tasks.retriever import RetrieverStageConfig
        return RetrieverStageConfig
    if stage == "evaluator":
        from utils.tasks.evaluator import EvaluatorStageConfig
        return EvaluatorStageConfig
    if stage.startswith("mask"):
        from utils.tasks.mask import MaskStageConfig
        return MaskStageConfig
    if stage == "residual":
        from utils.tasks.residual import ResidualStageConfig
        return ResidualStageConfig
    if stage == "eval":
        from eval_t2m import EvalStageConfig
        return EvalStageConfig
    raise AssertionError(f"configs/*/{stage}.yaml: no stage schema known for {stage!r}; add it to stage_schema()")


YAMLS = sorted(CONFIGS.glob("*/*.yaml"))


def load(path: Path):
    return load_config(stage_schema(path.stem), path)


def test_every_dataset_folder_has_configs():
    assert {p.parent.name for p in YAMLS} == set(DATA_ROOTS)
    assert len(YAMLS) >= 12


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_loads_with_its_stage_schema_and_data_root(path):
    cfg = load(path)
    root, dataset = DATA_ROOTS[path.parent.name]
    assert cfg.data.root == root
    assert cfg.data.dataset == dataset
    model_dataset = getattr(cfg, "model", None) and getattr(cfg.model, "dataset", None)
    if model_dataset is not None:
        assert model_dataset == dataset


@pytest.mark.parametrize("ds", ["humanml3d", "kit"])
def test_retriever_paper_values(ds):
    cfg = load(CONFIGS / ds / "retriever.yaml")
    assert cfg.train.batch_size == 128                    # paper §2.1
    assert cfg.train.epochs == 200 and cfg.train.max_steps == 0
    assert cfg.train.lr == pytest.approx(1e-5) and cfg.train.optimizer == "adam" and cfg.train.schedule == "cosine"
    assert cfg.model.temperature == pytest.approx(0.07)   # τ
    assert cfg.model.queue_size == 65536
    assert cfg.model.momentum == pytest.approx(0.99)      # m
    assert cfg.model.latent_dim == 512 and cfg.model.layers == 4
    assert cfg.model.text_encoder == "distilbert"
    assert cfg.data.feat_bias == 1.0                      # reference §1.5: raw Std


@pytest.mark.parametrize("ds", ["humanml3d", "kit"])
def test_rvq_paper_values(ds):
    cfg = load(CONFIGS / ds / "rvq.yaml")
    m = cfg.model
    assert m.num_quantizers == 6                          # base + 5 residual layers
    assert (m.nb_code, m.code_dim) == (256, 1024)         # joint codebook 256 × 1024 (paper §2.3)
    assert m.global_branch and (m.global_nb_code, m.global_code_dim) == (256, 1024)
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.batch_size == 256
    assert cfg.data.window_size == 64 and cfg.data.feat_bias == 5.0


@pytest.mark.parametrize("ds", ["humanml3d", "kit"])
def test_eval_protocol_values(ds):
    cfg = load(CONFIGS / ds / "eval.yaml")
    assert cfg.eval.replications == 20 and cfg.eval.batch_size == 32 and cfg.split == "test"
    assert cfg.evaluator.path == f"checkpoints/{DATA_ROOTS[ds][1]}/text_mot_match/model/finest.tar"   # reference §3.1


@pytest.mark.parametrize("ds", ["humanml3d", "kit"])
def test_mask_paper_values(ds):
    cfg = load(CONFIGS / ds / "mask.yaml")
    m, t = cfg.model, cfg.train
    assert (m.layers, m.heads, m.width) == (6, 8, 512)            # paper §2.5
    assert m.cond_drop == pytest.approx(0.1) and m.guidance_scale == pytest.approx(4.0)
    assert t.optimizer == "adamw" and t.lr == pytest.approx(2e-4) and t.batch_size == 256
    assert t.betas == [0.9, 0.99] and t.weight_decay == pytest.approx(1e-5) and t.warmup_steps == 2000
    assert cfg.upstream.text.name == "clip" and cfg.upstream.retrieval_k == 1


@pytest.mark.parametrize("path", sorted((CONFIGS / "humanml3d" / "ablations").glob("mask_*.yaml")), ids=lambda p: p.stem)
def test_mask_ablation_configs_differ_from_the_paper_config_only_in_the_ablation(path):
    from utils.config import to_dict
    base, abl = to_dict(load(CONFIGS / "humanml3d" / "mask.yaml")), to_dict(load_config(stage_schema("mask"), path))
    assert abl["model"]["ablation"] == path.stem.removeprefix("mask_")
    base["model"]["ablation"] = abl["model"]["ablation"]
    if abl["model"]["ablation"] == "whole_body_retrieval":       # needs a whole-body retriever (part_level=false)
        assert "whole_body" in abl["upstream"]["retriever"]
        base["upstream"]["retriever"] = abl["upstream"]["retriever"]
    assert abl == base


@pytest.mark.parametrize("ds", ["humanml3d", "kit"])
def test_residual_paper_values(ds):
    cfg = load(CONFIGS / ds / "residual.yaml")
    m = cfg.model
    assert (m.layers, m.heads, m.width) == (6, 6, 384)      # paper §2.6 R-trans
    assert m.share_weight and m.cond_drop == pytest.approx(0.01) and m.guidance_scale == 5.0   # official code
    assert cfg.upstream.text.name == "clip"                 # paper §2.4
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.length_model.num_bins == 50 and cfg.length_model.dataset == DATA_ROOTS[ds][1]   # reference §5.2
