"""Text the project ships (calibration and evaluation splits) and reading user text files."""

from __future__ import annotations

from pathlib import Path

from qsim.errors import QsimError

DATA = Path(__file__).parent / "data"


def resolve_text(spec: str) -> Path:
    """A shipped split ('shakespeare/valid.txt') or a path to a UTF-8 text file."""
    for p in (Path(spec), DATA / spec):
        if p.is_file():
            return p
    raise QsimError(f"text {spec}: no such file (nor under {DATA})")


def read_text(spec: str) -> tuple[str, Path]:
    path = resolve_text(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QsimError(f"{path}: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise QsimError(f"{path}: the text is empty")
    return text, path
