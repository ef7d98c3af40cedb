"""The playground in a real browser: headless Chromium (Debian's), driven by Playwright,
against a real `charnet serve` on loopback.

Skipped, with the reason, when Playwright or Chromium is missing (`tests.browser`).
"""

from __future__ import annotations

import math
import re
import shutil
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.serving import API_KEY, MODEL, OTHER, auth, running, wait_until

from bench.browser import generate_in_page
from charnet.export.runtime import OnnxModel
from tests.browser import needs_browser

try:
    from playwright.sync_api import expect
except ImportError:  # the dev extra installs it; needs_browser skips without it
    expect = None

pytestmark = needs_browser

LONG = 100_000
"""A generation far longer than any test waits for: Stop always lands mid-stream."""
TRAINED = "shakespeare-tiny"
MODELS = [MODEL, OTHER, TRAINED]
ARTIFACTS = ROOT / "test-artifacts"
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


@pytest.fixture(scope="module")
def served(start_server, models_dir, tiny_model, tmp_path_factory):
    # The shared tiny_model has trained long enough for words and line breaks, so greedy
    # text and its alternatives vary; `tiny` and `tiny-gru` stand beside it.
    shakespeare = tmp_path_factory.mktemp("browser-models") / TRAINED
    shutil.copytree(tiny_model, shakespeare)
    # One slot per model and no queue: a second generation gets a real 429. Room for a long
    # generation with the page's 5 alternatives per character.
    return start_server([models_dir, shakespeare, "--max-concurrency", "1", "--max-queue", "0",
                         "--max-chars-cap", str(LONG), "--max-response-tokens", str(6 * LONG)],
                        env={"CHARNET_API_KEY": API_KEY})


class Opened:
    """A page of the playground, recording what must never happen: an uncaught
    error in the page, or a request anywhere but the server."""

    def __init__(self, browser, served, width: int = 1100, height: int = 900) -> None:
        self.page = browser.new_page()
        self.page.set_viewport_size({"width": width, "height": height})
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith((served.url, "data:"))
                     else self.elsewhere.append(r.url))
        self.page.goto(f"{served.url}/")

    def enter_key(self, key: str = API_KEY) -> None:
        self.page.fill("#api-key", key)
        self.page.press("#api-key", "Enter")

    def close(self) -> None:
        self.page.close()
        assert not self.errors, self.errors
        assert not self.elsewhere, self.elsewhere


@pytest.fixture
def opened(browser, served):
    pages: list[Opened] = []

    def open_(**size) -> Opened:
        pages.append(Opened(browser, served, **size))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


@pytest.fixture
def page(opened):
    """The playground with the key entered and the models listed."""
    o = opened()
    o.enter_key()
    expect(o.page.locator("#model option")).to_have_count(len(MODELS))
    return o.page


