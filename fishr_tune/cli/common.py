"""What every command shares: bad input is one line on stderr and exit code 2; help that lists a registry."""

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


def listing(names: list[str], default: str) -> str:
    """`A (default), B, C or D`: the default first, then the others in their registry's order."""
    ordered = [f"{default} (default)", *(name for name in names if name != default)]
    return ordered[0] if len(ordered) == 1 else f"{', '.join(ordered[:-1])} or {ordered[-1]}"


class RegistryHelpOption(click.Option):
    """An option whose help lists a registry, read when help is shown: importing the registry (the algorithms import
    torch) at startup would slow every command, and a hand-written list would miss the next entry."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.help_from()
        return super().get_help_record(ctx)


class RegistryHelpCommand(click.Command):
    """A command whose help text lists a registry, read when help is shown (see RegistryHelpOption)."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.help = self.help_from()
        super().format_help_text(ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        self.help = self.help_from()
        return super().get_short_help_str(limit)
