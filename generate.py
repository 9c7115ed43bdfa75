"""Generate motions from text prompts with a trained ReMoMask pipeline (paper §2; `models/pipeline.py`).

    python generate.py --prompt "a person walks forward and waves" --length 120
    python generate.py --prompts-file prompts.txt --num-samples 3 --seed 7 --out outputs/walks
    python generate.py --prompt "a man jumps" --mask runs/mask/x/checkpoints/best.pt --residual runs/residual/x/...

Checkpoints: by default `<runs-root>/<stage>/<name>/checkpoints/best.pt` (else last.pt) of the mask and residual
stages (`--runs-root runs --name demo`); the tokenizer and the retriever are found through the upstream records in
those checkpoints, and the length estimator at `<runs-root>/length_estimator/<name>/` when it exists. Every path can be given
explicitly. A prompts file has one `text` or `text#length` per line (length in frames; without it the length
estimator picks one).

Output (`--out`, default outputs/<name>): one folder per sample, `<index>_<prompt words>_s<k>/`, with
`joints.npy` (T × J × 3; metres for HumanML3D), `features.npy` (T × D raw features), `frames.png` (8 frames side by
side, `--no-sheet` to skip; with `overview.png` of the first samples in the output folder), `motion.gif` (stick figure, the
prompt as title; also `motion.mp4` when the imageio-ffmpeg package is installed, `--no-mp4` to skip it) and `motion.bvh` (utils/bvh.py), and
`summary.json` listing per sample the prompt, length, seed, the files and the retrieved neighbours, with every
setting under "settings". `--foot-cleanup` removes the slide of planted feet (off by default; prints the skating
ratio before and after). `--smpl-model-dir DIR` also fits an SMPL body per sample (`smpl.npz`, AMASS layout). Files are written atomically: an interrupted run never leaves a half-written file.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PENDING_STAGES = ("mask", "residual")
PRECISIONS = ("fp32", "bf16", "bf16-autocast")   # = models.pipeline.PRECISIONS (kept torch-free for --help)
OVERVIEW_ROWS = 12                                 # samples shown in overview.png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("prompts")
    src.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    src.add_argument("--prompts-file", metavar="FILE", help="one 'text' or 'text#length' per line")
    gen = p.add_argument_group("generation")
    gen.add_argument("--length", type=int, default=None, metavar="FRAMES",
                     help="motion length in frames for every prompt without its own (default: the length "
                          "estimator; HumanML3D 40..196 at 20 fps)")
    gen.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per prompt (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    gen.add_argument("--steps", type=int, default=None, help="masked-transformer iterations (default: its config, 10)")
    gen.add_argument("--guidance-scale", type=float, default=None,
                     help="RAG classifier-free guidance of the masked transformer, uncond + s·(cond − uncond) "
                          "(default: its config, 4; the paper's Eq. 17 with s = 4 is 5 here)")
    gen.add_argument("--residual-guidance-scale", type=float, default=None,
                     help="guidance of the residual transformer (default: its config, 5)")
    gen.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1)")
    gen.add_argument("--topk-ratio", type=float, default=None, help="fraction of codes filtered out (default 0.9)")
    gen.add_argument("--length-mode", choices=("sample", "argmax"), default="sample",
                     help="how the length estimator picks a length (default: sample)")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    gen.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="fp32 (default, exact); bf16: bfloat16 copies of the transformers' weights and bf16 "
                          "autocast elsewhere, ~2x faster on CPUs with bf16 units and on GPUs; bf16-autocast: "
                          "autocast only. bf16 tokens may differ from fp32's (BENCHMARKS.md, tolerance)")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the transformers on static shapes (CUDA graphs on CUDA): pays off for "
                          "many prompts of one batch size; the first call compiles (seconds on a GPU, a minute or "
                          "more on a CPU)")
    ck = p.add_argument_group("checkpoints")
    ck.add_argument("--runs-root", default="runs", help="root of the run folders (default runs)")
    ck.add_argument("--name", default="demo", help="run name of every stage (default demo)")
    ck.add_argument("--mask", metavar="PATH", help="masked transformer checkpoint")
    ck.add_argument("--residual", metavar="PATH", help="residual transformer checkpoint")
    ck.add_argument("--tokenizer", metavar="PATH", help="override the tokenizer recorded in the checkpoints")
    ck.add_argument("--retriever", metavar="PATH", help="override the retriever recorded in the mask checkpoint")
    ck.add_argument("--length-estimator", metavar="PATH", help="length estimator checkpoint")
    ck.add_argument("--text-path", metavar="PATH", help="override the text encoder weights (e.g. ViT-B-32.pt)")
    ck.add_argument("--allow-mismatch", action="store_true",
                    help="only warn when a checkpoint was trained on another tokenizer / retriever")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output folder (default outputs/<name>)")
    out.add_argument("--no-animation", action="store_true", help="skip the animations (GIF and MP4)")
    out.add_argument("--mp4", action=argparse.BooleanOptionalAction, default=None,
                     help="also write motion.mp4 (default: when the imageio-ffmpeg package is installed; --mp4 "
                          "requires it)")
    out.add_argument("--no-bvh", action="store_true", help="skip the BVH")
    out.add_argument("--no-sheet", action="store_true",
                     help="skip the still pictures: frames.png per sample (8 frames side by side) and overview.png "
                          f"(the first {OVERVIEW_ROWS} samples, one row each)")
    out.add_argument("--foot-cleanup", action="store_true",
                     help="shift the body so planted feet do not slide (utils/foot_skate.py; off by default); prints "
                          "the skating ratio before and after")
    out.add_argument("--smpl-model-dir", metavar="DIR", default=None,
                     help="also fit an SMPL body per sample (utils/smpl_fit.py) and write smpl.npz (AMASS layout: "
                          "poses, trans, betas, gender, mocap_framerate); DIR holds smpl/SMPL_NEUTRAL.pkl or .npz")
    out.add_argument("--smpl-gender", default="neutral", choices=("neutral", "male", "female"),
                     help="SMPL model of --smpl-model-dir (default neutral)")
    out.add_argument("--debug", action="store_true", help="show tracebacks of project errors")
    return p


def _config_error():
    from utils.config import ConfigError
    return ConfigError


class GenerateError(_config_error()):
    """A bad argument of generate.py (exit code 2, one line)."""


def _stage_checkpoint(explicit: str | None, stage: str, args, script: str) -> str:
    from utils.run_dir import final_checkpoint

    path = Path(explicit) if explicit else final_checkpoint(stage, args.name, args.runs_root)
    if not path.is_file():
        how = f"--{stage}" if explicit else f"--runs-root {args.runs_root} --name {args.name}"
        from utils.checkpoint import CheckpointError

        raise CheckpointError(f"{stage} checkpoint {path} not found ({how}); train it with `python {script}` "
                              f"or pass --{stage} PATH")
    return str(path)


def _length_estimator(args) -> str | None:
    if args.length_estimator:
        if not Path(args.length_estimator).is_file():
            raise GenerateError(f"--length-estimator {args.length_estimator}: file not found; expected a "
                                f"`train_residual.py --length-estimator` checkpoint")
        return args.length_estimator
    from utils.run_dir import final_checkpoint

    path = final_checkpoint("length_estimator", args.name, args.runs_root)
    return str(path) if path.is_file() else None


def read_prompt_args(args) -> list[tuple[str, int | None]]:
    """(text, length or None) of every prompt of the command line."""
    from utils.prompts import read_prompts

    prompts = [(p, None) for p in args.prompt]
    if args.prompts_file:
        prompts += [(p.text, p.length) for p in read_prompts(args.prompts_file)]
    if not prompts:
        raise GenerateError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
    for text, _ in prompts:
        if not text.strip():
            raise GenerateError("--prompt: empty prompt; expected some words describing the motion")
    if args.num_samples < 1:
        raise GenerateError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        raise GenerateError(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
    if args.steps is not None and args.steps < 1:
        raise GenerateError(f"--steps must be >= 1, got {args.steps}")
    if args.topk_ratio is not None and not 0 < args.topk_ratio <= 1:
        raise GenerateError(f"--topk-ratio must be in (0, 1], got {args.topk_ratio}")
    if args.mp4:
        from utils.plot import mp4_available

        if not mp4_available():
            raise GenerateError("--mp4: needs the imageio-ffmpeg package (pip install imageio-ffmpeg)")
    return prompts


def slug(text: str, words: int = 5) -> str:
    return "_".join(re.findall(r"[a-z0-9]+", text.lower())[:words]) or "prompt"


def check_writable(folder: Path) -> None:
    """Create `folder` and prove it is writable before any generation work."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise GenerateError(f"--out {folder}: not a writable folder ({err.strerror or err})") from None


