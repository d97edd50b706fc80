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
    command = ('python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]" '
               '&& .venv/bin/python -m pytest -q')
    assert command in readme
    assert command.replace("pip install -c", "pip install -q -c") in CI.read_text()


def test_the_library_declares_ranges_and_ci_pins_every_dependency_exactly():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in ("serve", "test") for r in project["optional-dependencies"][extra]
             if not r.startswith("sidkit")]
    exact = [str(r) for r in reqs if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not exact, f"a library declares ranges, not exact pins: {exact}"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for r in reqs:
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{r.name} has no exact version in constraints.txt"
        assert r.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {r.name}=={pins[name]}, outside {r}"
    assert pins["torch"] == "2.13.0"
    readme = (ROOT / "README.md").read_text()
    assert readme.count("pip install -c constraints.txt") >= 2   # both set-up commands


@pytest.mark.parametrize("value, fails", [("1", True), ("0", False), ("", False)])
def test_skip_or_fail_follows_the_variable(monkeypatch, value, fails):
    monkeypatch.setenv(REQUIRE_DATA, value)
    assert required(REQUIRE_DATA) == fails
    with pytest.raises(pytest.fail.Exception if fails else pytest.skip.Exception, match="no data here"):
        skip_or_fail("no data here", REQUIRE_DATA)
