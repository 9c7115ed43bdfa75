"""Evaluate a stage of the pipeline on the test split with the standard T2M evaluator (or the retrieval protocols).

    python eval_t2m.py --stage gt                               # ground truth as the "generation" (FID ~ 0)
    python eval_t2m.py --stage rvq checkpoints.rvq=runs/rvq/mini/checkpoints/best.pt
    python eval_t2m.py --stage retriever                        # TMR normal / threshold / nsim / guo + table3
    python eval_t2m.py --stage t2m [--lengths gt|estimator]     # the full generator (mask + residual transformers)
    python eval_t2m.py --stage gt --config configs/humanml3d/eval.yaml data.root=data/HumanML3D
    python eval_t2m.py --stage gt --replications 1 --fast       # quick check, labelled NOT COMPARABLE

Writes `<runs-root>/eval/<name>/<stage>/eval.json` and `eval.md` (mean ± 95% CI over replications, commit hash,
config, checkpoint and evaluator paths, seeds), atomically replacing the previous report of that name and stage
(use --name to keep several). The evaluator defaults to the official
`checkpoints/<t2m|kit>/text_mot_match/model/finest.tar`; the mini config points at the one `train_evaluator.py`
trains (`runs/evaluator/mini/text_mot_match/model/finest.tar`). Numbers from the mini dataset or from our own
evaluator are not comparable to published tables.

`--stage rvq` without an evaluator file (the path does not exist) still reports MPJPE and the other reconstruction
numbers; the report says that FID / R-precision were skipped and why. A file that exists but cannot be loaded is an
error (exit 1). The ground-truth (and caption) evaluator embeddings of each replication are computed once per
protocol and kept in `<data.root>/.cache/eval_gt.<split>.<key>.pt`: every stage, run and ablation evaluated later with
the same evaluator, split and batch size reuses them (bit-equal; `--no-gt-cache` recomputes). Out-of-range eval.* settings (e.g. --replications 0) are refused when the config loads, before
anything else (exit 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets.motion_dataset import DataConfig
from utils.config import to_dict
from utils.evaluation import EvalConfig
from utils.retrieval_metrics import PROTOCOLS as RETRIEVAL_PROTOCOLS

PRECISIONS = ("fp32", "bf16", "bf16-autocast")   # = models.pipeline.PRECISIONS (kept torch-free for --help)
STAGES = ("gt", "rvq", "retriever", "t2m")


@dataclass
class EvaluatorPathConfig:
    path: str = ""        # "" = checkpoints/<t2m|kit>/text_mot_match/model/finest.tar (reference §3.1)
    meta_dir: str = ""    # "" = found next to the checkpoint (checkpoints/<ds>/Comp_v6_KLD005/meta, reference §3.1)


@dataclass
class CheckpointPaths:
    rvq: str = ""         # --stage rvq ("" = runs/rvq/<name>/checkpoints/best.pt, else last.pt)
    retriever: str = ""   # --stage retriever ("" = runs/retriever/<name>/checkpoints/best.pt, else last.pt)
    mask: str = ""        # --stage t2m ("" = runs/mask/<name>/checkpoints/best.pt, else last.pt)
    residual: str = ""    # --stage t2m ("" = runs/residual/<name>/checkpoints/best.pt, else last.pt)
    length_estimator: str = ""   # --stage t2m --lengths estimator ("" = runs/length_estimator/<name>/checkpoints/best.pt)


@dataclass
class EvalStageConfig:
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    evaluator: EvaluatorPathConfig = field(default_factory=EvaluatorPathConfig)
    checkpoints: CheckpointPaths = field(default_factory=CheckpointPaths)
    split: str = "test"               # reference §4: the test split
    device: str = "auto"              # "auto" | "cpu" | "cuda" | "cuda:1" ...
    retrieval_protocols: list[str] = field(default_factory=lambda: list(RETRIEVAL_PROTOCOLS))  # TMR's 4 + table3

    def check_values(self, prefix: str = "") -> None:
        """Run by utils.config on loading: each retrieval protocol must be a known one."""
        from utils.config import check_choice

        for p in self.retrieval_protocols:
            check_choice(f"{prefix}retrieval_protocols", p, RETRIEVAL_PROTOCOLS)


def default_evaluator_path(dataset: str) -> str:
    return f"checkpoints/{dataset}/text_mot_match/model/finest.tar"


def parse_args(argv=None) -> tuple[EvalStageConfig, argparse.Namespace]:
    from utils.config import load_stage_config, stage_parser

    parser = stage_parser(EvalStageConfig, "eval", argv, description=__doc__, run_flags=False)
    parser.add_argument("--stage", required=True, choices=STAGES,
                        help="what to evaluate: gt (ground truth), rvq (reconstructions), retriever (TMR "
                             "protocols and the paper's table3), t2m (the full generator, models/pipeline.py)")
    parser.add_argument("--lengths", choices=("gt", "estimator"), default="gt",
                        help="--stage t2m: generate with the ground-truth lengths (the paper's tables) or with "
                             "lengths drawn by the length estimator (a second, labelled mode)")
    parser.add_argument("--replications", type=int, default=None,
                        help="number of replications (default: eval.replications of the config, 20)")
    parser.add_argument("--fast", action="store_true",
                        help="1 replication and a shortened MultiModality; the report says NOT COMPARABLE")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="--stage t2m: run the generator in fp32 (default), bf16 (bfloat16 weight copies of the "
                             "transformers, autocast elsewhere) or bf16-autocast; bf16 is faster on CPUs and GPUs "
                             "with bf16 units (tolerance in BENCHMARKS.md)")
    parser.add_argument("--compile", action="store_true",
                        help="--stage t2m: torch.compile the generator's transformers on static shapes (CUDA graphs "
                             "on CUDA); each batch size compiles once, worth it over 20 replications")
    parser.add_argument("--no-gt-cache", action="store_true",
                        help="recompute the ground-truth evaluator embeddings instead of reusing the ones of earlier "
                             "evaluations under the same protocol (<data.root>/.cache/eval_gt.*.pt; bit-equal)")
    args = parser.parse_args(argv)
    flags = []                                    # the two shortcut flags are config keys
    if args.replications is not None:
        flags.append(f"eval.replications={args.replications}")
    if args.fast:
        flags.append("eval.fast=true")
    cfg = load_stage_config(parser, EvalStageConfig, "eval", args, extra_overrides=flags, check_run_dir=False)
    from utils.config import writable_problem     # the report folder must be writable before hours of replications
    problem = writable_problem(report_dir(args), "report folder")
    if problem:
        parser.error(problem)
    return cfg, args


def report_dir(args) -> Path:
    """<runs-root>/eval/<name>/<stage>: where eval.json / eval.md go."""
    return Path(args.runs_root) / "eval" / args.name / args.stage


def evaluator_path(cfg: EvalStageConfig) -> str:
    return cfg.evaluator.path or default_evaluator_path(cfg.data.dataset)


def load_evaluator(cfg: EvalStageConfig, device):
    from models.evaluator import load_official_evaluator

    return load_official_evaluator(evaluator_path(cfg), dataset=cfg.data.dataset, device=device,
                                   meta_dir=cfg.evaluator.meta_dir or None)


def _checkpoint(cfg_value: str, stage: str, args) -> str:
    from utils.run_dir import final_checkpoint

    path = cfg_value or str(final_checkpoint(stage, args.name, args.runs_root))
    if not Path(path).is_file():
        script = {"mask": "train_mask_transformer.py", "length_estimator": "train_residual.py --length-estimator"
                  }.get(stage, f"train_{stage}.py")
        raise SystemExit(f"eval_t2m.py: --stage {args.stage}: checkpoint {path} not found; train it first "
                         f"(python {script}) or set checkpoints.{stage}=<path>")
    return path


def _gt_cache(cfg: EvalStageConfig, args, eval_set, evaluator):
    """The ground-truth embeddings of this protocol (utils.evaluation.GTEmbeddingCache), kept in
    <data.root>/.cache and shared by every stage and run that evaluates with the same evaluator, split and batch
    size; None with --no-gt-cache."""
    from utils.evaluation import GTEmbeddingCache

    if args.no_gt_cache:
        return None
    return GTEmbeddingCache.for_eval(Path(cfg.data.root) / ".cache", eval_set, evaluator, cfg.eval.effective(),
                                     name=cfg.split)


def _deterministic(ecfg: EvalConfig) -> EvalConfig:
    """GT and reconstructions are deterministic: MultiModality is meaningless (always 0), so it is switched off."""
    return dataclasses.replace(ecfg, mm_mode="off")


def run_gt(cfg: EvalStageConfig, args, device, out_dir: Path) -> dict:
    from datasets.motion_dataset import build_dataset
    from utils.evaluation import evaluate_t2m, write_report

    evaluator = load_evaluator(cfg, device)
    eval_set = build_dataset(cfg.data, cfg.split, "eval")

    def ground_truth(batch):
        return eval_set.denormalize(batch["motion"]), batch["length"]

    ecfg = dataclasses.replace(_deterministic(cfg.eval), mask_beyond_length=True)   # exactly the GT path
    report = evaluate_t2m(ground_truth, eval_set, evaluator, ecfg, label="ground truth (as generation)",
                          gt_cache=_gt_cache(cfg, args, eval_set, evaluator))
    report["requested_config"] = asdict(cfg.eval)
    write_report(report, out_dir, echo=True, stage="gt", checkpoints={}, run_config=to_dict(cfg), split=cfg.split,
                 dataset_note=_dataset_note(cfg))
    return report


def run_rvq(cfg: EvalStageConfig, args, device, out_dir: Path) -> dict:
    """The standard metrics with RVQ-VAE reconstructions as the generation, plus the tokenizer's own
    reconstruction numbers (`utils.tasks.rvq.evaluate_reconstruction`: MPJPE, feature L1, code usage).

    The checkpoint and the split are loaded once; the split is normalised once, with the tokenizer's statistics, and
    the evaluator normalises the raw features once with its own. Without an evaluator file (the path does not exist)
    only the tokenizer's own numbers are reported, and the report says that FID / R-precision / MM-Dist / Diversity
    were skipped and why. An evaluator file that exists but cannot be loaded (truncated, other dataset, ...) is an
    error."""
    import torch

    from datasets.motion_dataset import build_dataset
    from models.tokenizer import MotionTokenizer
    from utils.evaluation import evaluate_t2m, evaluator_skipped_report, write_report
    from utils.tasks.rvq import evaluate_reconstruction

    ckpt = _checkpoint(cfg.checkpoints.rvq, "rvq", args)
    tok = MotionTokenizer.from_checkpoint(ckpt, device)
    if tok.dataset != cfg.data.dataset:
        from utils.checkpoint import CheckpointError

        raise CheckpointError(f"tokenizer {ckpt} was trained on dataset {tok.dataset!r} but data.dataset="
                              f"{cfg.data.dataset!r}")
    stats = (tok.mean, tok.std)
    ev_path = evaluator_path(cfg)
    if not Path(ev_path).exists():
        reason = (f"FID, R-precision, MM-Dist and Diversity skipped because the evaluator checkpoint {ev_path} does "
                  f"not exist (set evaluator.path=<finest.tar> or train one with train_evaluator.py); MPJPE and "
                  f"the other reconstruction numbers need no evaluator")
        print(f"eval_t2m.py: {reason}", file=sys.stderr)
        report = evaluator_skipped_report(_deterministic(cfg.eval), reason, label="rvq reconstruction")
        recon = evaluate_reconstruction(tok, split=cfg.split, device=device,
                                        dataset=build_dataset(cfg.data, cfg.split, "text", stats))
        write_report(report, out_dir, echo=True, stage="rvq", checkpoints={"rvq": ckpt}, run_config=to_dict(cfg),
                     split=cfg.split, dataset_note=_dataset_note(cfg), extra_metrics=recon)
        return report
    evaluator = load_evaluator(cfg, device)
    eval_set = build_dataset(cfg.data, cfg.split, "eval", stats)       # normalised once, for the tokenizer

    @torch.no_grad()
    def reconstruct(batch):
        lengths = torch.as_tensor(batch["length"]).reshape(-1)
        return tok.denormalize(tok.model(batch["motion"].to(tok.device)).recon).cpu(), lengths

    report = evaluate_t2m(reconstruct, eval_set, evaluator, _deterministic(cfg.eval), label="rvq reconstruction",
                          gt_cache=_gt_cache(cfg, args, eval_set, evaluator))
    report["requested_config"] = asdict(cfg.eval)
    recon = evaluate_reconstruction(tok, split=cfg.split, evaluator=evaluator, device=device, dataset=eval_set)
    write_report(report, out_dir, echo=True, stage="rvq", checkpoints={"rvq": ckpt}, run_config=to_dict(cfg),
                 split=cfg.split, dataset_note=_dataset_note(cfg), extra_metrics=recon)
    return report


def run_retriever(cfg: EvalStageConfig, args, device, out_dir: Path) -> dict:
    from utils.evaluation import write_table_report
    from utils.tasks.retriever import evaluate_retriever, guo_skip_reason

    ckpt = _checkpoint(cfg.checkpoints.retriever, "retriever", args)
    protocols = tuple(cfg.retrieval_protocols)
    skipped = guo_skip_reason(ckpt, cfg.data, cfg.split) if "guo" in protocols else None
    if skipped:                     # as train_retriever.py's retrieval_val report does for the same split
        print(f"eval_t2m.py: protocol guo skipped: {skipped}", file=sys.stderr)
        protocols = tuple(p for p in protocols if p != "guo")
    result = evaluate_retriever(ckpt, cfg.data, split=cfg.split, protocols=protocols,
                                device=str(device)) if protocols else {}
    if skipped:
        result["guo"] = f"skipped ({skipped})"
    write_table_report(result, out_dir, stage="retriever", checkpoints={"retriever": ckpt}, run_config=to_dict(cfg),
                       split=cfg.split, dataset_note=_dataset_note(cfg), echo=True)
    return result


def run_t2m(cfg: EvalStageConfig, args, device, out_dir: Path) -> dict:
    """The full generator (`models.pipeline.ReMoMaskPipeline`) scored with the standard protocol.

    Every test caption is generated with its ground-truth length (or, with --lengths estimator, a length drawn by
    the length estimator; labelled so in the report), in batches of the eval batch size. The per-item seeds come
    from the generator the driver hands over each replication, so a replication is reproducible. Text features
    (the frozen encoder's per-caption cache), retrieval results (`Retrieval(cache=True)`, per caption) and the
    ground-truth evaluator embeddings (`GTEmbeddingCache`, shared with every evaluation under this protocol) are
    computed once. `--precision bf16` runs the generator in bfloat16 (models/pipeline.py, BENCHMARKS.md)."""
    import torch

    from datasets.motion_dataset import build_dataset
    from models.pipeline import ReMoMaskPipeline
    from utils.evaluation import evaluate_t2m, write_report

    mask = _checkpoint(cfg.checkpoints.mask, "mask", args)
    residual = _checkpoint(cfg.checkpoints.residual, "residual", args)
    length = None
    if args.lengths == "estimator":
        length = _checkpoint(cfg.checkpoints.length_estimator, "length_estimator", args)
    pipe = ReMoMaskPipeline.from_checkpoints(mask, residual, length_estimator=length, device=device,
                                             precision=args.precision)
    if args.compile:
        pipe.compile()
    if pipe.dataset != cfg.data.dataset:
        from utils.checkpoint import CheckpointError

        raise CheckpointError(f"the pipeline of {mask} is for dataset {pipe.dataset!r} but data.dataset="
                              f"{cfg.data.dataset!r}")
    evaluator = load_evaluator(cfg, device)
    eval_set = build_dataset(cfg.data, cfg.split, "eval", (pipe.tokenizer.mean, pipe.tokenizer.std))

    @torch.no_grad()
    def generate(batch, generator=None):
        captions = list(batch["caption"])
        seeds = torch.randint(0, 2 ** 31 - 1, (len(captions),), generator=generator).tolist()
        lengths = None if args.lengths == "estimator" else batch["length"].tolist()
        out = _generate_items(pipe, captions, lengths, seeds)
        return out.features, out.lengths

    label = "ReMoMask" + (" (estimated lengths)" if args.lengths == "estimator" else "")
    report = evaluate_t2m(generate, eval_set, evaluator, cfg.eval, label=label,
                          gt_cache=_gt_cache(cfg, args, eval_set, evaluator))
    report["requested_config"] = asdict(cfg.eval)
    report["lengths"] = args.lengths
    report["precision"] = args.precision
    report["compile"] = pipe.compile_options
    checkpoints = {"mask": mask, "residual": residual, "tokenizer": pipe.tokenizer.path}
    if pipe.retrieval is not None:
        checkpoints["retriever"] = getattr(pipe.retrieval.encoder, "path", "")
    if length:
        checkpoints["length_estimator"] = length
    write_report(report, out_dir, echo=True, stage="t2m", checkpoints=checkpoints, run_config=to_dict(cfg), split=cfg.split,
                 dataset_note=_dataset_note(cfg))
    return report


def _generate_items(pipe, captions, lengths, seeds):
    """One pipeline call for a batch of captions (duplicates allowed), item i seeded seeds[i]."""
    return pipe(captions, lengths, seed=seeds, strict_lengths=False)    # reference crops can be < min length


def _dataset_note(cfg: EvalStageConfig) -> str:
    """The report's warning for generated data (the folder's dataset_info.json flag, never its name)."""
    from datasets.registry import is_procedural

    if is_procedural(cfg.data.root):
        return "procedural mini dataset: numbers are a smoke test, never comparable to paper tables"
    return ""


def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    from utils.training import select_device

    from utils.script import one_line, project_errors

    device = select_device(cfg.device)
    out_dir = report_dir(args)
    runner = {"gt": run_gt, "rvq": run_rvq, "retriever": run_retriever, "t2m": run_t2m}[args.stage]
    try:
        runner(cfg, args, device, out_dir)       # prints the table, then writes it
    except (*project_errors(), OSError) as e:
        if args.debug:
            raise
        print(f"eval_t2m.py: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"eval_t2m.py: wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'}")
    return 0


if __name__ == "__main__":
    from utils.script import run_script

    sys.exit(run_script(main, prog="eval_t2m.py"))
