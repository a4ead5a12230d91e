"""A device's measured head times: the JSON it sends, checked; applied to the candidates."""

import math

import pytest

from pipeline.device_times import (
    MAX_DEVICE_TIMES,
    device_times_document,
    parse_device_times,
    with_device_times,
)
from pipeline.selection import JPEG_INPUT, RAW_INPUT, Candidate

OFFERED = {"base": ["input", "pool1", "output"], "small": ["input", "output"]}


def test_times_round_trip_through_their_json_form():
    times = {("base", "pool1"): 2.5, ("base", "output"): 4.0, ("small", "output"): 1}
    document = device_times_document(times)
    assert document == {"base": {"pool1": 2.5, "output": 4.0}, "small": {"output": 1.0}}
    assert parse_device_times(document, OFFERED) == times


@pytest.mark.parametrize("document, message", [
    ([], "must be an object"),
    ({"nope": {"output": 1.0}}, "unknown variant 'nope'"),
    ({"base": [1.0]}, r"device_ms\['base'\] must be an object"),
    ({"small": {"pool1": 1.0}}, "names split 'pool1'.*its splits are input, output"),
    ({"base": {"output": -1.0}}, "must be a number of ms"),
    ({"base": {"output": math.nan}}, "must be a number of ms"),
    ({"base": {"output": math.inf}}, "must be a number of ms"),
    ({"base": {"output": True}}, "must be a number of ms"),
    ({"base": {"output": "3"}}, "must be a number of ms"),
    ({"base": {"output": 1e9}}, "must be a number of ms"),
])
def test_bad_times_name_the_bad_entry(document, message):
    with pytest.raises(ValueError, match=message):
        parse_device_times(document, OFFERED)


def test_too_many_times_are_refused():
    offered = {f"v{i}": ["output"] for i in range(MAX_DEVICE_TIMES + 1)}
    with pytest.raises(ValueError, match="more than"):
        parse_device_times({v: {"output": 1.0} for v in offered}, offered)


def test_only_heads_that_run_on_the_device_take_the_measured_time():
    candidates = [Candidate("base", "pool1", 0.9, 100.0, 3.0, 5.0),
                  Candidate("base", "input", 0.9, 1024.0, 0.0, 8.0, RAW_INPUT),
                  Candidate("base", "input", 0.9, 700.0, 0.0, 8.0, JPEG_INPUT),
                  Candidate("small", "output", 0.8, 0.0, 2.0, 0.0)]
    timed = with_device_times(candidates, {("base", "pool1"): 7.5, ("base", "input"): 9.0})
    assert timed[0].head_ms == 7.5 and timed[0].tail_ms == 5.0
    assert timed[1:] == candidates[1:]  # uploads run nothing on the device; small not timed
