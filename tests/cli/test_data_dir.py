"""Where the Fashion-MNIST files come from: the Debian package's directory, the variable a user
without root sets (as scripts/ensure-data.sh tells them), or `twostep demo --data-dir`."""

import os
import subprocess
import sys

from twostep.demo_config import load_demo_config


def _default_dir(env: dict) -> str:
    code = "from pipeline.config import TrainConfig; print(TrainConfig().data_dir)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_variable_sets_the_default_data_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TWOSTEP_FASHION_MNIST_DIR"}
    assert _default_dir(env) == "/usr/share/datasets/fashion-mnist"
    assert _default_dir({**env, "TWOSTEP_FASHION_MNIST_DIR": str(tmp_path)}) == str(tmp_path)


def test_demo_data_dir_reaches_training_and_pruning(tmp_path):
    (tmp_path / "c.toml").write_text('[train]\ndata_dir = "/elsewhere"\nepochs = 1\n')
    config = load_demo_config(tmp_path / "c.toml", out=str(tmp_path / "run"), data_dir=str(tmp_path))
    assert config.train.data_dir == config.prune.data_dir == str(tmp_path)
    assert config.train.epochs == 1  # the rest of the file still applies
    assert load_demo_config().train.data_dir == load_demo_config().prune.data_dir
