"""The masked-transformer training stage: train_mask_transformer.py end to end on tiny upstreams, frozen parts out
of the optimizer and the state dict, upstream mismatches refused naming both files, bad input (one line, exit 2)."""
from __future__ import annotations

import pytest
import torch

from tests.tiny_stages import tiny_mask_overrides
from utils.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = "configs/mini/mask.yaml"


def _run(args):
    import train_mask_transformer
    return train_mask_transformer.main(["--config", CONFIG, *args])


@pytest.fixture(scope="module")
def trained(mini_root, tiny_upstream, tmp_path_factory):
    runs = tmp_path_factory.mktemp("mask_runs")
    cache = tmp_path_factory.mktemp("mask_cache")
    over = tiny_mask_overrides(mini_root, tiny_upstream, cache)
    metrics = _run(["--runs-root", str(runs), "--name", "t", *over])
    return {"runs": runs, "cache": cache, "over": over, "metrics": metrics,
            "ckpt": runs / "mask" / "t" / "checkpoints" / "last.pt"}


def test_tiny_run_trains_validates_and_writes_a_resolved_checkpoint(trained, tiny_upstream):
    m = trained["metrics"]
    assert m["step"] == 3.0 and torch.isfinite(torch.tensor(m["train/loss"]))
    assert 0.0 <= m["val/acc"] <= 1.0 and m["val/loss"] > 0
    ckpt = load_checkpoint(trained["ckpt"], stage="mask")
    model_cfg = ckpt["config"]["model"]
    from models.tokenizer import MotionTokenizer
    tok = MotionTokenizer.from_checkpoint(tiny_upstream["tokenizer"])
    assert model_cfg["num_columns"] == 7 and model_cfg["codebook_sizes"] == tok.codebook_sizes
    assert model_cfg["text_dim"] == 32                   # the tiny text encoder's width, resolved in setup
    assert model_cfg["retrieval_dim"] == 16              # the tiny retriever's latent width
    up = ckpt["extra"]["upstream"]
    assert up["tokenizer"]["fingerprint"] == tok.fingerprint and up["retriever"]["path"] == tiny_upstream["retriever"]
    assert ckpt["extra"]["text_encoder"]["name"] == "minilm"
    assert (trained["runs"] / "mask" / "t" / "checkpoints" / "best.pt").is_file()
    names = {p.name.rsplit(".", 2)[0] for p in trained["cache"].iterdir() if p.name.startswith("gen_")}
    assert names >= {"gen_tokens.train", "gen_tokens.val", "gen_retrieval.train"}   # gen_<kind>.<split>.<key>.pt


def test_frozen_parts_are_neither_in_the_state_dict_nor_in_the_optimizer(trained):
    ckpt = load_checkpoint(trained["ckpt"], stage="mask")
    keys = list(ckpt["model"])
    assert keys and not any(k.startswith(("tokenizer", "text_encoder", "query_encoder", "text_tower", "encoder.",
                                          "decoder.")) for k in keys)
    from models.mask_transformer import MaskTransformer, MaskTransformerConfig
    from utils.config import from_dict
    model = MaskTransformer(from_dict(MaskTransformerConfig, ckpt["config"]["model"]))
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == n_params
    assert set(keys) == set(model.state_dict())


def test_resume_next_to_another_tokenizer_is_refused_naming_both_files(trained, tiny_upstream, mini_root,
                                                                       tmp_path, capsys):
    import train_rvq
    from tests.tiny_stages import tiny_rvq_overrides
    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(tmp_path), "--name", "other",
                    *tiny_rvq_overrides(mini_root, **{"train.max_steps": 1, "val.render": False})])
    other = str(tmp_path / "rvq" / "other" / "checkpoints" / "best.pt")
    with pytest.raises(SystemExit) as exc:
        _run(["--runs-root", str(trained["runs"]), "--name", "t", "--resume", *trained["over"],
              f"upstream.tokenizer={other}", "train.max_steps=4", f"upstream.cache_dir={tmp_path / 'c'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(trained["ckpt"]) in err and tiny_upstream["tokenizer"] in err and other in err


def test_loading_next_to_a_tokenizer_with_another_token_map_is_refused(trained, tiny_upstream, mini_root, tmp_path):
    import train_rvq
    from models.tokenizer import MotionTokenizer
    from tests.tiny_stages import tiny_rvq_overrides
    from utils.tasks.mask import load_mask_transformer
    model, _ = load_mask_transformer(trained["ckpt"], MotionTokenizer.from_checkpoint(tiny_upstream["tokenizer"]))
    assert not model.training
    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(tmp_path), "--name", "six",
                    *tiny_rvq_overrides(mini_root, **{"train.max_steps": 1, "val.render": False})])   # T'×6 map
    six = MotionTokenizer.from_checkpoint(tmp_path / "rvq" / "six" / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match=r"columns=7 .* but tokenizer .*six.* has columns=6") as exc:
        load_mask_transformer(trained["ckpt"], six)
    assert str(trained["ckpt"]) in str(exc.value)


def test_generation_of_the_trained_model_fills_the_lengths(trained, tiny_upstream, mini_root):
    from models.tokenizer import MotionTokenizer
    from utils.tasks.mask import decode_base_layer, load_mask_transformer
    tok = MotionTokenizer.from_checkpoint(tiny_upstream["tokenizer"])
    model, _ = load_mask_transformer(trained["ckpt"], tok)
    t = torch.randn(2, 32)
    r = torch.randn(2, 1, 16)
    base = model.generate(t, r, r, torch.tensor([10, 12]), steps=2, generator=torch.Generator().manual_seed(0))
    assert base.shape == (2, 12, 7) and (base[0, :10] >= 0).all() and (base[0, 10:] == -1).all()
    assert decode_base_layer(tok, base).shape == (2, 48, 263)


