"""What every command shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fishr_tune.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def exits_2_on_bad_input(command: F) -> F:
    """Bad input is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            click.echo(f"Error: {one_line(str(error))}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


MAX_MESSAGE = 1000


def one_line(message: str) -> str:
    """The error as one line of bounded length, whatever a value or a library put into it."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text):,} characters)"
