"""Flags from an options dataclass (`twostep/option_flags.py`): the device verb's, which must
parse where pydantic, torch and Ray are not installed."""

import argparse
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pipeline.cost import parse_bandwidth
from twostep.option_flags import add_option_flags, check_options, option, options_from_args


@dataclass(frozen=True)
class Knobs:
    rate: float | None = option(None, "a rate", low=0.0, above=True, read=parse_bandwidth)
    count: int = option(3, "how many", low=1, high=10)
    mode: str = option("a", "which", choices=("a", "b"))
    loud: bool = option(False, "say more")
    name: str | None = option(None, "a name")

    def __post_init__(self):
        check_options(self)


def _parse(*argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_option_flags(parser, Knobs)
    return options_from_args(Knobs, parser.parse_args(argv))


def test_flags_left_out_keep_the_defaults_and_given_ones_are_read_by_their_type():
    assert _parse() == Knobs()
    knobs = _parse("--rate", "1mbit", "--count", "7", "--mode", "b", "--loud", "--name", "x")
    assert knobs == Knobs(rate=1e6, count=7, mode="b", loud=True, name="x")
    assert _parse("--no-loud").loud is False


@pytest.mark.parametrize(("argv", "message"), [
    (("--count", "0"), "--count must be in [1, 10], got 0"),
    (("--count", "11"), "--count must be in [1, 10], got 11"),
    (("--count", "-2"), "--count must be in [1, 10], got -2"),
])
def test_a_value_out_of_its_bounds_is_named(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _parse(*argv)


def test_a_bad_text_or_choice_is_refused_by_the_parser():
    for argv in (("--rate", "fast"), ("--rate", "0"), ("--mode", "c"), ("--count", "many")):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            _parse(*argv)


def test_the_device_verb_parses_without_pydantic_torch_or_ray():
    blocked = ("torch", "torchvision", "ray", "pydantic", "fastapi", "starlette", "safetensors")
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            "from twostep.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "device", "plan", "--calls", "3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give --time-heads N too" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-c", code, "device", "fetch", "v", "pool2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--output (-o) is required" in done.stderr, done.stderr
