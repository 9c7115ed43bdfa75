"""The run directory: everything one run writes lives under `<root>/<stage>/<name>/` (ARCHITECTURE.md §3).

    runs/rvq/mini/
      config.yaml            the resolved config (utils.config.save_config)
      checkpoints/last.pt    full training state, written every `ckpt_every` steps and at the end
      checkpoints/best.pt    the best validation checkpoint
      tb/                    tensorboard events
      eval.json, eval.md     evaluation reports

A second run with the same name is refused unless `resume` (continue from last.pt) or `overwrite` (delete the old
run first) is given; a folder without config.yaml and without a checkpoint (a start that failed before training)
does not count as a run and is reused. Under torchrun only rank 0 touches the file system; the other ranks only
compute the paths.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (exists, or has nothing to resume from)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_started(path: str | os.PathLike) -> bool:
    """Whether the folder holds a run worth protecting: its config.yaml or a checkpoint (checkpoints/*.pt).
    A folder with neither (a start that failed before training began, e.g. empty checkpoints/ and tb/) is not."""
    path = Path(path)
    ckpt_dir = path / "checkpoints"
    return (path / "config.yaml").is_file() or (ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")))


def run_dir_problem(path: str | os.PathLike, resume: bool, overwrite: bool) -> str | None:
    """Why the run at `path` cannot start as asked (None = it can). Shared by RunDir and utils.config.stage_cli,
    which checks before any data is loaded. A new run may reuse the folder of a failed start (`run_started`
    False); a started run is refused without --resume / --overwrite."""
    path = Path(path)
    last = path / "checkpoints" / "last.pt"
    existing = path.is_dir() and any(path.iterdir())
    if resume and overwrite:
        return ("resume and overwrite exclude each other (resume continues a run, overwrite deletes it); pass only "
                "one of --resume / --overwrite")
    if resume and not last.is_file():
        return (f"--resume: no checkpoint to resume from at {last} "
                f"({'the run exists but has no last.pt' if existing else 'no such run'}); "
                f"start the run without --resume")
    if existing and not resume and not overwrite and run_started(path):
        return (f"run dir {path} already exists; pass --resume to continue it or --overwrite to delete it and "
                f"start again (or choose another --name)")
    return None


def final_checkpoint(stage: str, name: str, root: str | os.PathLike = "runs") -> Path:
    """The checkpoint a finished run hands to the next stage: `<root>/<stage>/<name>/checkpoints/best.pt` when
    validation chose one, else `last.pt` (which may not exist: the caller reports that). Creates nothing."""
    ckpt_dir = Path(root) / stage / name / "checkpoints"
    best = ckpt_dir / "best.pt"
    return best if best.is_file() else ckpt_dir / "last.pt"


class RunDir:
    """Paths of one run; creates the folder (rank 0) and enforces the refuse / resume / overwrite rule.

    Args:
        stage: "rvq", "retriever", "mask", "residual", "eval", ...
        name: run name (default of the CLI: the config's dataset folder, e.g. "mini")
        root: root of all runs
        resume: continue an existing run; its checkpoints/last.pt must exist
        overwrite: delete an existing run of this name and start afresh
    """

    def __init__(self, stage: str, name: str, root: str | os.PathLike = "runs",
                 resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise RunDirError(run_dir_problem(root, resume, overwrite))
        for what, value in (("stage", stage), ("name", name)):
            if not value or "/" in value or "\\" in value or value in (".", ".."):
                raise RunDirError(f"RunDir: {what} must be a plain folder name, got {value!r}")
        self.stage, self.name = stage, name
        self.path = Path(root) / stage / name
        self.ckpt_dir = self.path / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"
        self.config_path = self.path / "config.yaml"
        self.tb_dir = self.path / "tb"
        self.eval_json = self.path / "eval.json"
        self.eval_md = self.path / "eval.md"
        self.resume = resume
        self.overwrite = overwrite
        if _rank() == 0:
            self._prepare()

    def _prepare(self) -> None:
        problem = run_dir_problem(self.path, self.resume, self.overwrite)
        if problem:
            raise RunDirError(problem)
        if self.overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.tb_dir.mkdir(parents=True, exist_ok=True)

    @property
    def final_checkpoint(self) -> Path:
        """best.pt when validation chose one, else last.pt (what the next stage should load)."""
        return final_checkpoint(self.stage, self.name, self.path.parent.parent)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resume={self.resume}, overwrite={self.overwrite})"
