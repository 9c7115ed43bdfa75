"""utils/config.py: YAML + dotted overrides merged into typed dataclasses, errors that name the key, the shared CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import pytest
import yaml

from datasets.motion_dataset import DataConfig
from tests.toy_task import ToyStageConfig
from utils.config import ConfigError, from_dict, load_config, parse_override, save_config, stage_cli, to_dict
from utils.training import TrainConfig


@dataclass
class Inner:
    depth: int = 2            # toy default
    ratio: float = 0.5


@dataclass
class Nested:
    inner: Inner = field(default_factory=Inner)
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Stage:
    """A stage config with two levels of nesting."""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Nested = field(default_factory=Nested)
    flag: bool = False


def write(tmp_path: Path, text: str, name: str = "rvq.yaml", folder: str = "mini") -> Path:
    path = tmp_path / "configs" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_then_overrides_merge_into_typed_dataclasses(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.001\n  milestones: [10, 20]\nmodel:\n  inner:\n    depth: 4\n")
    cfg = load_config(Stage, path, ["train.lr=1e-4", "model.inner.ratio=0.25", "model.names=[x,y]", "flag=true"])
    assert isinstance(cfg, Stage) and isinstance(cfg.model.inner, Inner)
    assert cfg.train.lr == pytest.approx(1e-4)              # override beats YAML
    assert cfg.train.milestones == [10, 20]                  # YAML list kept
    assert cfg.model.inner.depth == 4                        # YAML, nested two levels
    assert cfg.model.inner.ratio == 0.25                     # override, nested two levels
    assert cfg.model.names == ["x", "y"]
    assert cfg.flag is True
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched default


def test_list_override_replaces_the_whole_list(tmp_path):
    path = write(tmp_path, "train:\n  milestones: [1, 2, 3]\n")
    cfg = load_config(Stage, path, ["train.milestones=[1000,2000]"])
    assert cfg.train.milestones == [1000, 2000]
    assert load_config(Stage, path, ["train.milestones=[]"]).train.milestones == []


def test_int_given_for_float_is_converted(tmp_path):
    cfg = load_config(Stage, None, ["train.lr=1"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Stage, path)
    assert "train.lrr" in str(err.value) and str(path) in str(err.value)


def test_unknown_override_key_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.inner\.dpth"):
        load_config(Stage, None, ["model.inner.dpth=3"])


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(Stage, path)
    assert "train.batch_size" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match=r"train\.milestones"):
        load_config(Stage, None, ["train.milestones=3"])
    with pytest.raises(ConfigError, match=r"flag"):
        load_config(Stage, None, ["flag=[1]"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Stage, None, ["train.lr"])
    with pytest.raises(ConfigError, match=r"not found"):
        load_config(Stage, tmp_path / "nope.yaml")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")


def test_non_mapping_yaml_is_refused(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Stage, path)


def test_to_dict_from_dict_and_saved_yaml_round_trip(tmp_path):
    cfg = load_config(Stage, None, ["train.milestones=[5,7]", "model.names=[p,q]", "train.betas=[0.8,0.9]"])
    d = to_dict(cfg)
    assert d["train"]["milestones"] == [5, 7] and d["model"]["inner"] == {"depth": 2, "ratio": 0.5}
    assert from_dict(Stage, d) == cfg
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Stage, tmp_path / "run" / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == d
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]   # no temp file left


def test_from_dict_refuses_unknown_keys_naming_source():
    with pytest.raises(ConfigError, match=r"ckpt\.pt.*inner\.width|inner\.width.*"):
        from_dict(Nested, {"inner": {"width": 3}}, source="ckpt.pt")


def test_stage_cli_defaults_and_overrides(tmp_path, monkeypatch):
    write(tmp_path, "width: 32\n", name="toy.yaml", folder="mini")
    monkeypatch.chdir(tmp_path)
    cfg, args = stage_cli(ToyStageConfig, "toy", ["train.lr=0.5", "tags=[a,b]"])
    assert args.config == "configs/mini/toy.yaml" and args.name == "mini" and args.runs_root == "runs"
    assert not args.resume and not args.overwrite
    assert cfg.width == 32 and cfg.train.lr == 0.5 and cfg.tags == ["a", "b"]


def test_stage_cli_name_follows_the_config_folder(tmp_path):
    path = write(tmp_path, "", name="toy.yaml", folder="humanml3d")
    _, args = stage_cli(ToyStageConfig, "toy", ["--config", str(path), "--resume", "--runs-root", "x"],
                        check_run_dir=False)
    assert args.name == "humanml3d" and args.resume and args.runs_root == "x"


def test_stage_cli_bad_key_exits_with_message(tmp_path, capsys):
    path = write(tmp_path, "", name="toy.yaml")
    with pytest.raises(SystemExit) as ex:
        stage_cli(ToyStageConfig, "toy", ["--config", str(path), "train.nope=1"])
    assert ex.value.code == 2
    assert "train.nope" in capsys.readouterr().err


def test_stage_cli_refuses_resume_with_overwrite(tmp_path, capsys):
    path = write(tmp_path, "", name="toy.yaml")
    with pytest.raises(SystemExit):
        stage_cli(ToyStageConfig, "toy", ["--config", str(path), "--resume", "--overwrite"])
    assert "--resume" in capsys.readouterr().err


def test_help_lists_config_file_keys_types_defaults_and_sources(capsys):
    with pytest.raises(SystemExit) as ex:
        stage_cli(ToyStageConfig, "toy", ["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert "configs/mini/toy.yaml" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  train.") or
             line.startswith("  width") or line.startswith("  tags")}
    assert "float" in lines["train.lr"] and "0.0002" in lines["train.lr"] and "paper §4.1" in lines["train.lr"]
    assert "list[int]" in lines["train.milestones"] and "[]" in lines["train.milestones"]
    assert "int" in lines["width"] and "16" in lines["width"]
    assert "list[str]" in lines["tags"]
    for flag in ("--config", "--name", "--runs-root", "--resume", "--overwrite"):
        assert flag in out


def test_stage_cli_checks_the_run_dir_before_any_work(tmp_path, capsys):
    path = write(tmp_path, "", name="toy.yaml")
    runs = tmp_path / "runs"
    common = ["--config", str(path), "--runs-root", str(runs)]
    _, args = stage_cli(ToyStageConfig, "toy", [*common, "--resume"])     # nothing to resume: starts at step 0
    assert args.resume and not runs.exists()
    (runs / "toy" / "mini" / "checkpoints").mkdir(parents=True)
    (runs / "toy" / "mini" / "config.yaml").write_text("{}\n")
    stage_cli(ToyStageConfig, "toy", common)            # config.yaml without a checkpoint: reused
    (runs / "toy" / "mini" / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        stage_cli(ToyStageConfig, "toy", common)
    assert "already exists with checkpoints (last.pt); pass --resume" in capsys.readouterr().err
    _, args = stage_cli(ToyStageConfig, "toy", [*common, "--overwrite"])
    assert args.overwrite and (runs / "toy" / "mini" / "config.yaml").exists()   # the CLI deletes nothing


def test_stage_parser_takes_script_flags_that_map_to_config_keys(tmp_path, capsys):
    from utils.config import load_stage_config, stage_parser

    path = write(tmp_path, "width: 32\n", name="toy.yaml")
    argv = ["--config", str(path), "--fast", "train.lr=0.5", "width=8"]
    parser = stage_parser(ToyStageConfig, "toy", argv, run_flags=False)
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args(argv)
    assert args.fast and not hasattr(args, "resume")
    cfg = load_stage_config(parser, ToyStageConfig, "toy", args, extra_overrides=["width=4"], check_run_dir=False)
    assert cfg.train.lr == 0.5 and cfg.width == 4                 # script flags come after the positional overrides
    assert args.name == "mini"
    with pytest.raises(SystemExit):
        parser.parse_args(["--resume"])                             # run_flags=False: no --resume / --overwrite
    assert "unrecognized arguments: --resume" in capsys.readouterr().err


# ---- value checks right after loading, strict booleans, section keys, failed starts ----------------------------

@dataclass
class DataStage:
    """A stage with the shared data and train sections (checked by their check_values methods)."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_enumerated_train_and_data_settings_name_key_value_and_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DataStage, None, ["train.schedule=cosin"])
    assert str(err.value) == ("override 'train.schedule=cosin': train.schedule='cosin': expected one of "
                              "'constant', 'multistep', 'cosine'")
    assert err.value.key == "train.schedule"
    with pytest.raises(ConfigError) as err:
        load_config(DataStage, None, ["data.dataset=xyz"])
    assert str(err.value) == "override 'data.dataset=xyz': data.dataset='xyz': expected one of 't2m', 'kit'"
    with pytest.raises(ConfigError, match=r"train\.optimizer='sgd': expected one of 'adamw', 'adam'"):
        load_config(DataStage, None, ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"train\.device='gpu': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        load_config(DataStage, None, ["train.device=gpu"])
    # a bad value from the YAML file names the file
    path = write(tmp_path, "train:\n  schedule: linear\n")
    with pytest.raises(ConfigError) as err:
        load_config(DataStage, path)
    assert str(err.value).startswith(f"{path}: train.schedule='linear': expected one of")


def test_value_checks_cover_ranges_and_key_pairs():
    with pytest.raises(ConfigError, match=r"^override 'train\.accum_steps=0': train\.accum_steps=0: expected an "
                                          r"integer >= 1$"):
        load_config(DataStage, None, ["train.accum_steps=0"])
    with pytest.raises(ConfigError, match=r"train\.lr=0\.0: expected a number > 0"):
        load_config(DataStage, None, ["train.lr=0"])
    with pytest.raises(ConfigError, match=r"data\.feat_bias=0\.0: expected a number > 0"):
        load_config(DataStage, None, ["data.feat_bias=0"])
    with pytest.raises(ConfigError, match=r"^override 'train\.fp16=true': train\.bf16 and train\.fp16 are both true"):
        load_config(DataStage, None, ["train.bf16=true", "train.fp16=true"])


@dataclass
class Colour:
    name: str = "red"
    seen: ClassVar[list[str]] = []          # prefixes check_values was called with

    def check_values(self, prefix: str) -> None:
        from utils.config import check_choice

        Colour.seen.append(prefix)
        check_choice(prefix + "name", self.name, ("red", "blue"))


@dataclass
class Outer:
    inner: Colour = field(default_factory=Colour)


def test_value_checks_get_the_dotted_prefix_of_their_section():
    assert load_config(Outer, None, ["inner.name=blue"]).inner.name == "blue"
    assert Colour.seen[-1] == "inner."
    with pytest.raises(ConfigError, match=r"^override 'inner\.name=green': inner\.name='green': expected one of "
                                          r"'red', 'blue'$"):
        load_config(Outer, None, ["inner.name=green"])


def test_booleans_take_only_true_or_false_naming_the_key(tmp_path):
    for value in ("2", "1", "0", "2.5", "null", "maybe"):
        with pytest.raises(ConfigError) as err:
            load_config(Stage, None, [f"train.bf16={value}"])
        assert str(err.value).startswith(f"override 'train.bf16={value}': key 'train.bf16' expects a boolean "
                                         f"(true or false), got ")
    for value, expected in (("true", True), ("false", False), ("True", True), ("yes", True), ("no", False)):
        assert load_config(Stage, None, [f"train.bf16={value}"]).train.bf16 is expected
    path = write(tmp_path, "flag: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: key 'flag' expects a boolean \(true or false\), got 2$"):
        load_config(Stage, path)
    with pytest.raises(ConfigError, match=r"ckpt\.pt: key 'flag' expects a boolean"):
        from_dict(Stage, {"flag": 1}, source="ckpt.pt")


def test_a_section_given_a_value_names_the_section(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Stage, None, ["train=5"])
    assert "'?'" not in str(err.value)
    assert str(err.value).startswith("override 'train=5': key 'train' is a section (TrainConfig), not a value")
    path = write(tmp_path, "model: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: key 'model' is a section \(Nested\)"):
        load_config(Stage, path)


def test_stage_cli_refuses_a_bad_setting_before_touching_the_run_dir(tmp_path, capsys):
    path = write(tmp_path, "", name="toy.yaml")
    runs = tmp_path / "runs"
    for bad, expected in (("train.schedule=cosin", "train.schedule='cosin': expected one of 'constant', "
                                                   "'multistep', 'cosine'"),
                          ("train.bf16=2", "key 'train.bf16' expects a boolean (true or false), got 2")):
        with pytest.raises(SystemExit) as ex:
            stage_cli(ToyStageConfig, "toy", ["--config", str(path), "--runs-root", str(runs), bad])
        assert ex.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
        assert ": error: override" in err.strip().splitlines()[-1]          # one line after the usage
    assert not runs.exists()


def test_a_failed_start_does_not_block_the_rerun(tmp_path, capsys):
    from utils.run_dir import RunDir, run_dir_problem

    path = write(tmp_path, "", name="toy.yaml")
    runs = tmp_path / "runs"
    failed = runs / "toy" / "mini"
    (failed / "checkpoints").mkdir(parents=True)                # what a crash before training leaves behind
    (failed / "tb").mkdir()
    assert run_dir_problem(failed, resume=False, overwrite=False) is None
    cfg, args = stage_cli(ToyStageConfig, "toy", ["--config", str(path), "--runs-root", str(runs)])
    assert not args.overwrite
    run = RunDir("toy", args.name, runs)
    assert run.ckpt_dir.is_dir() and run.tb_dir.is_dir()
    # config.yaml alone (a NaN at step 1, a kill before the first checkpoint) is still reused; a checkpoint is not
    (failed / "config.yaml").write_text("{}\n")
    assert run_dir_problem(failed, resume=False, overwrite=False) is None
    (failed / "checkpoints" / ".last.pt.0123456789ab.tmp.pt").write_bytes(b"x")     # an interrupted first save
    assert run_dir_problem(failed, resume=False, overwrite=False) is None
    (failed / "checkpoints" / "last.pt").write_bytes(b"x")
    assert "already exists" in run_dir_problem(failed, resume=False, overwrite=False)
    with pytest.raises(SystemExit):
        stage_cli(ToyStageConfig, "toy", ["--config", str(path), "--runs-root", str(runs)])
    assert "already exists with checkpoints (last.pt); pass --resume" in capsys.readouterr().err
