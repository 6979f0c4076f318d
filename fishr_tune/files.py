"""Durable file replacement: what a crash (a killed process, a power cut) can never leave half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

NAME_MAX = 255  # bytes in one file name (Linux, macOS)
PATH_MAX = 4096  # characters in a whole path


def path_problem(text: str) -> str | None:
    """Why `text` can never be a path here (os calls on it raise ENAMETOOLONG), or None."""
    if len(text) > PATH_MAX:
        return f"{len(text):,} characters is longer than a path can be ({PATH_MAX:,})"
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in text.split("/")), default=0)
    if longest > NAME_MAX:
        return f"it holds a name of {longest:,} bytes, longer than a file name can be ({NAME_MAX})"
    return None


def usable_path(value: str | None) -> str | None:
    """The body of a settings model's path validator: a path os calls can never take is a ValueError."""
    problem = path_problem(value) if value is not None else None
    if problem:
        raise ValueError(f"not a usable path: {problem}")
    return value


def nearest_existing_ancestor(path: Path) -> Path:
    """The folder that creating `path` (and its missing parents) would write into."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def check_can_create(path: str | os.PathLike[str], where: str, directory: bool = False) -> None:
    """Before any work: `path` must be creatable (or replaceable) as a file, or as a directory with `directory`.

    The nearest existing ancestor has to be a writable directory; a file standing where a folder must go
    (`out.txt/run`) or a folder where the file must go is refused. Raises `ConfigError` naming `where`.
    """
    from fishr_tune.errors import ConfigError

    problem = path_problem(str(path))
    if problem:
        raise ConfigError(f"{where}: not a usable path: {problem}")
    path = Path(path).expanduser()
    if path.exists():
        if directory and not path.is_dir():
            raise ConfigError(f"{where}: {path} is a file, not a directory")
        if not directory and path.is_dir():
            raise ConfigError(f"{where}: {path} is a directory, not a file")
        if not os.access(path if directory else path.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: {path} is not writable")
        return
    ancestor = nearest_existing_ancestor(path)
    if not ancestor.is_dir():
        raise ConfigError(f"{where}: cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot create {path}: {ancestor} is not writable")


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
