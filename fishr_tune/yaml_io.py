"""The one way YAML is read here: `yaml.SafeLoader`, minus the two features that let a small file lie or explode.

Duplicate keys are refused (PyYAML keeps the last one, so ``steps: 40`` followed by ``steps: 4000000`` silently
started a 4-million-step sweep), and so are anchors and aliases (``&a`` / ``*a``: a "billion laughs" file of a few
hundred bytes expands into gigabytes). Settings files are small, so their size is bounded too. Every failure is a
`ConfigError` naming the file and line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from fishr_tune.errors import ConfigError, quote

MAX_BYTES = 1 << 20  # a sweep or train file is a few KB; anything larger is not a settings file
MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and duplicate mapping keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            name = getattr(event, "anchor", None)
            under = f" (under key {quote(index.value, 80)})" if isinstance(index, yaml.ScalarNode) else ""
            raise yaml.composer.ComposerError(
                None, None, f"anchors and aliases (&{name} / *{name}) are not accepted{under}; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {quote(key, 80)} (first at line {first + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{where} ({str(problem)[:200]})"


def parse_yaml(text: str, source: str) -> Any:
    """Parse a YAML document with `StrictLoader`; every failure is one `ConfigError` line naming `source`."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters is too large for a settings file (at most {MAX_BYTES:,})")
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506  (StrictLoader is a SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML{_problem(error)}") from None
    except ValueError as error:  # a scalar that looks like a date (2020-13-45) or a number but is not one
        raise ConfigError(f"{source}: not valid YAML ({str(error)[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None


def load_yaml(path: str | os.PathLike[str], source: str | None = None) -> Any:
    """Read and parse a YAML file: unreadable, too large, non-UTF-8 or invalid all become one `ConfigError` line."""
    source = source or str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise ConfigError(f"{source}: {size:,} bytes is too large for a settings file (at most {MAX_BYTES:,})")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{source}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source}: not a UTF-8 text file (byte {error.start})") from None
    return parse_yaml(text, source)
