import pytest

from pipeline.base_model import train_base
from pipeline.config import TrainConfig


@pytest.fixture(scope="session")
def base_checkpoint(learnable_fashion_dir, tmp_path_factory):
    """A small VGG-11 trained on the learnable Fashion-like files: a base to prune."""
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    config = TrainConfig(data_dir=str(learnable_fashion_dir), arch="vgg11", width=0.125, epochs=2,
                         augment=False, out=str(out))
    train_base(config, progress=False, log=None)
    return out
