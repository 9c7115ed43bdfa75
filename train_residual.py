"""Train the 2D residual transformer (paper §2.6, Eq. 16), or with --length-estimator the length estimator.

    python train_residual.py --config configs/mini/residual.yaml [--name NAME] [--resume | --overwrite] [key=value ...]
    python train_residual.py --config configs/mini/residual.yaml --length-estimator
    python train_residual.py --config configs/humanml3d/residual.yaml data.root=/path/to/HumanML3D \\
        upstream.tokenizer=runs/rvq/humanml3d/checkpoints/best.pt upstream.text.path=checkpoints/clip/ViT-B-32.pt

The frozen tokenizer (`upstream.tokenizer`, a train_rvq.py checkpoint) encodes every entry of the train and val
splits once and the frozen text encoder (`upstream.text`) every caption once; both are cached under
`upstream.cache_dir` (default <data.root>/.cache) and shared with the masked transformer stage. The residual
transformer trains on token-map crops; every train.val_every steps the val split reports the per-layer teacher-forced
loss / accuracy and the reconstruction errors of the decoded motions: the tokenizer's own (all ground-truth layers),
the ground-truth base layer alone, and the "upper bound" diagnostic (ground-truth base + generated residual layers),
which is not text-to-motion quality. Outputs go to runs/residual/<name>/ (runs/length_estimator/<name>/ with
--length-estimator, trained with the length_train block): config.yaml, checkpoints/{last,best}.pt, tb/.
A missing tokenizer, or one other than the run was trained on (--resume), stops with one line (exit code 2).
"""
from __future__ import annotations

import sys

from utils.checkpoint import CheckpointError
from utils.config import load_stage_config, stage_parser
from utils.run_dir import RunDir
from utils.tasks.generator_data import GeneratorDataError, GeneratorDataset, collate_generator
from utils.tasks.residual import LengthEstimatorTask, LengthItems, ResidualStageConfig, ResidualTask, WholeEntries
from utils.training import Trainer, seed_everything


def main(argv=None) -> dict:
    parser = stage_parser(ResidualStageConfig, "residual", argv, description=__doc__)
    parser.add_argument("--length-estimator", action="store_true",
                        help="train the length estimator (length_model, length_train) instead of the residual "
                             "transformer; its run dir is <runs-root>/length_estimator/<name>")
    args = parser.parse_args(argv)
    stage = "length_estimator" if args.length_estimator else "residual"
    cfg = load_stage_config(parser, ResidualStageConfig, stage, args)        # every setting checked here (exit 2)
    train_cfg = cfg.length_train if args.length_estimator else cfg.train
    seed_everything(train_cfg.seed)
    train_gen = GeneratorDataset(cfg.data, "train", seed=train_cfg.seed)
    val_gen = GeneratorDataset(cfg.data, "val", seed=train_cfg.seed)
    if args.length_estimator:
        task = LengthEstimatorTask(cfg, train_gen, val_gen)
        train_set, val_set = LengthItems(train_gen), LengthItems(val_gen)
    else:
        task = ResidualTask(cfg, train_gen, val_gen)
        train_set, val_set = train_gen, WholeEntries(val_gen)
    run = RunDir(stage, args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    try:
        trainer = Trainer(task, train_cfg, run, train_set, val_set, collate_fn=collate_generator, config=cfg)
    except (CheckpointError, GeneratorDataError) as err:      # upstream missing or not the run's: one line, exit 2
        print(f"train_residual.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return trainer.fit()


if __name__ == "__main__":
    from utils.script import run_script

    sys.exit(run_script(main, prog="train_residual.py"))
