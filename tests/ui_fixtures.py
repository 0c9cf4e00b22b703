"""Browser fixtures for the tests that drive the web page in Debian's Chromium.

Use them from a test module with

    pytest_plugins = ["tests.serving_fixtures", "tests.ui_fixtures"]

and ask for `browser` (one Chromium for the module) or `page` (a fresh page on the session's
served model, failing the test on any JavaScript error); `new_page` opens such a page on any
URL, e.g. for a module-scoped page or another server. Mark the tests that need a browser with
`needs_chromium`, so that a machine without one skips them with one reason, saying what to do.

The browser lives for one module, not the session: other helpers (ui_screenshot.py,
ui_feedback_screenshot.py) start their own `sync_playwright()`, and two sync Playwright
instances cannot be alive in one thread at once.

Test modules import `needs_chromium` before pytest loads this module as their plugin, too late
for pytest to rewrite its asserts; it needs none rewritten, hence PYTEST_DONT_REWRITE (which
also spares every run the "already imported" warning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from tests.ui_screenshot import CHROMIUM, launch, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

NO_CHROMIUM = (
    f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) "
    "or set CONVLENS_CHROMIUM; Playwright's own browser download is not used"
)
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module, closed before the next module starts its own."""
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@contextmanager
def new_page(
    browser: Browser, url: str, timeout_ms: float = 60_000, viewport: tuple[int, int] = (1280, 900)
) -> Iterator[Page]:
    """The page at `url` in a context of its own, opened and ready; on leaving, the context is
    closed and any JavaScript error the page raised fails the test, since a page that throws
    can still pass every check on what it shows."""
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_page(page, url)
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Browser, served_url: str) -> Iterator[Page]:
    """A fresh page on the served model for each test, so no test sees another's drawing."""
    with new_page(browser, served_url) as page:
        yield page
