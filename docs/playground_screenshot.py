"""Take the README's screenshot of the playground: `python docs/playground_screenshot.py RUN_DIR`.

Starts `charnet serve RUN_DIR` on a free loopback port, opens the playground in headless
Chromium (Debian's, driven by Playwright, as the browser tests do), generates with a
fixed seed, hovers one character to show its alternatives, and writes docs/playground.png.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

HERE = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(checkpoint: str, out: Path = HERE / "playground.png", chromium: str = "/usr/bin/chromium") -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "charnet", "serve", checkpoint, "--port", str(port),
                               "--log-level", "warning"])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("charnet serve did not become ready")
            time.sleep(0.2)
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                           args=FLAGS, viewport={"width": 1000, "height": 900})
            page = browser.new_page()
            page.goto(f"{url}/")
            expect(page.locator("#model option").first).not_to_have_attribute("value", "")
            page.fill("#prompt", "ROMEO:")
            page.fill("#temperature", "0.7")
            page.fill("#seed", "11")
            page.fill("#length", "360")
            page.click("#generate")
            expect(page.locator("#gen-status")).to_have_attribute("data-state", "done", timeout=60_000)
            # Hover a character the model was unsure of: its alternatives are the interesting ones.
            unsure = page.locator("#gen-output .ch").evaluate_all(
                "els => els.findIndex((e, i) => i > 40 && e.textContent.trim() && Number(e.dataset.p) < 0.3)")
            page.locator("#gen-output .ch").nth(max(unsure, 0)).hover()
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[0])
    main(sys.argv[1])
