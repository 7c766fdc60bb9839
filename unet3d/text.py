"""Small helpers for the words the commands print."""

from __future__ import annotations


def plural(n: int | float, word: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"0 epochs"`` (English ``-s`` plurals only)."""
    return f"{n:g} {word}" if n == 1 else f"{n:g} {word}s"
