"""Headless Chromium for page tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser download cannot run here (no network but the package registries), so
the system Chromium is launched through ``executable_path``. The flags keep it from reaching
for Google's hosts at start (background networking, component updates, sync), which this
machine's closed network would refuse. Every request the page makes is recorded, so a test can
check where the page went.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
LOADED_TIMEOUT_MS = 60_000


@dataclass
class BrowserLog:
    """What the page did: every request URL and every console message."""

    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def foreign_requests(self, origin: str) -> list[str]:
        """Requests whose origin is not ``origin`` (``blob:`` URLs count by the origin they
        embed, which is the page's own)."""
        wanted = urlsplit(origin)
        foreign = []
        for url in self.requests:
            target = urlsplit(url[len("blob:") :] if url.startswith("blob:") else url)
            if (target.scheme, target.netloc) != (wanted.scheme, wanted.netloc):
                foreign.append(url)
        return foreign


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 900)) -> Iterator[tuple[Page, BrowserLog]]:
    """A fresh page in a fresh browser profile; fails the test when Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed (run `make system-deps`)")
    log = BrowserLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS), headless=True
        )
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block"
            )

            def on_request(request: Request) -> None:
                log.requests.append(request.url)

            def on_console(message: ConsoleMessage) -> None:
                log.console.append(f"{message.type}: {message.text}")

            context.on("request", on_request)
            context.on("console", on_console)
            page = context.new_page()
            # Waits are deadlines on what the page shows, generous for a busy machine: Playwright's
            # own defaults (5 s for an expectation, 30 s for an action) assume an idle one.
            page.set_default_timeout(LOADED_TIMEOUT_MS)
            expect.set_options(timeout=LOADED_TIMEOUT_MS)
            yield page, log
        finally:
            browser.close()
