"""The HTML/JSON/Markdown diagnostics report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _require import REQUIRE_CHROMIUM, skip_or_fail
from sidkit.diagnostics import diagnose, write_report
from sidkit.diagnostics.report import SECTIONS
from sidkit.types import Codes


class TinyRQ:
    """Stand-in residual quantizer with codebooks_ (independent of sidkit.tokenizers)."""

    def __init__(self, X, K=8, L=3, seed=0):
        g = np.random.default_rng(seed)
        R = np.asarray(X, dtype=np.float64).copy()
        cbs = []
        for _ in range(L):
            C = R[g.choice(len(R), K, replace=False)].copy()
            for _ in range(8):
                a = ((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)
                for k in range(K):
                    if (a == k).any():
                        C[k] = R[a == k].mean(0)
            R = R - C[((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)]
            cbs.append(C)
        self.codebooks_ = np.stack(cbs)

    def encode(self, X):
        R = np.asarray(X, dtype=np.float64).copy()
        out = []
        for C in self.codebooks_:
            a = ((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)
            out.append(a)
            R = R - C[a]
        L, K, _ = self.codebooks_.shape
        return Codes(np.stack(out, 1), (K,) * L, method="tiny_rq")

    def decode(self, codes):
        return sum(self.codebooks_[l][codes.codes[:, l]] for l in range(codes.n_levels))


@pytest.fixture(scope="module")
def two_results():
    g = np.random.default_rng(0)
    X = (g.normal(size=(8, 6)) * 4)[g.integers(0, 8, 500)] + g.normal(size=(500, 6))
    X = X.astype(np.float32)
    tok_a = TinyRQ(X, K=8, L=3, seed=0)
    tok_b = TinyRQ(X, K=4, L=3, seed=1)
    pairs = np.stack([np.arange(0, 100), np.arange(1, 101)], 1)
    ra = diagnose(tok_a.encode(X), X, tok_a, pairs, scales=(0.0, 0.1, 0.3), n_mc=200)
    rb = diagnose(tok_b.encode(X), X, tok_b, pairs, scales=(0.0, 0.1, 0.3), n_mc=200)
    return {"rq8": ra, "rq4": rb}


def test_report_side_by_side(tmp_path, two_results):
    paths = write_report(two_results, tmp_path / "rep", title="test report")
    page = paths["html"].read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    # usage, lorenz, fan-out, fidelity, overlap, monte-carlo + one codeword map per tokenizer
    assert page.count("<img ") == page.count('src="data:image/png;base64,')
    assert page.count('src="data:image/png;base64,') == 6 + 2
    assert "http://" not in page and "https://" not in page and 'src="//' not in page
    assert "<link" not in page and "<script" not in page
    assert "Not available" not in page
    assert "rq8" in page and "rq4" in page
    data = json.loads(paths["json"].read_text())
    assert set(data["tokenizers"]) == {"rq8", "rq4"}
    assert data["tokenizers"]["rq8"]["usage"][0]["K"] == 8
    md = paths["md"].read_text()
    assert "## Summary" in md and "| rq4 |" in md and "Hourglass" in md
    assert not list((tmp_path / "rep").glob(".*.tmp"))  # atomic writes left no temp files


def test_report_codes_only(tmp_path):
    codes = Codes(np.array([[0, 1], [1, 1], [2, 0], [2, 0]]), (4, 2), method="toy")
    paths = write_report({"toy": codes}, tmp_path)
    page = paths["html"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert page.count('<img alt="') == 3  # usage, lorenz, fan-out
    assert page.count("Not available") == 5
    assert re.search(r"https?://", page) is None


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_report_renders_in_headless_chromium(tmp_path, two_results):
    """The HTML report renders offline into a real image (.ci/run installs Chromium)."""
    browser = _chromium()
    if browser is None:
        skip_or_fail("Chromium is not installed: the report screenshot was not taken "
                     "(apt-get install chromium; .ci/run does this as root)", REQUIRE_CHROMIUM)
    paths = write_report(two_results, tmp_path / "rep", title="test report")
    shot = tmp_path / "diagnostics_report.png"
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                           f"--screenshot={shot}", "--window-size=1280,4000", paths["html"].as_uri()],
                          check=False, timeout=120, capture_output=True, text=True)
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 4000)
    assert shot.stat().st_size > 20_000  # not a blank page: text, tables and figures


@pytest.mark.parametrize("required", [True, False])
def test_missing_chromium_fails_when_required(monkeypatch, tmp_path, two_results, required):
    """CI (SIDKIT_REQUIRE_CHROMIUM=1, set by .ci/run) cannot skip the screenshot test."""
    monkeypatch.setitem(globals(), "_chromium", lambda: None)
    monkeypatch.setenv(REQUIRE_CHROMIUM, "1" if required else "0")
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception,
                       match="Chromium is not installed"):
        test_report_renders_in_headless_chromium(tmp_path, two_results)
