"""Progress bars for long steps (to stderr, so reports on stdout stay clean)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable=None, **kw):
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("leave", False)
    kw.setdefault("disable", None)  # off when stderr is not a terminal
    return tqdm(iterable, **kw)