def save_npy(path: Path, array) -> None:
    import numpy as np

    from utils.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array, dtype=np.float32))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prompts = read_prompt_args(args)
    out_dir = Path(args.out or f"outputs/{args.name}")
    check_writable(out_dir)
    smpl_model = None
    if args.smpl_model_dir:                     # a missing SMPL model is reported before any generation
        from utils.smpl_fit import SMPLModelNotFound, load_smpl_model

        try:
            smpl_model = load_smpl_model(args.smpl_model_dir, args.smpl_gender)
        except SMPLModelNotFound as err:
            raise GenerateError(str(err)) from None
    mask = _stage_checkpoint(args.mask, "mask", args, "train_mask_transformer.py")
    residual = _stage_checkpoint(args.residual, "residual", args, "train_residual.py")

    import numpy as np
    from tqdm import tqdm

    from models.pipeline import ReMoMaskPipeline
    from utils.atomic import atomic_write_text
    from utils.bvh import write_bvh
    from utils.training import select_device

    device = select_device(args.device)
    from models.pipeline import PipelineError
    from utils.checkpoint import CheckpointError

    try:     # checkpoints that do not belong together are a bad argument of this command: exit code 2
        pipe = ReMoMaskPipeline.from_checkpoints(mask, residual, tokenizer=args.tokenizer, retriever=args.retriever,
                                                 length_estimator=_length_estimator(args), text_path=args.text_path,
                                                 device=device, allow_mismatch=args.allow_mismatch,
                                                 precision=args.precision)
        if args.compile:
            pipe.compile()
    except (CheckpointError, PipelineError) as err:
        raise GenerateError(str(err)) from None
    lengths = [l if l is not None else args.length for _, l in prompts]
    if any(l is None for l in lengths) and pipe.length_estimator is None:
        raise GenerateError("a prompt has no length and no length estimator was found: give --length FRAMES, "
                            "'text#length' lines, or --length-estimator PATH")
    try:                                                 # fail on a bad length before generating anything
        pipe.check_lengths([l for l in lengths if l is not None])
    except PipelineError as err:
        raise GenerateError(f"--length / prompts file: {err}") from None
    fps = pipe.facts.fps
    samples, index, overview = [], 0, []
    for p, ((text, _), length) in enumerate(tqdm(list(zip(prompts, lengths)), desc="prompts", unit="prompt")):
        result = pipe(text, None if length is None else [length], num_samples=args.num_samples, steps=args.steps,
                      guidance_scale=args.guidance_scale, residual_guidance_scale=args.residual_guidance_scale,
                      temperature=args.temperature, topk_ratio=args.topk_ratio,
                      seed=args.seed + index, length_mode=args.length_mode)
        for k in range(args.num_samples):
            name = f"{p:03d}_{slug(text)}_s{k}"
            folder = out_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            n = int(result.lengths[k])
            joints = result.motion(k)
            skate = None
            if args.foot_cleanup:
                from utils.foot_skate import clean_foot_skate, skating_ratio

                before = skating_ratio(joints, pipe.dataset, fps)
                joints = clean_foot_skate(joints, pipe.dataset, fps).astype(np.float32)
                skate = {"before": before, "after": skating_ratio(joints, pipe.dataset, fps)}
                tqdm.write(f"generate.py: {name}: foot skating ratio {before:.3f} -> {skate['after']:.3f}")
            save_npy(folder / "joints.npy", joints)
            save_npy(folder / "features.npy", result.features[k, :n].numpy())
            entry = {"prompt": text, "length": n, "seconds": n / fps, "seed": result.seeds[k],
                     "joints": f"{name}/joints.npy", "features": f"{name}/features.npy",
                     "neighbours": [vars(nb) for nb in result.neighbours[k]]}
            if skate is not None:
                entry["foot_skating_ratio"] = skate
            if not args.no_bvh:
                entry["bvh"] = str(write_bvh(joints, folder / "motion.bvh", pipe.dataset).relative_to(out_dir))
            if smpl_model is not None:
                from utils.smpl_fit import fit_smpl, save_smpl_npz

                fit = fit_smpl(joints, model=smpl_model, progress=False)
                entry["smpl"] = str(save_smpl_npz(fit, folder / "smpl.npz").relative_to(out_dir))
                entry["smpl_fit_error_mm"] = {"mean": float(fit.error_mean_mm), "max": float(fit.error_max_mm)}
            if not args.no_sheet:
                from utils.plot import plot_contact_sheet

                sheet = plot_contact_sheet([joints], folder / "frames.png", titles=[text[:60]], dataset=pipe.dataset,
                                           frames=8, fps=fps)
                entry["frames"] = str(sheet.relative_to(out_dir))
                if len(overview) < OVERVIEW_ROWS:
                    overview.append((joints, f"{text[:50]} (seed {result.seeds[k]})"))
            if not args.no_animation:
                from utils.plot import mp4_available, save_animations

                names = ["motion.gif"] + (["motion.mp4"] if args.mp4 is not False and mp4_available() else [])
                written = save_animations(joints, [folder / n for n in names], pipe.dataset, fps, title=text[:60])
                for key, path in zip(("animation", "mp4"), written):
                    entry[key] = str(path.relative_to(out_dir))
            samples.append(entry)
            index += 1
    overview_file = None
    if overview:
        from utils.plot import plot_contact_sheet

        overview_file = plot_contact_sheet([j for j, _ in overview], out_dir / "overview.png",
                                           titles=[t for _, t in overview], dataset=pipe.dataset, frames=8, fps=fps)
    settings = {k: v for k, v in vars(args).items() if k not in ("prompt", "prompts_file", "debug")}
    settings.update(device=str(device), mask=mask, residual=residual, tokenizer=pipe.tokenizer.path,
                    dataset=pipe.dataset, fps=fps)
    summary = {"samples": samples, "settings": settings}
    if overview_file is not None:
        summary["overview"] = overview_file.name
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"generate.py: {len(samples)} motion(s) in {out_dir} (summary.json); first: "
          f"{out_dir / samples[0].get('animation', samples[0]['joints'])}")
    return 0


if __name__ == "__main__":
    from utils.script import run_script

    sys.exit(run_script(main, prog="generate.py"))