def settings(page, **values) -> None:
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def luminance(css: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_asks_for_the_key_then_lists_the_models(opened):
    o = opened()
    page = o.page
    expect(page.locator("#alert")).to_contain_text("needs an API key")
    expect(page.locator("#api-key")).to_be_focused()
    o.enter_key("wrong")
    expect(page.locator("#alert")).to_contain_text("did not accept this API key")
    o.enter_key()
    expect(page.locator("#model option")).to_have_count(len(MODELS))
    assert page.locator("#model option").evaluate_all("os => os.map(o => o.value)") == MODELS
    expect(page.locator("#alert")).to_be_empty()
    # Every control is found by its label, as assistive technology finds it.
    for label in ("Model", "API key", "Prompt", "Temperature", "Top-p", "Top-k", "Min-p", "Typical-p",
                  "Repetition penalty", "Frequency penalty", "Presence penalty", "Length", "Seed", "Stop at",
                  "Character bias", "Constrain to", "Pattern or schema"):
        expect(page.get_by_label(label, exact=True)).to_have_count(1)


def test_generation_shows_the_apis_text_coloured_by_probability(page, served):
    page.select_option("#model", TRAINED)
    settings(page, prompt="ROMEO:", temperature=0, top_p=1, top_k=0, seed=7, length=160)
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
    spans = page.locator("#gen-output .ch").evaluate_all(
        "els => els.map(e => [e.textContent, Number(e.dataset.logprob), getComputedStyle(e).backgroundColor])")

    api = httpx.post(f"{served.url}/v1/completions", headers=auth(), timeout=60, json={
        "model": TRAINED, "prompt": "ROMEO:", "max_tokens": 160, "temperature": 0, "seed": 7, "logprobs": 5}).json()
    choice = api["choices"][0]
    assert "".join(text for text, _, _ in spans) == choice["text"] and len(spans) == 160
    assert [lp for _, lp, _ in spans] == pytest.approx(choice["logprobs"]["token_logprobs"], abs=1e-5)
    # The colour follows the probability: more probable, brighter (viridis rises in luminance).
    by_p = sorted((lp, luminance(bg)) for _, lp, bg in spans)
    assert len({bg for _, _, bg in spans}) > 1
    assert all(a[1] <= b[1] + 1 for a, b in zip(by_p, by_p[1:]))

    # Hovering a character lists the model's alternatives there, whitespace made visible.
    tops = choice["logprobs"]["top_logprobs"]
    at = next(i for i, top in enumerate(tops) if " " in top or "\n" in top)
    page.locator("#gen-output .ch").nth(at).hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    expect(tip.locator("li")).to_have_count(len(tops[at]))
    expect(tip).to_contain_text("␣" if " " in tops[at] else "↵")
    expect(tip).to_contain_text(f"{100 * math.exp(choice['logprobs']['token_logprobs'][at]):.1f}%")
    screenshot(page, "playground.png")

    # The keyboard reaches the same: Tab into the text, arrows move, focus is visible.
    page.focus("#generate")
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("() => [[...document.querySelectorAll('#gen-output .ch')].indexOf(document.activeElement),"
                            " getComputedStyle(document.activeElement).outlineStyle]")
    assert focused == [2, "solid"]
    expect(tip).to_be_visible()
    expect(tip.locator("li")).to_have_count(len(tops[2]))
    page.keyboard.press("Escape")
    expect(tip).to_be_hidden()


def test_decoding_controls_and_a_constraint_reach_the_api(page, served):
    page.select_option("#model", TRAINED)
    controls = dict(min_p=0.05, typical_p=0.9, repetition_penalty=1.1, frequency_penalty=0.5, presence_penalty=0.2)
    settings(page, prompt="ROMEO:", temperature=1, top_p=1, top_k=0, seed=3, length=60, char_bias="e=-100",
             **controls)
    page.select_option("#constraint-kind", "regex")
    page.fill("#constraint", "[A-Z][a-z]+( [a-z]+)+")
    page.click("#generate")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
    shown = "".join(page.locator("#gen-output .ch").evaluate_all("els => els.map(e => e.textContent)"))
    api = httpx.post(f"{served.url}/v1/completions", headers=auth(), timeout=60, json={
        "model": TRAINED, "prompt": "ROMEO:", "max_tokens": 60, "seed": 3, "char_bias": {"e": -100},
        "structured_outputs": {"regex": "[A-Z][a-z]+( [a-z]+)+"}, **controls}).json()
    assert shown == api["choices"][0]["text"] and re.fullmatch("[A-Z][a-z]+( [a-z]+)+", shown) and "e" not in shown

    page.select_option("#constraint-kind", "json")
    page.fill("#constraint", "{oops")
    page.click("#generate")
    expect(page.locator("#alert")).to_contain_text("structured_outputs.json")
    expect(page.locator("#constraint")).to_have_attribute("aria-invalid", "true")
    page.select_option("#constraint-kind", "")
    settings(page, char_bias="ee=1")
    page.click("#generate")
    expect(page.locator("#alert")).to_contain_text("char_bias")
    expect(page.locator("#char_bias")).to_have_attribute("aria-invalid", "true")


def test_stop_ends_the_generation_on_the_server_too(page, served):
    settings(page, prompt="JULIET:", temperature=1, length=LONG)
    page.click("#generate")
    expect(page.locator("#gen-output .ch").nth(29)).to_be_attached()
    assert running(served) == 1
    page.click("#stop")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "stopped")
    wait_until(lambda: running(served) == 0)
    shown = page.locator("#gen-output .ch").count()
    time.sleep(0.5)
    assert page.locator("#gen-output .ch").count() == shown < LONG  # nothing more arrives
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()

    # Escape stops too.
    page.click("#generate")
    expect(page.locator("#gen-output .ch").nth(9)).to_be_attached()
    page.keyboard.press("Escape")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "stopped")
    wait_until(lambda: running(served) == 0)


