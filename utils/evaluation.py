"""The text-to-motion evaluation driver (`reference.md` §4): one function scores ground truth, RVQ reconstructions and
full generations with the standard evaluator, over replications, with 95% confidence intervals.

    report = evaluate_t2m(generate_fn, eval_set, evaluator, EvalConfig())
    write_report(report, "runs/eval/<name>")          # eval.json + eval.md

`generate_fn(batch) -> (motion (B, T, D) de-normalised raw features, lengths (B,) in frames)`; it gets the collated
"eval" batch of the test split (ground-truth lengths in `batch["length"]`) and must generate with those lengths.
If it accepts a keyword argument `multimodality`, the driver passes `multimodality=True` for the MultiModality
repeats (the reference samples those with Gumbel noise, the others categorically) and False otherwise. If it
accepts `generator`, the driver passes a `torch.Generator` (CPU) seeded per replication: the only randomness a
generator should draw from.

Ground truth never depends on the model under test: the eval set's caption/crop draws come from (replication seed,
item index) (`MotionTextDataset.set_epoch`), the loader's shuffle from its own generator, and the Diversity /
MultiModality pairs from their own numpy generators. Two models evaluated side by side see the same captions, the
same crops and the same ground-truth column in every replication.

Protocol of one replication (reference §4), with replication r seeded `cfg.seed + r` (the eval set's item draws, the
loader's shuffle, the generator handed to generate_fn; the global generators too, for generate functions that still
use them):
- one pass over the eval set in shuffled batches of 32 with drop_last; one random caption and crop per motion;
- GT and generated motions are de-normalised, re-normalised with the evaluator's meta statistics and embedded with
  the same caption embedding;
- R-precision top-1/2/3 and MM-Dist (Matching score) per batch, summed over batches / number of samples;
- FID between all generated and all GT embeddings; Diversity over `diversity_times` (300) random pairs;
- MultiModality ("momask" mode): the first 3 batches are generated 30 times each, distances between 10 random pairs
  of repeats; those batches' last repeat is also the one used for the other metrics, as in the reference.
  "t2m" mode (original T2M): 100 random texts × 30 repeats, 10 pairs. "off": none.
Final numbers: mean ± 1.96·std/√n over replications (population std).

Ground-truth embeddings, computed once (`GTEmbeddingCache`): since the batches of replication seed s (their order, captions and
crops) depend on (s, index) alone, the evaluator's caption and real-motion embeddings of batch i of seed s are the
same for every model scored with that evaluator, eval set and batch size. `evaluate_t2m(..., gt_cache=...)`
computes them once and reuses them: in memory (the mask stage's repeated val evaluations), or on disk
(`GTEmbeddingCache.for_eval(folder, ...)`, what eval_t2m.py uses: every ablation row, both length modes and every
re-evaluated checkpoint share one file). Reused values are the stored float32 arrays: bit-equal to recomputing them.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from utils.tensors import lengths_to_mask
from utils import metrics
from utils.atomic import atomic_write_text
from utils.markdown import markdown_table
from utils.training import seed_everything

GenerateFn = Callable[..., tuple[Any, Any]]

# Display names of the metrics, in table order.
METRIC_NAMES = ("FID", "R_precision_top1", "R_precision_top2", "R_precision_top3", "MM_Dist", "Diversity",
                "MultiModality")
REFERENCE_PROTOCOL = dict(replications=20, batch_size=32, diversity_times=300, mm_mode="momask", mm_batches=3,
                          mm_repeats=30, mm_times=10, top_k=3)


class EvaluationError(ValueError):
    """The evaluation cannot run with this data / configuration."""


class EvalConfigError(EvaluationError):
    """An `EvalConfig` setting is out of range on its own (`EvalConfig.validate`); the message is one line."""


@dataclass
class EvalConfig:
    replications: int = 20           # reference §4 (20 passes over the test set)
    batch_size: int = 32             # reference §1.3 / §4 (R-precision within batches of 32, drop_last)
    seed: int = 10107                # MoMask's eval seed (reference §4); replication r uses seed + r
    diversity_times: int = 300       # reference §4 (the reference falls back to 100 only when N <= 300)
    mm_mode: str = "momask"          # "momask" (first mm_batches batches) | "t2m" (mm_num_texts texts) | "off"
    mm_batches: int = 3              # MoMask / ReMoMask: first 3 batches (reference §4)
    mm_num_texts: int = 100          # original T2M variant (reference §4)
    mm_repeats: int = 30             # generations per text (reference §4)
    mm_times: int = 10               # pairs of repeats per text (reference §4)
    top_k: int = 3                   # R-precision top-1..3 (reference §4)
    num_workers: int = 0             # DataLoader workers
    fast: bool = False               # quick check: 1 replication, 1 MM batch x 10 repeats; NOT comparable
    mask_beyond_length: bool = False # zero generated frames past the length; the reference does not (generated
                                     # frames past m_len are left as decoded and seen by the conv encoder's edge)

    def check_values(self, prefix: str = "eval.") -> None:
        """Run by utils.config on loading, so eval_t2m.py refuses a bad eval.* setting before anything loads."""
        from utils.config import ConfigError

        try:
            self.validate()
        except EvalConfigError as err:
            text = str(err).removeprefix("utils/evaluation.py: ").replace("eval.", prefix)
            raise ConfigError(text, key=getattr(err, "key", None)) from None

    def validate(self) -> "EvalConfig":
        """Check the settings on their own (before any model or data is loaded); returns self.

        Raises `EvalConfigError` naming the key (`eval.<key>`, with the command-line flag where there is one) and
        its expected range. Checks that depend on the eval set's size are in `evaluate_t2m`. MultiModality
        settings are only checked when `mm_mode` is not "off".
        """
        def need(ok: bool, key: str, expected: str, flag: str = "") -> None:
            if not ok:
                name = f"eval.{key}" + (f" ({flag})" if flag else "")
                raise EvalConfigError(f"utils/evaluation.py: {name} must be {expected}, got {getattr(self, key)!r}")

        need(self.replications >= 1, "replications", "an integer >= 1 (20 in the reference protocol)",
             "--replications")
        need(self.top_k >= 1, "top_k", "an integer >= 1 (R-precision top-1..k; 3 in the reference protocol)")
        need(self.batch_size >= self.top_k, "batch_size",
             f">= eval.top_k={self.top_k}: R-precision ranks each text among the motions of its batch "
             f"(32 in the reference protocol)")
        need(self.diversity_times >= 1, "diversity_times",
             "an integer >= 1 (pairs drawn for Diversity; 300 in the reference protocol)")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(self.mm_mode in ("momask", "t2m", "off"), "mm_mode", "'momask', 't2m' or 'off'")
        if self.mm_mode == "momask":
            need(self.mm_batches >= 1, "mm_batches", "an integer >= 1 in mm_mode 'momask' (batches generated "
                 "repeatedly for MultiModality; 3 in the reference protocol); set eval.mm_mode=off for no "
                 "MultiModality")
        if self.mm_mode == "t2m":
            need(self.mm_num_texts >= 1, "mm_num_texts", "an integer >= 1 in mm_mode 't2m' (texts generated "
                 "repeatedly for MultiModality; 100 in the original T2M protocol); set eval.mm_mode=off for no "
                 "MultiModality")
        if self.mm_mode != "off":
            need(self.mm_times >= 1, "mm_times", "an integer >= 1 (pairs of repeats per text; 10 in the reference "
                 "protocol)")
            need(self.mm_repeats >= self.mm_times, "mm_repeats",
                 f">= eval.mm_times={self.mm_times} (generations per text; 30 in the reference protocol)")
        return self

    def effective(self) -> "EvalConfig":
        """The configuration actually run (`fast` shrinks the protocol)."""
        if not self.fast:
            return self
        return EvalConfig(**{**asdict(self), "replications": 1, "mm_batches": min(self.mm_batches, 1),
                             "mm_num_texts": min(self.mm_num_texts, self.batch_size),
                             "mm_repeats": min(self.mm_repeats, self.mm_times)})

    def is_reference_protocol(self) -> bool:
        """True when the run follows reference §4 (MultiModality settings only count when it is on: ground truth
        and reconstructions have none)."""
        eff = self.effective()
        keys = [k for k in REFERENCE_PROTOCOL if eff.mm_mode != "off" or not k.startswith("mm_")]
        return not self.fast and all(getattr(eff, k) == REFERENCE_PROTOCOL[k] for k in keys)


# --------------------------------------------------------------------------------------------------- helpers

def _accepts_keyword(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _accepts_multimodality(fn: Callable) -> bool:
    return _accepts_keyword(fn, "multimodality")


def _to_tensor(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


class _Embedder:
    """Calls generate_fn and turns its output into evaluator embeddings."""

    def __init__(self, generate_fn: GenerateFn, eval_set, evaluator, cfg: EvalConfig):
        self.generate_fn = generate_fn
        self.eval_set = eval_set
        self.evaluator = evaluator
        self.cfg = cfg
        self.pass_mm = _accepts_multimodality(generate_fn)
        self.pass_generator = _accepts_keyword(generate_fn, "generator")
        self.generator: torch.Generator | None = None

    def text(self, batch: dict) -> np.ndarray:
        return self.evaluator.encode_text(batch["word_embs"], batch["pos_ohot"], batch["sent_len"]).cpu().numpy()

    def motion_raw(self, motion, lengths, mask: bool | None = None) -> np.ndarray:
        """Raw features (B, T, D) and lengths (B,) -> evaluator embeddings (B, D_emb).

        With `mask` (default: cfg.mask_beyond_length) frames past the length are zeroed after re-normalisation.
        """
        motion = _to_tensor(motion).detach().float().cpu()
        lengths = _to_tensor(lengths).detach().cpu().long()
        if motion.ndim != 3 or motion.shape[0] != lengths.shape[0]:
            raise EvaluationError(f"utils/evaluation.py: generate_fn must return motion (B, T, D) and lengths (B,), "
                                  f"got {tuple(motion.shape)} and {tuple(lengths.shape)}")
        if int(lengths.max()) > motion.shape[1]:
            raise EvaluationError(f"utils/evaluation.py: generated motion has {motion.shape[1]} frames but a length "
                                  f"of {int(lengths.max())} was requested")
        x = self.evaluator.normalize_for_evaluator(motion)
        if self.cfg.mask_beyond_length if mask is None else mask:
            keep = lengths_to_mask(lengths, x.shape[1])
            x = x * keep[..., None]
        return self.evaluator.encode_motion(x, lengths).cpu().numpy()

    def gt(self, batch: dict) -> np.ndarray:
        # the reference loader zero-pads in the evaluator's normalisation; our dataset pads with zeros in its own,
        # so the padding is zeroed again after re-normalising (a no-op when the statistics agree)
        motion = self.eval_set.denormalize(_to_tensor(batch["motion"]))
        return self.motion_raw(motion, batch["length"], mask=True)

    def generated(self, batch: dict, multimodality: bool = False) -> np.ndarray:
        kwargs = {}
        if self.pass_mm:
            kwargs["multimodality"] = multimodality
        if self.pass_generator:
            kwargs["generator"] = self.generator
        motion, lengths = self.generate_fn(batch, **kwargs)
        return self.motion_raw(motion, lengths)


def _collate_default():
    from datasets.motion_dataset import collate
    return collate


def _check_sizes(n_items: int, cfg: EvalConfig) -> int:
    """Number of samples per replication; errors when the set is too small for the protocol."""
    if n_items < cfg.batch_size:
        raise EvaluationError(
            f"utils/evaluation.py: the eval set has {n_items} samples, fewer than one R-precision batch of "
            f"{cfg.batch_size} (eval.batch_size); R-precision needs full batches (drop_last). Use a larger split or "
            f"set eval.batch_size <= {n_items}")
    n_batches = n_items // cfg.batch_size
    n = n_batches * cfg.batch_size
    if n < cfg.diversity_times:
        raise EvaluationError(
            f"utils/evaluation.py: Diversity draws eval.diversity_times={cfg.diversity_times} pairs but one "
            f"replication has only {n} samples ({n_batches} batches of {cfg.batch_size}); the reference uses 300 "
            f"(100 for sets of at most 300). Set eval.diversity_times <= {n}")
    if cfg.mm_mode == "momask" and cfg.mm_batches > n_batches:
        raise EvaluationError(f"utils/evaluation.py: MultiModality uses the first eval.mm_batches={cfg.mm_batches} "
                              f"batches but there are only {n_batches}; lower eval.mm_batches")
    if cfg.mm_mode == "t2m" and cfg.mm_num_texts > n_items:
        raise EvaluationError(f"utils/evaluation.py: MultiModality ('t2m' mode) needs eval.mm_num_texts="
                              f"{cfg.mm_num_texts} texts but the set has {n_items}")
    return n


# ------------------------------------------------------------------------------------ ground-truth embedding cache

GT_CACHE_VERSION = 1


def eval_set_fingerprint(eval_set) -> str | None:
    """A hash of what the eval set's items are made of (its `fingerprint()`), or None when it has none."""
    fn = getattr(eval_set, "fingerprint", None)
    return fn() if callable(fn) else None


