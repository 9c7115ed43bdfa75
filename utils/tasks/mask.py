"""The masked-transformer stage (paper §2.5, Eq. 15): `MaskStageConfig`, `MaskTask`, checkpoint loading.

    MaskStageConfig                    data / model / upstream / train / val blocks (configs/*/mask.yaml)
    MaskTask(cfg, train_set, val_set)  the TrainTask of utils.training.Trainer
    load_mask_transformer(path, tokenizer, device)   a trained MaskTransformer, refused next to another tokenizer

Data (`utils.tasks.generator_data`): layer-0 tokens of the frozen tokenizer, cropped at token granularity, the frozen
text feature t and the retrieved (R_t, R_m) of each caption, all computed once and cached. The frozen tokenizer,
text encoder and retrieval are built in `setup(device)`, as task attributes (never in the optimizer or the model's
state dict); the model is built there too, with its token map (`token_map_config(tokenizer)`), `text_dim` (the
text encoder's width) and `retrieval_dim` (the database's) resolved, and the resolved config is what checkpoints
store. `upstream()` records the tokenizer's and the retriever's fingerprints: a run is not resumed, and a
checkpoint not loaded, next to other upstream weights.

Optimisation (reference.md §6.1 / §6.4): AdamW lr 2e-4, betas (0.9, 0.99), weight decay 1e-5, linear warm-up 2000
steps, step decay ×0.1 (MoMask milestone 50k; ReMoMask 1M, i.e. never within its schedule), batch 256 (paper §3 /
ReMoMask README; MoMask 64). Randomness of the masking, BERT corruption and condition dropout comes from a
generator seeded by (train.seed, step, rank), so a resumed run draws the same masks.

Validation (val split, never test) every `train.val_every` steps: masked-token loss and accuracy on val crops
(fixed draws), and, when `val.evaluator` names an existing evaluator file, generation on `val.eval_batches`
batches of the val split scored by `utils.evaluation.evaluate_t2m` (one replication, no MultiModality; the base
layer alone is decoded: residual levels are zero codes): `val/fid`, `val/top1..3`, `val/mm_dist`. The best
checkpoint minimises val FID when it is available, else val loss.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datasets.motion_dataset import DataConfig, build_dataset, get_spec
from models.mask_transformer import MaskTransformer, MaskTransformerConfig, token_map_config
from utils.checkpoint import (CheckpointError, check_upstream, load_checkpoint, load_model_state, tensor_fingerprint,
                              upstream_record)
from utils.config import ConfigError, bad_value, from_dict
from utils.tasks.generator_data import (FrozenUpstream, GeneratorDataError, GeneratorDataset,
                                        GeneratorUpstreamConfig, check_lengths, prepare_splits, trim_batch)
from utils.training import TrainConfig, TrainTask

log = logging.getLogger("remomask.mask")
_MOD = "utils/tasks/mask.py"


def _mask_train() -> TrainConfig:
    # reference.md §6.1 / §6.4: AdamW 2e-4, betas (0.9, 0.99), wd 1e-5, warm-up 2000, milestones, gamma 0.1;
    # paper §3: batch 256 (on 4 GPUs; accum_steps emulates it on one)
    return TrainConfig(batch_size=256, lr=2e-4, betas=[0.9, 0.99], weight_decay=1e-5, optimizer="adamw",
                       schedule="multistep", warmup_steps=2000, milestones=[50_000], gamma=0.1, epochs=500,
                       val_every=5000, ckpt_every=5000)


def _paper_upstream() -> GeneratorUpstreamConfig:
    from models.text_encoders import TextEncoderConfig
    return GeneratorUpstreamConfig(tokenizer="runs/rvq/humanml3d/checkpoints/best.pt",
                                   retriever="runs/retriever/humanml3d/checkpoints/best.pt",
                                   text=TextEncoderConfig(name="clip", path="checkpoints/clip/ViT-B-32.pt"))


@dataclass
class MaskValConfig:
    max_batches: int = 0          # val batches for loss / accuracy (0 = the whole val split)
    evaluator: str = ""           # T2M evaluator finest.tar; "" or a missing file = no generation metrics
    meta_dir: str = ""            # "" = next to the evaluator (models.evaluator.load_official_evaluator)
    eval_batches: int = 4         # val batches generated for FID / R-precision (fast, not the test protocol)
    eval_batch_size: int = 32     # reference.md §4: R-precision within batches of 32
    gen_steps: int = 0            # generation steps during validation (0 = model.steps)
    sample_prompts: list[str] = field(default_factory=list)   # after training: generate these (samples.pt)
    sample_lengths: list[int] = field(default_factory=list)   # frames, one per prompt, in the dataset's range


@dataclass
class MaskStageConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(root="data/HumanML3D"))
    model: MaskTransformerConfig = field(default_factory=MaskTransformerConfig)
    upstream: GeneratorUpstreamConfig = field(default_factory=_paper_upstream)
    train: TrainConfig = field(default_factory=_mask_train)
    val: MaskValConfig = field(default_factory=MaskValConfig)

    def check_values(self, prefix: str = "") -> None:
        check_stage_config(self, prefix)


def check_stage_config(cfg: MaskStageConfig, prefix: str = "") -> None:
    """Generation knobs, the model's own rules and the val settings, as one-line ConfigErrors naming the key."""
    m, v = cfg.model, cfg.val
    if isinstance(m.steps, bool) or m.steps < 1:
        raise bad_value(f"{prefix}model.steps", m.steps, "an integer >= 1 (generation iterations)")
    if not (isinstance(m.guidance_scale, (int, float)) and math.isfinite(m.guidance_scale)
            and m.guidance_scale >= 0):
        raise bad_value(f"{prefix}model.guidance_scale", m.guidance_scale,
                        "a number >= 0 (1 = conditional only, 0 = unconditional)")
    if not 0.0 < m.topk_ratio <= 1.0:
        raise bad_value(f"{prefix}model.topk_ratio", m.topk_ratio,
                        "a number in (0, 1] (the fraction of the vocabulary filtered out)")
    try:
        m.validate()
    except ValueError as err:
        text = str(err).removeprefix("models/mask_transformer.py: ").removeprefix("models/sampling.py: ")
        found = re.search(r"model\.\w+", text) or re.search(r"argument '(\w+)'", text)
        key = (found.group(0) if found.group(0).startswith("model.") else f"model.{found.group(1)}") if found else None
        raise ConfigError(f"{prefix}{text}", key=f"{prefix}{key}" if key else None) from None
    for key in ("max_batches", "eval_batches", "gen_steps"):
        if getattr(v, key) < 0:
            raise bad_value(f"{prefix}val.{key}", getattr(v, key), "an integer >= 0")
    if v.eval_batch_size < 3:
        raise bad_value(f"{prefix}val.eval_batch_size", v.eval_batch_size, "an integer >= 3 (R-precision top-3)")
    if len(v.sample_lengths) != len(v.sample_prompts):
        raise bad_value(f"{prefix}val.sample_lengths", list(v.sample_lengths),
                        f"one length per val.sample_prompts entry ({len(v.sample_prompts)})")
    try:
        check_lengths(list(v.sample_lengths) or [get_spec(cfg.data).pad_length], get_spec(cfg.data),
                      f"{prefix}val.sample_lengths")
    except GeneratorDataError as err:
        raise ConfigError(str(err), key=f"{prefix}val.sample_lengths") from None


