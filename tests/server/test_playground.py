"""The playground's files: served at / and /static, shipped as package data, self-contained.

What the page does in a browser is tested in test_playground_browser.py."""

from __future__ import annotations

import fnmatch
import re
from importlib import resources

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.anyio

FILES = ["index.html", "playground.css", "playground.js", "api.js", "view.js"]


def static_files() -> dict[str, str]:
    """The playground's files as the installed package holds them (importlib.resources
    reads them through the package, as `charnet serve` does, wherever it is installed)."""
    folder = resources.files("charnet.server") / "static"
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.is_file()}


def test_the_files_are_in_the_package():
    files = static_files()
    assert set(FILES) <= set(files)
    assert all(len(text.splitlines()) <= 400 for text in files.values())


def test_package_data_ships_every_static_file():
    # A non-editable install (wheel, sdist) holds only what package-data names.
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["charnet"]
    for name in static_files():
        assert any(fnmatch.fnmatch(f"server/static/{name}", p) for p in patterns), name


def test_nothing_is_fetched_from_elsewhere():
    for name, text in static_files().items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names another host"
    html = static_files()["index.html"]
    referenced = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    imported = [m for text in static_files().values() for m in re.findall(r'from "\./([^"]+)"', text)]
    assert set(referenced) == {"playground.css", "playground.js"}
    assert set(imported) == {"api.js", "view.js"}


def test_every_control_has_a_label():
    html = static_files()["index.html"]
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    controls = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", html)
    assert controls and set(controls) <= labelled


async def test_served_at_the_root_and_under_static(make_app):
    async with make_app() as api:
        page = await api.client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == static_files()["index.html"]
        # The page may load and call nothing but this server.
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
        for name in FILES:
            r = await api.client.get(f"/static/{name}")
            assert r.status_code == 200 and r.text == static_files()[name]
            assert r.headers["content-type"].startswith(types[name[name.rindex("."):]])
        missing = await api.client.get("/static/nope.js")
        assert missing.status_code == 404 and missing.json()["error"]["message"]
        assert (await api.client.get("/static/../settings.py")).status_code == 404