class GTEmbeddingCache:
    """Evaluator embeddings of the captions (text) and real motions (gt) of each (replication seed, batch), reused.

    `path` (optional) is a torch file holding `key` and the arrays; it is read when its key matches (a stale or
    unreadable file is ignored and replaced) and written atomically by `save()`.
    """

    def __init__(self, path: str | os.PathLike | None = None, key: dict | None = None):
        self.path = Path(path) if path else None
        self.key = dict(key or {})
        self.entries: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as err:        # noqa: BLE001 - a broken cache is recomputed, never fatal
                import logging
                logging.getLogger(__name__).warning("%s: unreadable ground-truth embedding cache (%s); recomputing", self.path,
                                                    err)
                return
            if state.get("key") == self.key:
                for (seed, i), text, gt in zip(state["index"].tolist(), state["text"], state["gt"]):
                    self.entries[(seed, i)] = (text.numpy(), gt.numpy())

    @classmethod
    def for_eval(cls, folder: str | os.PathLike, eval_set, evaluator, cfg: "EvalConfig",
                 name: str = "eval") -> "GTEmbeddingCache":
        """The cache file of (evaluator weights, eval set content, batch size) in `folder`; in memory only when the
        eval set has no fingerprint."""
        from utils.checkpoint import tensor_fingerprint

        data = eval_set_fingerprint(eval_set)
        key = {"version": GT_CACHE_VERSION, "evaluator": tensor_fingerprint(evaluator.state_dict()),
               "eval_set": data, "batch_size": cfg.batch_size}
        if data is None:
            return cls(key=key)
        digest = tensor_fingerprint({k: str(v) for k, v in key.items()})
        return cls(Path(folder) / f"eval_gt.{name}.{digest}.pt", key)

    def get(self, seed: int, batch: int) -> tuple[np.ndarray, np.ndarray] | None:
        hit = self.entries.get((int(seed), int(batch)))
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, seed: int, batch: int, text: np.ndarray, gt: np.ndarray) -> None:
        self.entries[(int(seed), int(batch))] = (np.asarray(text), np.asarray(gt))
        self._dirty = True

    def save(self) -> None:
        """Write the file (atomically) when there is one and something new was computed; a failure only warns."""
        if self.path is None or not self._dirty:
            return
        from utils.atomic import atomic_path

        keys = sorted(self.entries)
        state = {"key": self.key, "index": torch.tensor(keys, dtype=torch.long).reshape(-1, 2),
                 "text": [torch.from_numpy(self.entries[k][0]) for k in keys],
                 "gt": [torch.from_numpy(self.entries[k][1]) for k in keys]}
        try:
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
            self._dirty = False
        except OSError as err:
            import logging
            logging.getLogger(__name__).warning("%s: could not write the ground-truth embedding cache (%s)", self.path, err)


