"""Headless Chromium as a test harness for report.html: the DOM it built and the errors it logged."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["Page", "Rendered", "chromium", "headless", "parse_page", "render"]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--no-first-run",
         "--disable-background-networking")
ERROR_MARKS = ("CONSOLE", "Failed to load", "Uncaught")  # what Chromium logs for a script error or a resource it could not get


class Page(HTMLParser):
    """What a browser would fetch or run: tags, ids, and every URL-carrying attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.append(value)
            if name in ("src", "href", "xlink:href", "action", "data"):
                self.urls.append(value)


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def headless(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *FLAGS, *args], capture_output=True, text=True, timeout=120)


@dataclasses.dataclass
class Rendered:
    ok: bool  # Chromium exited 0 and logged no error
    ids: set[str]  # element ids in the DOM it built
    errors: list[str]


def render(path: str | Path) -> Rendered:
    """Load ``path`` in headless Chromium and return the DOM's ids and any error it logged."""
    dom = headless("--dump-dom", Path(path).resolve().as_uri())
    errors = [line for line in dom.stderr.splitlines() if any(mark in line for mark in ERROR_MARKS)]
    return Rendered(dom.returncode == 0 and not errors, set(parse_page(dom.stdout).ids), errors)
