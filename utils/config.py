"""Typed stage configs: YAML file + dotted CLI overrides, merged into dataclasses (ARCHITECTURE.md §3, §6.2).

A stage config is a dataclass of sub-config dataclasses (`data`, `model`, `train`, ...). Values come from, in order:
the dataclass defaults, the stage's YAML file (`configs/<dataset>/<stage>.yaml`), and `a.b=value` overrides from the
command line (values are parsed as YAML, so `train.milestones=[1000,2000]` is a list and `train.lr=1e-4` a float).
OmegaConf checks every key and type against the dataclass; any mistake is a `ConfigError` that names the key and the
file or override it came from. Booleans take only true / false (or yes / no, on / off), never numbers. After the merge,
the value checks of the config's dataclasses (their `check_values(prefix)` methods: enumerated choices such as
train.schedule or data.dataset, ranges, cross-key rules) run on the loaded config, so every script refuses a bad
setting right after parsing, before any folder is created or any data is loaded.

    cfg = load_config(RVQStageConfig, "configs/mini/rvq.yaml", ["train.lr=1e-4"])
    cfg, args = stage_cli(RVQStageConfig, "rvq", description=__doc__)   # what every train_*.py does
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import os
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from utils.atomic import atomic_write_text

T = TypeVar("T")

_MOD = "utils/config.py"


class ConfigError(ValueError):
    """A config file or override that does not fit the stage's config dataclass. `key`: the dotted key at fault,
    when one is known."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------------------------
# Value checks: each config dataclass's check_values(prefix), run on every loaded config
# --------------------------------------------------------------------------------------------------------------

def bad_value(key: str, value: Any, expected: str) -> ConfigError:
    """`ConfigError("train.schedule='cosin': expected one of ...", key="train.schedule")`."""
    return ConfigError(f"{key}={value!r}: expected {expected}", key=key)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Refuse `value` unless it is one of `choices`, naming the key, the value and every allowed value."""
    choices = list(choices)
    if value not in choices:
        raise bad_value(key, value, "one of " + ", ".join(repr(c) for c in choices))


def validate_config(cfg: Any, prefix: str = "") -> None:
    """Run `check_values(prefix)` of a config dataclass instance and of each nested one (innermost first).

    A config dataclass that has value rules (enumerated choices, ranges, cross-key rules) defines
    `check_values(self, prefix: str) -> None`, raising `ConfigError` (use `bad_value` / `check_choice`): one line
    naming the key, the bad value and what is allowed. `prefix` is the dotted path of the instance in the stage
    config ("train." for `cfg.train`, "" for the stage config itself), so a check names keys as the user writes them.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "check_values", None)
    if callable(check):
        check(prefix)


# --------------------------------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------------------------------

def _describe(err: OmegaConfBaseException, source: str, schema: type | None = None, key: str | None = None) -> str:
    """One line naming the key, the source, the expected type and what OmegaConf objected to. `key`: the key to
    name when OmegaConf does not know it (e.g. a whole section replaced by a number)."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or key or "?"
    msg = str(getattr(err, "msg", None) or err).splitlines()[0]
    if "Key '" in msg and "not in" in msg or "Missing key" in msg:
        return f"{source}: unknown key '{key}' ({msg}); see --help for the valid keys"
    expected = {k: t for k, t, *_ in describe_schema(schema)}.get(str(key)) if schema is not None else None
    return f"{source}: key '{key}'" + (f" expects {expected}" if expected else "") + f": {msg}"


def _check_schema(schema: type) -> None:
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise ConfigError(f"{_MOD}: schema must be a dataclass type, got {schema!r}")


def _merge(base: DictConfig, other: Any, source: str, schema: type | None = None,
           key: str | None = None) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, source, schema, key)) from None


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")


def _field_types(schema: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # unresolvable annotation: fall back to the raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(schema)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for Optional[T] / T | None, else (tp, False)."""
    args = typing.get_args(tp)
    if args and type(None) in args and typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _check_raw(schema: type, data: Any, source: str, prefix: str = "") -> None:
    """What OmegaConf lets through or reports badly, checked on the raw values before the merge: a section
    (sub-config) given a scalar, and a boolean given anything but true / false (OmegaConf turns 2 into True)."""
    if not isinstance(data, dict):
        return
    fields = _field_types(schema)
    for name, value in data.items():
        if name not in fields:
            continue                                    # unknown keys: OmegaConf names them
        key = f"{prefix}{name}"
        tp, optional = _unwrap_optional(fields[name])
        if value is None and optional:
            continue
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                example = next((f.name for f in dataclasses.fields(tp)), "key")
                raise ConfigError(f"{source}: key '{key}' is a section ({tp.__name__}), not a value; set its keys, "
                                  f"e.g. {key}.{example}=..., got {value!r}", key=key)
            _check_raw(tp, value, source, key + ".")
        elif tp is bool:
            ok = isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _BOOL_WORDS)
            if not ok:
                raise ConfigError(f"{source}: key '{key}' expects a boolean (true or false), got {value!r}", key=key)


