"""Real headless Chromium (Debian's `chromium`, which scripts/setup installs) driven through
Playwright, for tests of the pages a worker serves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Page, sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def chromium_path() -> str:
    """The Chromium binary: $CONCORD_CHROMIUM, else `chromium` on the PATH."""
    path = os.environ.get("CONCORD_CHROMIUM") or shutil.which("chromium")
    if path is None:
        raise AssertionError(
            "no chromium on the PATH: scripts/setup installs Debian's chromium "
            "(or set CONCORD_CHROMIUM to a Chromium binary)"
        )
    return path


@contextmanager
def headless_page(timeout_ms: float = 30_000) -> Iterator[Page]:
    """A page in a fresh headless Chromium, closed afterwards."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()
