"""The run directory: everything one run writes lives under `<root>/<stage>/<name>/` (ARCHITECTURE.md §3).

    runs/rvq/mini/
      config.yaml            the resolved config (utils.config.save_config)
      checkpoints/last.pt    full training state, written every `ckpt_every` steps and at the end
      checkpoints/best.pt    the best validation checkpoint
      tb/                    tensorboard events
      eval.json, eval.md     evaluation reports

A run is protected once it holds a checkpoint (`checkpoints/last.pt` or `best.pt`): a second run with the same name
is then refused unless `resume` (continue from last.pt) or `overwrite` (delete the old run first) is given. A folder
without a checkpoint (a start that stopped before its first checkpoint: a config error found late, a NaN at step 1,
a `kill -9`) holds nothing worth protecting and is reused by a plain rerun, and `resume` without last.pt starts from
step 0 with a warning, so both ways out of such a folder work. Reusing or resuming sweeps the orphan temp files
(`.<name>.<random>.tmp<suffix>`, utils.atomic) that a process killed during a write leaves behind, and a reused
folder loses its stale tensorboard events. Under torchrun only rank 0 touches the file system; the other ranks only
compute the paths.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("remomask.run_dir")

# utils.atomic's temp names: ".<target name>.<12 hex>.tmp<suffix>"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[^.]*)?$")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (exists, or has nothing to resume from)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def checkpoints_of(path: str | os.PathLike) -> list[Path]:
    """The checkpoint files (`checkpoints/*.pt`, not the hidden temp files of an interrupted write) of a run."""
    ckpt_dir = Path(path) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("*.pt") if not p.name.startswith(".") and p.is_file())


def run_started(path: str | os.PathLike) -> bool:
    """Whether the folder holds a run worth protecting: a checkpoint (checkpoints/*.pt). A folder with only
    config.yaml, tb/ events or orphan temp files (a start that stopped before its first checkpoint) is not."""
    return bool(checkpoints_of(path))


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Orphan temp files of utils.atomic (a writer killed mid-write) in the run folder and its checkpoints/."""
    path = Path(path)
    out = []
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            out += [p for p in folder.iterdir() if p.is_file() and _TEMP_NAME.match(p.name)]
    return sorted(out)


def run_dir_problem(path: str | os.PathLike, resume: bool, overwrite: bool) -> str | None:
    """Why the run at `path` cannot start as asked (None = it can). Shared by RunDir and utils.config.stage_cli,
    which checks before any data is loaded. A started run (one with a checkpoint) is refused without --resume /
    --overwrite; everything else can start (`run_dir_note` says what will happen)."""
    path = Path(path)
    if resume and overwrite:
        return ("resume and overwrite exclude each other (resume continues a run, overwrite deletes it); pass only "
                "one of --resume / --overwrite")
    if path.exists() and not path.is_dir():
        return f"run dir {path} exists but is not a folder; remove it or choose another --name / --runs-root"
    if not resume and not overwrite and run_started(path):
        names = ", ".join(p.name for p in checkpoints_of(path))
        return (f"run dir {path} already exists with checkpoints ({names}); pass --resume to continue it or "
                f"--overwrite to delete it and start again (or choose another --name)")
    return None


def run_dir_note(path: str | os.PathLike, resume: bool, overwrite: bool) -> str | None:
    """What starting at `path` does besides the obvious (None = nothing to say): a reused folder, or a --resume
    that has no last.pt and therefore starts from step 0. Logged at WARNING by RunDir."""
    path = Path(path)
    if overwrite or not path.is_dir() or not any(path.iterdir()):
        return None
    last = path / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        kept = [p.name for p in checkpoints_of(path)]
        return (f"--resume: {path} has no checkpoints/last.pt (the run stopped before its first checkpoint); "
                f"starting from step 0 in the same folder" + (f" ({', '.join(kept)} will be replaced)" if kept else ""))
    if not resume and not run_started(path):
        return (f"reusing run dir {path}: it holds no checkpoint (a start that stopped before its first checkpoint); "
                f"starting from step 0")
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
        resume: continue an existing run from its checkpoints/last.pt; without one, start from step 0 (warning)
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

    @property
    def resuming(self) -> bool:
        """Whether training continues from last.pt (`resume` and the file exists); else it starts at step 0."""
        return self.resume and self.last.is_file()

    def _prepare(self) -> None:
        problem = run_dir_problem(self.path, self.resume, self.overwrite)
        if problem:
            raise RunDirError(problem)
        note = run_dir_note(self.path, self.resume, self.overwrite)
        if note:
            log.warning("%s", note)
        if self.overwrite and self.path.exists():
            shutil.rmtree(self.path)
        for tmp in temp_files(self.path):
            log.warning("removing %s, the temp file of a write that was interrupted (%d bytes)", tmp,
                        tmp.stat().st_size)
            tmp.unlink()
        if not self.resuming and self.tb_dir.is_dir() and not run_started(self.path):
            shutil.rmtree(self.tb_dir)          # events of a start that never reached a checkpoint
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.tb_dir.mkdir(parents=True, exist_ok=True)

    @property
    def final_checkpoint(self) -> Path:
        """best.pt when validation chose one, else last.pt (what the next stage should load)."""
        return final_checkpoint(self.stage, self.name, self.path.parent.parent)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resume={self.resume}, overwrite={self.overwrite})"


# Keys a --resume may change, each because the resumed run really uses the new value: the loop reads them every step
# (step budget, frequencies, clipping, loader workers, device), the Trainer re-applies train.lr to the restored
# optimizer and scheduler, and the scripts read the rest after loading (data location, after-training steps). The
# generator stages' upstream paths may move: the Trainer checks the weights they hold by fingerprint. Every
# other key (model.*, data.* but root, seed, batch size, optimizer and schedule shape, loss weights, ...) defines the
# run: changing it on resume is refused (`check_resume_config`), since the restored state would silently keep the old
# value while config.yaml recorded the new one.
RESUME_CHANGEABLE = (
    "train.max_steps", "train.epochs", "train.lr", "train.grad_clip", "train.log_every", "train.val_every",
    "train.val_every_epochs", "train.ckpt_every", "train.num_workers", "train.device",
    "data.root", "val.render", "retriever.build_database", "retriever.final_eval", "retriever.database_batch_size",
    "upstream.tokenizer", "upstream.retriever", "upstream.database", "upstream.cache_dir", "upstream.encode_batch_size",
    "val.sample_prompts", "val.sample_lengths",
)


def check_resume_config(saved: dict, new: dict, source: str, only: Iterable[str] | None = None) -> list[str]:
    """Refuse a resume whose config changes a key outside RESUME_CHANGEABLE (ConfigError naming the key, both values
    and `source`, the checkpoint it is compared with). Returns the allowed changes as "key: old -> new" lines. A key
    missing from `saved` (written before the key existed) is not compared. `only`: compare just these dotted keys
    (and the keys under them), e.g. the command line's overrides before a task has resolved its derived fields."""
    prefixes = None if only is None else tuple(only)
    changed = []
    for key, old, value in _diff_leaves(saved, new):
        if prefixes is not None and not any(key == p or key.startswith(p + ".") for p in prefixes):
            continue
        if key in RESUME_CHANGEABLE:
            changed.append(f"{key}: {old!r} -> {value!r}")
            continue
        from utils.config import ConfigError

        raise ConfigError(f"--resume: {key}={value!r} differs from the run's {key}={old!r} ({source}); it cannot "
                          f"change on resume (what can: train.max_steps / epochs / lr / grad_clip, the log, val and "
                          f"checkpoint frequencies, train.num_workers / device, data.root, the after-training switches "
                          f"and upstream paths; utils.run_dir.RESUME_CHANGEABLE); drop the override, or start a new "
                          f"run with --overwrite or another --name", key=key)
    return changed


def _diff_leaves(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of the leaves that differ between two nested config dicts; keys absent
    from `a` are skipped (a config written before they existed)."""
    out = []
    for k in sorted(b, key=str):
        if k not in a:
            continue
        va, vb = a[k], b[k]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_leaves(va, vb, f"{prefix}{k}.")
        elif va != vb and not (_is_seq(va) and _is_seq(vb) and list(va) == list(vb)):
            out.append((f"{prefix}{k}", va, vb))
    return out


def _is_seq(x: Any) -> bool:
    return isinstance(x, (list, tuple))