# ------------------------------------------------------------------------------------------------ one replication

def _replication(emb: _Embedder, cfg: EvalConfig, seed: int, collate_fn, with_gt: bool,
                 gt_cache: GTEmbeddingCache | None = None) -> dict[str, dict]:
    seed_everything(seed)                # only for generate functions that still draw from the global generators
    if hasattr(emb.eval_set, "set_epoch"):
        emb.eval_set.set_epoch(seed)     # the items' caption / crop draws: (seed, index), nothing else
    emb.generator = torch.Generator().manual_seed(seed)
    gen_loader = torch.Generator().manual_seed(seed)
    loader = DataLoader(emb.eval_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_fn, num_workers=cfg.num_workers, generator=gen_loader)
    rng = np.random.default_rng(seed)
    sums = {"gt": np.zeros(cfg.top_k), "gen": np.zeros(cfg.top_k)}
    match = {"gt": 0.0, "gen": 0.0}
    gt_embs, gen_embs, mm_embs = [], [], []
    count = 0
    for i, batch in enumerate(loader):
        cached = gt_cache.get(seed, i) if gt_cache is not None and with_gt else None
        text = emb.text(batch) if cached is None else cached[0]
        if cfg.mm_mode == "momask" and i < cfg.mm_batches:
            repeats = [emb.generated(batch, multimodality=True) for _ in range(cfg.mm_repeats)]
            mm_embs.append(np.stack(repeats, axis=1))                  # (B, R, D)
            gen = repeats[-1]
        else:
            gen = emb.generated(batch)
        if not with_gt:
            gt = gen
        elif cached is not None:
            gt = cached[1]
        else:
            gt = emb.gt(batch)
            if gt_cache is not None:
                gt_cache.put(seed, i, text, gt)
        b = text.shape[0]
        for key, m in (("gt", gt), ("gen", gen)):
            sums[key] += metrics.r_precision(text, m, cfg.top_k) * b
            match[key] += metrics.mm_dist(text, m) * b
        gt_embs.append(gt)
        gen_embs.append(gen)
        count += b
    if cfg.mm_mode == "t2m":
        idx = rng.choice(len(emb.eval_set), cfg.mm_num_texts, replace=False)
        sub = DataLoader(Subset(emb.eval_set, idx.tolist()), batch_size=cfg.batch_size, shuffle=False,
                         collate_fn=collate_fn, num_workers=0)
        for batch in sub:
            mm_embs.append(np.stack([emb.generated(batch, multimodality=True) for _ in range(cfg.mm_repeats)], 1))
    gt_all, gen_all = np.concatenate(gt_embs), np.concatenate(gen_embs)
    out: dict[str, dict] = {}
    for key, embs in (("gt", gt_all), ("gen", gen_all)):
        r = sums[key] / count
        row = {"FID": metrics.fid(embs, gt_all)}
        row.update({f"R_precision_top{k + 1}": float(r[k]) for k in range(cfg.top_k)})
        row["MM_Dist"] = match[key] / count
        # the same pairs for GT and generated (a fresh generator per column), so they differ only by the motions
        row["Diversity"] = metrics.diversity(embs, cfg.diversity_times, np.random.default_rng([seed, 1]))
        out[key] = row
    if mm_embs:
        out["gen"]["MultiModality"] = metrics.multimodality(np.concatenate(mm_embs), cfg.mm_times, rng)
    out["_count"] = {"samples": count}
    return out


