"""The frame deadline: which on-device candidate finishes a frame that missed it, how long the
deadline is, and what the given-up frame tells the estimator."""

import pytest

from pipeline.selection import ON_DEVICE, Candidate
from serve.deadline import censored_seconds, deadline_ms, fallback_candidate


def _c(variant, split, accuracy, nbytes, head_ms):
    return Candidate(variant, split, accuracy, nbytes, head_ms, 0.0 if nbytes == 0 else 1.0,
                     ON_DEVICE if nbytes == 0 else "split")


CANDIDATES = [_c("base", "output", 0.93, 0, 60.0), _c("s1", "output", 0.925, 0, 40.0),
              _c("s2", "output", 0.90, 0, 20.0), _c("s2", "pool4", 0.90, 160, 30.0)]


def test_the_fastest_on_device_candidate_that_meets_the_floor_finishes_the_frame():
    assert fallback_candidate(CANDIDATES, 0.92).variant_id == "s1"
    assert fallback_candidate(CANDIDATES, 0.80).variant_id == "s2"
    # nothing on the device meets the floor (or none given): the most accurate one
    assert fallback_candidate(CANDIDATES, 0.99).variant_id == "base"
    assert fallback_candidate(CANDIDATES, None).variant_id == "base"
    assert fallback_candidate(CANDIDATES[3:], 0.8) is None


def test_the_deadline_is_a_setting_or_a_multiple_of_the_on_device_time():
    fallback = CANDIDATES[1]
    assert deadline_ms(fallback, None, 2.0) == pytest.approx(80.0)
    assert deadline_ms(fallback, 250.0, 2.0) == 250.0
    assert deadline_ms(fallback, None, 0.0) is None
    assert deadline_ms(None, 250.0, 2.0) is None  # nothing could finish it on the device


def test_a_given_up_frame_is_a_sample_of_its_time_on_the_wire():
    assert censored_seconds(0.5, 0.1) == pytest.approx(0.4)
    assert censored_seconds(0.5, 0.5) == 0.5  # it never left the queue: not within the deadline
