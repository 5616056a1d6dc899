"""Accuracy metrics: perplexity, agreement with float, KL, SQNR."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood of the next token (L - 1 values)."""
    lp = log_softmax(logits[:-1])
    return -lp[np.arange(len(tokens) - 1), tokens[1:]]


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean(ref.argmax(-1) == test.argmax(-1)))


def mean_kl(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(ref || test) per position, in nats."""
    p, q = log_softmax(ref), log_softmax(test)
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    err = float(np.sum((ref - np.asarray(test, dtype=np.float64)) ** 2))
    sig = float(np.sum(ref**2))
    if err == 0:
        return float("inf")
    return 10.0 * np.log10(sig / err) if sig > 0 else float("-inf")
