import os

import pytest

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    """One torch thread by default (SIDKIT_TEST_THREADS to change): the tests' models are
    tiny, and on a shared 2-core machine two threads made them up to 10x slower."""
    import torch

    torch.set_num_threads(int(os.environ.get("SIDKIT_TEST_THREADS", "1")))


@pytest.fixture
def sidkit_home(tmp_path, monkeypatch):
    """A private SIDKIT_HOME so tests never touch the user's cache."""
    home = tmp_path / "sidkit-home"
    monkeypatch.setenv("SIDKIT_HOME", str(home))
    return home
