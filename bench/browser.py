"""Generation in headless Chromium: a web export (`charnet export --format web`) served
from a local static server and driven through its own form, as a visitor would.

Used by `bench/sample_throughput.py` (browser chars/s) and by the export's browser
tests. Chromium is Debian's (``apt-get install chromium``, or CHARNET_CHROMIUM), driven
by Playwright for Python; Playwright's own browser download is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.common import free_port

# Without the networking flags Chromium tries to reach Google's services and stalls here.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHARNET_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing() -> str | None:
    """Why a browser cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:  # the dev extra installs it
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "Chromium not found: apt-get install chromium, or set CHARNET_CHROMIUM"
    return None


@contextmanager
def chromium(profile: Path, width: int = 1100, height: int = 900):
    """A headless Chromium context with a fresh profile in `profile`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=find_chromium(), headless=True,
                                                       args=FLAGS, viewport={"width": width, "height": height})
        try:
            yield context
        finally:
            context.close()


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """`python -m http.server` serving `folder` on a loopback port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the static server for {folder} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class PageRun:
    text: str
    """The generated characters (the prompt excluded)."""
    chars_per_s: float
    """As the page measured it, model loading excluded."""
    status: str
    """The page's status line."""


def generate_in_page(page, *, prompt: str = "", seed: int = 0, length: int = 300, temperature: float = 0.8,
                     top_k: int = 0, top_p: float = 1.0, stop: str = "", timeout_ms: int = 120_000) -> PageRun:
    """Fill the generate form of an open page (the export's or the playground's, with
    the model ready), generate, and read back the text."""
    for field, value in (("#prompt", prompt), ("#seed", str(seed)), ("#length", str(length)),
                         ("#temperature", str(temperature)), ("#top_k", str(top_k)), ("#top_p", str(top_p)),
                         ("#stop-at", stop)):
        page.fill(field, value)
    # Marked first, so that the end of this run is not mistaken for the previous one's.
    page.evaluate("document.getElementById('gen-status').dataset.state = 'submitted'")
    page.click("#generate")
    page.wait_for_selector("#gen-status:not([data-state=submitted]):not([data-state=running])", timeout=timeout_ms)
    text = page.evaluate("Array.from(document.querySelectorAll('#gen-output .ch'), s => s.textContent).join('')")
    status = page.text_content("#gen-status") or ""
    rate = float(page.get_attribute("#gen-status", "data-chars-per-second") or 0)
    return PageRun(text=text, chars_per_s=rate, status=status)


def open_export(context, url: str, timeout_ms: int = 120_000):
    """The export's page at `url`, once its model has loaded."""
    page = context.new_page()
    page.goto(f"{url}/")
    page.wait_for_selector("#gen-status[data-state=idle]", timeout=timeout_ms)
    return page
