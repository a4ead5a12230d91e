"""Ray Tune callbacks that run in the driver: collect checkpoints into the series, show trials.

`SeriesCollector` turns every reported checkpoint into a variant of the series store as it
arrives (the driver is the only writer). `LiveTable` prints one line per trial: split point,
iteration, accuracies, bytes sent, status. Tune's own loggers (CSV, JSON, TensorBoard) keep
writing into each trial's directory under the run's storage path.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import TextIO

from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from tune.collect import VariantSink


def trial_key(trial) -> str:
    return trial.config["job"]["key"]


class SeriesCollector(Callback):
    """Adds each trial checkpoint to its trial's `VariantSink`; remembers what went wrong.

    Tune swallows exceptions raised in `on_checkpoint`, so failures are kept in `errors` and the
    launcher raises them once the run ends. After a failed checkpoint a trial's later
    checkpoints are not collected (they would leave a hole); a rerun resumes from the store.
    """

    def __init__(self, sinks: dict[str, VariantSink]):
        self.sinks = sinks
        self.errors: dict[str, str] = {}
        self.failures: dict[str, int] = defaultdict(int)
        self.iterations: dict[str, list[int]] = defaultdict(list)
        self.completed: set[str] = set()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        key = trial_key(trial)
        if key in self.errors:
            return
        try:
            with checkpoint.as_directory() as directory:
                self.sinks[key].add(directory)
        except Exception as err:  # reported at the end of the run
            self.errors[key] = f"{type(err).__name__}: {err}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "iteration" in result:
            self.iterations[trial_key(trial)].append(int(result["iteration"]))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.failures[trial_key(trial)] += 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed.add(trial_key(trial))


def _cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def format_trial_table(rows: dict[str, dict]) -> str:
    """One line per trial: key, split, iteration/total, val and test accuracy, bytes, MACs."""
    header = ("trial", "split", "iter", "val acc", "test acc", "bytes", "MACs", "status")
    lines = [header]
    for key, row in rows.items():
        status = row["status"] + (f" ({row['restarts']} restarts)" if row["restarts"] else "")
        lines.append((
            key, row["split"], f"{row['iteration']}/{row['total']}",
            _cell(row.get("val_accuracy"), "{:.4f}"), _cell(row.get("test_accuracy"), "{:.4f}"),
            _cell(row.get("bytes_sent"), "{:.0f}"), _cell(row.get("mac_reduction"), "{:.2f}x"),
            status,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


class LiveTable(TrialProgressCallback):
    """A live view of the trials: redrawn in place on a terminal, else printed when it changes
    (at most every `interval_s`, and whenever a trial ends); silent when not `enabled`.

    It stands in for Tune's classic per-trial printer (hence the base class: Tune then adds
    none of its own), while the launcher turns Tune's newer console output off.
    """

    def __init__(self, jobs: list[dict], totals: dict[str, int], stream: TextIO | None = None,
                 interval_s: float = 10.0, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.rows = {
            job["key"]: {
                "split": "/".join(job["offered"]) if job["kind"] == "step2" else "(all)",
                "iteration": job["start"]["iteration"], "total": totals[job["key"]],
                "status": "PENDING", "restarts": 0,
            }
            for job in jobs
        }
        self.stream = stream  # None: sys.stdout at draw time (Tune pickles its callbacks)
        self.interval_s = interval_s
        self._last = 0.0
        self._drawn_lines = 0
        self._dirty = False

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or not (self._dirty or force):
            return
        stream = self.stream or sys.stdout
        live = stream.isatty()
        if not force and not live and time.monotonic() - self._last < self.interval_s:
            return
        text = format_trial_table(self.rows)
        if live and self._drawn_lines:
            stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        stream.write(text + "\n" + ("" if live else "\n"))
        stream.flush()
        self._drawn_lines = text.count("\n") + 1
        self._last = time.monotonic()
        self._dirty = False

    def _update(self, trial, force: bool = False, **fields) -> None:
        self.rows[trial_key(trial)].update(fields)
        self._dirty = True
        self._draw(force)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        fields = {k: result[k] for k in ("iteration", "val_accuracy", "test_accuracy",
                                         "bytes_sent", "mac_reduction") if k in result}
        self._update(trial, **fields)

    def on_trial_recover(self, iteration, trials, trial, **info):
        row = self.rows[trial_key(trial)]
        self._update(trial, force=True, status="RESTARTING", restarts=row["restarts"] + 1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, force=True, status="DONE")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, force=True, status="ERROR")
