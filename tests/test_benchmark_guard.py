"""The peer benchmarks refuse to time on a busy machine (benchmarks/_common.require_quiet)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import require_quiet  # noqa: E402


def test_quiet_machine_passes(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.5, 0.2))
    assert require_quiet() is None


def test_busy_machine_is_refused_or_warned(monkeypatch, capsys):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.5, 0.2))     # 0.6 per core
    with pytest.raises(SystemExit, match="refusing to benchmark: load average 1.20 on 2 cores"):
        require_quiet(wait_s=0)
    warning = require_quiet(allow_load=True)
    assert warning.startswith("WARNING: load average 1.20") and "WARNING" in capsys.readouterr().out


def test_kmeans_benchmark_refuses_under_load(monkeypatch, tmp_path):
    import runpy

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(sys, "argv", ["kmeans.py", "--sizes", "1000", "--out", str(tmp_path)])
    import time
    monkeypatch.setattr(time, "sleep", lambda s: None)                    # the load never falls:
    monkeypatch.setattr(time, "monotonic", iter(range(0, 10**6, 100)).__next__)   # the wait runs out
    with pytest.raises(SystemExit, match="refusing to benchmark"):
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "kmeans.py"), run_name="__main__")
    assert not list(tmp_path.iterdir())


def test_a_load_that_falls_is_waited_for(monkeypatch, capsys):
    import time

    loads = iter([1.6, 1.3, 0.8])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert require_quiet(wait_s=60) is None
    assert capsys.readouterr().out.count("waiting for it to fall below 1.0") == 2