# ----------------------------------------------------------------------------------------------------------------
# Token-map compatibility and loading
# ----------------------------------------------------------------------------------------------------------------
def check_token_map(model_cfg: MaskTransformerConfig, tokenizer, ckpt_path: str | Path,
                    tokenizer_path: str | Path) -> None:
    """Refuse a transformer whose token map (columns, codebook sizes) is not the tokenizer's, naming both files."""
    tm = token_map_config(tokenizer.model)
    mine = {"num_columns": model_cfg.num_columns, "num_groups": model_cfg.num_groups,
            "codebook_sizes": [int(k) for k in model_cfg.codebook_sizes]}
    if mine != tm:
        raise CheckpointError(f"mask transformer {ckpt_path} has token map columns={mine['num_columns']} codebook "
                              f"sizes {mine['codebook_sizes']}, but tokenizer {tokenizer_path} has columns="
                              f"{tm['num_columns']} codebook sizes {tm['codebook_sizes']}; use the tokenizer it was "
                              f"trained with")


def load_mask_transformer(path: str | Path, tokenizer, device="cpu", retriever_fingerprint: str | None = None,
                          retriever_path: str = "") -> tuple[MaskTransformer, dict]:
    """A trained MaskTransformer (eval mode) from its checkpoint alone, checked against `tokenizer` (a
    MotionTokenizer): another tokenizer's fingerprint, columns or codebook sizes are refused naming both files."""
    ckpt = load_checkpoint(path, stage="mask", map_location="cpu")
    cfg = from_dict(MaskTransformerConfig, (ckpt.get("config") or {}).get("model") or {}, source=f"{path}: config.model")
    check_token_map(cfg, tokenizer, path, tokenizer.path or "<in memory>")
    check_upstream(path, ckpt, "tokenizer", tokenizer.path or "<in memory>", tokenizer.fingerprint)
    if retriever_fingerprint is not None:
        check_upstream(path, ckpt, "retriever", retriever_path, retriever_fingerprint)
    model = MaskTransformer(cfg)
    load_model_state(model, ckpt["model"], path)
    return model.to(device).eval(), ckpt


