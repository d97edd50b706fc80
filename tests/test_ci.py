""".ci/run: CI runs the tests that would otherwise skip (real data, Chromium)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from _require import REQUIRE_CHROMIUM, REQUIRE_DATA, REQUIRE_SHARED, required, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def _ci_environment(preset: dict[str, str]) -> dict[str, str]:
    """The environment .ci/run gives pytest: its `export` lines (those before the install
    and test command), evaluated by bash on top of ``preset``."""
    text = CI.read_text()
    head = text[:text.index("python3 -m venv")]
    exports = [ln for ln in head.splitlines() if ln.startswith("export ")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDKIT_REQUIRE_")}
    env.update(preset)
    out = subprocess.run(["bash", "-c", "set -eu\n" + "\n".join(exports) + "\nenv"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return dict(ln.split("=", 1) for ln in out.splitlines() if re.match(r"^SIDKIT_\w+=", ln))


def test_ci_requires_the_real_data_and_chromium_tests_to_run():
    env = _ci_environment({})
    assert env[REQUIRE_DATA] == "1" and env[REQUIRE_CHROMIUM] == "1" and env[REQUIRE_SHARED] == "1"
    # a local run without root can still allow the skips explicitly
    env = _ci_environment({REQUIRE_DATA: "0", REQUIRE_CHROMIUM: "0"})
    assert env[REQUIRE_DATA] == "0" and env[REQUIRE_CHROMIUM] == "0"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    command = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -q'
    assert command in readme
    assert command.replace("pip install -e", "pip install -q -e") in CI.read_text()


@pytest.mark.parametrize("value, fails", [("1", True), ("0", False), ("", False)])
def test_skip_or_fail_follows_the_variable(monkeypatch, value, fails):
    monkeypatch.setenv(REQUIRE_DATA, value)
    assert required(REQUIRE_DATA) == fails
    with pytest.raises(pytest.fail.Exception if fails else pytest.skip.Exception, match="no data here"):
        skip_or_fail("no data here", REQUIRE_DATA)
