"""Errors that mean "the user asked for something invalid" (exit code 2), as opposed to bugs."""

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad input: an unknown name, a malformed file, a value out of range.

    The message must say where (file, key path, flag) and what was expected; the CLI prints it on one line
    and exits with code 2 before any expensive work starts.
    """


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    return ConfigError(f"unknown {kind} {quote(name)}; valid {kind}s: {', '.join(sorted(valid))}")


QUOTE_LIMIT = 200


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` cut to `limit` characters: an error message names a bad value, it never echoes a 50 MB one."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"
