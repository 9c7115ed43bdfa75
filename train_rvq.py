"""Train the 2D residual VQ-VAE tokenizer (RVQVAE2D, paper §2.3).

    python train_rvq.py --config configs/mini/rvq.yaml [--name NAME] [--resume | --overwrite] [key=value ...]
    python train_rvq.py --config configs/humanml3d/rvq.yaml data.root=/path/to/HumanML3D

Every data.window_size-frame window of the train split (an epoch is all of them, as in the reference; normalised
with the feat_bias statistics) trains the tokenizer. Every train.val_every steps the val split is scored (MPJPE in
mm on recovered joints, feature L1, codebook usage) on all its windows, or on val.max_batches × train.batch_size of
them spread evenly over the split, and the best checkpoint by val MPJPE is kept. Outputs go to runs/rvq/<name>/: config.yaml,
checkpoints/{last,best}.pt, tensorboard events (tb/), and recon.png, a val motion next to its reconstruction.
"""
from __future__ import annotations

import sys

from datasets.motion_dataset import DatasetError, build_dataset, collate
from utils import distributed
from utils.config import stage_cli
from utils.run_dir import RunDir
from utils.script import one_line, run_script
from utils.tasks.rvq import RVQStageConfig, RVQTask, render_val_example, validation_windows
from utils.training import Trainer, seed_everything


def main(argv=None) -> dict:
    cfg, args = stage_cli(RVQStageConfig, "rvq", argv, description=__doc__)   # every setting checked here
    seed_everything(cfg.train.seed)
    train_set = build_dataset(cfg.data, "train", "window")
    val_set = validation_windows(cfg)
    task = RVQTask(cfg, train_set.mean, train_set.std)
    run = RunDir("rvq", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    metrics = Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=cfg).fit()
    after_training(run, cfg)
    return metrics


def after_training(run: RunDir, cfg: RVQStageConfig):
    """Rank 0 only (the Trainer has ended the process group): render a val motion next to its reconstruction."""
    if not distributed.is_main_process() or not cfg.val.render:
        return None
    try:
        png = render_val_example(run.final_checkpoint, cfg.data, run.path / "recon.png")
    except DatasetError as err:     # e.g. no val motion has a caption: the training itself succeeded
        print(f"train_rvq.py: warning: recon.png not drawn ({one_line(err)}); set val.render=false to skip it",
              file=sys.stderr)
        return None
    if png is not None:
        print(f"train_rvq.py: reconstruction of a val motion: {png}")
    return png


if __name__ == "__main__":
    sys.exit(run_script(main, prog="train_rvq.py"))
