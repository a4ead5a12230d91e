"""The live trace replay's pieces that need no server: a segment of a trace, its text for
`PUT /v1/link`, and the pricing of live answers on the true trace."""

import numpy as np
import pytest

from pipeline.selection import ON_DEVICE, Candidate
from pipeline.traces import parse_trace
from twostep.trace_live import TCP_OVERHEAD_BYTES, price, segment, trace_text

TRACE = parse_trace("0 1\n1 2\n2 3\n3 4\n")


def test_a_segment_starts_at_zero_with_the_rate_in_force():
    part = segment(TRACE, 1.5, 2.0)
    assert part.steps() == [(0.0, 2e6), (0.5, 3e6), (1.5, 4e6)] and part.duration_s == 2.0
    assert segment(TRACE, 1.0, 2.0).steps() == [(0.0, 2e6), (1.0, 3e6)]
    assert parse_trace(trace_text(part)).steps() == part.steps()
    for start, seconds in ((9.0, 1.0), (3.5, 60.0)):  # outside, or past the end
        with pytest.raises(ValueError, match="not within"):
            segment(TRACE, start, seconds)


def test_live_answers_are_priced_on_the_true_trace():
    frame = Candidate("v", "pool4", 0.9, 934.0, 10.0, 2.0)
    local = Candidate("v", "output", 0.9, 0.0, 30.0, 0.0, ON_DEVICE)
    rows = [{"t": 0.0, "variant": "v", "split": "pool4", "bytes": 934, "past_deadline": False,
             "estimate_bps": 1e6},
            {"t": 1.2, "variant": "v", "split": "output", "bytes": 0, "past_deadline": False,
             "estimate_bps": 2e6}]
    live = price(rows, TRACE, [frame, local], rtt_ms=20.0)
    wire_ms = (934 + TCP_OVERHEAD_BYTES) * 8 / 1e6 * 1000  # 8 ms at 1 Mbit/s
    np.testing.assert_allclose(live.latency_ms, [10.0 + wire_ms + 20.0 + 2.0, 30.0])
    assert list(live.offloaded) == [True, False] and live.switches == 1
    assert live.labels == ["v@pool4", "v@output"]
    # a frame given up at its deadline: its head, the deadline, then the device's whole model
    given_up = {**rows[0], "variant": "v", "split": "output", "past_deadline": True, "deadline_ms": 60.0,
                "planned": {"variant": "v", "split": "pool4"}}
    late = price([rows[0], given_up], TRACE, [frame, local], rtt_ms=20.0)
    assert late.latency_ms[1] == 10.0 + 60.0 + 30.0 and late.switches == 0 and late.deadline_hits == 1
    assert not late.offloaded[1]