def _read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (expected a YAML file such as configs/mini/<stage>.yaml; "
                          f"pass --config PATH)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, train:, ...) at top level, "
                          f"got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`"train.milestones=[1000,2000]"` -> `("train.milestones", [1000, 2000])`; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override {text!r}: expected dotted 'key=value' (e.g. train.lr=1e-4 or "
                          f"train.milestones=[1000,2000])")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from None
    return key, parsed


def _override_node(key: str, value: Any) -> DictConfig:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return OmegaConf.create(node)


def load_config(schema: type[T], path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` instance from its defaults, the YAML file at `path` (None = defaults only) and overrides.

    Raises ConfigError naming the key and the file / override for unknown keys, wrong types and bad syntax.
    """
    _check_schema(schema)
    cfg = OmegaConf.structured(schema)
    if path is not None:
        data = _read_yaml(path)
        _check_raw(schema, data, str(path))
        cfg = _merge(cfg, OmegaConf.create(data), str(path), schema)
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, key, value in parsed:
        source = f"override {text!r}"
        node = _override_node(key, value)
        _check_raw(schema, OmegaConf.to_container(node), source)
        cfg = _merge(cfg, node, source, schema, key)
    obj = _to_object(cfg, str(path) if path is not None else schema.__name__)
    try:
        validate_config(obj)
    except ConfigError as err:
        raise ConfigError(f"{_source_of(err, path, parsed, schema)}: {err}", key=err.key) from None
    return obj


def _source_of(err: ConfigError, path, parsed: Sequence[tuple[str, str, Any]], schema: type) -> str:
    """Where the refused value came from: the last override that set the error's key (or its section), else the
    last override whose key the message names (a rule over two keys), else the file."""
    for text, okey, _ in reversed(parsed):
        if err.key and (err.key == okey or err.key.startswith(okey + ".")):
            return f"override {text!r}"
    for text, okey, _ in reversed(parsed):
        if re.search(rf"(?<![\w.]){re.escape(okey)}(?![\w])", str(err)):
            return f"override {text!r}"
    return str(path) if path is not None else f"defaults of {schema.__name__}"


def _to_object(cfg: DictConfig, source: str):
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:   # e.g. a required field (MISSING) left unset
        raise ConfigError(_describe(err, source)) from None


def to_dict(cfg: Any) -> dict:
    """A plain dict (nested dicts, lists, str/int/float/bool/None) of a config dataclass, dict or DictConfig.

    This is what goes into config.yaml and into checkpoints (`torch.load(weights_only=True)` can read it).
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        node = OmegaConf.structured(cfg)
    elif isinstance(cfg, (DictConfig, ListConfig)):
        node = cfg
    elif isinstance(cfg, dict):
        node = OmegaConf.create(cfg)
    else:
        raise ConfigError(f"{_MOD}: to_dict expects a config dataclass instance or a dict, got {type(cfg).__name__}")
    out = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def from_dict(schema: type[T], d: dict, source: str = "config dict") -> T:
    """Rebuild a `schema` instance from `to_dict` output (e.g. `ckpt["config"]["model"]`), type-checked.

    Keys missing from `d` take the dataclass default; unknown keys are a ConfigError naming `source`.
    """
    _check_schema(schema)
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a dict for {schema.__name__}, got {type(d).__name__}")
    _check_raw(schema, d, source)
    cfg = _merge(OmegaConf.structured(schema), OmegaConf.create(d), source, schema)
    return _to_object(cfg, source)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder + os.replace)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None))


# --------------------------------------------------------------------------------------------------------------
# The shared command line
# --------------------------------------------------------------------------------------------------------------

# What the design notes' section numbers ("reference §5.1", "reference.md §1.3") stand for, in words a user can look
# up: the paper or the public reference code. --help text goes through `user_citations`.
_CITATIONS = {
    "1.1": "HumanML3D layout", "1.2": "HumanML3D text format", "1.3": "T2M / MoMask data loader",
    "1.4": "MoMask data loader", "1.5": "MoMask / T2M normalisation", "1": "HumanML3D / MoMask data code",
    "2.2": "HumanML3D paramUtil.py", "2": "HumanML3D motion_representation.ipynb",
    "3": "Guo et al. 2022 evaluator code", "4": "T2M evaluation code (Guo et al. 2022)",
    "5.1": "MoMask code, options/vq_option.py", "5.2": "MoMask code, models/vq/model.py",
    "5.3": "MoGenTS / ReMoMask code, models/vq", "5": "MoMask / MoGenTS tokenizer code",
    "6.1": "MoMask code, models/mask_transformer", "6.2": "MoMask code, models/mask_transformer",
    "6.3": "ReMoMask / MoGenTS code", "6.4": "ReMoMask official code", "6": "ReMoMask / MoMask code",
    "7": "MoMask code, visualization/joints2bvh.py", "8": "TMR code, retrieval.py", "9": "the reference code",
}
_CITE = re.compile(r"(?:the )?reference(?:\.md)?(?: code)?\s*§\s*(\d+)(?:\.(\d+))?(?:\s*[-/,]\s*§?\s*\d+(?:\.\d+)?)*")


def user_citations(text: str) -> str:
    """`text` with the internal design-note citations ("reference §5.1", "reference.md §1.3", "paper.md §7",
    "reference.md") replaced by what they cite (the paper, or the reference code named by project and file), for
    --help and other user-facing text."""
    def cite(m: re.Match) -> str:
        major, minor = m.group(1), m.group(2)
        return _CITATIONS.get(f"{major}.{minor}" if minor else major) or _CITATIONS.get(major, "the reference code")
    text = _CITE.sub(cite, text)
    # a bare "§6.1" continuing a citation ("(VQ: 0; transformers 1e-5, §6.1)"); paper and ARCHITECTURE sections stay
    text = re.sub(r"(?<!paper )(?<!ARCHITECTURE )(?<!ARCHITECTURE\.md )(?<!\.md )§\s*(\d+)(?:\.(\d+))?", cite, text)
    text = re.sub(r"paper\.md\s*§\s*\d+(?:\.\d+)?", "the paper", text)
    return re.sub(r"`?reference\.md`?", "the reference code", text)


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing `# comments` of a dataclass's field lines (the documented source of each default)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    lines = src.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError):
        return {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            line = lines[tok.start[0] - 1]
            m = re.match(r"\s*([A-Za-z_]\w*)\s*:", line)
            if m:
                comments[m.group(1)] = user_citations(tok.string.lstrip("#").strip())
    return comments


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp.replace("typing.", "")
    name = getattr(tp, "__name__", None)
    return name if name and not getattr(tp, "__args__", None) else str(tp).replace("typing.", "")


def describe_schema(schema: type, prefix: str = "", values: dict | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, value, comment) of every leaf field of a nested config dataclass.

    `values` (a `to_dict` of a loaded config) gives the values to show; by default the schema's own defaults,
    including the `default_factory` values a stage config sets for its sub-configs.
    """
    rows: list[tuple[str, str, str, str]] = []
    comments = _field_comments(schema)
    defaults = values if values is not None else OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # unresolvable annotation: fall back to the raw annotation text
        hints = {}
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        tp = hints.get(f.name, f.type)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows += describe_schema(tp, key + ".", defaults.get(f.name) or {})
            continue
        rows.append((key, _type_name(tp), repr(defaults.get(f.name)), comments.get(f.name, "")))
    return rows


def _help_epilog(schema: type, default_config: str, config_path: str | None = None) -> str:
    """The key table of --help, with the values of `config_path` (the --config given, else the default file)."""
    path = config_path or default_config
    try:
        values, shown = to_dict(load_config(schema, path)), path
    except ConfigError:
        values, shown = None, None
    rows = describe_schema(schema, values=values)
    width = max((len(k) for k, *_ in rows), default=10)
    tw = max((len(t) for _, t, *_ in rows), default=5)
    lines = [f"config file: {default_config} (YAML; override with --config)",
             "overrides: positional KEY=VALUE, values parsed as YAML, e.g. train.lr=1e-4 train.milestones=[1000,2000]",
             "", f"keys ({schema.__name__}; " + (f"values of {shown}" if shown else "dataclass defaults") + "):"]
    for key, tp, default, comment in rows:
        line = f"  {key:<{width}}  {tp:<{tw}}  = {default}"
        lines.append(f"{line}  # {comment}" if comment else line)
    return "\n".join(lines)


def stage_cli(schema: type[T], stage: str, argv: Sequence[str] | None = None,
              description: str = "", check_run_dir: bool = True) -> tuple[T, argparse.Namespace]:
    """Parse the command line every training / evaluation script shares and load the stage config.

    Flags: `--config PATH` (default configs/mini/<stage>.yaml), `--name` (default: the config file's folder, e.g.
    `mini`; the run dir is <runs-root>/<stage>/<name>), `--runs-root` (default runs), `--resume`, `--overwrite`, and
    positional `key=value` overrides. `--help` lists the config keys with types, defaults and their sources.

    Returns (config instance, argparse namespace with config, name, runs_root, resume, overwrite, overrides).
    Config errors, and (with `check_run_dir`) a run dir that exists without --resume / --overwrite or a --resume
    without checkpoint, exit with status 2 and a one-line message (argparse's convention) before any work starts.
    A script with flags of its own builds the parser with `stage_parser`, adds them, and calls `load_stage_config`.
    """
    parser = stage_parser(schema, stage, argv, description)
    args = parser.parse_args(argv)
    return load_stage_config(parser, schema, stage, args, check_run_dir=check_run_dir), args


def stage_parser(schema: type, stage: str, argv: Sequence[str] | None = None, description: str = "",
                 run_flags: bool = True) -> argparse.ArgumentParser:
    """The shared parser of `stage_cli` (`run_flags=False`: without --resume / --overwrite, for scripts that do not
    train). `argv` is only pre-read for `--config`, so that `--help` shows the values of the chosen file."""
    _check_schema(schema)
    default_config = f"configs/mini/{stage}.yaml"
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    chosen = pre.parse_known_args(argv)[0].config
    parser = argparse.ArgumentParser(
        description=user_citations(description or f"Train / run the {stage} stage."),
        epilog=_help_epilog(schema, default_config, chosen),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, metavar="PATH",
                        help=f"stage YAML file (default: {default_config})")
    parser.add_argument("--name", default=None,
                        help="run name; the run dir is <runs-root>/%s/<name> (default: the config file's folder, "
                             "e.g. 'mini')" % stage)
    parser.add_argument("--runs-root", default="runs", metavar="DIR", help="root of all run dirs (default: runs)")
    if run_flags:
        parser.add_argument("--resume", action="store_true", help="continue the run from its checkpoints/last.pt")
        parser.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of data / config / checkpoint errors (normally one line)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def load_stage_config(parser: argparse.ArgumentParser, schema: type[T], stage: str, args: argparse.Namespace,
                      extra_overrides: Sequence[str] = (), check_run_dir: bool = True) -> T:
    """The config of parsed `stage_parser` arguments: `args.config` + `args.overrides` + `extra_overrides` (flags a
    script maps to keys). Fills the default `args.name`; errors exit through `parser.error` (see `stage_cli`)."""
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        parser.error("--resume and --overwrite exclude each other: resume continues a run, overwrite deletes it")
    if args.name is None:
        args.name = Path(args.config).resolve().parent.name or stage
    try:
        cfg = load_config(schema, args.config, [*args.overrides, *extra_overrides])
        check_device(cfg)
    except ConfigError as err:
        parser.error(str(err))
    if check_run_dir:
        check_stage_run_dir(parser, stage, args, cfg)
    return cfg


def check_device(cfg: Any) -> None:
    """Refuse a `train.device` / `device` that does not exist on this machine (e.g. cuda without CUDA), as a
    ConfigError naming the key; scripts call it on loading, configs built in code meet it in select_device."""
    for key, holder in (("train.device", getattr(cfg, "train", None)), ("device", cfg)):
        name = getattr(holder, "device", None)
        if not isinstance(name, str):
            continue
        from utils.distributed import resolve_device
        try:
            resolve_device(name)
        except ValueError as err:
            raise ConfigError(str(err).replace("train.device=", f"{key}=", 1), key=key) from None


def writable_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why the folder `path` (created later, with its parents) cannot be written (None = it can): its nearest
    existing ancestor must be a folder in which a file can be created. Creates nothing that stays."""
    import tempfile

    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{what} {path} cannot be created: {probe} is a file, not a folder; choose another location"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".remomask-write-test-", dir=probe)
    except OSError as err:
        return (f"{what} {path} is not writable ({probe}: {err.strerror or err}); choose a writable location "
                f"(e.g. --runs-root DIR)")
    os.close(fd)
    os.unlink(tmp)
    return None


def check_stage_run_dir(parser: argparse.ArgumentParser, stage: str, args: argparse.Namespace, cfg: Any) -> None:
    """The run dir checks of `load_stage_config`, before any work (exit 2 through `parser.error`): the folder is
    writable, an existing run is not clobbered without --resume / --overwrite, and a --resume override changes only
    keys utils.run_dir.RESUME_CHANGEABLE allows (compared with the config stored in last.pt; only the overridden keys,
    since a task may still fill derived fields, e.g. the generator's token-map sizes; the Trainer compares the whole
    resolved config when it loads last.pt). Rank 0 only. A script that adjusts its config after loading
    (train_evaluator.py) calls it itself with the adjusted config."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from utils.run_dir import run_dir_problem

    path = Path(args.runs_root) / stage / args.name
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    problem = run_dir_problem(path, resume, overwrite) or writable_problem(path, "run dir")
    if problem:
        parser.error(problem)
    last = path / "checkpoints" / "last.pt"
    if resume and last.is_file():
        saved = _checkpoint_config(last)
        if saved is not None:
            from utils.run_dir import check_resume_config
            keys = [parse_override(text)[0] for text in getattr(args, "overrides", ())]
            try:
                check_resume_config(saved, to_dict(cfg), str(last), only=keys)
            except ConfigError as err:
                parser.error(str(err))


def _checkpoint_config(path: Path) -> dict | None:
    """The `config` of a checkpoint, read memory-mapped (cheap for large files); None when it cannot be read (the
    Trainer reports that when it loads the file)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    return config if isinstance(config, dict) else None
