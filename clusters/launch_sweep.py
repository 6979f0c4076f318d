"""Runs a sweep on the Ray cluster this script is started on: what `ray submit <cluster.yaml> <this file>` runs.

    ray submit clusters/aws.yaml clusters/launch_sweep.py search_spaces/pacs_fishr.yaml \
        --storage-path s3://<bucket>/fishr-tune/sweeps --tracking-uri http://127.0.0.1:5000

`ray submit` uploads this file alone to the head's home directory and runs it there, so a search-space path that
is not found from the current directory is looked up in the repository the cluster installed (`pip install -e`
of the uploaded ~/fishr-tune). Everything else is `fishr-tune sweep --address auto` itself: the same options
(--num-samples, --steps, --name, --storage-path, --tracking-uri, --resume, ...), the same validation and exit codes.
Without --address (or $RAY_ADDRESS) it joins the running cluster ("auto").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

import fishr_tune
from fishr_tune.cli import main as fishr_tune_main
from fishr_tune.cli.sweep import sweep as sweep_command


def repository_root() -> Path:
    """The checkout the cluster installed in editable mode (~/fishr-tune on a node `ray up` set up)."""
    return Path(fishr_tune.__file__).resolve().parents[1]


def resolve_spec_path(argument: str) -> str:
    """The path as given when it exists from here, else the same relative path inside the repository."""
    given = Path(argument).expanduser()
    if given.is_absolute() or given.exists():
        return str(given)
    in_repository = repository_root() / given
    return str(in_repository) if in_repository.exists() else argument


def sweep_arguments(argv: list[str]) -> list[str]:
    """`fishr-tune sweep` arguments: the spec path resolved, --address auto unless given (flag or $RAY_ADDRESS)."""
    args = list(argv)
    takes_value = {
        name for option in sweep_command.params
        if isinstance(option, click.Option) and not option.is_flag for name in option.opts
    }
    index = 0
    while index < len(args):
        value = args[index]
        if value in takes_value:
            index += 2  # an option and its value
            continue
        if not value.startswith("-"):
            args[index] = resolve_spec_path(value)
            break
        index += 1
    has_address = any(a == "--address" or a.startswith("--address=") for a in args)
    if not has_address:
        args += ["--address", os.environ.get("RAY_ADDRESS") or "auto"]
    return ["sweep", *args]


if __name__ == "__main__":
    fishr_tune_main(args=sweep_arguments(sys.argv[1:]), prog_name="launch_sweep.py")
