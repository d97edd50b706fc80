"""Slow end-to-end runs (excluded by default; run with `pytest -m slow`)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import config_from_dict
from sidkit.pipeline import run_pipeline
from sidkit.tokenizers import available
from sidkit.types import Codes

pytestmark = pytest.mark.slow


def test_every_tokenizer_on_ml100k_then_compare(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDKIT_HOME", str(tmp_path / "home"))
    runs = []
    for method in available():
        out = tmp_path / method
        run_pipeline(config_from_dict({"codes": {"method": method}}), out)
        codes = Codes.load(out / "codes" / "codes")
        assert codes.n_items == 1682 and not codes.has_collisions(), method
        np.testing.assert_array_equal(codes.lookup(codes.codes, codes.lengths), np.arange(1682))
        runs.append(str(out))
    r = CliRunner().invoke(app, ["compare", *runs, "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "cmp" / "report.html").read_text()
    for method in available():
        assert method in html
