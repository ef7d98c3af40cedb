"""Refresh charnet/export/web/ort/ from the onnxruntime-web npm package.

    python tools/vendor_onnxruntime_web.py 1.30.0

Downloads the package with `npm pack` (the registry's integrity check applies), copies
the three files the page loads and writes their SHA-256 sums; prints the tarball's
SHA-256 and npm integrity for ort/README.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TARGET = Path(__file__).resolve().parent.parent / "charnet" / "export" / "web" / "ort"


def main(version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["npm", "pack", f"onnxruntime-web@{version}", "--json"], cwd=tmp, check=True,
                             capture_output=True, text=True).stdout
        info = json.loads(out)[0]
        tarball = Path(tmp) / info["filename"]
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name in {f"package/dist/{f}" for f in FILES}],
                           filter="data")
        sums = []
        for name in FILES:
            shutil.copyfile(Path(tmp) / "package" / "dist" / name, TARGET / name)
            sums.append(f"{hashlib.sha256((TARGET / name).read_bytes()).hexdigest()}  {name}\n")
        (TARGET / "SHA256SUMS").write_text("".join(sums))
        print(f"onnxruntime-web {info['version']}: tarball sha256 {hashlib.sha256(tarball.read_bytes()).hexdigest()}, "
              f"integrity {info['integrity']}")


if __name__ == "__main__":
    main(sys.argv[1])
