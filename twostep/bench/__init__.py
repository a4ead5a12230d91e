"""The `twostep bench` verb's package: the paper's strategies compared side by side on the real
serving path (edge and device processes, a shaped link, calibration, report). The other
benchmarks, one script each, live in the repository's `bench/` directory."""
