"""Train the 2D retrieval-augmented masked transformer (MaskTransformer, paper §2.5) on the base token layer.

    python train_mask_transformer.py --config configs/mini/mask.yaml [--name NAME] [--resume | --overwrite] [key=value ...]
    python train_mask_transformer.py --config configs/humanml3d/mask.yaml data.root=/path/to/HumanML3D \
        upstream.tokenizer=runs/rvq/humanml3d/checkpoints/best.pt upstream.retriever=runs/retriever/humanml3d/checkpoints/best.pt

Needs a trained tokenizer (train_rvq.py) and retriever with its database (train_retriever.py). The tokens, text
features and retrieved neighbours of the train and val splits are computed once and cached under
upstream.cache_dir (default <data.root>/.cache). Ablations (paper Table 4): model.ablation=no_retrieval | concat |
no_rag_cfg | whole_body_retrieval (the last needs a retriever trained with model.part_level=false). Outputs go to
runs/mask/<name>/: config.yaml, checkpoints/{last,best}.pt, tb/, and samples.pt when val.sample_prompts is set.
A tokenizer or retriever other than the one a run was trained on is refused on --resume (exit code 2).
"""
from __future__ import annotations

import sys

from utils import distributed
from utils.checkpoint import CheckpointError
from utils.config import stage_cli
from utils.run_dir import RunDir
from utils.tasks.generator_data import GeneratorDataError, GeneratorDataset, collate_generator
from utils.tasks.mask import MaskStageConfig, MaskTask, write_samples
from utils.training import Trainer, seed_everything


def main(argv=None) -> dict:
    cfg, args = stage_cli(MaskStageConfig, "mask", argv, description=__doc__)   # every setting checked here
    seed_everything(cfg.train.seed)               # the model's initial weights (built in the task's setup)
    train_set = GeneratorDataset(cfg.data, "train", seed=cfg.train.seed)
    val_set = GeneratorDataset(cfg.data, "val", seed=cfg.train.seed)
    task = MaskTask(cfg, train_set, val_set)
    run = RunDir("mask", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    try:
        trainer = Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate_generator, config=cfg)
    except (CheckpointError, GeneratorDataError) as err:      # upstream missing or not the run's: one line, exit 2
        print(f"train_mask_transformer.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    metrics = trainer.fit()
    if distributed.is_main_process() and cfg.val.sample_prompts:
        print(f"train_mask_transformer.py: samples of val.sample_prompts: {write_samples(task, run)}")
    return metrics


if __name__ == "__main__":
    main()
