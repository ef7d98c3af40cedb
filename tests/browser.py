"""Whether the browser tests (the playground's, the web export's) can run: `needs_browser`
marks them; the `browser` fixture (tests/conftest.py) launches headless Chromium.

Skipped, with the reason, when Playwright or Chromium is missing; CI installs both
(.ci/run installs Debian's chromium and sets CHARNET_REQUIRE_BROWSER, which turns a skip
into a failure; the dev extra installs Playwright).
"""

from __future__ import annotations

import os

import pytest

from bench.browser import missing

MISSING = missing()
if MISSING and os.environ.get("CHARNET_REQUIRE_BROWSER"):
    # CI sets this once it has installed Chromium: there, a skip would hide a broken set-up.
    raise RuntimeError(f"CHARNET_REQUIRE_BROWSER is set, but {MISSING}")
needs_browser = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
