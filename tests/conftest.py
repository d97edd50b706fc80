import os

import pytest

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def sidkit_home(tmp_path, monkeypatch):
    """A private SIDKIT_HOME so tests never touch the user's cache."""
    home = tmp_path / "sidkit-home"
    monkeypatch.setenv("SIDKIT_HOME", str(home))
    return home
