"""Link traces: both file formats, the rate integrated over a transfer, looping, and errors that
name the file and the line."""

import pytest

from pipeline.traces import Trace, TraceError, load_trace, parse_trace


def test_time_mbit_lines_hold_each_rate_until_the_next_step(tmp_path):
    path = tmp_path / "commute.log"
    path.write_text("# time_s Mbit/s\n0.0\t1.0\n1.0\t0.0\n2.0\t2.0\n")
    trace = load_trace(path)
    assert trace.name == "commute.log" and trace.duration_s == 3.0
    assert [trace.rate_at(t) for t in (0.5, 1.5, 2.5, 3.5)] == [1e6, 1e3, 2e6, 1e6]  # a stall is 1 kbit/s
    assert trace.mean_bps == pytest.approx((1e6 + 1e3 + 2e6) / 3)


def test_a_transfer_that_starts_in_a_dip_speeds_up_when_the_link_comes_back():
    trace = parse_trace("0 1\n1 0\n2 2\n")
    # 125,000 B = 1 Mbit from 0.5 s: 0.5 Mbit by 1 s, 1 kbit in the stall, the rest at 2 Mbit/s
    assert trace.arrival(0.5, 125_000) == pytest.approx(2.0 + (0.5e6 - 1e3) / 2e6)
    assert trace.arrival(1.2, 0) == 1.2
    # 4 Mbit from 2.5 s: 1 Mbit to the end, a whole lap (3.001 Mbit), then 0.5 s at 1 Mbit/s... looped
    lap_bits = 1e6 + 1e3 + 2e6
    end = trace.arrival(2.5, 500_000)
    assert end > 3.0 and trace.arrival(2.5, 500_000 + lap_bits / 8) == pytest.approx(end + 3.0)


def test_mahimahi_deliveries_become_rates_per_bin():
    # one 1500-byte packet every 3 ms for 3 s: 4 Mbit/s in each 1-second bin
    trace = parse_trace("\n".join(str(ms) for ms in range(0, 3000, 3)), "cell.up")
    assert trace.duration_s == 3.0
    assert [trace.rate_at(t) / 1e6 for t in (0.5, 1.5, 2.5)] == pytest.approx([4.0, 4.0, 4.0], rel=0.01)
    half = parse_trace("\n".join(str(ms) for ms in range(0, 2000, 6)), bin_s=0.5)
    assert half.rate_at(0.1) == pytest.approx(2e6, rel=0.02)


def test_sped_up_keeps_rates_and_shortens_steps():
    trace = parse_trace("0 1\n10 3\n").sped_up(10)
    assert trace.duration_s == 2.0 and trace.rate_at(1.5) == 3e6
    with pytest.raises(TraceError, match="speed"):
        trace.sped_up(0)


@pytest.mark.parametrize("text, message", [
    ("", "no steps"),
    ("0 1 2\n", ":1: expected"),
    ("0 1\nx 2\n", ":2: not a number"),
    ("0 1\n1 -2\n", ":2: values must be"),
    ("0 1\n5\n", ":2: 1 column"),
    ("0 1\n0 2\n", "must increase"),
    ("5\n3\n", "must not decrease"),
    ("0 nan\n", ":1: values must be"),
])
def test_bad_traces_are_refused_naming_the_line(text, message):
    with pytest.raises(TraceError, match=message):
        parse_trace(text, "t.log")


def test_an_unreadable_file_names_itself(tmp_path):
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "missing.log")
    with pytest.raises(TraceError, match="step times"):
        Trace("t", [1.0], [1.0], 2.0)
