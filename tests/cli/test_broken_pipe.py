"""A reader that stops early (`twostep series show DIR | head -1`) ends the command quietly.

The reader here (`true`) leaves before the command writes anything, so the write always fails
(with `head -1` it fails or not depending on timing)."""

import subprocess
import sys
from pathlib import Path


def test_output_cut_short_by_its_reader_is_not_an_error(tiny_store):
    twostep = str(Path(sys.executable).with_name("twostep"))
    shell = f"'{twostep}' series show --variants '{tiny_store.directory}' | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True,
                          timeout=120)
    assert done.stderr == "", done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, what a shell reports for such a writer
