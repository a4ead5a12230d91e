"""Head and tail of one variant without Ray: they compose to the model up to quantisation, the
tail refuses frames it must not decode, and head weights for devices round-trip with their sha256."""

import hashlib

import numpy as np
import pytest
import torch

from pipeline.codec import CodecConfig, encode_frame, variant_tag
from pipeline.data import normalize
from pipeline.models.inference import inference_form
from pipeline.split import split_model
from serve.runner import RequestError, VariantRunner
from serve.weights import head_prefixes, load_head, pack_head

PIXELS = np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def runner(tiny_store):
    return VariantRunner.load(tiny_store, "vgg11-base", max_batch=4)


def reference(runner, store, pixels=PIXELS):
    """The stored model as trained (BatchNorm not folded): what the runner must compute."""
    model, _, _ = store.load_model(runner.variant_id)
    with torch.inference_mode():
        return model.eval()(normalize(torch.from_numpy(pixels), runner.info)).numpy()


@pytest.mark.parametrize("split", ["input", "conv1_1", "pool1", "conv3_2", "pool5"])
def test_head_then_tail_is_the_model_up_to_8_bit_quantisation(runner, tiny_store, split):
    head = runner.run_head(PIXELS, split)
    assert head.frame is not None and head.logits is None
    tail = runner.run_tail(head.frame, split)
    expected = reference(runner, tiny_store)
    # One 8-bit per-tensor quantisation of the split tensor: logits move by a few percent of
    # their range at most on this random-init model.
    assert np.abs(tail.logits - expected).max() <= 0.05 * (np.abs(expected).max() + 1e-3)


def test_output_split_runs_everything_on_the_head(runner, tiny_store):
    head = runner.run_head(PIXELS, "output")
    assert head.frame is None
    np.testing.assert_allclose(head.logits, reference(runner, tiny_store), rtol=1e-4, atol=1e-5)
    with pytest.raises(RequestError, match="no tail"):
        runner.run_tail(b"", "output")


def test_head_refuses_bad_pixels(runner):
    for bad in (PIXELS.astype(np.float32), PIXELS[:, :, :16], PIXELS[0],
                np.zeros((5, 1, 32, 32), np.uint8)):
        with pytest.raises(RequestError):
            runner.run_head(bad, "pool1")
    with pytest.raises(RequestError, match="split point"):
        runner.run_head(PIXELS, "pool9")


def test_tail_refuses_foreign_malformed_and_misshapen_frames(runner, tiny_store):
    good = runner.run_head(PIXELS, "pool3").frame
    other = VariantRunner.load(tiny_store, "vgg11-s2-conv5_2-i1").run_head(PIXELS, "pool5").frame
    x = np.zeros((1, 16, 4, 4), np.float32)
    frames = {
        "tag": encode_frame(x, CodecConfig(), variant_tag("vgg11-other")),
        "other variant": other,
        "shape": encode_frame(np.zeros((1, 8, 4, 4), np.float32), CodecConfig(), runner.tag),
        "batch": encode_frame(np.zeros((5, 16, 4, 4), np.float32), CodecConfig(), runner.tag),
        "truncated": good[:-3],
        "flipped": good[:-1] + bytes([good[-1] ^ 1]),
        "garbage": b"\x00" * 64,
        "empty": b"",
    }
    for name, frame in frames.items():
        with pytest.raises(RequestError) as info:
            runner.run_tail(frame, "pool3")
        assert str(info.value), name


def test_head_weights_round_trip(runner, tiny_store):
    stored, _, _ = tiny_store.load_model("vgg11-base")
    for split in ("input", "conv2_1", "pool5", "output"):
        data, sha = pack_head(stored, runner.spec, "vgg11-base", split)
        assert sha == hashlib.sha256(data).hexdigest()
        model = load_head(data, runner.spec, split, expected_sha256=sha)
        device_head, _ = split_model(inference_form(model), split)  # as the device client runs it
        edge_head, _ = runner.halves(split)
        x = normalize(torch.from_numpy(PIXELS), runner.info)
        with torch.inference_mode():
            torch.testing.assert_close(device_head(x), edge_head(x), rtol=0, atol=0)
    assert head_prefixes(runner.spec, "input") == ()
    assert head_prefixes(runner.spec, "output")[-1] == "classifier."


def test_head_weights_are_checked(runner, tiny_store):
    data, sha = pack_head(tiny_store.load_model("vgg11-base")[0], runner.spec, "vgg11-base", "pool1")
    with pytest.raises(ValueError, match="sha256"):
        load_head(data, runner.spec, "pool1", expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="do not match"):
        load_head(data, runner.spec, "pool2")
    with pytest.raises(ValueError, match="safetensors"):
        load_head(b"garbage" * 10, runner.spec, "pool1")


def test_batched_tails_equal_one_call_per_frame_and_keep_bad_frames_apart(runner):
    rng = np.random.default_rng(3)
    frames = [runner.run_head(rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8), "pool3").frame
              for n in (1, 3, 2)]
    frames.insert(1, b"not a frame")
    outs = runner.run_tails(frames, "pool3")
    assert isinstance(outs[1], RequestError) and "bad frame" in str(outs[1])
    for frame, out in zip(frames, outs, strict=True):
        if frame == b"not a frame":
            continue
        alone = runner.run_tail(frame, "pool3").logits
        assert out.logits.shape == alone.shape
        np.testing.assert_allclose(out.logits, alone, atol=1e-5, rtol=1e-5)
    assert all(isinstance(o, RequestError) for o in runner.run_tails([b"x", b"y"], "pool3"))
