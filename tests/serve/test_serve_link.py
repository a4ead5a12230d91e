"""Link emulation: FIFO schedule, runtime changes, saturation, and the wait."""

import asyncio

import pytest

from serve.link import LinkEmulator, LinkSaturated, check_link_settings


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_by_default_and_free():
    link = LinkEmulator()
    assert not link.enabled
    assert link.schedule(10_000).total_s == 0.0


def test_transfers_queue_behind_each_other():
    clock = Clock()
    link = LinkEmulator(1e6, rtt_ms=10.0, clock=clock)
    first = link.schedule(1250)  # 10 ms on the wire
    second = link.schedule(1250)
    assert (first.queue_s, first.wire_s, first.rtt_s) == pytest.approx((0.0, 0.01, 0.01))
    assert second.queue_s == pytest.approx(0.01)
    assert second.total_s == pytest.approx(0.03)
    clock.now = 1.0  # the link has drained
    assert link.schedule(1250).queue_s == 0.0
    assert link.snapshot()["transfers"] == 3 and link.snapshot()["bytes_sent"] == 3750


def test_bandwidth_changes_at_run_time():
    link = LinkEmulator(1e6, clock=Clock())
    link.configure(1e5, rtt_ms=0.0)
    assert link.schedule(1250).wire_s == pytest.approx(0.1)
    link.configure(None)
    assert not link.enabled and link.schedule(1250).total_s == 0.0


def test_a_hopeless_backlog_is_refused():
    link = LinkEmulator(1e3, max_delay_s=1.0, clock=Clock())
    with pytest.raises(LinkSaturated):
        link.schedule(1000)  # 8 s
    assert link.schedule(100).total_s == pytest.approx(0.8)  # the refused one took no link time


def test_transmit_waits_the_scheduled_time():
    waited = []

    async def fake_sleep(seconds):
        waited.append(seconds)

    link = LinkEmulator(8e3, rtt_ms=5.0, clock=Clock(), sleep=fake_sleep)
    transfer = asyncio.run(link.transmit(10))
    assert waited == [pytest.approx(0.015)] and transfer.total_s == pytest.approx(0.015)


@pytest.mark.parametrize(("bandwidth", "rtt"), [
    (0, 0.0), (-1, 0.0), (float("nan"), 0.0), (2e12, 0.0), (1e6, -1.0), (1e6, float("inf")),
    ("1e6", 0.0), (1e6, None), (True, 0.0),
])
def test_settings_are_validated(bandwidth, rtt):
    with pytest.raises(ValueError):
        check_link_settings(bandwidth, rtt)


def test_a_replayed_trace_integrates_the_rate_over_each_transfer():
    from pipeline.traces import parse_trace

    clock = Clock()
    clock.now = 100.0
    link = LinkEmulator(1e6, rtt_ms=5.0, clock=clock)
    link.replay(parse_trace("0 1\n1 0\n3 2\n"))  # 1 s at 1 Mbit/s, a 2-second stall, 2 Mbit/s
    assert link.enabled and link.rate_now() == 1e6
    clock.now = 100.5
    frame = link.schedule(125_000)  # 1 Mbit: half before the stall, the rest after it
    assert frame.wire_s == pytest.approx(2.5 + (0.5e6 - 2e3) / 2e6)
    clock.now = 101.5
    assert link.rate_now() == 1e3 and link.snapshot()["trace"]["at_s"] == pytest.approx(1.5)
    link.configure(5e6)  # a fixed rate ends the replay
    assert link.trace is None and link.rate_now() == 5e6
