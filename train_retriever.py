"""Train the Part-Level BMM retriever (paper §2.1), then build the retrieval database of the train split.

    python train_retriever.py --config configs/mini/retriever.yaml [key=value ...]
    python train_retriever.py --config configs/humanml3d/retriever.yaml data.root=<HumanML3D> \
        model.text_path=<local distilbert-base-uncased folder>
    python train_retriever.py --build-db runs/retriever/mini/checkpoints/best.pt [--config ...] [data.root=...]

The run goes to runs/retriever/<name>/ (config.yaml, checkpoints/{last,best}.pt, tb/). During training the val split
is scored with TMR protocol (d) (batches of 32; retriever.val_protocol). After training, the database of the train
split is written next to the checkpoint that was kept (best.pt when validation ran): checkpoints/best_database.pt,
and that checkpoint is scored on the val split under TMR's four protocols and the paper's Table 3 protocol
("table3"): retrieval_val.md / retrieval_val.json
in the run dir (retriever.final_eval=false skips it). `--build-db CKPT` only builds the database of an existing
checkpoint.
"""
from __future__ import annotations

import sys

from datasets.motion_dataset import build_dataset, collate
from utils import distributed
from utils.config import ConfigError, load_stage_config, stage_parser
from utils.run_dir import RunDir
from utils.tasks.retriever import (RetrieverStageConfig, RetrieverTask, build_database, check_stage_paths,
                                   load_retriever, write_retrieval_report)
from utils.training import Trainer, configure_logging, seed_everything, select_device


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(RetrieverStageConfig, "retriever", argv, description=__doc__)
    parser.add_argument("--build-db", metavar="CKPT", default=None,
                        help="only build the retrieval database of this retriever checkpoint (written next to it "
                             "as <stem>_database.pt); no training")
    parser.add_argument("--db-split", default="train", metavar="SPLIT",
                        help="split the --build-db database is built from (default: train)")
    args = parser.parse_args(argv)
    cfg = load_stage_config(parser, RetrieverStageConfig, "retriever", args, check_run_dir=not args.build_db)
    if not args.build_db:
        try:
            check_stage_paths(cfg)
        except ConfigError as err:
            parser.error(str(err))
    configure_logging()
    if args.build_db:
        if distributed.is_main_process():
            build_database(args.build_db, cfg.data, split=args.db_split, device=str(select_device(cfg.train.device)),
                           batch_size=cfg.retriever.database_batch_size)
        return 0

    seed_everything(cfg.train.seed)               # the model's initial weights (the Trainer seeds again for training)
    train_set = build_dataset(cfg.data, "train", "text")
    val_set = build_dataset(cfg.data, "val", "text")
    task = RetrieverTask(cfg, val_set=val_set)
    run = RunDir("retriever", args.name, args.runs_root, resume=args.resume, overwrite=args.overwrite)
    Trainer(task, cfg.train, run, train_set, val_set, collate_fn=collate, config=cfg).fit()
    after_training(run, cfg, str(task.device), train_set=train_set, val_set=val_set)
    return 0


def after_training(run: RunDir, cfg: RetrieverStageConfig, device: str = "cpu", train_set=None, val_set=None):
    """Rank 0 only (the Trainer has ended the process group; no other rank reads these files): the train-split
    database next to the kept checkpoint, then that checkpoint on val under every retrieval protocol (TMR + table3).
    The checkpoint is loaded once, and the splits the training already read are reused.
    Returns the path of retrieval_val.md (None when not written)."""
    if not distributed.is_main_process():
        return None
    ckpt = run.final_checkpoint
    if not (cfg.retriever.build_database or cfg.retriever.final_eval):
        return None
    retriever = load_retriever(ckpt, device)
    if cfg.retriever.build_database:
        build_database(ckpt, cfg.data, split="train", device=device, batch_size=cfg.retriever.database_batch_size,
                       retriever=retriever, dataset=train_set)
    if not cfg.retriever.final_eval:
        return None
    md, js = write_retrieval_report(ckpt, cfg.data, run.path, split="val", device=device,
                                    batch_size=cfg.retriever.database_batch_size, retriever=retriever,
                                    dataset=val_set, num_entries=None if val_set is None else
                                    len(val_set.corpus.entries))
    print(f"train_retriever.py: val retrieval (TMR protocols + table3) of {ckpt}: {md} ({js.name})")
    print(md.read_text())
    return md


if __name__ == "__main__":
    from utils.script import run_script

    sys.exit(run_script(main, prog="train_retriever.py"))
