"""ResNet-18 and MobileNetV2 end to end, as a user runs them: `twostep train` and `twostep prune`
(step 1 through the dependency graph, step 2 on a stage's coupled channels), `twostep series
show`, then the Serve app on the shared Ray session classifying real PNG uploads, forced to the
step-2 variant at every split it offers and planned by the router."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from httputil import free_port, png

from pipeline.data import DataInfo, load_splits, normalize
from pipeline.series import SeriesStore

pytestmark = pytest.mark.integration

# (arch, width, the split whose stage step 2 prunes, the group that sets it)
CASES = {"resnet18": (0.0625, "layer2_1", "layer2"), "mobilenetv2": (0.125, "block6", "stage3")}


def _twostep(*args: str) -> str:
    twostep = str(Path(sys.executable).with_name("twostep"))
    done = subprocess.run([twostep, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _train_and_prune(arch: str, work: Path, data_dir: Path) -> Path:
    width, split, _ = CASES[arch]
    data = ["--data-dir", str(data_dir), "--no-augment", "--threads", "1"]
    _twostep("train", "--arch", arch, "--width", str(width), "--epochs", "2", "--batch-size", "32",
             "--out", str(work / "base.safetensors"), *data)
    _twostep("prune", "--base", str(work / "base.safetensors"), "--out", str(work / "series"), *data,
             "--rank-batches", "1", "--batch-size", "32", "--step1-finetune-epochs", "0.1",
             "--step2-finetune-epochs", "0.1", "--step1-budget", "1", "--step1-max-iterations", "1",
             "--step2-steps", "2", "--bytes-images", "8", "--step2-splits", split)
    return work / "series"


@pytest.fixture(scope="module")
def series_of(learnable_fashion_dir, tmp_path_factory) -> dict[str, Path]:
    """Both architectures trained and pruned at once, one thread each (two cores here)."""
    with ThreadPoolExecutor(len(CASES)) as pool:
        runs = {arch: pool.submit(_train_and_prune, arch, tmp_path_factory.mktemp(arch),
                                  learnable_fashion_dir) for arch in CASES}
        return {arch: run.result() for arch, run in runs.items()}


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request, series_of, learnable_fashion_dir):
    arch = request.param
    _, split, group = CASES[arch]
    return arch, split, group, SeriesStore.open(series_of[arch]), learnable_fashion_dir


def test_prune_cuts_the_coupled_group_and_series_show_says_so(pruned):
    arch, split, group, store, _ = pruned
    base, step1 = store.manifest.base_variant, store.manifest.step1_variant
    assert step1.step == 1 and step1.macs < base.macs
    step2 = store.manifest.step(2)
    assert step2 and {v.layer for v in step2} == {group}
    assert split in step2[0].splits
    assert step2[-1].splits[split].bytes_mean < step1.splits[split].bytes_mean
    shown = _twostep("series", "show", str(store.directory))
    assert f"{split:<10}{group:<9}" in shown and f"  {group}: " in shown, shown


@pytest.fixture(scope="module")
def served(ray_session, pruned):
    from ray import serve

    from serve.app import delete_apps, deploy
    from serve.process.startup import start_http
    from serve.settings import AppArgs

    arch, split, group, store, data_dir = pruned
    port = free_port()
    serve.shutdown()
    start_http("127.0.0.1", port)
    args = AppArgs(series_dir=str(store.directory), ms_per_mmac=20.0, placement="local",
                   emulate_link=True, call_timeout_s=60.0, app_name=f"arch-{arch}")
    reference = deploy(args)
    images = load_splits("fashion-mnist", str(data_dir), 0.1, 0, 0, 0).test.images[:4].numpy()
    yield f"http://127.0.0.1:{port}", images
    delete_apps(args.app_name, reference)
    serve.shutdown()


def test_classify_a_real_image_at_every_split_of_the_step2_variant(pruned, served):
    from serve.runner import VariantRunner

    arch, _, group, store, _ = pruned
    url, images = served
    variant = max(store.manifest.step(2), key=lambda v: v.iteration)
    runner = VariantRunner.load(store, variant.id)
    info = DataInfo.from_dict(store.manifest.data)
    with requests.Session() as http:
        for split in ["input", *variant.splits, "output"]:
            for pixels in images:
                answer = http.post(f"{url}/v1/classify", params={"variant": variant.id, "split": split},
                                   data=png(pixels[None]), headers={"Content-Type": "image/png"},
                                   timeout=60)
                assert answer.status_code == 200, answer.text
                answer = answer.json()
                assert (answer["variant"], answer["split"]) == (variant.id, split)
                with torch.inference_mode():
                    exact = runner.model(normalize(torch.from_numpy(pixels[None]), info)).numpy()[0]
                error = np.abs(np.array(answer["logits"]) - exact).max()
                assert error <= 0.05 * (exact.max() - exact.min()) + 1e-4, (split, error)
        planned = http.post(f"{url}/v1/classify", data=png(images[0][None]),
                            headers={"Content-Type": "image/png"}, timeout=60).json()
        assert planned["variant"] in store.ids() and planned["variant"].startswith(arch)