def decode_base_layer(tokenizer, base: Tensor) -> Tensor:
    """Layer-0 tokens (B, T', C) (−1 outside the lengths) → raw features (B, 4T', D): the residual levels are zero
    codes (how the base layer alone is scored before the residual transformer exists)."""
    q = tokenizer.num_quantizers
    full = torch.full(base.shape + (q,), -1, dtype=torch.long, device=base.device)
    full[..., 0] = base
    return tokenizer.decode(full)


@torch.no_grad()
def generate_base(model: MaskTransformer, frozen: FrozenUpstream, spec, captions, lengths, motion_ids=None,
                  generator: torch.Generator | None = None, steps: int | None = None) -> Tensor:
    """Layer-0 tokens (B, max T', C) of `model` for captions and lengths in frames (checked against `spec`'s range),
    with the frozen text feature and retrieval (`motion_ids` excluded as in training; None = nothing)."""
    lengths = check_lengths(lengths, spec)
    device = next(model.parameters()).device
    t = frozen.encode_texts(captions).to(device)
    r_t = r_m = None
    if model.uses_retrieval:
        res = frozen.retrieve(captions, motion_ids)
        r_t, r_m = res.r_t.to(device), res.r_m.to(device)
    was_training = model.training
    model.eval()
    try:
        return model.generate(t, r_t, r_m, lengths // frozen.tokenizer.downsample, steps=steps, generator=generator)
    finally:
        model.train(was_training)


def base_layer_generate_fn(model: MaskTransformer, frozen: FrozenUpstream, spec, steps: int | None = None):
    """A `utils.evaluation.evaluate_t2m` generate function: base-layer generations decoded to raw features, drawing
    only from the driver's generator (re-seeded on the model's device)."""
    device = next(model.parameters()).device

    def generate_fn(batch, generator=None):
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else 0
        g = torch.Generator(device=device).manual_seed(seed)
        base = generate_base(model, frozen, spec, batch["caption"], batch["length"], batch.get("motion_id"), g, steps)
        return decode_base_layer(frozen.tokenizer, base).cpu(), batch["length"]

    return generate_fn


def evaluate_mask_checkpoint(path: str | Path, evaluator_path: str, split: str = "test", replications: int = 1,
                             device="cpu", data_root: str | None = None, meta_dir: str | None = None) -> dict:
    """Score a mask checkpoint's base-layer generations on `split` with `utils.evaluation.evaluate_t2m` (batches of
    32, no MultiModality; the residual levels are zero codes). Rebuilds everything from the checkpoint's config."""
    from models.evaluator import load_official_evaluator
    from utils.evaluation import EvalConfig, evaluate_t2m

    ckpt = load_checkpoint(path, stage="mask", map_location="cpu")
    cfg = from_dict(MaskStageConfig, ckpt["config"], source=f"{path}: config")
    if data_root:
        cfg.data.root = data_root
    frozen = FrozenUpstream.load(cfg.upstream, cfg.data.dataset, device, retrieval=cfg.model.ablation != "no_retrieval")
    model, _ = load_mask_transformer(path, frozen.tokenizer, device, None if not frozen.retrieval else
                                     frozen.query_encoder.weights_fingerprint(), cfg.upstream.retriever)
    evaluator = load_official_evaluator(evaluator_path, dataset=cfg.data.dataset, device=device, meta_dir=meta_dir)
    tok = frozen.tokenizer
    eval_set = build_dataset(cfg.data, split, "eval", stats=(tok.mean.numpy(), tok.std.numpy()))
    ecfg = EvalConfig(replications=replications, mm_mode="off")
    return evaluate_t2m(base_layer_generate_fn(model, frozen, get_spec(cfg.data)), eval_set, evaluator, ecfg,
                        label="mask (base layer)")


class _SpreadSubset(torch.utils.data.Subset):
    """A Subset that keeps the eval dataset's `denormalize` / `set_epoch` (what evaluate_t2m uses)."""

    def __getattr__(self, name):
        if name in ("denormalize", "set_epoch", "spec", "mean", "std"):
            return getattr(self.dataset, name)
        raise AttributeError(name)


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------
class MaskTask(TrainTask):
    """What the shared Trainer needs to train the MaskTransformer (module docstring)."""

    stage = "mask"

    def __init__(self, cfg: MaskStageConfig, train_set: GeneratorDataset, val_set: GeneratorDataset | None = None):
        self.cfg, self.train_set, self.val_set = cfg, train_set, val_set
        self.evaluator_path = cfg.val.evaluator if cfg.val.evaluator and Path(cfg.val.evaluator).is_file() else ""
        self.best_metric, self.best_mode = ("val/fid", "min") if self.evaluator_path else ("val/loss", "min")
        self.frozen: FrozenUpstream | None = None
        self.evaluator = None
        self.eval_set = None
        self.rank = 0

    @property
    def uses_retrieval(self) -> bool:
        return self.cfg.model.ablation != "no_retrieval"

    # -- frozen parts and the model ----------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        cfg = self.cfg
        self.frozen = frozen = FrozenUpstream.load(cfg.upstream, cfg.data.dataset, device,
                                                   retrieval=self.uses_retrieval)
        if self.uses_retrieval:
            self._check_retriever_kind()
        prepare_splits(frozen, cfg.data, [self.train_set, self.val_set])
        resolved = dict(token_map_config(frozen.tokenizer.model), text_dim=frozen.text_dim)
        if frozen.retrieval:
            resolved["retrieval_dim"] = int(frozen.database.motion_feats.shape[-1])
        max_tokens = get_spec(cfg.data).pad_length // frozen.tokenizer.downsample
        resolved["max_tokens"] = max(cfg.model.max_tokens, max_tokens)     # the longest generated T'
        self.model_cfg = dataclasses.replace(cfg.model, **resolved)
        self.model = MaskTransformer(self.model_cfg)
        try:
            import torch.distributed as dist
            self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        except RuntimeError:
            self.rank = 0
        if self.evaluator_path:
            from models.evaluator import load_official_evaluator
            self.evaluator = load_official_evaluator(self.evaluator_path, dataset=cfg.data.dataset, device=device,
                                                     meta_dir=cfg.val.meta_dir or None)
            tok = frozen.tokenizer
            self.eval_set = build_dataset(cfg.data, "val", "eval", stats=(tok.mean.numpy(), tok.std.numpy()),
                                          corpus=self.val_set.corpus if self.val_set is not None else None)

    def _check_retriever_kind(self) -> None:
        """whole_body_retrieval needs a whole-body retriever (model.part_level=false), the others a part-level one."""
        ckpt = load_checkpoint(self.cfg.upstream.retriever, stage="retriever", mmap=True)
        part_level = bool(((ckpt.get("config") or {}).get("model") or {}).get("part_level", True))
        want_whole = self.cfg.model.ablation == "whole_body_retrieval"
        if want_whole and part_level:
            raise GeneratorDataError(
                f"model.ablation=whole_body_retrieval needs a whole-body retriever, but upstream.retriever="
                f"{self.cfg.upstream.retriever} is part-level; train one with `python train_retriever.py "
                f"model.part_level=false --name whole_body` and point upstream.retriever at it")

    def resolve_config(self, config: dict) -> dict:
        return {**config, "model": dataclasses.asdict(self.model_cfg)}

    def upstream(self) -> dict[str, dict[str, str]]:
        f = self.frozen
        out = {"tokenizer": upstream_record(self.cfg.upstream.tokenizer, f.tokenizer.fingerprint)}
        if f.retrieval:
            out["retriever"] = upstream_record(self.cfg.upstream.retriever, f.query_encoder.weights_fingerprint())
            if getattr(self, "_database_record", None) is None:      # hashed once (72k rows: about a second)
                from models.retrieval_database import default_database_path
                path = self.cfg.upstream.database or str(default_database_path(self.cfg.upstream.retriever))
                self._database_record = upstream_record(path, f.database.content_fingerprint())
            out["database"] = self._database_record
        return out

    def extra_state(self) -> dict:
        """The text encoder (identity and weights' fingerprint) and the retrieval settings, read at inference."""
        return {"text_encoder": self.cfg.upstream.text.identity(), "exclude": self.cfg.upstream.exclude,
                "retrieval_k": int(self.cfg.upstream.retrieval_k),
                "text_weights": tensor_fingerprint(self.frozen.text_encoder.state_dict())}

    # -- training --------------------------------------------------------------------------------------------
    def _generator(self, step: int, device: torch.device) -> torch.Generator:
        seed = (self.cfg.train.seed * 1_000_003 + step) * 1024 + self.rank
        return torch.Generator(device=device).manual_seed(seed)

    def _inputs(self, batch: dict) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
        batch = trim_batch(batch)
        tokens = batch["tokens"][..., 0]                                # (B, T', C) layer 0
        r_t = batch["r_t"] if self.uses_retrieval else None
        r_m = batch["r_m"] if self.uses_retrieval else None
        return tokens, batch["t"].float(), r_t, r_m, batch["length_tokens"]

    def training_step(self, model, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        tokens, t, r_t, r_m, lengths = self._inputs(batch)
        return model(tokens, t, r_t, r_m, lengths, generator=self._generator(step, tokens.device))

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        losses, accs, weights = [], [], []
        for i, batch in enumerate(loader):
            if self.cfg.val.max_batches and i >= self.cfg.val.max_batches:
                break
            tokens, t, r_t, r_m, lengths = self._inputs(batch)
            _, logs = self.model(tokens, t, r_t, r_m, lengths, generator=gen)
            losses.append(logs["loss"])
            accs.append(logs["acc"])
            weights.append(tokens.shape[0])
        out = {}
        if weights:
            out["val/loss"] = float(np.average(losses, weights=weights))
            out["val/acc"] = float(np.average(accs, weights=weights))
        if self.evaluator is not None:
            out.update(self.generation_metrics())
        return out

    # -- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, captions, lengths, motion_ids=None, generator: torch.Generator | None = None,
                 steps: int | None = None) -> Tensor:
        """Layer-0 token maps (B, max T', C) for captions and lengths in frames (checked against the dataset's
        range). `motion_ids` are excluded from retrieval as in training (None = nothing excluded)."""
        return generate_base(self.model, self.frozen, get_spec(self.cfg.data), captions, lengths, motion_ids,
                             generator, steps)

    def generation_metrics(self) -> dict[str, float]:
        """FID / R-precision / MM-Dist of base-layer generations on val batches (fast: 1 replication)."""
        from utils.evaluation import EvalConfig, evaluate_t2m

        v = self.cfg.val
        n = min(len(self.eval_set), v.eval_batches * v.eval_batch_size) // v.eval_batch_size * v.eval_batch_size
        if n < v.eval_batch_size:
            log.warning("val split has %d entries, fewer than val.eval_batch_size=%d: generation metrics skipped",
                        len(self.eval_set), v.eval_batch_size)
            return {}
        subset = _SpreadSubset(self.eval_set, np.linspace(0, len(self.eval_set) - 1, n).round().astype(int).tolist())
        generate_fn = base_layer_generate_fn(self.model, self.frozen, get_spec(self.cfg.data), v.gen_steps or None)

        ecfg = EvalConfig(replications=1, batch_size=v.eval_batch_size, mm_mode="off", seed=self.cfg.train.seed,
                          diversity_times=min(300, n - 1))
        if getattr(self, "_gt_cache", None) is None:      # same subset, seed and evaluator at every val: reuse its GT
            from utils.evaluation import GTEmbeddingCache
            self._gt_cache = GTEmbeddingCache()
        report = evaluate_t2m(generate_fn, subset, self.evaluator, ecfg, progress=False, label="mask",
                              gt_cache=self._gt_cache)
        gen = report["metrics"]["mask"]
        return {"val/fid": gen["FID"]["mean"], "val/top1": gen["R_precision_top1"]["mean"],
                "val/top3": gen["R_precision_top3"]["mean"], "val/mm_dist": gen["MM_Dist"]["mean"]}


def write_samples(task: MaskTask, run) -> Path:
    """Generate `val.sample_prompts` (lengths `val.sample_lengths`) with the trained model and save the layer-0
    tokens and decoded raw features to <run>/samples.pt (generator seeded with train.seed)."""
    from utils.atomic import atomic_open

    v = task.cfg.val
    g = torch.Generator(device=task.device).manual_seed(task.cfg.train.seed)
    base = task.generate(list(v.sample_prompts), list(v.sample_lengths), generator=g)
    motion = decode_base_layer(task.frozen.tokenizer, base).cpu()
    path = Path(run.path) / "samples.pt"
    with atomic_open(path, "wb") as f:
        torch.save({"prompts": list(v.sample_prompts), "lengths": list(v.sample_lengths), "tokens": base.cpu(),
                    "motion": motion}, f)
    return path
