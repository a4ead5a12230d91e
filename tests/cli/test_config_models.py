"""The typed config models are the one source of TOML keys, flags, validation and the docs."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, PruneConfig, TrainConfig, build_config, make_config
from twostep.cli import build_parser
from twostep.config_docs import MODELS, render


def test_the_generated_docs_and_schemas_are_up_to_date():
    stale = [str(path) for path, text in render().items()
             if not path.is_file() or path.read_text() != text]
    assert stale == [], "run: python -m twostep.config_docs"


@pytest.mark.parametrize("stem, model", [(stem, model) for stem, model, _ in MODELS])
def test_every_key_has_a_description(stem, model):
    assert [name for name, f in model.model_fields.items() if not f.description] == []


@pytest.mark.parametrize("verb, model", [("train", TrainConfig), ("prune", PruneConfig)])
def test_a_flag_and_its_toml_key_give_the_same_config(verb, model, tmp_path):
    from importlib import import_module

    flags = {"step1_budget": "0.02", "step2_splits": "pool1,pool3", "augment": False,
             "epochs": "3", "width": "0.5", "criterion": "l1"}
    keys = {k: v for k, v in flags.items() if k in model.model_fields}
    argv = [verb]
    for key, value in keys.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else ["--no-" + flag[2:]] if value is False else [flag, value]
    parser, _ = build_parser(verb)
    args = parser.parse_args(argv)
    from_flags = import_module(f"twostep.commands.{verb}").config_from_args(args)
    toml = "\n".join(f"{k} = {_toml(v)}" for k, v in keys.items())
    (tmp_path / "c.toml").write_text(f"[{verb}]\n{toml}\n")
    from_file = make_config(model, tmp_path / "c.toml", verb)
    assert from_flags == from_file != model()


def _toml(value):
    if isinstance(value, bool):
        return str(value).lower()
    if "," in value:
        return "[" + ", ".join(f'"{v}"' for v in value.split(",")) + "]"
    try:
        float(value)
        return value
    except ValueError:
        return f'"{value}"'


def test_replace_validates_and_names_the_key():
    config = PruneConfig()
    assert config.replace(step2_steps=3).step2_steps == 3
    with pytest.raises(ConfigError, match=r"step2_steps must be in \[1, 1000\], got 0"):
        config.replace(step2_steps=0)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['step2_step'\]"):
        config.replace(step2_step=3)


def test_errors_name_every_bad_key_in_one_line():
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, {"width": -1, "lr": "fast", "device": "tpu"})
    message = str(info.value)
    assert "\n" not in message
    assert "width must be in (0.0, 16.0]" in message and "lr:" in message and "'tpu'" in message


def test_a_renamed_key_says_what_replaces_it():
    from twostep.demo_config import DemoSettings

    with pytest.raises(ConfigError, match=r"bandwidths_mbit is now bandwidths \(bit/s"):
        build_config(DemoSettings, {"bandwidths_mbit": [0.1, 1.0]})


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("configs/*.toml")),
                         ids=lambda p: p.name)
def test_the_example_configs_are_valid_and_name_real_split_points(path):
    from pipeline.config import read_toml
    from pipeline.models import make_spec
    from pipeline.split import split_points

    sections = read_toml(path)
    assert set(sections) <= {"train", "prune", "demo"}, path
    train = make_config(TrainConfig, path, "train") if "train" in sections else TrainConfig()
    if "prune" in sections:
        prune = make_config(PruneConfig, path, "prune")
        points = split_points(make_spec(train.arch, train.width))
        assert set(prune.step2_splits) <= set(points[1:-1]), prune.step2_splits
