"""Playwright helpers for driving the demo page in Debian's Chromium (never a downloaded one).

Also a small tool: `python tests/browser.py [docs/screenshot.png]` starts the service with its
simulated provider and saves a screenshot of the page in the middle of an answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
REPLY = "#messages > .message.assistant"
LAST_REPLY = f"{REPLY}:last-child"
TERMINAL_STATES = ("done", "stopped", "error")


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)


@dataclass
class PageWatch:
    """What a page did that a test should know about: errors, dialogs, foreign requests."""

    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> PageWatch:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("dialog", self._dialog)
        page.on("request", self._request)
        return self

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https") and f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.foreign_requests.append(request.url)

    def problems(self, *, allow_console: tuple[str, ...] = (),
                 allow_requests: tuple[str, ...] = ()) -> list[str]:
        """Everything untoward, but console errors containing, or URLs equal to, allowed ones."""
        console = [m for m in self.console_errors if not any(a in m for a in allow_console)]
        foreign = [u for u in self.foreign_requests if u not in allow_requests]
        return ([f"console: {m}" for m in console] + [f"page error: {m}" for m in self.page_errors]
                + [f"dialog: {m}" for m in self.dialogs]
                + [f"request elsewhere: {u}" for u in foreign])


def open_page(context: Any, base_url: str) -> tuple[Any, PageWatch]:
    page = context.new_page()
    watch = PageWatch(origin=base_url.rstrip("/")).attach(page)
    page.goto(base_url.rstrip("/") + "/")
    page.wait_for_function("() => document.readyState === 'complete'")
    return page, watch


def ask(page: Any, prompt: str, *, model: str | None = None) -> Any:
    """Send a prompt the way a person does; return the locator of the new reply."""
    before = page.locator(REPLY).count()
    if model is not None:
        page.fill("#model", model)
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function(
        "n => document.querySelectorAll('#messages > .message.assistant').length > n", arg=before)
    return page.locator(LAST_REPLY)


def wait_state(reply: Any, *states: str, timeout: float = 30.0) -> str:
    """Wait until the reply's data-state is one of `states`; return it."""
    states = states or TERMINAL_STATES
    reply.page.wait_for_function(
        "([el, states]) => states.includes(el.dataset.state)",
        arg=[reply.element_handle(), list(states)], timeout=timeout * 1000)
    return str(reply.get_attribute("data-state"))


def capture_screenshot(page: Any, path: Path,
                       prompt: str = "How does streaming work here?") -> Path:
    """Ask the simulated provider a question and save the page once a code block is streaming."""
    page.set_viewport_size({"width": 1000, "height": 860})
    reply = ask(page, prompt)
    page.wait_for_function(
        "el => el.dataset.state === 'streaming' && el.querySelector('.content pre code')"
        " && el.querySelector('.content pre code').textContent.includes('yield')",
        arg=reply.element_handle(), timeout=30_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import ROOT, Service

    target = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "screenshot.png"
    service = Service({"SIMULATED_TOKENS_PER_SECOND": 25})
    try:
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page, _ = open_page(browser.new_context(), service.url)
                capture_screenshot(page, target)
            finally:
                browser.close()
    finally:
        service.stop()
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
