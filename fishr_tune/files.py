"""Durable file replacement: what a crash (a killed process, a power cut) can never leave half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """A rename is only durable once the directory entry is on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through a temporary file in the same directory: fsynced, renamed over `path`, directory fsynced.

    Readers see either the old file or the complete new one, never a prefix of it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
