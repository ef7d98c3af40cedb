"""`charnet export --format web`: the folder, and the page generating in headless
Chromium from a plain static server, against the ONNX runtime in Python."""

from __future__ import annotations

import hashlib

import pytest

from bench.browser import generate_in_page, open_export, static_server
from charnet.checkpoint import load_checkpoint
from charnet.export.runtime import OnnxModel
from charnet.export.web import export_web
from charnet.inference.engine import Engine
from tests.browser import needs_browser
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def web_folder(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "site"
    export_web(load_checkpoint(tiny_model), out)
    return out


def test_the_folder_holds_the_page_the_model_the_runtime_and_the_licences(web_folder):
    names = {p.relative_to(web_folder).as_posix() for p in web_folder.rglob("*") if p.is_file()}
    assert {"index.html", "page.js", "local.js", "generate.js", "view.js", "playground.css", "LICENSE",
            "model/model.onnx", "model/tokenizer.json", "model/charnet.json", "ort/ort.wasm.min.mjs",
            "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm", "ort/LICENSE",
            "ort/README.md"} == names
    sums = (ROOT / "charnet" / "export" / "web" / "ort" / "SHA256SUMS").read_text().split()
    for digest, name in zip(sums[::2], sums[1::2]):
        assert hashlib.sha256((web_folder / "ort" / name).read_bytes()).hexdigest() == digest
    assert (web_folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert "Microsoft" in (web_folder / "ort" / "LICENSE").read_text()
    # The page's own copies of the playground's files, not look-alikes.
    for name in ("view.js", "playground.css"):
        assert (web_folder / name).read_bytes() == (ROOT / "charnet" / "server" / "static" / name).read_bytes()
    OnnxModel.open(web_folder / "model")  # its checksums hold


@needs_browser
def test_the_page_generates_what_onnxruntime_does_in_python(browser, web_folder, tiny_model, monkeypatch):
    reference = OnnxModel.open(web_folder / "model")
    with static_server(web_folder) as url:
        page = open_export(browser, url)
        elsewhere, errors = [], []
        page.on("request", lambda r: None if r.url.startswith((url, "data:")) else elsewhere.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        run = generate_in_page(page, prompt="ROMEO:", seed=11, length=300, temperature=0.9, top_k=30, top_p=0.95)
        assert run.text == reference.generate("ROMEO:", max_chars=300, temperature=0.9, top_k=30, top_p=0.95,
                                              seed=11)
        assert len(run.text) == 300 and run.chars_per_s > 0
        again = generate_in_page(page, prompt="ROMEO:", seed=11, length=300, temperature=0.9, top_k=30, top_p=0.95)
        assert again.text == run.text
        other = generate_in_page(page, prompt="ROMEO:", seed=12, length=300, temperature=0.9, top_k=30, top_p=0.95)
        assert other.text != run.text
        # Greedy: charnet's own engine with the export's arithmetic (float32 products, the
        # aten step) writes the same; opened here, not from charnet.load's cache.
        monkeypatch.setenv("CHARNET_KERNEL_PRECISION", "float32")
        monkeypatch.setenv("CHARNET_FUSED_STEP", "0")
        greedy = generate_in_page(page, prompt="ROMEO:", seed=0, length=200, temperature=0)
        assert greedy.text == Engine.open(tiny_model).generate("ROMEO:", max_chars=200, temperature=0).text
        stopped = generate_in_page(page, prompt="ROMEO:", seed=11, length=300, temperature=0.9, top_k=30,
                                   top_p=0.95, stop="\\n")
        assert stopped.text == run.text[:run.text.index("\n")] and "stop string" in stopped.status
        # Streaming holds back what may begin a stop string; when a shorter stop ends inside
        # what a longer one held back, the text before the shorter one still shows.
        full = reference.generate("ROMEO:", max_chars=300, temperature=0.9, seed=11)
        k = next(i for i in range(60, 290) if full.find(full[i:i + 2]) == i)
        stops = [full[k:k + 2], full[k - 2:k + 1] + "\u0001"]
        want = reference.generate("ROMEO:", max_chars=300, temperature=0.9, seed=11, stop=tuple(stops))
        assert want == full[:k]
        got = page.evaluate("""async ([stops]) => {
            const { LocalModel } = await import("./generate.js");
            const model = await LocalModel.open(new URL("model", document.baseURI).href.replace(/\\/$/, ""));
            const pieces = [];
            const run = model.generate("ROMEO:", { maxChars: 300, temperature: 0.9, seed: 11, stop: stops });
            let next;
            while (!(next = await run.next()).done) pieces.push(next.value.text);
            return [pieces.join(""), next.value];
        }""", [stops])
        assert got == [want, "stop"]
        page.close()
    assert not elsewhere and not errors, (elsewhere, errors)
