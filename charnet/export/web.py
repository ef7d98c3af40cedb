"""`charnet export --format web`: a static folder that generates in the browser.

    OUT/index.html, page.js, local.js, generate.js   the page (charnet/export/web/)
    OUT/view.js, playground.css                      the playground's own, reused
    OUT/model/                                       the ONNX export (`charnet.export.onnx`)
    OUT/ort/                                         onnxruntime-web, vendored (its README)
    OUT/LICENSE                                      charnet's licence

Every file comes from the installed package, so the export runs offline; the vendored
runtime's checksums are verified before it is copied. Any static host serves the
folder (``python -m http.server -d OUT``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from importlib import resources
from pathlib import Path

from charnet.checkpoint import Checkpoint, atomic_directory
from charnet.errors import CharnetError
from charnet.export.manifest import Manifest
from charnet.export.onnx import write_onnx

PAGE = ("index.html", "page.js", "local.js", "generate.js")
PLAYGROUND = ("view.js", "playground.css")
RUNTIME = "ort"
MODEL = "model"


def web_files():
    """The page's folder inside the installed package (also served by `charnet serve`)."""
    return resources.files("charnet.export") / "web"


def verified_runtime() -> dict[str, bytes]:
    """The vendored onnxruntime-web files by name, each checked against SHA256SUMS."""
    folder = web_files() / RUNTIME
    files = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise CharnetError(f"charnet's copy of onnxruntime-web is damaged ({name}); reinstall charnet")
        files[name] = data
    for extra in ("LICENSE", "README.md"):
        files[extra] = (folder / extra).read_bytes()
    return files


def license_text() -> str:
    """charnet's own licence, from the installed distribution's metadata."""
    # Every record of the installation: run from a source tree, a stale egg-info there
    # may come before the installed dist-info, which carries the licence (PEP 639).
    for dist in importlib.metadata.distributions(name="charnet"):
        for name in ("licenses/LICENSE", "LICENSE"):
            text = dist.read_text(name)
            if text:
                return text
    raise CharnetError("charnet's LICENSE is missing from this installation; reinstall charnet")


def export_web(checkpoint: Checkpoint, out: Path, dtype: str = "float32") -> Manifest:
    """Write the web folder of `checkpoint` to `out`, replacing it atomically."""
    runtime = verified_runtime()
    with atomic_directory(out) as tmp:
        (tmp / MODEL).mkdir()
        manifest = write_onnx(checkpoint, tmp / MODEL, dtype)
        (tmp / RUNTIME).mkdir()
        for name, data in runtime.items():
            (tmp / RUNTIME / name).write_bytes(data)
        for name in PAGE:
            (tmp / name).write_bytes((web_files() / name).read_bytes())
        static = resources.files("charnet.server") / "static"
        for name in PLAYGROUND:
            (tmp / name).write_bytes((static / name).read_bytes())
        (tmp / "LICENSE").write_text(license_text(), encoding="utf-8")
    return manifest


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