def evaluate_t2m(generate_fn: GenerateFn, eval_set, evaluator, cfg: EvalConfig | None = None, *,
                 collate_fn: Callable | None = None, with_gt: bool = True, progress: bool = True,
                 label: str = "generated", gt_cache: GTEmbeddingCache | None = None) -> dict:
    """Score `generate_fn` on `eval_set` (a dataset in "eval" mode) with `evaluator`; see the module docstring.

    Returns a report dict: `metrics` {"gt": {name: {mean, conf, values}}, "generated": {...}}, the effective
    config, per-replication seeds, sample counts and the comparability note. `with_gt=False` skips the GT
    embeddings (then FID is not available and the "gt" column is omitted). `gt_cache` reuses (and fills) the
    caption and real-motion embeddings of earlier evaluations under the same protocol (module docstring).

    Raises `EvalConfigError` for a setting out of range (`EvalConfig.validate`, before anything runs) and
    `EvaluationError` when the eval set is too small for the protocol.
    """
    cfg = (cfg or EvalConfig()).validate()
    eff = cfg.effective().validate()
    n = _check_sizes(len(eval_set), eff)
    emb = _Embedder(generate_fn, eval_set, evaluator, eff)
    collate_fn = collate_fn or _collate_default()
    seeds = [eff.seed + r for r in range(eff.replications)]
    runs = []
    iterator = seeds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(seeds, desc=f"eval {label}", unit="rep")
    for seed in iterator:
        runs.append(_replication(emb, eff, seed, collate_fn, with_gt, gt_cache))
    if gt_cache is not None:
        gt_cache.save()
    table: dict[str, dict[str, dict]] = {}
    for key, name in (("gt", "gt"), ("gen", label)):
        if key == "gt" and not with_gt:
            continue
        table[name] = {}
        for metric in METRIC_NAMES:
            if metric not in runs[0][key] or (key == "gen" and metric == "FID" and not with_gt):
                continue
            values = [r[key][metric] for r in runs]
            mean, conf = metrics.mean_ci(values)
            table[name][metric] = {"mean": mean, "conf": conf, "values": values}
        if key == "gt":
            table[name].pop("FID", None)        # FID of GT against itself is 0 by construction
    comparable = cfg.is_reference_protocol()
    note = ("reference protocol (reference.md §4)" if comparable else
            "NOT COMPARABLE to published numbers: " + ("--fast mode (1 replication, shortened MultiModality)"
                                                       if cfg.fast else "protocol differs from the reference"))
    return {"metrics": table, "config": asdict(eff), "requested_config": asdict(cfg), "seeds": seeds,
            "samples_per_replication": n, "eval_set_size": len(eval_set), "comparable_protocol": comparable,
            "note": note, "evaluator": getattr(evaluator, "source", "") or type(evaluator).__name__,
            "label": label}


