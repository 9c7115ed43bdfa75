"""Train the standard T2M evaluator (Guo et al. 2022) on a dataset in the HumanML3D layout.

    python train_evaluator.py                                   # mini dataset, configs/mini/evaluator.yaml
    python train_evaluator.py --config configs/humanml3d/evaluator.yaml data.root=data/HumanML3D

Recipe of the evaluator training code of Guo et al. 2022 (contrastive loss, margin 10, shifted negatives; Adam 1e-4; batch 32; clip 0.5); the
movement encoder is first pre-trained with a reconstruction head and frozen (loss.movement_mode=pretrain) or trained
jointly (joint). Writes runs/evaluator/<name>/ (config.yaml, checkpoints/, tb/) and the official layout
runs/evaluator/<name>/text_mot_match/{model/finest.tar, meta/{mean,std}.npy, opt.txt}, which
`eval_t2m.py` loads with evaluator.path=runs/evaluator/<name>/text_mot_match/model/finest.tar.
For paper-comparable numbers use the released evaluator instead.
"""
from __future__ import annotations

import contextlib
import sys


def main(argv=None) -> int:
    from datasets.motion_dataset import build_dataset, collate
    from utils import distributed
    from utils.config import check_stage_run_dir, load_stage_config, save_config, stage_parser
    from utils.run_dir import RunDir
    from utils.tasks.evaluator import (EvaluatorStageConfig, EvaluatorTask, pretrain_movement_encoder,
                                       replace_model_dim)
    from utils.training import Trainer, seed_everything, select_device

    parser = stage_parser(EvaluatorStageConfig, "evaluator", argv, description=__doc__)
    args = parser.parse_args(argv)
    cfg = load_stage_config(parser, EvaluatorStageConfig, "evaluator", args, check_run_dir=False)  # every setting
    cfg = replace_model_dim(cfg)
    check_stage_run_dir(parser, "evaluator", args, cfg)      # a --resume is compared with the adjusted config
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device)

    train_set = build_dataset(cfg.data, "train", "eval")
    val_set = build_dataset(cfg.data, "val", "eval", vectorizer=train_set.vectorizer)
    if train_set.vectorizer.dim != cfg.model.dim_word:
        raise SystemExit(f"train_evaluator.py: the GloVe vectors in {train_set.vectorizer.glove_dir} are "
                         f"{train_set.vectorizer.dim}-d but model.dim_word={cfg.model.dim_word}; set "
                         f"model.dim_word={train_set.vectorizer.dim}")
    task = EvaluatorTask(cfg, seed=cfg.train.seed)
    # the folder is created only now, when nothing that the config or the data can refuse is left
    run = RunDir("evaluator", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    main_rank = distributed.is_main_process()
    if cfg.loss.movement_mode == "pretrain" and run.resuming:
        task.model.freeze_movement()          # pre-trained before the first run; the optimizer excludes it
    elif cfg.loss.movement_mode == "pretrain":
        if main_rank:
            save_config(cfg, run.config_path)     # now: the movement pre-training runs before the Trainer writes it
        with _pretrain_writer(run, main_rank) as writer:
            losses = pretrain_movement_encoder(task.model, train_set, cfg, collate, device, writer=writer,
                                               progress=main_rank)
        if losses and main_rank:
            print(f"movement encoder pre-training: reconstruction loss {losses[0]:.4f} -> {losses[-1]:.4f} "
                  f"({len(losses)} steps); encoder frozen")
    Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=cfg).fit()
    after_training(run, cfg, train_set.mean, train_set.std)
    return 0


def _pretrain_writer(run, main_rank: bool):
    """Tensorboard writer of the pre-training losses (<run>/tb/pretrain) on rank 0; nothing on the other ranks."""
    if not main_rank:
        return contextlib.nullcontext(None)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.tb_dir / "pretrain"))


def after_training(run, cfg, mean, std):
    """Rank 0 only (the Trainer has ended the process group; no other rank reads the export): write the kept
    checkpoint in the official layout. Returns the path of finest.tar (None on other ranks)."""
    from utils import distributed
    from utils.checkpoint import load_checkpoint
    from utils.tasks.evaluator import export_official

    if not distributed.is_main_process():
        return None
    ckpt = load_checkpoint(run.final_checkpoint, stage="evaluator")
    final = export_official(run.path, ckpt["model"], mean, std, cfg,
                            epoch=int(ckpt.get("epoch", 0)), iteration=int(ckpt.get("step", 0)),
                            optimizer_state=ckpt.get("optimizer"))
    print(f"evaluator in the official layout: {final}\n"
          f"evaluate with: python eval_t2m.py --stage gt evaluator.path={final}")
    return final


if __name__ == "__main__":
    from utils.script import run_script

    sys.exit(run_script(main, prog="train_evaluator.py"))
