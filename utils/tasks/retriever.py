"""The retriever stage: training task, database build and retrieval evaluation (paper §2.1, reference §6.4, §8).

    RetrieverStageConfig                          data / model / train / retriever blocks (configs/*/retriever.yaml)
    RetrieverTask(cfg, val_set)                   the TrainTask of utils.training.Trainer
    load_retriever(ckpt_path, device)             BMMRetriever rebuilt from its checkpoint alone (training-side
                                                  tools; generation queries through models.retrieval_database)
    build_database(ckpt_path, data_cfg, split="train") -> RetrievalDatabase   (saved next to the checkpoint)
    evaluate_retriever(ckpt_path, data_cfg, split="test", protocols=(...), device="cpu") -> {protocol: metrics}
    retrieval_markdown(results, title) -> str     a labelled markdown table of those metrics
    write_retrieval_report(ckpt_path, data_cfg, out_dir, split="val") -> (md, json)   all protocols, one split

Training (reference §6.4): Adam, base lr 1e-5, with lr factors motion ×10 / text ×1 / heads ×10 (`param_groups`),
cosine annealing (the paper configs: `train.cosine_length: 2`, the official T_max of twice the run, so the rate ends
at half the base), batch 128, 200 epochs. The data is the "text" dataset with the **raw** Std (data.feat_bias 1,
reference §1.5). The momentum EMA and the enqueue of the step's keys run in `after_optimizer_step`, after every
optimizer step. With gradient accumulation each micro-batch's keys are enqueued in order.

Validation runs every `train.val_every` steps and/or `train.val_every_epochs` epochs (the paper configs: every
epoch) on the **val** split. Each val entry contributes its first caption and its
full motion; the protocol is "guo" (TMR protocol (d): batches of 32, for speed). The best checkpoint maximises
val/R01_sum = t2m/R01 + m2t/R01. A val split with fewer than 32 entries falls back to protocol "normal" with a
warning (write_retrieval_report and eval_t2m.py skip "guo" on such a split and say why).
After training, train_retriever.py scores the kept checkpoint on val under all five protocols, TMR's four and the
paper's Table 3 protocol "table3" (`write_retrieval_report`: <run>/retrieval_val.md and .json).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from datasets.motion_dataset import DataConfig, MotionTextDataset, build_dataset
from datasets.registry import DATASETS, is_procedural
from models.retrieval_database import RetrievalDatabase, RetrievalQueryEncoder, default_database_path
from models.retriever import BMMRetriever, RetrieverConfig, RetrieverError
from models.text_encoders import TEXT_ENCODERS
from utils.checkpoint import load_model
from utils.config import ConfigError, bad_value, check_choice
from utils.markdown import markdown_table
from utils.retrieval_metrics import (GUO_BATCH, NSIM_SIZE, PROTOCOLS, protocol_guo, protocol_normal,
                                     retrieval_protocols)
from utils.training import TrainConfig, TrainTask

log = logging.getLogger("remomask.retriever")
_MOD = "utils/tasks/retriever.py"


@dataclass
class RetrieverRunConfig:
    motion_lr_factor: float = 10.0   # reference §6.4 (× train.lr)
    text_lr_factor: float = 1.0      # reference §6.4
    head_lr_factor: float = 10.0     # reference §6.4
    val_protocol: str = "guo"        # TMR protocol (d) on val, batches of 32 (reference §8); "normal" for tiny splits
    build_database: bool = True      # build the retrieval database from the train split after training
    final_eval: bool = True          # after training: kept checkpoint on val, TMR's 4 + table3 (retrieval_val.md)
    database_batch_size: int = 64    # encoding batch of the database build / evaluation (no effect on results)


def _retriever_data() -> DataConfig:
    return DataConfig(feat_bias=1.0)   # reference §1.5: Part_TMR normalises with the raw Std


def _retriever_train() -> TrainConfig:
    return TrainConfig(batch_size=128, epochs=200, lr=1e-5, optimizer="adam", schedule="cosine",
                       betas=[0.9, 0.999], weight_decay=0.0)   # reference §6.4 (Adam defaults), paper §2.1


@dataclass
class RetrieverStageConfig:
    data: DataConfig = field(default_factory=_retriever_data)
    model: RetrieverConfig = field(default_factory=RetrieverConfig)
    train: TrainConfig = field(default_factory=_retriever_train)
    retriever: RetrieverRunConfig = field(default_factory=RetrieverRunConfig)

    def check_values(self, prefix: str = "") -> None:
        """Run by utils.config on loading: `check_stage_config`."""
        check_stage_config(self, prefix)


def check_stage_config(cfg: RetrieverStageConfig, prefix: str = "") -> None:
    """Enumerated choices, the model's own rules and the data ↔ model dataset match, as one-line ConfigErrors naming
    the key (run by utils.config on loading, and by RetrieverTask)."""
    from models.projection_head import PROJECTION_HEADS
    from models.retriever import SIMILARITIES

    m = cfg.model
    check_choice(f"{prefix}model.dataset", m.dataset, DATASETS)
    check_choice(f"{prefix}model.text_encoder", m.text_encoder, TEXT_ENCODERS)
    check_choice(f"{prefix}model.text_pooling", m.text_pooling, ("mean", "cls"))
    check_choice(f"{prefix}model.projection_head", m.projection_head, PROJECTION_HEADS)
    check_choice(f"{prefix}model.similarity", m.similarity, SIMILARITIES)
    check_choice(f"{prefix}model.loss_reduction", m.loss_reduction, ("mean", "sum"))
    check_choice(f"{prefix}retriever.val_protocol", cfg.retriever.val_protocol, ("guo", "normal"))
    if cfg.retriever.database_batch_size < 1:
        raise bad_value(f"{prefix}retriever.database_batch_size", cfg.retriever.database_batch_size, "an integer >= 1")
    try:
        m.validate()
    except RetrieverError as err:
        text = str(err).removeprefix("models/retriever.py: ")
        found = re.search(r"model\.\w+", text)
        raise ConfigError(f"{prefix}{text}" if text.startswith("model.") else text,
                          key=f"{prefix}{found.group(0)}" if found else None) from None
    if cfg.data.dataset != m.dataset:
        raise ConfigError(f"{prefix}data.dataset={cfg.data.dataset!r} but {prefix}model.dataset={m.dataset!r}; set "
                          f"both to the same dataset", key=f"{prefix}model.dataset")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)     # MoCo: batches never straddle the queue's end
    if m.queue_size % (cfg.train.batch_size * world):
        per = f" × {world} processes" if world > 1 else ""
        raise ConfigError(f"{prefix}train.batch_size={cfg.train.batch_size}{per} does not divide "
                          f"{prefix}model.queue_size={m.queue_size}: expected a (global) batch size that divides the "
                          f"queue size, e.g. train.batch_size={_divisor_below(m.queue_size // world, cfg.train.batch_size)}",
                          key=f"{prefix}train.batch_size")


def check_stage_paths(cfg: RetrieverStageConfig, prefix: str = "") -> None:
    """The file system side of the config (train_retriever.py runs it right after loading, before any data): a
    `model.text_path` must be a Hugging Face model folder. Not part of check_values, so a config names paths of
    another machine and still loads (tests, --help)."""
    m = cfg.model
    if m.text_path and not m.text_tiny:
        folder = Path(m.text_path)
        if not (folder / "config.json").is_file():
            what = "does not exist" if not folder.exists() else "has no config.json"
            raise ConfigError(f"{prefix}model.text_path={m.text_path!r}: {what}; expected a local Hugging Face model "
                              f"folder (with config.json) of the {m.text_encoder} text tower, or \"\" for the default",
                              key=f"{prefix}model.text_path")


def _divisor_below(n: int, b: int) -> int:
    """The largest divisor of n that is <= b (at least 1)."""
    return next((d for d in range(min(b, n), 0, -1) if n % d == 0), 1)



# ------------------------------------------------------------------------------------------------------------------
# Embedding a split
# ------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def embed_split(retriever: BMMRetriever, dataset: MotionTextDataset,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Text and motion embeddings of every entry of a split (deterministic: full motions, no random crop).

    Each entry contributes its first caption (TMR protocols: "the first annotation", reference §8) and its full
    motion, cropped to the model's max_frames. Returns (text_emb (N, D), motion_emb (N, D), captions, ids).
    """
    entries = list(dataset.corpus.entries)
    was_training = retriever.training
    retriever.eval()
    motion = retriever.encode_entries(dataset, entries, batch_size)
    captions = [e.captions[0].caption for e in entries]
    text = torch.cat([retriever.encode_text(captions[s:s + batch_size]).cpu()
                      for s in range(0, len(captions), batch_size)])
    retriever.train(was_training)
    return text.numpy(), motion.numpy(), captions, [e.key for e in entries]