def evaluator_skipped_report(cfg: EvalConfig, reason: str, label: str = "generated") -> dict:
    """A report (same keys as `evaluate_t2m`'s, for `write_report`) with no evaluator metrics, for runs that
    cannot have them (no evaluator checkpoint); `reason` is written in eval.json (`skipped`) and eval.md.
    Other numbers go in through `write_report(..., extra_metrics=...)`."""
    return {"metrics": {}, "config": asdict(cfg.effective()), "requested_config": asdict(cfg), "seeds": [],
            "samples_per_replication": 0, "eval_set_size": None, "comparable_protocol": False,
            "note": "no evaluator metrics were computed (see `skipped`)", "evaluator": "",
            "label": label, "skipped": reason}


# ------------------------------------------------------------------------------------------------------ reports

def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The current commit hash (with '+dirty' when the tree has changes), or 'unknown'."""
    repo = str(repo or Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt(entry: dict | None, digits: int = 3) -> str:
    if entry is None:
        return "-"
    return f"{entry['mean']:.{digits}f} ± {entry['conf']:.{digits}f}"


def render_markdown(report: dict) -> str:
    """eval.md: a table of mean ± 95% CI per metric, then the provenance."""
    cols = list(report["metrics"])
    lines = [f"# Evaluation: {report.get('stage', report.get('label', ''))}", ""]
    skipped = report.get("skipped")
    if skipped:
        lines += [f"**Skipped: {skipped}**", ""]
    elif not report.get("comparable_protocol", False):
        lines += [f"**{report['note']}**", ""]
    if report.get("dataset_note"):
        lines += [f"**{report['dataset_note']}**", ""]
    shown = [m for m in METRIC_NAMES if any(m in report["metrics"][c] for c in cols)]
    if cols:
        lines += markdown_table(["metric", *cols],
                                ([m, *(_fmt(report["metrics"][c].get(m)) for c in cols)] for m in shown))
        lines.append("")
    cfg = report["config"]
    extra = report.get("extra_metrics") or {}
    if extra:
        lines += ["Other metrics:", ""]
        lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in extra.items()]
        lines.append("")
    if report["seeds"]:
        lines += [f"mean ± 1.96·std/√n over n = {cfg['replications']} replications (population std); "
                  f"{report['samples_per_replication']} samples per replication in batches of {cfg['batch_size']}.",
                  ""]
    lines += ["## Provenance", "",
              f"- commit: `{report.get('commit', 'unknown')}`",
              f"- evaluator: `{report.get('evaluator', '') or 'none'}`"]
    for name, path in (report.get("checkpoints") or {}).items():
        lines.append(f"- checkpoint {name}: `{path}`")
    if report["seeds"]:
        lines.append(f"- seeds: {report['seeds'][0]} … {report['seeds'][-1]} (replication r uses seed "
                     f"{cfg['seed']} + r)")
    lines += [f"- protocol: {report['note']}", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    return "\n".join(lines)


def write_report(report: dict, run_dir: str | os.PathLike, echo: bool = False, **provenance) -> tuple[Path, Path]:
    """Write `eval.json` and `eval.md` into run_dir (atomic). `provenance` (e.g. checkpoints={...},
    run_config={...}, stage="rvq") is merged into the report; the commit hash is added when missing. `echo`: print
    eval.md to stdout first, so the numbers are on screen even if the write fails."""
    run_dir = Path(run_dir)
    report = {**report, **provenance}
    report.setdefault("commit", git_commit())
    text = render_markdown(report)
    if echo:
        print(text, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    js, md = run_dir / "eval.json", run_dir / "eval.md"
    atomic_write_text(js, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(md, text)
    return js, md


def summary_line(report: dict, column: str | None = None) -> str:
    """One line `FID 0.123±0.004, R@3 ...` for logs."""
    column = column or report.get("label", "generated")
    if not report["metrics"]:
        return f"no evaluator metrics: {report.get('skipped', 'none computed')}"
    row = report["metrics"].get(column) or next(iter(report["metrics"].values()))
    short = {"R_precision_top1": "R@1", "R_precision_top2": "R@2", "R_precision_top3": "R@3"}
    return ", ".join(f"{short.get(k, k)} {v['mean']:.3f}±{v['conf']:.3f}" for k, v in row.items())


def write_table_report(results: dict, run_dir: str | os.PathLike, *, stage: str, checkpoints: dict[str, str],
                       run_config: dict, split: str, dataset_note: str = "", echo: bool = False) -> tuple[Path, Path]:
    """`eval.json` / `eval.md` for results that are tables of numbers rather than an `evaluate_t2m` report
    (the retrieval protocols: {protocol: {"t2m/R01": ..., ...}}); scalar entries are listed under the table.
    `echo`: print eval.md to stdout before writing anything."""
    run_dir = Path(run_dir)
    report = {"stage": stage, "results": results, "checkpoints": checkpoints, "commit": git_commit(),
              "run_config": run_config, "split": split, "dataset_note": dataset_note}
    js, md = run_dir / "eval.json", run_dir / "eval.md"
    lines = [f"# Evaluation: {stage}", ""]
    if dataset_note:
        lines += [f"**{dataset_note}**", ""]
    tables = {k: v for k, v in results.items() if isinstance(v, dict)}
    if tables:
        cols = sorted({c for v in tables.values() for c in v})
        lines += markdown_table(["", *cols], ([name, *(row.get(c, "-") for c in cols)] for name, row in tables.items()))
        lines.append("")
    lines += [f"- {k}: {v}" for k, v in results.items() if not isinstance(v, dict)]
    lines += ["", "## Provenance", "", f"- commit: `{report['commit']}`"]
    lines += [f"- {k}: `{v}`" for k, v in checkpoints.items()]
    text = "\n".join(lines) + "\n"
    if echo:
        print(text, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(js, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(md, text)
    return js, md
