"""Series references and replica mirrors without Ray: a directory read in place, a file:// URI
mirrored into a cache with each weights file sha256-checked before it is kept."""

import shutil

import pytest
import torch

from pipeline.series import SeriesError
from serve.series_source import SeriesMirror, publish_series


def _copy(tiny_store, tmp_path):
    directory = tmp_path / "series"
    shutil.copytree(tiny_store.directory, directory)
    return directory


def test_a_directory_this_node_sees_is_read_in_place(tiny_store, tmp_path):
    ref = {**publish_series(str(tiny_store.directory)), "publisher": None}
    mirror = SeriesMirror(ref, cache=tmp_path / "cache")
    assert mirror.in_place and "read in place" in mirror.source
    assert not (tmp_path / "cache").exists()
    model, _, _ = mirror.load_model("vgg11-base")
    expected = tiny_store.load_model("vgg11-base")[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_a_uri_is_mirrored_and_verified(tiny_store, tmp_path):
    directory = _copy(tiny_store, tmp_path)
    ref = publish_series(f"file://{directory}")
    mirror = SeriesMirror(ref, cache=tmp_path / "cache")
    assert not mirror.in_place and str(tmp_path / "cache") in mirror.source
    mirror.load_model("vgg11-s2-conv5_2-i1")
    assert [f["variant"] for f in mirror.fetches] == ["vgg11-s2-conv5_2-i1"]
    mirror.load_model("vgg11-s2-conv5_2-i1")
    assert len(mirror.fetches) == 1  # cached on this node, not fetched again
    # a second replica of the node reuses the cached file
    again = SeriesMirror(ref, cache=tmp_path / "cache")
    again.load_model("vgg11-s2-conv5_2-i1")
    assert again.fetches == []


def test_weights_that_fail_their_sha256_are_refused_and_not_cached(tiny_store, tmp_path):
    directory = _copy(tiny_store, tmp_path)
    ref = publish_series(f"file://{directory}")
    weights = directory / tiny_store.get("vgg11-base").weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    mirror = SeriesMirror(ref, cache=tmp_path / "cache")
    with pytest.raises(SeriesError, match="refused on node"):
        mirror.load_model("vgg11-base")
    assert not (mirror.store.directory / "weights" / "vgg11-base.safetensors").exists()


def test_a_series_changed_after_publishing_is_refused(tiny_store, tmp_path):
    directory = _copy(tiny_store, tmp_path)
    ref = publish_series(f"file://{directory}")
    manifest = directory / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"base"', '"base" ', 1))
    with pytest.raises(SeriesError, match="changed since it was published"):
        SeriesMirror(ref, cache=tmp_path / "cache")


@pytest.mark.parametrize("location", ["file:///nonexistent/series", "/nonexistent/series"])
def test_a_missing_series_is_a_clear_error(location):
    with pytest.raises(SeriesError, match="no model series"):
        publish_series(location)


def test_a_directory_not_visible_and_not_published_is_a_clear_error(tiny_store, tmp_path):
    ref = {**publish_series(str(tiny_store.directory)), "location": str(tmp_path / "elsewhere"),
           "publisher": None}
    with pytest.raises(SeriesError, match="not visible on node"):
        SeriesMirror(ref, cache=tmp_path / "cache")
