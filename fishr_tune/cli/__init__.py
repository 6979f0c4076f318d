"""The `fishr-tune` command: parses, calls the modules, formats output. No logic of its own.

One module per command or command group; each is registered on `main` here, so importing fishr_tune.cli
(the console script does) gives every command.
"""

from __future__ import annotations

import click

from fishr_tune.cli import analyze, data, inspect, mlflow_sync, reproduce, sweep, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fishr-tune")
def main() -> None:
    """Train Fishr and DomainBed baselines, search their hyperparameters on Ray Tune, select models."""


for command in (train.train, inspect.inspect_command, reproduce.reproduce, sweep.sweep, data.data,
                mlflow_sync.mlflow_sync, analyze.analyze):
    main.add_command(command)