# ------------------------------------------------------------------------------------------------------------------
# The training task
# ------------------------------------------------------------------------------------------------------------------

class RetrieverTask(TrainTask):
    """BMM training of the part-level retriever (utils.training.TrainTask)."""
    stage = "retriever"
    best_metric = "val/R01_sum"
    broadcast_buffers = False   # the queues are kept identical on every rank by all-gathering the keys
    best_mode = "max"

    def __init__(self, cfg: RetrieverStageConfig, val_set: MotionTextDataset | None = None):
        check_stage_config(cfg)
        if cfg.data.feat_bias != 1.0:
            log.warning("data.feat_bias=%s: the reference retriever uses the raw Std (feat_bias 1, reference §1.5)",
                        cfg.data.feat_bias)
        self.cfg = cfg
        self.model = BMMRetriever(cfg.model)
        self.model.check_batch_size(cfg.train.batch_size)
        self.val_set = val_set

    def training_step(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        return model(batch)                     # through the (DDP-wrapped) forward: L_BMM and its logs

    def param_groups(self) -> list[dict]:
        r = self.cfg.retriever
        return self.model.param_groups(r.motion_lr_factor, r.text_lr_factor, r.head_lr_factor)

    def after_optimizer_step(self, step: int) -> None:
        self.model.after_optimizer_step()        # EMA (Eqs. 1-2), then enqueue this step's momentum keys

    def extra_state(self) -> dict:
        """The text encoder this retriever embeds captions with (`TextEncoderConfig.identity()`) and the
        fingerprint of the weights saved beside it (`BMMRetriever.weights_fingerprint`)."""
        return {"text_encoder": self.cfg.model.text_encoder_config().identity(),
                "fingerprint": self.model.weights_fingerprint()}   # read by the query encoder without the weights

    def validate(self, loader) -> dict[str, float]:
        """Retrieval metrics on the val split (the loader's random crops are not used: full motions)."""
        if self.val_set is None:
            return {}
        text, motion, _, ids = embed_split(self.model, self.val_set, self.cfg.retriever.database_batch_size)
        if self.cfg.retriever.val_protocol == "guo" and len(ids) >= GUO_BATCH:
            metrics = protocol_guo(text, motion, ids)
        else:
            if self.cfg.retriever.val_protocol == "guo" and not getattr(self, "_fallback_logged", False):
                self._fallback_logged = True        # once per run; the same rule as write_retrieval_report / eval_t2m
                log.warning("retriever.val_protocol='guo' %s: validating with protocol 'normal' (all %d entries) "
                            "instead", guo_too_small(len(ids), "val"), len(ids))
            metrics = protocol_normal(text, motion)
        out = {f"val/{k}": float(v) for k, v in metrics.items()}
        out["val/R01_sum"] = out["val/t2m/R01"] + out["val/m2t/R01"]
        return out


# ------------------------------------------------------------------------------------------------------------------
# Checkpoint-based tools: load, database, evaluation
# ------------------------------------------------------------------------------------------------------------------

def load_retriever(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[BMMRetriever, dict]:
    """(retriever in eval mode, the checkpoint's config dict) from a `retriever` checkpoint."""
    model, ckpt = load_model(ckpt_path, BMMRetriever, RetrieverConfig, stage="retriever", device=device)
    return model, ckpt["config"]


def _data_for(ckpt_config: dict, data_cfg: DataConfig, ckpt_path) -> DataConfig:
    """The user's data config with the normalisation the retriever was trained with; refuses another dataset."""
    trained = ckpt_config.get("data", {})
    model_ds = ckpt_config["model"].get("dataset", "t2m")
    if data_cfg.dataset != model_ds:
        raise RetrieverError(f"{_MOD}: retriever {ckpt_path} was trained on dataset {model_ds!r} but "
                             f"data.dataset={data_cfg.dataset!r}; use a retriever of that dataset")
    bias = float(trained.get("feat_bias", 1.0))
    if data_cfg.feat_bias != bias:
        log.info("using feat_bias=%s of retriever %s (data config had %s)", bias, ckpt_path, data_cfg.feat_bias)
    return dataclasses.replace(data_cfg, feat_bias=bias)


def build_database(ckpt_path: str | Path, data_cfg: DataConfig, split: str = "train", device: str = "cpu",
                   out_path: str | Path | None = None, save: bool = True, batch_size: int = 64,
                   progress: bool = True, retriever: tuple[BMMRetriever, dict] | None = None,
                   dataset: MotionTextDataset | None = None) -> RetrievalDatabase:
    """Encode `split` with the retriever of `ckpt_path` and save it to `default_database_path(ckpt_path)`
    (or `out_path`). One row per caption per entry (reference §6.3).

    `retriever` = (model, config) already loaded from `ckpt_path` and `dataset` (that split, built with the
    retriever's normalisation) avoid loading either again."""
    retriever, config = retriever or load_retriever(ckpt_path, device)
    data_cfg = _data_for(config, data_cfg, ckpt_path)
    dataset = dataset or build_dataset(data_cfg, split, "text")
    db = RetrievalDatabase.build(retriever, dataset, batch_size=batch_size, checkpoint=str(ckpt_path),
                                 progress=progress)
    if save:
        path = Path(out_path) if out_path else default_database_path(ckpt_path)
        db.save(path)
        log.info("retrieval database: %d rows (%d motions) from %s/%s -> %s", len(db), db.num_motions,
                 data_cfg.root, split, path)
    return db


def evaluate_retriever(ckpt_path: str | Path, data_cfg: DataConfig, split: str = "test",
                       protocols: Sequence[str] = PROTOCOLS, device: str = "cpu",
                       sentence_encoder=None, nsim_ids: Sequence[str] | None = None,
                       batch_size: int = 64, retriever: tuple[BMMRetriever, dict] | None = None,
                       dataset: MotionTextDataset | None = None) -> dict[str, dict[str, float]]:
    """Retrieval protocols (TMR's four and the paper's "table3", reference §8) of a retriever checkpoint on one split.

    Each entry contributes its first caption and its full motion. "threshold" and "nsim" (without `nsim_ids`) use
    caption similarities from `sentence_encoder` (default all-MiniLM-L6-v2, see utils.retrieval_metrics).
    Returns {protocol: {"t2m/R01": ..., "m2t/MedR": ...}}. `retriever` = (model, config) and `dataset` as in
    `build_database`.
    """
    retriever, config = retriever or load_retriever(ckpt_path, device)
    data_cfg = _data_for(config, data_cfg, ckpt_path)
    dataset = dataset or build_dataset(data_cfg, split, "text")
    if nsim_ids is None:
        nsim_file = Path(data_cfg.root) / "nsim_test.txt"
        if "nsim" in protocols and split == "test" and nsim_file.is_file():
            from utils.retrieval_metrics import read_nsim_list
            nsim_ids = read_nsim_list(str(nsim_file))
    text, motion, captions, ids = embed_split(retriever, dataset, batch_size)
    return retrieval_protocols(text, motion, captions, ids, protocols=protocols, sentence_encoder=sentence_encoder,
                               nsim_ids=nsim_ids)


RETRIEVAL_COLUMNS = ("R01", "R02", "R03", "R05", "R10", "MedR")


def retrieval_markdown(results: dict[str, dict[str, float]], title: str = "Retriever", note: str = "") -> str:
    """A markdown table: one row per protocol and direction, columns R@1..R@10 and MedR."""
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    header = ["protocol", "direction", *(c.replace("R0", "R@").replace("R10", "R@10") for c in RETRIEVAL_COLUMNS)]
    rows = ([proto, "text→motion" if direction == "t2m" else "motion→text",
             *("–" if metrics.get(f"{direction}/{c}") is None else f"{metrics[f'{direction}/{c}']:.2f}"
               for c in RETRIEVAL_COLUMNS)]
            for proto, metrics in results.items() for direction in ("t2m", "m2t"))
    return "\n".join(lines + markdown_table(header, rows)) + "\n"


def guo_too_small(num_entries: int, split: str) -> str:
    """Why protocol guo cannot run on a split of `num_entries` entries (the one wording of every path)."""
    return f"needs at least one batch of {GUO_BATCH} entries; the {split} split has {num_entries}"


def guo_skip_reason(ckpt_path: str | Path, data_cfg: DataConfig, split: str) -> str | None:
    """None when protocol guo can score `split` with this retriever's data settings, else why not."""
    _, config = load_retriever(ckpt_path, "cpu")
    n = len(build_dataset(_data_for(config, data_cfg, ckpt_path), split, "text").corpus.entries)
    return None if n >= GUO_BATCH else guo_too_small(n, split)


def write_retrieval_report(ckpt_path: str | Path, data_cfg: DataConfig, out_dir: str | Path, split: str = "val",
                           protocols: Sequence[str] = PROTOCOLS, device: str = "cpu", batch_size: int = 64,
                           num_entries: int | None = None, sentence_encoder=None,
                           retriever: tuple[BMMRetriever, dict] | None = None,
                           dataset: MotionTextDataset | None = None) -> tuple[Path, Path]:
    """Score a retriever checkpoint on `split` under the retrieval `protocols` (`evaluate_retriever`) and write
    `<out_dir>/retrieval_<split>.md` and `.json` (atomically). Returns (md path, json path).

    "guo" needs one batch of 32 entries: on a smaller split it is skipped, shown as "–" rows and explained under the
    table (and under "skipped" in the JSON). `num_entries`: the split's entry count when the caller knows it.
    """
    import json

    from utils.atomic import atomic_write_text

    retriever = retriever or load_retriever(ckpt_path, device)
    if num_entries is None:
        dataset = dataset or build_dataset(_data_for(retriever[1], data_cfg, ckpt_path), split, "text")
        num_entries = len(dataset.corpus.entries)
    skipped = {}
    if "guo" in protocols and num_entries < GUO_BATCH:
        skipped["guo"] = guo_too_small(num_entries, split)
    run_protocols = tuple(p for p in protocols if p not in skipped)
    results = evaluate_retriever(ckpt_path, data_cfg, split=split, protocols=run_protocols, device=device,
                                 sentence_encoder=sentence_encoder, batch_size=batch_size, retriever=retriever,
                                 dataset=dataset) if run_protocols else {}
    table = {p: results.get(p, {}) for p in protocols}
    notes = [f"Checkpoint `{ckpt_path}`, {split} split ({num_entries} entries, first caption each), data "
             f"`{data_cfg.root}`."]
    if is_procedural(data_cfg.root):          # the folder's dataset_info.json flag, never its name
        notes.append("Mini dataset (procedural): the numbers are a smoke test, never comparable to paper tables.")
    if "nsim" in run_protocols:
        notes.append(f"nsim: {min(NSIM_SIZE, num_entries)} mutually dissimilar entries chosen from caption "
                     f"similarities (TMR's nsim_test.txt lists test entries only).")
    if "table3" in run_protocols:
        notes.append("table3: the paper's Table 3 protocol (official Part_TMR test): the whole split, identical "
                     "captions count as hits; not comparable to TMR's protocols.")
    notes += [f"{p}: skipped ({why})." for p, why in skipped.items()]
    out_dir = Path(out_dir)
    md, js = out_dir / f"retrieval_{split}.md", out_dir / f"retrieval_{split}.json"
    atomic_write_text(md, retrieval_markdown(table, f"Retriever on the {split} split (retrieval protocols)",
                                             note="\n".join(f"- {n}" for n in notes)))
    report = {"checkpoint": str(ckpt_path), "split": split, "num_entries": num_entries, "data_root": data_cfg.root,
              "dataset": data_cfg.dataset, "protocols": results, "skipped": skipped}
    atomic_write_text(js, json.dumps(report, indent=2) + "\n")
    return md, js
