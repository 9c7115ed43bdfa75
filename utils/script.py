"""How every script reports project errors: one line and an exit code, tracebacks only for real bugs.

    if __name__ == "__main__":
        sys.exit(run_script(main, prog="train_rvq.py"))

`run_script(main, argv)` calls `main(argv)` and turns the project's own error classes (a bad setting, a bad data
file, a checkpoint that does not fit, a run dir that cannot be used, a NaN stop, ...) into `prog: message` on stderr
and an exit code: 2 for configuration errors (the argparse convention that `utils.config` uses for settings refused
at load), 1 for everything else the user can fix (data, checkpoints, files). Any other exception is a bug and keeps
its traceback. `--debug` on the command line (or REMOMASK_DEBUG=1) re-raises project errors too, with the traceback.
argparse's own exits (`--help`, usage errors) pass through unchanged. Warnings print as `prog: warning: message`,
one line each (Python's two-line format with the source line under `--debug`).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Sequence


def config_errors() -> tuple[type[BaseException], ...]:
    """Errors of a setting (exit code 2)."""
    from utils.config import ConfigError
    from utils.evaluation import EvalConfigError

    return ConfigError, EvalConfigError


def project_errors() -> tuple[type[BaseException], ...]:
    """Errors of input the user controls (data, checkpoints, files, run dirs, a diverging run): exit code 1."""
    from datasets.motion_dataset import DatasetError
    from datasets.registry import UnknownDatasetError
    from datasets.word_vectorizer import GloveError
    from models.evaluator import EvaluatorLoadError
    from models.pipeline import PipelineError
    from models.retriever import RetrieverError
    from models.text_encoders import TextEncoderError
    from utils.checkpoint import CheckpointError
    from utils.evaluation import EvaluationError
    from utils.prompts import PromptsError
    from utils.bvh import BVHError
    from utils.run_dir import RunDirError
    from utils.tasks.generator_data import GeneratorDataError
    from utils.training import NonFiniteLossError

    return (DatasetError, UnknownDatasetError, GloveError, BVHError, CheckpointError, RetrieverError, TextEncoderError, EvaluatorLoadError, EvaluationError,
            RunDirError, NonFiniteLossError, PromptsError, PipelineError, GeneratorDataError)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (or its class name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _one_line_warning(prog: str) -> Callable:
    """A `warnings.showwarning` that prints `prog: warning: <first line>` (no source line; `--debug` keeps Python's
    own format)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {one_line(message)}", file=file or sys.stderr)
    return show


def run_script(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None,
               prog: str | None = None) -> int:
    """Run `main(argv)` and return its exit code (0 when it returns None or a non-int such as a metrics dict).

    Project errors print `prog: message` (one line) on stderr and return 2 (configuration) or 1 (anything else);
    with `--debug` in argv (or REMOMASK_DEBUG=1) they are re-raised. KeyboardInterrupt returns 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0]) or "remomask"
    debug = "--debug" in args or os.environ.get("REMOMASK_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning(prog)
            rc = main(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except config_errors() as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except project_errors() as err:
        if debug:
            raise
        print(f"{prog}: {one_line(err)}", file=sys.stderr)
        return 1
    except OSError as err:          # a file the user named that cannot be read or written
        if debug or err.filename is None:
            raise
        print(f"{prog}: {err.filename}: {err.strerror or one_line(err)}", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
