"""Atomic writes: the old file or the new one, never half; no temporary file left behind."""

import json
import os
import stat

import pytest

from pipeline.atomic import write_bytes_atomic, write_json_atomic


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "doc.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2}, indent=None, sort_keys=True)
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "doc.json"
    write_bytes_atomic(path, b"old")
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        write_json_atomic(path, {"x": float("nan")})
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "not bytes")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]
