"""Tokenizers: the checkpoint's own, or bytes for byte-vocabulary models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsim.errors import QsimError

BYTE_VOCAB = 256


@dataclass
class Tokenizer:
    kind: str  # "checkpoint", "bytes" or "bytes (fallback ...)"
    _hf: object | None = None

    def encode(self, text: str) -> np.ndarray:
        if self._hf is not None:
            return np.asarray(self._hf.encode(text).ids, dtype=np.int64)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def for_model(folder: Path | None, vocab_size: int) -> Tokenizer:
    """The checkpoint's tokenizer.json when present; bytes otherwise."""
    if folder is not None and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return Tokenizer("checkpoint", HFTokenizer.from_file(str(folder / "tokenizer.json")))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise QsimError(f"{folder / 'tokenizer.json'}: unreadable tokenizer ({exc})") from None
    if vocab_size < BYTE_VOCAB:
        raise QsimError(f"vocabulary of {vocab_size} is too small for byte tokens and no tokenizer.json was found")
    if vocab_size <= BYTE_VOCAB + 8:
        return Tokenizer("bytes")
    return Tokenizer("bytes (fallback: no tokenizer.json with the weights)")
