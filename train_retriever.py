"""Train the Part-Level BMM retriever (paper §2.1), then build the retrieval database of the train split.

    python train_retriever.py --config configs/mini/retriever.yaml [key=value ...]
    python train_retriever.py --config configs/humanml3d/retriever.yaml data.root=<HumanML3D> \
        model.text_path=<local distilbert-base-uncased folder>
    python train_retriever.py --build-db runs/retriever/mini/checkpoints/best.pt [--config ...] [data.root=...]

The run goes to runs/retriever/<name>/ (config.yaml, checkpoints/{last,best}.pt, tb/). After training, the database
of the train split is written next to the checkpoint that was kept (best.pt when validation ran):
checkpoints/best_database.pt. `--build-db CKPT` only builds the database of an existing checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from datasets.motion_dataset import build_dataset, collate
from utils.config import stage_cli
from utils.run_dir import RunDir
from utils.tasks.retriever import RetrieverStageConfig, RetrieverTask, build_database
from utils.training import Trainer, configure_logging


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--build-db", metavar="CKPT", default=None)
    pre.add_argument("--db-split", default="train")
    known, rest = pre.parse_known_args(argv)
    cfg, args = stage_cli(
        RetrieverStageConfig, "retriever", rest,
        description="Train the Part-Level BMM retriever (paper §2.1) and build its retrieval database.\n"
                    "Extra flags: --build-db CKPT  only build the database of an existing retriever checkpoint\n"
                    "             (written next to it as <stem>_database.pt); --db-split SPLIT (default train).")
    configure_logging()
    if known.build_db:
        build_database(known.build_db, cfg.data, split=known.db_split, device=cfg.train.device
                       if cfg.train.device != "auto" else "cpu", batch_size=cfg.retriever.database_batch_size)
        return 0

    train_set = build_dataset(cfg.data, "train", "text")
    val_set = build_dataset(cfg.data, "val", "text")
    task = RetrieverTask(cfg, val_set=val_set)
    run = RunDir("retriever", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=cfg).fit()
    if cfg.retriever.build_database:
        device = str(task.device)
        build_database(run.final_checkpoint, cfg.data, split="train", device=device,
                       batch_size=cfg.retriever.database_batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