def test_errors_are_shown_in_words(page, served):
    alert = page.locator("#alert")
    settings(page, top_p=5, length=20)
    page.click("#generate")
    expect(alert).to_contain_text("top_p")
    expect(alert).to_contain_text("less than or equal to 1")
    expect(page.locator("#top_p")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#top_p")).to_be_focused()
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "error")
    page.fill("#top_p", "1")
    expect(page.locator("#top_p")).not_to_have_attribute("aria-invalid", "true")

    # The model's only slot taken: 429, explained.
    body = {"model": MODEL, "prompt": "a", "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, headers=auth(), timeout=60) as held:
        lines = held.iter_lines()  # kept: a dropped iterator closes the response, and the server cancels
        next(lines)
        page.click("#generate")
        expect(alert).to_contain_text("busy")
    wait_until(lambda: running(served) == 0)

    # The server unreachable.
    page.route("**/v1/completions", lambda route: route.abort("connectionrefused"))
    page.click("#generate")
    expect(alert).to_contain_text("Could not reach the server")
    page.unroute("**/v1/completions")
    page.click("#generate")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
    expect(alert).to_be_empty()


def test_score_view_shows_the_apis_bits_per_char(page, served):
    page.select_option("#model", TRAINED)
    page.click("#tab-score")
    expect(page.locator("#panel-score")).to_be_visible()
    expect(page.locator("#panel-generate")).to_be_hidden()
    page.fill("#score-text", TEXT)
    page.keyboard.press("Control+Enter")
    expect(page.locator("#score-status")).to_have_attribute("data-state", "done")
    api = httpx.post(f"{served.url}/v1/score", json={"model": TRAINED, "text": TEXT}, headers=auth(), timeout=60).json()
    shown = page.locator("#bits-per-char")
    assert float(shown.get_attribute("data-bits")) == api["bits_per_char"]
    expect(shown).to_have_text(f"{api['bits_per_char']:.3f}")
    expect(page.locator("#score-status")).to_contain_text(f"over {len(TEXT) - 1} predicted characters")
    spans = page.locator("#score-output .ch")
    expect(spans).to_have_count(len(TEXT))
    assert spans.first.get_attribute("class") == "ch none"  # nothing before it to predict it from
    logprobs = spans.evaluate_all("els => els.slice(1).map(e => Number(e.dataset.logprob))")
    assert logprobs == pytest.approx([c["logprob"] for c in api["chars"][1:]], abs=1e-5)
    spans.nth(5).hover()
    expect(page.locator("#tip li")).to_have_count(5)


def test_usable_at_phone_width(opened, served):
    o = opened(width=390, height=844)
    page = o.page
    o.enter_key()
    expect(page.locator("#model option")).to_have_count(len(MODELS))
    page.select_option("#model", TRAINED)
    settings(page, prompt="ROMEO:", temperature=0, seed=1, length=120)
    page.click("#generate")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    for selector in ("#model", "#prompt", "#temperature", "#stop-at", "#generate", "#stop", "#gen-output",
                     "#tab-score", ".legend-bar"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    page.locator("#gen-output .ch").last.hover()
    tip = page.locator("#tip").bounding_box()
    assert tip["x"] >= 0 and tip["x"] + tip["width"] <= 390
    screenshot(page, "playground-phone.png")


def test_run_in_this_browser_generates_without_the_server(page, served, tmp_path):
    page.select_option("#model", TRAINED)
    expect(page.locator("#local-row")).to_be_visible()
    page.check("#local")
    expect(page.locator("#min_p")).to_be_disabled()  # the server's alone
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    run = generate_in_page(page, prompt="ROMEO:", seed=5, length=200, temperature=0.8)
    assert len(run.text) == 200 and "seed 5" in run.status
    assert any(u.endswith(f"/v1/models/{TRAINED}/onnx/model.onnx") for u in asked)
    assert not any(u.endswith(("/v1/completions", "/v1/generate")) for u in asked)
    # The text onnxruntime writes in Python from the files the server handed out.
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("charnet.json", "model.onnx", "tokenizer.json"):
        r = httpx.get(f"{served.url}/v1/models/{TRAINED}/onnx/{name}", headers=auth(), timeout=120)
        (folder / name).write_bytes(r.content)
    assert run.text == OnnxModel.open(folder).generate("ROMEO:", max_chars=200, temperature=0.8, seed=5)
    # The loaded model is kept: a second run downloads nothing.
    asked.clear()
    assert generate_in_page(page, prompt="ROMEO:", seed=5, length=200, temperature=0.8).text == run.text
    assert not [u for u in asked if "/onnx/" in u]
    page.uncheck("#local")
    expect(page.locator("#min_p")).to_be_enabled()
