"""Progress bars for long steps (to stderr, so reports on stdout stay clean).

On a terminal, tqdm's bar redrawn in place. In a log or a pipe (a long run under nohup, a batch job),
carriage-return redraws would pile up on one line, and no bar at all hides for half an hour where a run
is: there each redraw becomes a line of its own, at most one a minute, and only for steps that last longer
than LOG_DELAY_S (short commands and tests print nothing)."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_DELAY_S = 30.0  # a log gets lines only from steps that last longer than this
LOG_INTERVAL_S = 60.0  # and then at most one line per this many seconds, and the last


class _LogLines:
    """A text stream for tqdm that writes each redraw as a line of its own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> None:
        line = s.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def progress(iterable=None, **kw):
    stream = kw.pop("file", sys.stderr)
    if getattr(stream, "isatty", lambda: False)():
        kw.setdefault("dynamic_ncols", True)
        kw.setdefault("leave", False)
        return tqdm(iterable, file=stream, **kw)
    kw.setdefault("delay", LOG_DELAY_S)
    kw.setdefault("mininterval", LOG_INTERVAL_S)
    kw.setdefault("leave", True)
    return tqdm(iterable, file=_LogLines(stream), ascii=True, **kw)
