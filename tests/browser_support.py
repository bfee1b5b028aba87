"""What the browser tests share: Debian's Chromium driven by Playwright, the deadlines, and
the folder their screenshots are kept in.

Outside CI a test that needs the browser skips, saying why, when no Chromium is found (or
Playwright is not installed); under CI=true it fails. Import this module before using
Playwright: it skips the importing test module when Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

try:
    from playwright.async_api import Browser, async_playwright, expect
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("Playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

# Deadlines, not sleeps: generous, so that a loaded machine is slow rather than failing.
ACTION_TIMEOUT_MS = 15_000
expect.set_options(timeout=ACTION_TIMEOUT_MS)

# Read at import: the suite's fixtures clear SIPAS_* from the environment of each test.
ARTIFACTS = Path(os.environ.get("SIPAS_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
CHROMIUM_CANDIDATES = (os.environ.get("SIPAS_TEST_CHROMIUM"), "/usr/bin/chromium")


def chromium_executable() -> str | None:
    candidates = [*CHROMIUM_CANDIDATES, shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(name="browser")
async def browser_fixture() -> AsyncIterator[Browser]:
    executable = chromium_executable()
    if executable is None:
        reason = (
            "no Chromium found at /usr/bin/chromium (or SIPAS_TEST_CHROMIUM): "
            "apt-get install chromium to run the browser tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(autouse=True)
def artifacts_folder() -> None:
    """The folder screenshots and downloads are kept in, made if missing (import it into a
    test module, as `browser`, for it to apply there)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
