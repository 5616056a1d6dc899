"""Progress output: redrawn in place on a terminal, a line per redraw in a log, nothing for short steps."""

from __future__ import annotations

import io
import time

from qsim.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_from_a_long_step():
    log = io.StringIO()
    for _ in progress(range(4), file=log, desc="calibrate", unit="layer", delay=0.05, mininterval=0.0):
        time.sleep(0.04)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("calibrate:") for line in lines)
    assert "4/4" in lines[-1]


def test_a_log_gets_nothing_from_a_short_step():
    log = io.StringIO()
    for _ in progress(range(1000), file=log, desc="fast"):
        pass
    assert log.getvalue() == ""


def test_a_terminal_gets_the_bar_redrawn_in_place():
    term = _Terminal()
    for _ in progress(range(3), file=term, desc="bar", mininterval=0.0):
        pass
    assert "\r" in term.getvalue() and "bar:" in term.getvalue()