@pytest.mark.parametrize("override, key", [
    ("model.guidance_scale=-1", "model.guidance_scale=-1"),
    ("model.steps=0", "model.steps=0"),
    ("model.topk_ratio=0", "model.topk_ratio=0"),
    ("model.topk_ratio=1.5", "model.topk_ratio=1.5"),
    ("upstream.exclude=self", "upstream.exclude='self'"),
    ("upstream.retrieval_k=0", "upstream.retrieval_k=0"),
])
def test_bad_settings_exit_2_with_one_line_naming_the_key(override, key, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--runs-root", str(tmp_path), override])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert key in err
    assert not (tmp_path / "mask").exists()                # nothing was created


def test_sample_lengths_outside_the_dataset_range_exit_2_naming_the_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--runs-root", str(tmp_path), "val.sample_prompts=[a person walks]", "val.sample_lengths=[240]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "val.sample_lengths=240" in err and "[36, 196]" in err


def test_missing_tokenizer_exits_2_with_the_fix(mini_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--runs-root", str(tmp_path), f"data.root={mini_root}", f"upstream.tokenizer={tmp_path}/none.pt"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none.pt" in err and "train_rvq.py" in err


def test_whole_body_ablation_refuses_a_part_level_retriever(mini_root, tiny_upstream, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--runs-root", str(tmp_path),
              *tiny_mask_overrides(mini_root, tiny_upstream, tmp_path / "c", **{"model.ablation": "whole_body_retrieval"})])
    assert exc.value.code == 2
    assert "model.part_level=false" in capsys.readouterr().err


@pytest.mark.parametrize("ablation", ["no_retrieval", "concat"])
def test_ablation_runs_train_and_record_their_upstream(ablation, mini_root, tiny_upstream, tmp_path):
    extra = {"model.ablation": ablation, "train.max_steps": 1, "train.val_every": 1}
    if ablation == "no_retrieval":
        extra["upstream.retriever"] = ""                  # no retriever needed without retrieval
    _run(["--runs-root", str(tmp_path), "--name", ablation,
          *tiny_mask_overrides(mini_root, tiny_upstream, tmp_path / "c", **extra)])
    ckpt = load_checkpoint(tmp_path / "mask" / ablation / "checkpoints" / "last.pt", stage="mask")
    assert ckpt["config"]["model"]["ablation"] == ablation
    assert ("retriever" in ckpt["extra"]["upstream"]) == (ablation != "no_retrieval")


def test_validation_with_an_evaluator_scores_generations_and_selects_by_fid(tiny_upstream, tmp_path):
    from datasets.mini import write_mini_dataset
    from tests.test_evaluation import _official_tiny_evaluator
    root = tmp_path / "mini100"                       # mini_root's val split has 2 entries: too few for top-3
    write_mini_dataset(root, num_motions=100, seed=1)
    ev = _official_tiny_evaluator(tmp_path)
    extra = {"val.evaluator": ev, "val.eval_batch_size": 3, "val.eval_batches": 1, "train.max_steps": 2}
    metrics = _run(["--runs-root", str(tmp_path), "--name", "ev",
                    *tiny_mask_overrides(root, tiny_upstream, tmp_path / "c", **extra)])
    assert {"val/fid", "val/top1", "val/top3", "val/mm_dist"} <= set(metrics)
    assert metrics["val/fid"] >= 0 and 0 <= metrics["val/top1"] <= metrics["val/top3"] <= 1
    best = load_checkpoint(tmp_path / "mask" / "ev" / "checkpoints" / "best.pt", stage="mask")
    assert best["best"]["metric"] == "val/fid"


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
MINI_UPSTREAM = {"tokenizer": REPO / "runs/rvq/mini/checkpoints/best.pt",
                 "retriever": REPO / "runs/retriever/mini/checkpoints/best.pt",
                 "evaluator": REPO / "runs/evaluator/mini/text_mot_match/model/finest.tar"}


@pytest.mark.slow
def test_mini_generations_score_r_precision_well_above_chance(tmp_path):
    """configs/mini/mask.yaml trained on data/mini (upstreams from the README's mini commands), then its base-layer
    generations on the mini test split through the mini evaluator: top-3 R-precision at least 3× chance (3/32)."""
    needed = [REPO / "data/mini/train.txt", MINI_UPSTREAM["tokenizer"], MINI_UPSTREAM["retriever"]]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"needs the mini dataset and the mini tokenizer / retriever / evaluator runs: {missing}")
    import json
    from utils.tasks.mask import evaluate_mask_checkpoint
    _run(["--runs-root", str(tmp_path), "--name", "mini", f"data.root={REPO / 'data/mini'}",
          f"upstream.tokenizer={MINI_UPSTREAM['tokenizer']}", f"upstream.retriever={MINI_UPSTREAM['retriever']}",
          "val.evaluator="])
    ckpt = tmp_path / "mask" / "mini" / "checkpoints" / "best.pt"
    if not MINI_UPSTREAM["evaluator"].is_file():
        pytest.skip(f"needs the mini evaluator {MINI_UPSTREAM['evaluator']} (python train_evaluator.py)")
    report = evaluate_mask_checkpoint(ckpt, str(MINI_UPSTREAM["evaluator"]), split="test", replications=1)
    gen = report["metrics"]["mask (base layer)"]
    gt = report["metrics"]["gt"]
    summary = {k: gen[k]["mean"] for k in gen} | {f"gt_{k}": gt[k]["mean"] for k in gt}
    print("mini mask stage (base layer):", json.dumps(summary))
    assert gen["R_precision_top3"]["mean"] > 3 * 3 / 32
    assert gen["R_precision_top1"]["mean"] > 3 * 1 / 32
