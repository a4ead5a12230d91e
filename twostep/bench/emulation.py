"""How the benchmark emulates a device and its link: a device `slowdown` times slower than this
CPU, the headers a message adds on the wire, and the idle wait that refills tbf's bucket
(shared by the grid's device process and the trace replay's)."""

# Ethernet + IPv4 + TCP (with timestamps) headers of one segment: what an emulated link adds.
TCP_SEGMENT_OVERHEAD = 66
# Ethernet + IPv4 + UDP headers of the filler datagram.
UDP_OVERHEAD = 42


def refill_gap_ms(burst_bytes: float, bandwidth_bps: float) -> float:
    """The idle wait before each request on the shaped link: the token bucket refills."""
    return burst_bytes * 8000.0 / bandwidth_bps * 1.1 + 2.0


def device_time(wall_ms: float, cpu_ms: float, slowdown: float) -> float:
    """The emulated device's time for work that took `wall_ms` here, `cpu_ms` of it on this
    thread: `slowdown` x the CPU time, never less than the wall time it already took (so at
    slowdown 1 it is the wall time)."""
    return max(wall_ms, slowdown * cpu_ms)
