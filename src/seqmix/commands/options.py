"""Argument types shared by several subcommands."""
from __future__ import annotations

import argparse


def byte_budget(text: str) -> int | None:
    """``--eval-bytes``: a positive number of bytes, or ``all`` (None: the whole split)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of bytes, or 'all' for the whole split")
    return value
