import pytest
import torch

from pipeline.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from pipeline.models import build, make_spec


def test_round_trip_rebuilds_the_architecture(tmp_path):
    spec = make_spec("vgg11", 0.0625, in_channels=1).with_widths({"conv2_1": 3})
    model = build(spec).eval()
    sha = save_checkpoint(tmp_path / "m.safetensors", model, spec, {"note": "x"})
    loaded, loaded_spec, meta = load_checkpoint(tmp_path / "m.safetensors", expected_sha256=sha)
    assert loaded_spec == spec and meta == {"note": "x"}
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away


def test_tampered_truncated_and_foreign_files_are_refused(tmp_path):
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(path, build(spec), spec)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="refusing a modified file"):
        load_checkpoint(path, expected_sha256=sha)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "nope.safetensors")
