"""Shared fixtures: small datasets written by the tests themselves (nothing downloads)."""

import pytest
from datafiles import write_fashion_like


@pytest.fixture
def fashion_dir(tmp_path):
    write_fashion_like(tmp_path / "fashion")
    return tmp_path / "fashion"


@pytest.fixture(scope="session")
def learnable_fashion_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("learnable-fashion")
    write_fashion_like(directory, n_train=400, n_test=100, learnable=True)
    return directory

from tiny_series import tiny_store  # noqa: E402,F401  (a small random-init series, session-wide)
